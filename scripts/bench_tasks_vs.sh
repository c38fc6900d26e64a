#!/usr/bin/env bash
# Task throughput of two `courier` binaries, measured in one session: rounds alternate between
# them (so drift of a shared machine falls on both alike), each run is `bench-tasks --repeat 1`,
# and every sample is kept. Writes results/<name>.json (all samples) and results/<name>.md
# (medians with min-max spread, and the ratio new/old).
#
#   scripts/bench_tasks_vs.sh OLD_COURIER NEW_COURIER NAME [ROUNDS]
#
# To compare against an earlier commit: build it in a worktree
# (git worktree add /tmp/old <sha> && cargo build --release --bin courier --manifest-path /tmp/old/Cargo.toml).
set -euo pipefail
old=$1 new=$2 name=$3 rounds=${4:-7}
cd "$(dirname "$0")/.."
mkdir -p results
tmp=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    "$bin" bench-tasks --repeat 1 --schemes tcp,zmq --json "$tmp/$side-$r.json" >/dev/null 2>&1
    echo "round $r/$rounds: $side done"
  done
done
python3 - "$tmp" "$rounds" "$old" "$new" "results/$name" <<'PY'
import json, statistics, sys, subprocess, datetime
tmp, rounds, old, new, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
samples = {}
for side in ("old", "new"):
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{tmp}/{side}-{r}.json")):
            samples.setdefault((row["cluster"], row["measurement"], row["tasks"]), {}).setdefault(side, []).append(
                row["median_tasks_per_s"])
rows = []
for (cluster, measurement, tasks), s in samples.items():
    o, n = s["old"], s["new"]
    rows.append({"cluster": cluster, "measurement": measurement, "tasks": tasks,
                 "old_median": statistics.median(o), "old_min": min(o), "old_max": max(o),
                 "new_median": statistics.median(n), "new_min": min(n), "new_max": max(n),
                 "ratio_new_over_old": statistics.median(n) / statistics.median(o),
                 "old_samples": o, "new_samples": n})
meta = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rounds": rounds, "old": old, "new": new,
        "method": "alternating rounds of `courier bench-tasks --repeat 1 --schemes tcp,zmq`; medians of the rounds"}
json.dump({"meta": meta, "rows": rows}, open(out + ".json", "w"), indent=2)
with open(out + ".md", "w") as f:
    f.write(f"# Task throughput, {old} vs {new}\n\n{meta['method']}, {rounds} rounds each, {meta['date_utc']}.\n\n")
    f.write("| cluster | measurement | tasks | old median (min-max) tasks/s | new median (min-max) tasks/s | new / old |\n")
    f.write("| --- | --- | --- | --- | --- | --- |\n")
    for r in rows:
        f.write(f"| {r['cluster']} | {r['measurement']} | {r['tasks']} | {r['old_median']:.0f} ({r['old_min']:.0f}-{r['old_max']:.0f}) "
                f"| {r['new_median']:.0f} ({r['new_min']:.0f}-{r['new_max']:.0f}) | {r['ratio_new_over_old']:.2f} |\n")
print(open(out + ".md").read())
PY
rm -rf "$tmp"
