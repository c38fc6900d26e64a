#!/usr/bin/env bash
# Compression across shaped links (needs root: scripts/netns.sh). Test hosts on 1 and 10 Gbit/s
# links; for each, `courier perf` streams 64 MiB arrays of random, zero, smooth and sparse float64
# data from one host to another with compression none, snappy, lz4 and auto (interleaved, rep
# by rep; sparse: runs of zeros and of noise, half each), then a tree reduction of smooth and random arrays runs on a scheduler and three
# workers on their own hosts with compression none and auto. Writes OUT/links_perf.jsonl,
# OUT/links_tree.jsonl and the table OUT/links.txt.
#
#   scripts/links_bench.sh OUT [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: links_bench.sh OUT [--quick]}
quick=${2:-}
mkdir -p "$out"
if [ "$quick" = --quick ]; then
  rates=(1gbit) reps=1 seconds=(1) payload=8MiB tree=(4 64)
else
  rates=(1gbit 10gbit) reps=5 seconds=(5 3) payload=64MiB tree=(16 1024)
fi
scripts/netns.sh check
cargo build --release --bin courier -p courier-cli --example tree_across
bin=target/release/courier
prefix=crlb$$
prefix=${prefix:0:8}
net=10.99.$(($$ % 200))
trap 'scripts/netns.sh down "$prefix"' EXIT
: >"$out/links_perf.jsonl"
: >"$out/links_tree.jsonl"
on() { local h=$1; shift; ip netns exec "$prefix$h" "$@"; }

perf() { # RATE DATA COMPRESSION SECONDS
  coproc SERVER { exec ip netns exec "${prefix}1" "$bin" perf server --listen "tcp://$net.2:7000" --once; }
  local pid=$SERVER_PID line
  read -r line <&"${SERVER[0]}"
  on 2 "$bin" --compression "$3" perf client "tcp://$net.2:7000" --payload "$payload" --data "$2" \
    --duration "$4" --json \
    | RATE=$1 COMPRESSION=$3 python3 -c 'import json,os,sys; r=json.load(sys.stdin); r["rate"]=os.environ["RATE"]; r["compression"]=os.environ["COMPRESSION"]; print(json.dumps(r))' \
    >>"$out/links_perf.jsonl"
  wait "$pid" 2>/dev/null || true
}

tree() { # RATE KIND COMPRESSION
  local pids=() line
  coproc SCHED { exec ip netns exec "${prefix}0" "$bin" --compression "$3" scheduler --listen "tcp://$net.1:8786"; }
  pids+=("$SCHED_PID")
  read -r line <&"${SCHED[0]}"
  for h in 1 2 3; do
    ip netns exec "$prefix$h" "$bin" --compression "$3" worker "tcp://$net.1:8786" --listen "tcp://$net.$((h + 1)):0" \
      --name "host-$h" >/dev/null 2>&1 &
    pids+=("$!")
  done
  target/release/examples/tree_across "tcp://$net.1:8786" "${tree[@]}" "$2" \
    | RATE=$1 COMPRESSION=$3 python3 -c 'import json,os,sys; r=json.loads(sys.stdin.read()); r["rate"]=os.environ["RATE"]; r["compression"]=os.environ["COMPRESSION"]; print(json.dumps(r))' \
    >>"$out/links_tree.jsonl"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}

for i in "${!rates[@]}"; do
  rate=${rates[$i]}
  scripts/netns.sh up "$prefix" 4 "$net" "$rate"
  for ((rep = 0; rep < reps; rep++)); do
    for data in random zeros smooth sparse; do
      for c in none snappy lz4 auto; do
        perf "$rate" "$data" "$c" "${seconds[$i]}"
      done
    done
    for kind in smooth_array random_array; do
      for c in none auto; do
        tree "$rate" "$kind" "$c"
      done
    done
    echo "$rate: repetition $((rep + 1)) of $reps done" >&2
  done
  scripts/netns.sh down "$prefix"
done
python3 scripts/links_table.py "$out" | tee "$out/links.txt"
