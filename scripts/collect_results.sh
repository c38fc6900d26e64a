#!/usr/bin/env bash
# Runs Courier's benchmarks on this machine and writes results/: the criterion transport
# comparison (CSV), `courier compare`, `courier bench-tasks` and `courier stability`
# output, a manifest of the machine, and SVG plots of it all. Run it on an otherwise idle
# machine; the whole set takes about an hour (the stability run alone ~40 minutes).
#
#   scripts/collect_results.sh                     everything
#   scripts/collect_results.sh stability tasks     only those parts (criterion, compare,
#                                                  tasks, callgrind, stability, scheduler, million, shm,
#                                                  memory, glm, dashboard, links); the manifest records
#                                                  the commit and date of each part
set -euo pipefail
cd "$(dirname "$0")/.."
# --quick DIR: every part with tiny parameters into DIR, then check every file is there (a
# smoke test that the script and its parsers still work; CI runs it). Not results.
out=results quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1 out="${2:?--quick needs an output directory}"
  shift 2
fi
mkdir -p "$out"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(criterion compare tasks callgrind stability scheduler million shm memory glm dashboard links)
# The commit measured, taken before anything runs (edits made during a long run do not count).
sha="$(git rev-parse HEAD)"
[ -n "$(git status --porcelain --untracked-files=no -- . ':!results')" ] && sha="$sha-dirty" # results/ itself does not count
if [ $quick = 1 ]; then
  export COURIER_BENCH_QUICK=1
  compare_args=(--volume 8MiB --repeat 1 --round-trips 200 --small-batches 2)
  tasks_args=(--tasks 2000 --as-completed-tasks 500 --repeat 1) callgrind_args=(500 1)
  stability_args=(--repeat 1 --comms 2 --messages 4 --faults none) # faults: cli tests
  shm_costs_args=(1048576) perf_seconds=0.2 perf_rounds=1 tree_args=(1 4 256) small_args=(200 1)
  spill_args=(8 4 1) queuing_args=(1 16 1 2000) glm_args=(40000 32 8 3) dashboard_args=(2000 1)
else
  compare_args=() tasks_args=() callgrind_args=(20000 3) shm_costs_args=() perf_seconds=2 perf_rounds=5 tree_args=(5 32 8192)
  small_args=(20000 3)
  spill_args=(64 16 5) queuing_args=(7 256 4 100000) glm_args=(4000000 32 40 10) dashboard_args=(100000 9)
  # Defaults: 20 repetitions per transport, faults proxy,freeze,restart.
  stability_args=()
