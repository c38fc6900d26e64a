#!/usr/bin/env bash
# Instructions per 100-byte round trip over shm://, unix://, tcp:// and zmq://, counted by valgrind's
# callgrind: the CPU cost of a small message beside `courier compare`'s times, which swing on
# this VM where counts repeat.
#
#   scripts/callgrind_small.sh [ROUND_TRIPS] [RUNS]
#
# Runs courier-shm's `small_ops` example (both ends of a comm on one current-thread runtime,
# so a round trip is two sends, two receives and the kernel's work between them), and
# courier-zmq's `zmq_small_ops` (the same over zmq://, its control tasks included) with
# ROUND_TRIPS and twice as many, RUNS times each; the marginal count, (large - small) /
# ROUND_TRIPS, leaves out starting the process and connecting. Prints each run and the
# medians.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}" runs="${2:-3}"
cargo build --release -p courier-shm --example small_ops -p courier-zmq --example zmq_small_ops >&2
count() {
  local run=(target/release/examples/small_ops "$1" "$2")
  [ "$1" = zmq ] && run=(target/release/examples/zmq_small_ops "$2")
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "${run[@]}" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "callgrind, small_ops: $n and $((2 * n)) round trips of a 100-byte message, $runs runs each"
declare -A med
for kind in tcp unix shm zmq; do
  per=()
  for _ in $(seq "$runs"); do
    s="$(count "$kind" "$n")" l="$(count "$kind" $((2 * n)))"
    per+=("$(((l - s) / n))")
    echo "  $kind: $s and $l instructions: $(((l - s) / n)) per round trip"
  done
  med[$kind]="$(printf '%s\n' "${per[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')"
done
for kind in tcp unix shm zmq; do
  echo "median instructions per round trip: $kind ${med[$kind]}"
done
python3 -c "import sys; u, s = int(sys.argv[1]), int(sys.argv[2]); print(f'shm / unix instructions: {s / u:.3f}')" \
  "${med[unix]}" "${med[shm]}"
python3 -c "import sys; t, z = int(sys.argv[1]), int(sys.argv[2]); print(f'zmq / tcp instructions: {z / t:.3f}')" \
  "${med[tcp]}" "${med[zmq]}"
