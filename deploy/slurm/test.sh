#!/usr/bin/env bash
# Runs deploy/slurm/courier.sbatch's logic on this machine, without SLURM: a stand-in `srun`
# starts each step's tasks as processes (and forwards SIGTERM to them, as srun does). Twice:
# first every node is this host (COURIER_HOST=127.0.0.1); then, where test hosts can be made
# (root, network namespaces: scripts/netns.sh), srun places each task on the next of three
# test hosts, which finds its own address as on a real node (`hostname -I`), and the batch
# script's client runs on the machine itself. Checks that the scheduler's address reached the
# workers and the client through the file and that the client's task ran (41 + 1).
# What it cannot check: SLURM's own placement, its cgroups and its signals.
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
  if [ -n "${SRUN_HOSTS:-}" ]; then
    # The next test host, round robin, counted in a file shared by every srun of the job.
    k=$(( $(cat "$SRUN_COUNTER" 2>/dev/null || echo 0) ))
    echo $((k + 1)) >"$SRUN_COUNTER"
    SLURM_PROCID=$i ip netns exec "${SRUN_HOSTS}$((k % 3))" env -u COURIER_HOST "$@" &
  else
    SLURM_PROCID=$i "$@" &
  fi
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' TERM INT
wait
SRUN
chmod +x "$work/bin/srun"

job() { # JOB_DIR EXPECTED_SCHEDULER_HOST [env…]
  local dir=$1 host=$2
  shift 2
  # stdout alone: the nodes log to stderr with unbuffered writes that can land inside the
  # client's line if they share a pipe.
  out=$(env -u COURIER_HOST PATH="$work/bin:$PATH" COURIER="$courier" COURIER_JOB_DIR="$dir" "$@" \
    SLURM_JOB_ID=1 SLURM_NTASKS=2 SLURM_CPUS_PER_TASK=1 timeout 120 deploy/slurm/courier.sbatch 2>"$dir.log")
  cat "$dir.log"
  echo "$out"
  grep -q "^scheduler at tcp://$host:" <<<"$out" || { echo "FAIL: no scheduler address on $host" >&2; exit 1; }
  grep -qx "42" <<<"$out" || { echo "FAIL: the job's task did not print 42" >&2; exit 1; }
  [ "$(stat -c %a "$dir/token")" = 600 ] || { echo "FAIL: the token file is readable by others" >&2; exit 1; }
}

job "$work/job" 127.0.0.1 COURIER_HOST=127.0.0.1
echo "slurm example, one host: ok"

if scripts/netns.sh check 2>"$work/why"; then
  prefix=crsl$$
  prefix=${prefix:0:8}
  net=10.98.$(($$ % 200))
  trap 'scripts/netns.sh down "$prefix"; rm -rf "$work"' EXIT
  scripts/netns.sh up "$prefix" 3 "$net" 1gbit
  job "$work/job-hosts" "$net.1" SRUN_HOSTS="$prefix" SRUN_COUNTER="$work/counter"
  echo "slurm example, scheduler and workers on three test hosts: ok"
else
  echo "slurm example across test hosts: skipped ($(cat "$work/why"))"
fi
