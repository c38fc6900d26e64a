#!/usr/bin/env bash
# Runs Courier's benchmarks on this machine and writes results/: the criterion transport
# comparison (CSV), `courier compare`, `courier bench-tasks` and `courier stability`
# output, a manifest of the machine, and SVG plots of it all. Run it on an otherwise idle
# machine; the whole set takes about an hour (the stability run alone ~40 minutes).
#
#   scripts/collect_results.sh                     everything
#   scripts/collect_results.sh stability tasks     only those parts (criterion, compare,
#                                                  tasks, stability); the manifest records
#                                                  the commit and date of each part
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
parts=("$@")
# The commit measured, taken before anything runs (edits made during a long run do not count).
sha="$(git rev-parse HEAD)"
[ -n "$(git status --porcelain --untracked-files=no)" ] && sha="$sha-dirty"
[ ${#parts[@]} -eq 0 ] && parts=(criterion compare tasks stability)
cargo build --release --bin courier
for part in "${parts[@]}"; do
  case "$part" in
    criterion)
      (cd bench && cargo bench --bench transports -- --noplot) | tee results/criterion.txt
      python3 scripts/criterion_to_csv.py target/criterion results/transports.csv
      ;;
    compare) ./target/release/courier compare | tee results/compare.txt ;;
    tasks) ./target/release/courier bench-tasks --json results/tasks.json | grep -v "worker serving" | tee results/tasks.txt ;;
    # Defaults: 20 repetitions per transport, faults proxy,freeze,restart.
    stability) ./target/release/courier stability --json results/stability.json | tee results/stability.txt ;;
    *) echo "unknown part $part (criterion, compare, tasks, stability)" >&2; exit 2 ;;
  esac
done
PARTS="${parts[*]}" SHA="$sha" python3 - <<'PY'
import json, os, platform, subprocess, datetime
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
path = "results/manifest.json"
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
    }
json.dump({
    "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
    "kernel": platform.release(), "rustc": sh("rustc", "--version"),
    "runs": runs,
    "settings": {"criterion": "sample_size 10 (stream, arrays, small, compression), 20 (echo); tokio multi-thread, 2 workers",
                 "compare": "median of 5, 512 MiB per measurement",
                 "bench_tasks": "median (headline) and best of 3",
                 "stability": "20 repetitions per transport; 6 comms x 24 messages; faults proxy,freeze,restart"},
}, open(path, "w"), indent=2)
PY
cargo run --release -p courier-bench --bin plots -- results
echo "results written to results/"
