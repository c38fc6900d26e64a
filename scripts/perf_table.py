#!/usr/bin/env python3
"""Prints a Markdown table of `courier perf --json` results, one JSON object per line
(python3 scripts/perf_table.py results/shm_perf.jsonl). Repetitions of one row (same URL
scheme, pattern, payload and lending) are grouped: medians, with the throughput's
range across them."""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = {}
for r in rows:
    scheme = r["url"].split("://")[0]
    if r.get("payload_lent"):
        scheme += " (payload lent by the arena)"
    groups.setdefault((scheme, r["pattern"], r["payload_bytes"]), []).append(r)

print("| transport | pattern | payload | runs | throughput (median) | range | messages/s | p50 round trip | "
      "sender extra RSS | receiver extra RSS | extra memory, shared pages once: sender / receiver | "
      "CPU ms per GiB, sender / receiver | corrupt |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
med = statistics.median
for (scheme, pattern, n), rs in groups.items():
    size = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} B"
    gib = [r["throughput_bytes_per_s"] / 2**30 for r in rs]

    def median_of(key):
        vs = [r[key] for r in rs if r.get(key) is not None]
        return med(vs) if vs else None

    def extra(key):
        v = median_of(key)
        return "" if v is None else f"{v / 2**20:.1f} MiB ({v / n:.2f}x)"

    def cpu(key):
        vs = [r[key] * 1e3 / (r["bytes"] / 2**30) for r in rs if r.get(key) is not None and r["bytes"]]
        return med(vs) if vs else None

    def once():
        c, s = median_of("client_extra_once_bytes"), median_of("server_extra_once_bytes")
        return "" if c is None or s is None else f"{c / n:.2f}x / {s / n:.2f}x"

    sender, receiver = cpu("client_cpu_seconds"), cpu("server_cpu_seconds")
    cpus = "" if sender is None or receiver is None else f"{sender:.0f} / {receiver:.0f}"
    p50 = median_of("latency_p50_us")
    p50 = "" if p50 is None else f"{p50:.1f} µs"
    print(
        f"| {scheme} | {pattern} | {size} | {len(rs)} | {med(gib):.2f} GiB/s | {min(gib):.2f}–{max(gib):.2f} | "
        f"{median_of('messages_per_s'):.0f} | {p50} | {extra('client_extra_rss_bytes')} | "
        f"{extra('server_extra_rss_bytes')} | {once()} | {cpus} | {sum(r['corrupt'] for r in rs)} |"
    )

# Ratios against tcp:// by repetition: the i-th run of a row against the i-th tcp:// run of the
# same pattern and payload (measured in the same round, seconds apart). Beside each, its ceiling:
# what the run's own work (both sides' CPU time per byte) would move if it were spread evenly
# over every core of the host, with nothing added to coordinate it. Two processes on one host
# share its cores, so no redistribution of that work between them and their threads, on that
# host, beats the ceiling; a ceiling under a target says the target needs less work per byte,
# not a better split of it.
def ceiling(r):
    cpu = (r.get("client_cpu_seconds") or 0) + (r.get("server_cpu_seconds") or 0)
    if not r.get("cores") or cpu <= 0:
        return None
    return r["cores"] * r["bytes"] / cpu

tcp = {(p, n): rs for (s, p, n), rs in groups.items() if s == "tcp"}
lines = []
for (scheme, pattern, n), rs in groups.items():
    base = tcp.get((pattern, n))
    if scheme == "tcp" or not base or pattern != "stream":
        continue
    ratios = [r["throughput_bytes_per_s"] / b["throughput_bytes_per_s"] for r, b in zip(rs, base)]
    ceilings = [c / b["throughput_bytes_per_s"] for r, b in zip(rs, base) if (c := ceiling(r)) is not None]
    cores = sorted({r["cores"] for r in rs if r.get("cores")})
    ceil = f"{med(ceilings):.2f} ({min(ceilings):.2f}–{max(ceilings):.2f}), {'/'.join(map(str, cores))} cores" if ceilings else ""
    size = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} B"
    lines.append(f"| {scheme} | {size} | {len(ratios)} | {med(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} | {ceil} |")
if lines:
    print()
    print("| transport | payload | rounds | throughput / tcp:// (median) | range | "
          "ceiling / tcp://: its CPU per byte spread over every core (median, range) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))
