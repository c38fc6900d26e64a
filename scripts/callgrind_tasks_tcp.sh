#!/usr/bin/env bash
# Instructions per trivial task in each process of a tcp:// cluster (the scheduler, 2 worker
# processes of 1 thread, the client), counted by valgrind's callgrind: where a task's CPU goes
# when every message crosses a socket. Counts repeat within a few per cent, where this VM's
# times swing 2x between days.
#
#   scripts/callgrind_tasks_tcp.sh BINARY [TASKS] [RUNS]
#
# Starts `BINARY scheduler` and two `BINARY worker`s under callgrind, runs `BINARY bench-tasks
# --scheduler URL` (map + gather of TASKS, as_completed of TASKS/10) under callgrind against
# them, then stops the cluster with SIGINT (a clean exit, so callgrind writes its counts).
# Does so with TASKS and with twice as many, RUNS times each, alternating; the marginal count,
# (large - small) / (TASKS + TASKS/10), leaves out starting and stopping the processes.
set -euo pipefail
# Job control: without it, background jobs of a script ignore SIGINT, the clean stop used here.
set -m
bin="${1:?usage: callgrind_tasks_tcp.sh BINARY [TASKS] [RUNS]}" tasks="${2:-20000}" runs="${3:-1}"
dir="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
# `exec`: a background `cg` is then valgrind itself, and `$!` the process to signal.
cg() { exec valgrind --tool=callgrind --callgrind-out-file="$dir/$1.out" "${@:2}"; }
total() { sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$dir/$1.out" | head -1; }

# Prints the instructions of the client, the scheduler and the two workers for one run.
count() {
  rm -f "$dir"/*.out "$dir"/*.log
  pids=()
  cg scheduler "$bin" scheduler --listen tcp://127.0.0.1:0 > "$dir/scheduler.log" 2>&1 &
  pids+=($!)
  local url=""
  for _ in $(seq 600); do
    url="$(sed -n 's/^scheduler listening at \(.*\)$/\1/p' "$dir/scheduler.log")"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "the scheduler did not start: $(cat "$dir/scheduler.log")" >&2; exit 1; }
  for i in 0 1; do
    cg "worker$i" "$bin" worker "$url" --name "worker-$i" > "$dir/worker$i.log" 2>&1 &
    pids+=($!)
  done
  # Both workers registered before the clock starts: `info` lists them.
  for _ in $(seq 600); do
    [ "$("$bin" info "$url" --json 2>/dev/null | grep -c '"address"' || true)" -ge 2 ] && break
    sleep 0.1
  done
  (cg client "$bin" bench-tasks --scheduler "$url" --tasks "$1" --as-completed-tasks "$(($1 / 10))" --repeat 1) \
    > "$dir/client.log" 2>&1 || { cat "$dir/client.log" >&2; exit 1; }
  kill -INT "${pids[1]}" "${pids[2]}"
  wait "${pids[1]}" "${pids[2]}" || true
  kill -INT "${pids[0]}"
  wait "${pids[0]}" || true
  echo "$(total client) $(total scheduler) $(total worker0) $(total worker1)"
}

small=() large=()
for _ in $(seq "$runs"); do
  small+=("$(count "$tasks")")
  large+=("$(count $((2 * tasks)))")
done
python3 - "$tasks" "$(printf '%s;' "${small[@]}")" "$(printf '%s;' "${large[@]}")" <<'PY'
import statistics, sys
tasks = int(sys.argv[1]); per_run = tasks + tasks // 10
parse = lambda s: [[int(x) for x in r.split()] for r in s.split(";") if r.strip()]
small, large = parse(sys.argv[2]), parse(sys.argv[3])
names = ["client", "scheduler", "worker 0", "worker 1"]
print(f"callgrind, a tcp:// scheduler + 2 worker processes (1 thread each) and a client running "
      f"`bench-tasks --scheduler`: {tasks} + {tasks // 10} tasks and twice that, {len(small)} runs each")
for s, l in zip(small, large):
    print("  instructions (small; large): " + ", ".join(f"{n} {a:,}; {b:,}" for n, a, b in zip(names, s, l)))
marginal = [[(b - a) / per_run for a, b in zip(s, l)] for s, l in zip(small, large)]
med = [statistics.median(m[i] for m in marginal) for i in range(4)]
print("instructions per task (marginal, medians of the pairs):")
for n, m in zip(names, med):
    print(f"  {n:<10} {m:>8,.0f}")
print(f"  {'workers':<10} {med[2] + med[3]:>8,.0f}")
print(f"  {'all':<10} {sum(med):>8,.0f}")
PY
