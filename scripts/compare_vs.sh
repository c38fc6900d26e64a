#!/usr/bin/env bash
# Same-run A/B of two `courier` binaries on `courier compare` (the rows of the chosen
# transports), in alternating rounds so that both see the same machine:
#
#   scripts/compare_vs.sh OLD_BINARY NEW_BINARY [ROUNDS] [TRANSPORTS]
#
# results/tls_records_ab.txt is `scripts/compare_vs.sh <courier of 544d82a> <courier of cb6a4d9> 2 tcp,tls`
# (the binaries before and after tls:// got its own record layer); results/small_messages_ab.txt
# is `scripts/compare_vs.sh <courier of 0fe9b92> <courier of 69785ce> 3 tcp,unix,shm` (before
# and after the small-message work of 1e96b6f and 6c07255); results/zmq_inline_ab.txt is
# `scripts/compare_vs.sh <courier of adcb9aa> <courier of 1328d67> 3 tcp,zmq` (before and after
# zmq:// read inline, a2dcebf and 1328d67).
set -euo pipefail
old="${1:?old courier binary}"
new="${2:?new courier binary}"
rounds="${3:-2}"
transports="${4:-tcp,tls}"
echo "# compare_vs: old=$("$old" --version 2>/dev/null || echo "$old") new=$("$new" --version 2>/dev/null || echo "$new")"
echo "# $(uname -r), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ)"
for i in $(seq 1 "$rounds"); do
  for which in old new; do
    bin=$old
    [ "$which" = new ] && bin=$new
    echo "== $which, round $i"
    "$bin" compare --transports "$transports" --round-trips 2000 --small-batches 50 --connects 20 \
      | grep -E "^(payload|1 MiB|8 MiB|64 MiB|100 B|0 B) "
  done
done
