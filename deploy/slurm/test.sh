#!/usr/bin/env bash
# Runs deploy/slurm/courier.sbatch's logic on this machine, without SLURM: a stand-in `srun`
# starts each step's tasks as local processes (and forwards SIGTERM to them, as srun does), the
# job's nodes are this host (COURIER_HOST=127.0.0.1). Checks that the scheduler's address
# reached the workers and the client through the file and that the client's task ran (41 + 1).
# What it cannot check: srun's placement on real nodes, or addresses of other hosts.
#
#   deploy/slurm/test.sh [path/to/courier]
set -euo pipefail
cd "$(dirname "$0")/../.."
courier=$(realpath "${1:-target/debug/courier}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
cat >"$work/bin/srun" <<'SRUN'
#!/usr/bin/env bash
# Stand-in for srun: `srun [--opt=value | --opt value]... command...`, --ntasks=N copies.
n=1
while [ $# -gt 0 ]; do
  case $1 in
    --ntasks=*) n=${1#--ntasks=}; shift ;;
    --exclusive) shift ;;
    --*=*) shift ;;
    --*) shift 2 ;;
    *) break ;;
  esac
done
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i "$@" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' TERM INT
wait
SRUN
chmod +x "$work/bin/srun"
out=$(PATH="$work/bin:$PATH" COURIER="$courier" COURIER_JOB_DIR="$work/job" COURIER_HOST=127.0.0.1 \
  SLURM_JOB_ID=1 SLURM_NTASKS=2 SLURM_CPUS_PER_TASK=1 timeout 120 deploy/slurm/courier.sbatch 2>&1)
echo "$out"
grep -q "^scheduler at tcp://127.0.0.1:" <<<"$out" || { echo "FAIL: no scheduler address" >&2; exit 1; }
grep -qx "42" <<<"$out" || { echo "FAIL: the job's task did not print 42" >&2; exit 1; }
[ "$(stat -c %a "$work/job/token")" = 600 ] || { echo "FAIL: the token file is readable by others" >&2; exit 1; }
echo "slurm example: ok"