fi
cargo build --release --bin courier
for part in "${parts[@]}"; do
  echo "== collect_results: part $part, ${SECONDS}s in" >&2
  case "$part" in
    criterion)
      rm -rf target/criterion # stale ids from older runs must not reach the CSV
      (cd bench && cargo bench --bench transports -- --noplot) | tee "$out/criterion.txt"
      python3 scripts/criterion_to_csv.py target/criterion "$out/transports.csv" stream,echo,compression,arrays,small
      ;;
    scheduler)
      rm -rf target/criterion/scheduler
      cargo bench -p courier-runtime --bench scheduler -- --noplot | tee "$out/scheduler.txt"
      python3 scripts/criterion_to_csv.py target/criterion "$out/scheduler.csv" scheduler
      ;;
    compare) ./target/release/courier compare "${compare_args[@]}" --json "$out/compare.json" | tee "$out/compare.txt" ;;
    tasks)
      ./target/release/courier bench-tasks --serializing --many-inproc 256 --many-processes 64 "${tasks_args[@]}" --json "$out/tasks.json" | grep -v "worker serving" \
        | tee "$out/tasks.txt"
      ;;
    callgrind)
      # Instructions per task in process, beside tasks.txt's times (repeatable where times are not).
      if command -v valgrind >/dev/null; then
        scripts/callgrind_tasks.sh target/release/courier "${callgrind_args[@]}" | tee "$out/tasks_callgrind.txt"
        # ...and per process of a tcp:// cluster: where a task's CPU goes when messages cross sockets.
        scripts/callgrind_tasks_tcp.sh target/release/courier "${callgrind_args[@]}" | tee "$out/tasks_callgrind_tcp.txt"
      else
        echo "callgrind: skipped, valgrind is not installed" >&2
      fi
      ;;
    stability)
      # A run that finds failures or hangs exits non-zero: record it all the same (that is what
      # the part is for) and say so, rather than stop before the manifest.
      ./target/release/courier stability "${stability_args[@]}" --json "$out/stability.json" | tee "$out/stability.txt" \
        || echo "collect_results: courier stability found failures or hangs (recorded in $out/stability.txt)" >&2
      ;;
    million)
      # 10^6-task graphs end to end (ignored in the test suite); not in --quick.
      [ $quick = 1 ] && continue
      cargo test --release -p courier-cli --test million_tasks -- --ignored --nocapture --test-threads 1 2>&1 \
        | grep -E "tasks in|test result" | tee "$out/million_tasks.txt"
      ;;
    shm)
      # shm:// against tcp:// and unix://: in one process (compare, with memcpy and the
      # blocking limit), between two processes (perf, with each side's resident memory
      # growth), what a fresh memfd costs (the design choice), and the runtime's tree
      # reduction on 3 worker processes with shm on and off.
      cargo build --release -p courier-shm --example costs
      ./target/release/examples/costs "${shm_costs_args[@]}" | tee "$out/shm_costs.txt"
      ./target/release/courier compare --transports tcp,unix,shm "${compare_args[@]}" --json "$out/shm_compare.json" \
        | tee "$out/shm_compare.txt"
      # Instructions per 100-byte round trip (tcp, unix, shm): the small-message cost beside
      # the times.
      if command -v valgrind >/dev/null; then
        scripts/callgrind_small.sh "${small_args[@]}" | tee "$out/shm_small_callgrind.txt"
      else
        echo "callgrind: skipped, valgrind is not installed" >&2
      fi
      : >"$out/shm_perf.jsonl"
      # perf_row URL PATTERN:PAYLOAD [client flags]: one run of one row, its own server.
      perf_row() {
        local url=$1 p=$2
        shift 2
        coproc SERVER { ./target/release/courier perf server --listen "$url" --once; }
        local pid=$SERVER_PID line
        read -r line <&"${SERVER[0]}"
        ./target/release/courier perf client "${line##* }" --pattern "${p%%:*}" --payload "${p##*:}" "$@" \
          --duration "$perf_seconds" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' \
          >>"$out/shm_perf.jsonl"
        wait "$pid" 2>/dev/null || true
      }
      # Rounds of every row in turn, so a slow minute of the machine falls on all of them.
      # Beside the heap payloads: the payload built in a buffer lent by the arena, as shm://
      # workers build results (sent in place, no copy).
      for _ in $(seq "$perf_rounds"); do
        for t in tcp://127.0.0.1:0 unix:// shm://; do
          for p in stream:8MiB stream:64MiB echo:100; do
            perf_row "$t" "$p"
          done
        done
        for p in stream:8MiB stream:64MiB; do
          perf_row shm:// "$p" --lend
        done
      done
      python3 scripts/perf_table.py "$out/shm_perf.jsonl" | tee "$out/shm_perf.txt"
      ./target/release/courier stability --urls shm:// "${stability_args[@]}" --json "$out/shm_stability.json" \
        | tee "$out/shm_stability.txt" \
        || echo "collect_results: courier stability found failures or hangs (recorded in $out/shm_stability.txt)" >&2
      cargo build --release -p courier-cli --example shm_tree
      ./target/release/examples/shm_tree target/release/courier "${tree_args[@]}" --json "$out/shm_tree.json" 2>/dev/null \
        | grep -v "worker serving" | tee "$out/shm_tree.txt"
      ;;
    memory)
      # Spill and unspill against dd in the same directory (results/ lives on this disk), and
      # root-task queuing on and off: a wide reduction's peak memory and trivial-task
      # throughput on worker processes.
      cargo build --release -p courier-cli --example spill_bench --example root_queuing
      ./target/release/examples/spill_bench target "${spill_args[@]}" --json "$out/spill.json" | tee "$out/spill.txt"
      ./target/release/examples/root_queuing target/release/courier "${queuing_args[@]}" --json "$out/root_queuing.json" \
        | tee "$out/root_queuing.txt"
      ;;
    glm)
      # Logistic regression on persisted chunks: seconds per pass over X against the
      # single-threaded floor, on a LocalCluster and on worker processes (tcp://, shm://,
      # and recomputing the chunks every pass), and the bytes a rechunk moves.
      cargo build --release -p courier-cli --example glm_bench
      ./target/release/examples/glm_bench target/release/courier "${glm_args[@]}" --json "$out/glm.json" 2>/dev/null \
        | tee "$out/glm.txt"
      ;;
    dashboard)
      # The scheduler's throughput with the dashboard off and with the live page open in
      # headless Chromium, alternating; the page's screenshot after the last run.
      [ -d scripts/dashboard/node_modules/playwright-core ] || npm ci --prefix scripts/dashboard --no-audit --no-fund
      cargo build --release -p courier-cli --example dashboard_bench
      ./target/release/examples/dashboard_bench target/release/courier "${dashboard_args[@]}" --json "$out/dashboard.json" \
        --screenshot "$out/dashboard.png" 2>/dev/null | tee "$out/dashboard.txt"
      ;;
    links)
      # Compression none / snappy / lz4 / auto across test hosts on 1 and 10 Gbit/s links, and
      # a tree reduction across hosts (needs root and network namespaces: scripts/netns.sh).
      if scripts/netns.sh check; then
        if [ $quick = 1 ]; then scripts/links_bench.sh "$out" --quick; else scripts/links_bench.sh "$out"; fi
      else
        echo "links: skipped, this machine cannot make test hosts (reason above)" >&2
      fi
      ;;
    *) echo "unknown part $part (criterion, compare, tasks, callgrind, stability, scheduler, million, shm, memory, glm, dashboard, links)" >&2; exit 2 ;;
  esac
