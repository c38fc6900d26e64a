#!/usr/bin/env python3
"""Collects criterion estimates (target/criterion/<group>/<function>/<param>/new/estimates.json)
into one CSV: group, transport, payload, mean_ns, ci_low_ns, ci_high_ns, bytes_per_iter,
throughput_gib_s, and the ratio to the raw baseline of the same group and payload."""
import csv
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
out = sys.argv[2] if len(sys.argv) > 2 else "-"
rows = []
for est in sorted(root.glob("*/*/*/new/estimates.json")):
    group, function, param = est.parts[-5], est.parts[-4], est.parts[-3]
    e = json.loads(est.read_text())["mean"]
    bench = json.loads((est.parent / "benchmark.json").read_text())
    tp = bench.get("throughput") or {}
    nbytes = tp.get("Bytes") or tp.get("BytesDecimal")
    elems = tp.get("Elements")
    row = {
        "group": group,
        "transport": function,
        "payload": param,
        "mean_ns": round(e["point_estimate"], 1),
        "ci_low_ns": round(e["confidence_interval"]["lower_bound"], 1),
        "ci_high_ns": round(e["confidence_interval"]["upper_bound"], 1),
        "bytes_per_iter": nbytes or "",
        "throughput_gib_s": round(nbytes / e["point_estimate"] * 1e9 / 2**30, 3) if nbytes else "",
        "ops_per_s": round(elems / e["point_estimate"] * 1e9, 1) if elems else "",
    }
    rows.append(row)
raw = {(r["group"], r["payload"]): r["mean_ns"] for r in rows if r["transport"] == "raw"}
for r in rows:
    base = raw.get((r["group"], r["payload"]))
    r["ratio_to_raw"] = round(base / r["mean_ns"], 3) if base else ""
fields = list(rows[0].keys()) if rows else []
f = sys.stdout if out == "-" else open(out, "w", newline="")
w = csv.DictWriter(f, fieldnames=fields)
w.writeheader()
w.writerows(rows)
