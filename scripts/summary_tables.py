#!/usr/bin/env python3
"""Prints the Markdown tables of results/SUMMARY.md from the recorded data, so every figure
in them comes from a file in results/ (python3 scripts/summary_tables.py [results])."""
import csv
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "results")
GIB = 2**30
ORDER = ["limit", "blocking, 2 threads", "raw", "tcp", "tls", "unix", "shm", "zmq", "inproc"]


def rate(unit, v):
    if unit == "bytes/s":
        return f"{v / GIB:.2f} GiB/s" if v < 1024 * GIB else f"{v / GIB / 1024:.1f} TiB/s"
    return f"{v / 1e6:.2f}M/s" if v >= 1e6 else f"{v / 1e3:.1f}k/s"


def ratio(v):
    return "" if v is None else f"{v:.2f}"


def cpu(ns):
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.2f} µs"


def size(n):
    for unit, f in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


compare = json.loads((root / "compare.json").read_text())
print("### `courier compare` (median, spread low–high, process CPU per message)\n")
for pattern in ["stream", "small", "echo (multi-thread)", "echo (current-thread)", "connect"]:
    rows = [r for r in compare if r["pattern"] in (pattern, "memcpy" if pattern == "stream" else "")]
    if not rows:
        continue
    print(f"**{pattern}**\n")
    print("| payload | contender | median | spread | / raw | / limit | / tcp | CPU per message |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    key = lambda r: (r["payload_bytes"], ORDER.index(r["contender"]) if r["contender"] in ORDER else 99)
    for r in sorted(rows, key=key):
        print(
            f"| {size(r['payload_bytes'])} | {r['contender']} | {rate(r['unit'], r['median'])} | "
            f"{rate(r['unit'], r['low'])} – {rate(r['unit'], r['high'])} | {ratio(r['vs_raw'])} | "
            f"{ratio(r['vs_limit'])} | {ratio(r['vs_tcp'])} | {cpu(r['cpu_ns_per_message'])} |"
        )
    print()

path = root / "transports.csv"
if path.exists():
    rows = list(csv.DictReader(path.open()))
    print("### criterion (median, 95 % confidence interval of the median)\n")
    print("| group | payload | contender | median time | CI | throughput | / raw | / limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        tp = f"{float(r['throughput_gib_s']):.2f} GiB/s" if r["throughput_gib_s"] else f"{float(r['ops_per_s']) / 1e3:.1f}k/s"
        t = lambda ns: f"{float(ns) / 1e6:.2f} ms" if float(ns) >= 1e6 else f"{float(ns) / 1e3:.1f} µs"
        print(
            f"| {r['group']} | {r['payload']} | {r['transport']} | {t(r['median_ns'])} | "
            f"{t(r['ci_low_ns'])} – {t(r['ci_high_ns'])} | {tp} | {r['ratio_to_raw']} | {r['ratio_to_limit']} |"
        )
    print()

path = root / "tasks.json"
if path.exists():
    print("### `courier bench-tasks` (tasks/s: median, smallest–largest)\n")
    print("| cluster | measurement | tasks | median | spread |")
    print("| --- | --- | --- | --- | --- |")
    for r in json.loads(path.read_text()):
        spread = f"{r['min_tasks_per_s'] / 1e3:.0f}k – {r['max_tasks_per_s'] / 1e3:.0f}k"
        print(f"| {r['cluster']} | {r['measurement']} | {r['tasks']} | {r['median_tasks_per_s'] / 1e3:.0f}k | {spread} |")
    print()

path = root / "stability.json"
if path.exists():
    print("### `courier stability`\n")
    print(
        "| transport | reps ok | failures | hangs | messages | lost | corrupt | explained | proxy cuts / stalls "
        "| graphs / freezes / restarts ok | p50 | p99 | RSS growth | fd growth |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in json.loads(path.read_text()):
        print(
            f"| {r['transport'].split('://')[0]}:// | {r['ok']}/{r['repetitions']} | {r['failures']} | {r['hangs']} | "
            f"{r['messages']} | **{r['lost']}** | **{r['corrupt']}** | {r['explained']} | "
            f"{r['proxy_cuts']} / {r['proxy_stalls']} | {r['graphs_ok']} / {r['freezes_ok']} / {r['restarts_ok']} | "
            f"{r['p50_ms']:.2f} ms | {r['p99_ms']:.0f} ms | {r['rss_growth_mib']:+.0f} MiB | {r['fd_growth']:+d} |"
        )

path = root / "scheduler.csv"
if path.exists():
    print()
    print("### scheduler alone (criterion: µs of `Scheduler::handle` per task, median and 95 % CI)\n")
    print("| graph | tasks (tree: leaves; the tree adds 3 % more) | workers | µs per task | CI |")
    print("| --- | --- | --- | --- | --- |")
    rows = list(csv.DictReader(path.open()))
    key = lambda r: (r["transport"], *map(int, r["payload"].rstrip("w").split("x")))
    for r in sorted(rows, key=key):
        n, w = map(int, r["payload"].rstrip("w").split("x"))
        us = lambda ns: f"{float(ns) / n / 1e3:.2f}"
        print(f"| {r['transport']} | {n:,} | {w:,} | {us(r['median_ns'])} | {us(r['ci_low_ns'])} – {us(r['ci_high_ns'])} |")

path = root / "scheduler.txt"
if path.exists():
    lines = [l for l in path.read_text().splitlines() if l.startswith("scheduler memory")]
    if lines:
        print("\nMemory (`scheduler.txt`):\n")
        for l in lines:
            print(f"- {l}")

path = root / "million_tasks.txt"
if path.exists():
    print("\n### A million tasks end to end (`million_tasks.txt`)\n")
    for l in path.read_text().splitlines():
        if "tasks in" in l:
            print(f"- {l.split('... ')[-1]}")


def med(values):
    v = sorted(values)
    return v[len(v) // 2], v[0], v[-1]


path = root / "spill.json"
if path.exists():
    samples = json.loads(path.read_text())
    def stat(what):
        s = [x for x in samples if x["what"] == what]
        if not s:
            return None
        gib = s[0]["bytes"] / GIB
        t, lo, hi = med([x["seconds"] for x in s])
        c, _, _ = med([x["cpu_seconds"] for x in s])
        return gib / t, gib / hi, gib / lo, c / gib
    print("\n### Spill and read back against dd (`spill.json`)\n")
    print("| row | Courier | dd, one file | ratio | dd, one file per value |")
    print("| --- | --- | --- | --- | --- |")
    for name, ours, one, each in [
        ("spill write", "spill write", "dd 1 file write", "dd write"),
        ("read back, page cache warm", "spill read (warm)", "dd 1 file read (warm)", "dd read (warm)"),
        ("read back, cold", "spill read (cold)", "dd 1 file read (cold)", "dd read (cold)"),
    ]:
        a, b, e = stat(ours), stat(one), stat(each)
        if not (a and b and e):
            continue
        print(
            f"| {name} | {a[0]:.2f} GiB/s ({a[1]:.2f}–{a[2]:.2f}), {a[3]:.2f} CPU s/GiB | "
            f"{b[0]:.2f} GiB/s ({b[1]:.2f}–{b[2]:.2f}), {b[3]:.2f} | {a[0] / b[0]:.2f} | {e[0]:.2f} GiB/s |"
        )

path = root / "root_queuing.json"
if path.exists():
    runs = json.loads(path.read_text())
    def pick(on, f):
        return med([f(r) for r in runs if r["queuing"] == on])
    print(f"\n### Root-task queuing (`root_queuing.json`, median of {len(runs) // 2}, spread)\n")
    print("| row | on | off | on / off |")
    print("| --- | --- | --- | --- |")
    for name, f, fmt in [
        ("cluster peak RSS (sum of the workers' VmHWM)", lambda r: sum(r["peak_rss_bytes"]) / 2**20, "{:,.0f} MiB"),
        ("reduction wall time", lambda r: r["reduction_seconds"], "{:.2f} s"),
        ("trivial tasks, map + gather", lambda r: r["trivial_tasks_per_second"] / 1e3, "{:.1f}k/s"),
    ]:
        on, off = pick(True, f), pick(False, f)
        cell = lambda m: f"{fmt.format(m[0])} ({fmt.format(m[1])}–{fmt.format(m[2])})"
        print(f"| {name} | {cell(on)} | {cell(off)} | {on[0] / off[0]:.2f} |")

path = root / "glm.json"
if path.exists():
    glm = json.loads(path.read_text())
    print(
        f"\n### Logistic regression, seconds per pass over X (`glm.json`: {glm['rows']:,} × {glm['cols']} f64 "
        f"in {glm['chunks']} chunks, L-BFGS)\n"
    )
    print("| config | passes | median s/pass (min–max) | CPU s/pass | s/iteration | setup s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in glm["configs"]:
        print(
            f"| {r['config']} | {r['evaluations']} | {r['seconds_per_eval_median']:.4f} "
            f"({r['seconds_per_eval_min']:.4f}–{r['seconds_per_eval_max']:.4f}) | {r['cpu_seconds_per_eval']:.4f} | "
            f"{r['seconds_per_iteration']:.4f} | {r['setup_seconds']:.1f} |"
        )
    print("\n| ratio | value |")
    print("| --- | --- |")
    for k, v in glm["ratios"].items():
        print(f"| {k.replace('_', ' ')} | {v:.3f} |")
    rc = glm.get("rechunk")
    if rc:
        print(
            f"\nRechunk rows → columns: workers fetched {rc['fetched_bytes']:,} bytes, "
            f"{rc['ratio']:.3f} × the array's {rc['array_bytes']:,}, in {rc['seconds']:.2f} s."
        )
    tl = glm.get("local_timeline")
    if tl:
        none, one, two = tl["seconds_with_running"]
        print(
            f"\nLocalCluster timeline ({tl['passes']} passes with the per-chunk function wrapped, medians per pass): "
            f"{two:.4f} s with two executions running, {one:.4f} s with one, {none:.4f} s with none; a "
            f"thread waits {tl['gap_seconds_median'] * 1e3:.2f} ms between two executions "
            f"({tl['gap_seconds_per_pass']:.4f} s per pass over both threads); the threads' last executions end "
            f"{tl['tail_seconds'] * 1e3:.1f} ms apart."
        )

path = root / "dashboard.json"
if path.exists():
    d = json.loads(path.read_text())
    print("\n### Dashboard cost (`dashboard.json`: map + gather of trivial tasks, alternating)\n")
    print("| dashboard | tasks | median tasks/s (min–max) | scheduler CPU s per run |")
    print("| --- | --- | --- | --- |")
    for r in d["rows"]:
        print(
            f"| {r['cluster']} | {r['tasks']:,} | {r['median_tasks_per_s'] / 1e3:.1f}k "
            f"({r['min_tasks_per_s'] / 1e3:.1f}k–{r['max_tasks_per_s'] / 1e3:.1f}k) | {r['median_scheduler_cpu_s']:.3f} |"
        )
    print(f"\nPage open / off: {d['ratio_page_open_to_off']:.3f}.")

if (root / "links_perf.jsonl").exists():
    # Across hosts: the same tables links_bench.sh writes to links.txt.
    print()
    sys.stdout.flush()
    subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("links_table.py")), str(root)], check=True)
