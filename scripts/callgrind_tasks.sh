#!/usr/bin/env bash
# Instructions per trivial task in process, counted by valgrind's callgrind: a figure that
# survives this VM's swings (times move 2x between days; valgrind runs the threads one at a
# time, so counts repeat within a few per cent).
#
#   scripts/callgrind_tasks.sh BINARY [TASKS] [RUNS]
#
# Runs `BINARY bench-tasks` in process (map + gather of TASKS, as_completed of TASKS/10) and
# again with twice as many tasks, RUNS times each, alternating. The marginal count, (large -
# small) / (TASKS + TASKS/10), leaves out what does not depend on the number of tasks
# (starting the process and the cluster). Prints each run and the medians.
set -euo pipefail
bin="${1:?usage: callgrind_tasks.sh BINARY [TASKS] [RUNS]}" tasks="${2:-20000}" runs="${3:-3}"
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" bench-tasks --schemes '' \
    --tasks "$1" --as-completed-tasks "$(($1 / 10))" --repeat 1 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
small=() large=()
for _ in $(seq "$runs"); do
  small+=("$(count "$tasks")")
  large+=("$(count $((2 * tasks)))")
done
python3 - "$tasks" "${small[*]}" "${large[*]}" <<'PY'
import statistics, sys
tasks = int(sys.argv[1]); per_run = tasks + tasks // 10
small = [int(x) for x in sys.argv[2].split()]; large = [int(x) for x in sys.argv[3].split()]
print(f"callgrind, courier bench-tasks in process: {tasks} + {tasks // 10} tasks and twice that, {len(small)} runs each")
for s, l in zip(small, large):
    print(f"  instructions: {s:,} and {l:,}")
ms, ml = statistics.median(small), statistics.median(large)
marginal = [(l - s) / per_run for s, l in zip(small, large)]
print(f"median instructions: {ms:,.0f} and {ml:,.0f}")
print(f"instructions per task (marginal, median of the {len(marginal)} pairs): {statistics.median(marginal):,.0f} "
      f"(pairs: {', '.join(f'{m:,.0f}' for m in marginal)})")
PY
