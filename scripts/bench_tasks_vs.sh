#!/usr/bin/env bash
# Task throughput of two `courier` binaries, measured in one session: rounds alternate between
# them (so drift of a shared machine falls on both alike); each run is
# `bench-tasks --repeat 1 --schemes tcp,zmq`, and every sample is kept, with the CPU time the
# run consumed (client, scheduler and worker processes: getrusage of waited-for children),
# which is far steadier than throughput on a shared machine. Writes results/<name>.json (all
# samples) and results/<name>.md (medians with min-max spread, and new/old ratios).
#
#   scripts/bench_tasks_vs.sh OLD_COURIER NEW_COURIER NAME [ROUNDS]
#
# To compare against an earlier commit, build it in a worktree:
#   git worktree add /tmp/old <sha> && cargo build --release --bin courier --manifest-path /tmp/old/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
python3 - "$1" "$2" "results/$3" "${4:-9}" <<'PY'
import json, os, resource, statistics, subprocess, sys, tempfile, datetime
old, new, out, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tmp = tempfile.mkdtemp()
samples, cpu = {}, {"old": [], "new": []}
for r in range(1, rounds + 1):
    for side, binary in (("old", old), ("new", new)):
        path = f"{tmp}/{side}-{r}.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([binary, "bench-tasks", "--repeat", "1", "--schemes", "tcp,zmq", "--json", path],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[side].append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        for row in json.load(open(path)):
            key = (row["cluster"], row["measurement"], row["tasks"])
            samples.setdefault(key, {}).setdefault(side, []).append(row["median_tasks_per_s"])
        print(f"round {r}/{rounds}: {side} done", file=sys.stderr)
rows = []
for (cluster, measurement, tasks), s in samples.items():
    o, n = s["old"], s["new"]
    rows.append({"cluster": cluster, "measurement": measurement, "tasks": tasks,
                 "old_median": statistics.median(o), "old_min": min(o), "old_max": max(o),
                 "new_median": statistics.median(n), "new_min": min(n), "new_max": max(n),
                 "ratio_new_over_old": statistics.median(n) / statistics.median(o),
                 "old_samples": o, "new_samples": n})
cpu_row = {"old_median_s": statistics.median(cpu["old"]), "new_median_s": statistics.median(cpu["new"]),
           "old_s": cpu["old"], "new_s": cpu["new"]}
meta = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rounds": rounds, "old": old, "new": new, "cores": os.cpu_count(),
        "method": "alternating rounds of `courier bench-tasks --repeat 1 --schemes tcp,zmq`; medians of the rounds; "
                  "CPU = user + system seconds of the whole run (client, scheduler and workers)"}
json.dump({"meta": meta, "rows": rows, "cpu_per_run": cpu_row}, open(out + ".json", "w"), indent=2)
with open(out + ".md", "w") as f:
    f.write(f"# Task throughput: {old} (old) vs {new} (new)\n\n{meta['method']}. {rounds} rounds each, "
            f"{meta['cores']} cores, {meta['date_utc']}.\n\n")
    f.write("| cluster | measurement | tasks | old median (min-max) tasks/s | new median (min-max) tasks/s | new / old |\n")
    f.write("| --- | --- | --- | --- | --- | --- |\n")
    for r in rows:
        f.write(f"| {r['cluster']} | {r['measurement']} | {r['tasks']} | {r['old_median']:.0f} ({r['old_min']:.0f}-{r['old_max']:.0f}) "
                f"| {r['new_median']:.0f} ({r['new_min']:.0f}-{r['new_max']:.0f}) | {r['ratio_new_over_old']:.2f} |\n")
    f.write(f"\nCPU per run (the 6 measurements above plus setup; user + system, all processes): old median "
            f"{cpu_row['old_median_s']:.2f} s ({min(cpu['old']):.2f}-{max(cpu['old']):.2f}), new median "
            f"{cpu_row['new_median_s']:.2f} s ({min(cpu['new']):.2f}-{max(cpu['new']):.2f}), new / old "
            f"{cpu_row['new_median_s'] / cpu_row['old_median_s']:.2f}.\n")
print(open(out + ".md").read())
PY
