#!/usr/bin/env bash
# Same-session A/B of task throughput between two builds of `courier`: the rounds alternate
# the binaries, so both see the same state of a noisy machine. Prints each round and, per
# measurement, the two medians and their ratio (B / A).
#
#   scripts/ab_tasks.sh BINARY_A BINARY_B [ROUNDS]
#
# Each round runs `bench-tasks --schemes tcp --repeat 3` (in process and over tcp://, map +
# gather of 100,000 tasks and as_completed of 20,000) with A, then with B. To compare a
# change with the commit before it: `git worktree add /tmp/a REV` and
# `CARGO_TARGET_DIR=/tmp/a-target cargo build --release --bin courier` there.
set -euo pipefail
a="${1:?usage: ab_tasks.sh BINARY_A BINARY_B [ROUNDS]}" b="${2:?usage: ab_tasks.sh BINARY_A BINARY_B [ROUNDS]}"
rounds="${3:-4}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
  for side in A B; do
    bin="$a"; [ "$side" = B ] && bin="$b"
    "$bin" bench-tasks --schemes tcp --repeat 3 2>/dev/null | grep -E "map \+ gather|as_completed" \
      | sed -E "s/^(.*[^ ]) +(map \+ gather|as_completed, 200 in flight) +[0-9]+ +([0-9]+) .*/$round\t$side\t\1\t\2\t\3/" >> "$out"
  done
done
python3 - "$out" "$a" "$b" <<'PY'
import collections, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"A: {sys.argv[2]}\nB: {sys.argv[3]}")
by = collections.defaultdict(lambda: {"A": [], "B": []})
for rnd, side, cluster, what, rate in rows:
    by[(cluster, what)][side].append(int(rate))
for (cluster, what), v in by.items():
    ma, mb = statistics.median(v["A"]), statistics.median(v["B"])
    print(f"{cluster} | {what} | A {', '.join(map(str, v['A']))} | B {', '.join(map(str, v['B']))} "
          f"| medians {ma:,.0f} and {mb:,.0f} | B/A {mb / ma:.2f}")
PY
