#!/usr/bin/env bash
# cargo-fuzz targets of every decoder Courier exposes to a peer (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh replay           run every committed corpus input once (CI does this)
#   scripts/fuzz.sh run SECONDS [T]  fuzz each target (or only T) for SECONDS; new inputs
#                                    land in fuzz/corpus/<target>, crashes in fuzz/artifacts/
#   scripts/fuzz.sh cmin             minimise every corpus (keep inputs that add coverage)
#   scripts/fuzz.sh seeds            rewrite the seed inputs from Courier's own encoders
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
targets=(stream_decoder hello values zmtp runtime_messages shm_records spill_file block_functions tls_records)
case "${1:-}" in
  replay)
    cargo +nightly fuzz build
    for t in "${targets[@]}"; do
      echo "== $t: $(ls "corpus/$t" | wc -l) inputs"
      if out=$(cargo +nightly fuzz run "$t" "corpus/$t" -- -runs=0 -rss_limit_mb=4096 2>&1); then
        grep -E 'INITED|Done' <<<"$out"
      else
        tail -n 60 <<<"$out"
        echo "fuzz target $t failed on its corpus" >&2
        exit 1
      fi
    done
    ;;
  run)
    secs="${2:?seconds per target}"
    for t in "${@:3}"; do targets=("$t"); done
    for t in "${targets[@]}"; do
      cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1
    done
    ;;
  cmin)
    for t in "${targets[@]}"; do cargo +nightly fuzz cmin "$t" "corpus/$t" -- -rss_limit_mb=4096; done
    ;;
  seeds)
    cargo run --example seeds
    ;;
  *)
    sed -n 2,10p "$0"
    exit 2
    ;;
esac
