#!/usr/bin/env bash
# Runs Courier's benchmarks on this machine and writes results/: the criterion transport
# comparison (CSV), `courier compare`, `courier bench-tasks` and `courier stability`
# output, a manifest of the machine, and SVG plots of it all. Takes several minutes; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
cargo build --release --bin courier
(cd bench && cargo bench --bench transports -- --noplot) | tee results/criterion.txt
python3 scripts/criterion_to_csv.py target/criterion results/transports.csv
./target/release/courier compare | tee results/compare.txt
./target/release/courier bench-tasks --json results/tasks.json | grep -v "worker serving" | tee results/tasks.txt
./target/release/courier stability --json results/stability.json | tee results/stability.txt
python3 - <<'PY' > results/manifest.json
import json, os, platform, subprocess, datetime
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
print(json.dumps({
    "git_sha": sh("git", "rev-parse", "HEAD"),
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
    "kernel": platform.release(), "rustc": sh("rustc", "--version"),
    "settings": {"criterion": "sample_size 10 (stream), 20 (echo); tokio multi-thread, 2 workers",
                 "compare": "median of 5, 512 MiB per measurement", "bench_tasks": "best and median of 3"},
}, indent=2))
PY
cargo run --release -p courier-bench --bin plots -- results
echo "results written to results/"
