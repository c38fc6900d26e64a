#!/usr/bin/env python3
"""Prints a Markdown table of `courier perf --json` results, one JSON object per line
(python3 scripts/perf_table.py results/shm_perf.jsonl)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| transport | pattern | payload | throughput | messages/s | p50 round trip | sender extra RSS | receiver extra RSS | corrupt |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    scheme = r["url"].split("://")[0] + (" (payload lent by the arena)" if r.get("payload_lent") else "")
    n = r["payload_bytes"]
    size = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} B"
    extra = lambda v: "" if v is None else f"{v / 2**20:.1f} MiB ({v / n:.2f}x)"
    p50 = "" if r["latency_p50_us"] is None else f"{r['latency_p50_us']:.1f} µs"
    print(
        f"| {scheme} | {r['pattern']} | {size} | {r['throughput_bytes_per_s'] / 2**30:.2f} GiB/s | "
        f"{r['messages_per_s']:.0f} | {p50} | {extra(r['client_extra_rss_bytes'])} | "
        f"{extra(r['server_extra_rss_bytes'])} | {r['corrupt']} |"
    )