done
QUICK="$quick" OUT="$out" PARTS="${parts[*]}" SHA="$sha" python3 - <<'PY'
import json, os, platform, subprocess, datetime
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
path = os.environ["OUT"] + "/manifest.json"
try:
    old = json.load(open(path))
except Exception:
    old = {}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
runs = old.get("runs", {})
for part in os.environ["PARTS"].split():
    runs[part] = {
        "git_sha": os.environ["SHA"],
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # Sessions land on different VMs: each part records the machine it ran on.
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
    }
json.dump({
    # The machine of the latest parts run; each entry of "runs" names its own.
    "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
    "kernel": platform.release(), "rustc": sh("rustc", "--version"),
    "runs": runs,
    "quick": os.environ["QUICK"] == "1",
    "settings": {"criterion": "sample_size 10 (stream, arrays, small, compression), 20 (echo); tokio multi-thread, 2 workers",
                 "compare": "median of 5, 512 MiB per measurement; small: 200 x 1,000 messages per measurement; echo: 20,000 round trips",
                 "bench_tasks": "median (headline), smallest and largest of 5, repetitions taking the clusters in turn; --serializing adds the in-process cluster with MessagePack-encoding comms (the fast path's baseline); many workers: 256 one-thread workers in process, 64 one-thread worker processes over tcp:// and unix://",
                 "callgrind": "scripts/callgrind_tasks.sh: bench-tasks in process, 20,000 + 2,000 tasks and twice that, 3 runs each alternating; marginal instructions per task, median of the pairs; scripts/callgrind_tasks_tcp.sh: the same per process of a tcp:// scheduler + 2 one-thread worker processes and a bench-tasks --scheduler client",
                 "stability": "20 repetitions per transport; 6 comms x 24 messages; faults proxy,freeze,restart",
                 "shm": "compare --transports tcp,unix,shm as compare; perf between two processes, 5 rounds of every row in turn, 2 s per run (shm:// also with the payload lent); costs of a fresh 64 MiB memfd; callgrind_small.sh: 20,000 and 40,000 round trips of 100 B over tcp, unix, shm and zmq, 3 runs each, marginal instructions per round trip; stability as stability, shm:// only; shm_tree: 5 runs per mode, 32 arrays of 8192 x 1024 f64 on 3 one-thread worker processes",
                 "scheduler": "criterion, sample_size 10; sans-IO scheduler with fake workers",
                 "million": "cli/tests/million_tasks.rs ignored tests, release, one at a time",
                 "links": "links_bench.sh: test hosts in network namespaces on a bridge, each link shaped both ways with tc htb at 1 and 10 Gbit/s; courier perf stream of 64 MiB, 5 repetitions interleaved over none/snappy/lz4/auto, 5 s (1 Gbit/s) or 3 s (10 Gbit/s) each; tree_across: 16 arrays of 8 MiB, scheduler and 3 one-thread workers on their own hosts, 5 repetitions",
                 "dashboard": "dashboard_bench: map + gather of 100,000 trivial tasks, 9 repetitions alternating dashboard off / page open in headless Chromium; tcp:// scheduler + 2 one-thread worker processes; median with min and max",
                 "glm": "glm_bench: L-BFGS, L2 1e-4, 10 iterations (3 when recomputing), each pass timed; 2 one-thread workers; median with min and max of the passes",
                 "memory": "spill_bench: 16 x 64 MiB, 5 repetitions, dd bs = value size, sync before writes, no sync after; root_queuing: 7 repetitions, 256 x 4 MiB fan-in 4, 100,000 trivial tasks, 2 one-thread worker processes over tcp"},
}, open(path, "w"), indent=2)
PY
cargo run --release -p courier-bench --bin plots -- "$out"
if [ $quick = 1 ]; then
  for f in criterion.txt transports.csv compare.txt compare.json tasks.json tasks.txt stability.json \
    stability.txt scheduler.txt scheduler.csv manifest.json throughput.svg round_trips.svg tasks.svg stability.svg \
    shm_costs.txt shm_compare.txt shm_compare.json shm_perf.jsonl shm_perf.txt shm_stability.txt shm_stability.json \
    shm_tree.txt shm_tree.json spill.txt spill.json root_queuing.txt root_queuing.json glm.txt glm.json glm.svg \
    dashboard.txt dashboard.json dashboard.png; do
    [ -s "$out/$f" ] || { echo "quick run: $out/$f is missing or empty" >&2; exit 1; }
  done
  if scripts/netns.sh check 2>/dev/null; then
    for f in links.txt links_perf.jsonl links_tree.jsonl; do
      [ -s "$out/$f" ] || { echo "quick run: $out/$f is missing or empty" >&2; exit 1; }
    done
  fi
fi
echo "results written to $out/"
