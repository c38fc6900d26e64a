#!/usr/bin/env python3
"""Collects criterion estimates (target/criterion/<group>/<function>/<param>/new/estimates.json)
into one CSV: group, contender, payload, the median time per iteration with its 95 % confidence
interval, the mean, bytes per iteration, throughput (from the median), and the ratios to the
fair raw baseline and to the machine's limit of the same group and payload."""
import csv
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
out = sys.argv[2] if len(sys.argv) > 2 else "-"
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None  # groups to keep
rows = []
for est in sorted(root.glob("*/*/*/new/estimates.json")):
    group, function, param = est.parts[-5], est.parts[-4], est.parts[-3]
    if only is not None and group not in only:
        continue
    estimates = json.loads(est.read_text())
    e = estimates["median"]
    bench = json.loads((est.parent / "benchmark.json").read_text())
    tp = bench.get("throughput") or {}
    nbytes = tp.get("Bytes") or tp.get("BytesDecimal")
    elems = tp.get("Elements")
    row = {
        "group": group,
        "transport": function,
        "payload": param,
        "median_ns": round(e["point_estimate"], 1),
        "ci_low_ns": round(e["confidence_interval"]["lower_bound"], 1),
        "ci_high_ns": round(e["confidence_interval"]["upper_bound"], 1),
        "mean_ns": round(estimates["mean"]["point_estimate"], 1),
        "bytes_per_iter": nbytes or "",
        "throughput_gib_s": round(nbytes / e["point_estimate"] * 1e9 / 2**30, 3) if nbytes else "",
        "ops_per_s": round(elems / e["point_estimate"] * 1e9, 1) if elems else "",
    }
    rows.append(row)
for base_name in ("raw", "limit"):
    base = {(r["group"], r["payload"]): r["median_ns"] for r in rows if r["transport"] == base_name}
    for r in rows:
        b = base.get((r["group"], r["payload"]))
        r["ratio_to_" + base_name] = round(b / r["median_ns"], 3) if b and r["transport"] != "memcpy" else ""
fields = list(rows[0].keys()) if rows else []
f = sys.stdout if out == "-" else open(out, "w", newline="")
w = csv.DictWriter(f, fieldnames=fields)
w.writeheader()
w.writerows(rows)
