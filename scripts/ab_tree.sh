#!/usr/bin/env bash
# Same-session A/B of the same-host tree reduction (cli/examples/shm_tree.rs) between two
# builds of `courier` (the worker processes): rounds alternate the binaries, so both see the
# same state of a noisy machine. Prints each round and, per side, the shm:// and tcp:// warm
# medians of every round, their medians across rounds, and the ratio of the shm:// medians (B / A).
#
#   scripts/ab_tree.sh BINARY_A BINARY_B [ROUNDS]
#
# Each round runs `shm_tree BINARY 5 32 8192` (32 arrays of 64 MiB, one cold and 5 warm runs
# per mode) with A, then with B. The example itself (the client) is built from this tree.
set -euo pipefail
a="${1:?usage: ab_tree.sh BINARY_A BINARY_B [ROUNDS]}" b="${2:?usage: ab_tree.sh BINARY_A BINARY_B [ROUNDS]}"
rounds="${3:-3}"
cd "$(dirname "$0")/.."
cargo build --release -q -p courier-cli --example shm_tree
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
  for side in A B; do
    bin="$a"; [ "$side" = B ] && bin="$b"
    line="$(./target/release/examples/shm_tree "$bin" 5 32 8192 2>/dev/null | grep -E "^(shm|tcp): median" \
      | sed -E 's/^(shm|tcp): median ([0-9.]+) s.*/\1=\2/' | tr '\n' ' ')"
    echo "round $round $side: $line"
    echo "$round $side $line" >> "$out"
  done
done
python3 - "$out" "$a" "$b" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"A: {sys.argv[2]}\nB: {sys.argv[3]}")
med = {}
for side in "AB":
    shm = [float(r[2].split("=")[1]) for r in rows if r[1] == side]
    tcp = [float(r[3].split("=")[1]) for r in rows if r[1] == side]
    med[side] = statistics.median(shm)
    ratios = [t / s for s, t in zip(shm, tcp)]
    print(f"{side}: shm warm medians {', '.join(f'{x:.3f}' for x in shm)} s (median {med[side]:.3f}); "
          f"tcp {', '.join(f'{x:.3f}' for x in tcp)} s; speed-ups {', '.join(f'{x:.2f}' for x in ratios)}")
print(f"shm time B / A: {med['B'] / med['A']:.3f}")
PY
