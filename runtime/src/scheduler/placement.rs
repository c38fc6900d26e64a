//! Placement, the ready queue and work stealing.

use super::state::TaskState;
use super::{Scheduler, WorkerId};
use crate::protocol::{Key, RunId, SchedulerToWorker};

/// Tasks of one victim looked at per stealing round.
pub(crate) const STEAL_SCAN: usize = 256;

impl Scheduler {
    fn has_room(&self, w: WorkerId, root: Option<&Key>) -> bool {
        self.workers.get(&w).is_some_and(|worker| {
            let slots = match root {
                Some(func) => self.root_slots(worker.nthreads, func),
                None => worker.nthreads as usize * self.config.tasks_per_thread,
            };
            worker.takes_work() && worker.processing.len() < slots
        })
    }

    /// Tasks a worker of `nthreads` may hold while a root task of `func` is placed on it:
    /// `ceil(nthreads × max(saturation, root_window / mean run time of func))`, between 1 and
    /// `nthreads × tasks_per_thread`. Before `func` has been measured, saturation alone. O(1).
    pub(crate) fn root_slots(&self, nthreads: u32, func: &Key) -> usize {
        let full = nthreads as usize * self.config.tasks_per_thread;
        let saturation = self.config.worker_saturation;
        if !saturation.is_finite() {
            return full;
        }
        let per_thread = match self.durations.get(func) {
            Some(&(total, runs)) if runs > 0 && total > 0.0 => {
                saturation.max(self.config.root_window.as_secs_f64() / (total / runs as f64))
            }
            // Measured as instantaneous: nothing to hold back for.
            Some(&(_, runs)) if runs > 0 => return full,
            _ => saturation,
        };
        ((f64::from(nthreads) * per_thread).ceil() as usize).clamp(1, full.max(1))
    }

    /// Inputs smaller than this move freely: fetching them costs about a round trip.
    pub(crate) const SMALL_INPUTS: u64 = 64 << 10;

    /// Whether a task of `func` should go to (or stay on) the worker holding `bytes` of its
    /// inputs even when that worker is busy: the inputs are not small and moving them (at
    /// [`transfer_bandwidth`](SchedulerConfig::transfer_bandwidth)) takes longer than the
    /// task runs (its function's measured mean; before any measurement it is assumed shorter,
    /// as most tasks on large inputs are slices, sums and products). Dask weighs the same two
    /// costs in `decide_worker` and in stealing. Never with an infinite bandwidth (moving is
    /// free). O(1).
    ///
    /// [`SchedulerConfig`]: super::SchedulerConfig
    pub(crate) fn stays_with_data(&self, func: &Key, bytes: u64) -> bool {
        if bytes < Self::SMALL_INPUTS || self.config.transfer_bandwidth == f64::INFINITY {
            return false;
        }
        let transfer = bytes as f64 / self.config.transfer_bandwidth.max(1.0);
        match self.durations.get(func) {
            Some(&(total, runs)) if runs > 0 => total / (runs as f64) < transfer,
            _ => true,
        }
    }

    /// Bytes of `key`'s inputs that worker `w` holds. O(dependencies × holders).
    pub(crate) fn input_bytes_on(&self, key: &Key, w: WorkerId) -> u64 {
        let Some(task) = self.tasks.get(key) else { return 0 };
        task.deps
            .iter()
            .filter_map(|d| self.tasks.get(d))
            .filter(|dt| matches!(&dt.state, TaskState::Memory(holders) if holders.contains(&w)))
            .map(|dt| dt.nbytes.max(1))
            .sum()
    }

    /// The worker for a ready task: among the holders of its dependencies that have room, the
    /// one holding the most of its input bytes (ties: the least loaded); else, if moving its
    /// inputs would cost more than the task ([`stays_with_data`](Self::stays_with_data)),
    /// the holder of the most input bytes even without room (the data stays put; the task
    /// waits its turn there); else the least loaded worker with room. `None` when no worker
    /// has room.
    ///
    /// Cost: O(dependencies × holders) for the data-local choice, O(log W) for the least
    /// loaded (an ordered index), whatever the number of workers.
    ///
    /// A root task (no dependencies) has room on a worker only below
    /// [`root_slots`](Self::root_slots) (root-task queuing).
    pub(crate) fn decide_worker(&self, key: &Key, avoid: Option<WorkerId>) -> Option<WorkerId> {
        let task = self.tasks.get(key)?;
        let root = if task.deps.is_empty() { Some(&task.func) } else { None };
        let mut local: Vec<(WorkerId, u64)> = Vec::new();
        for d in &task.deps {
            let Some(dt) = self.tasks.get(d) else { continue };
            if let TaskState::Memory(holders) = &dt.state {
                for &h in holders {
                    match local.iter_mut().find(|(w, _)| *w == h) {
                        Some((_, bytes)) => *bytes += dt.nbytes.max(1),
                        None => local.push((h, dt.nbytes.max(1))),
                    }
                }
            }
        }
        let rank =
            |&(w, bytes): &(WorkerId, u64)| (bytes, std::cmp::Reverse(self.workers[&w].load_key), std::cmp::Reverse(w));
        let best = local.iter().filter(|(w, _)| Some(*w) != avoid && self.has_room(*w, root)).max_by_key(|x| rank(x));
        if let Some(&(w, _)) = best {
            return Some(w);
        }
        let anchor = local
            .iter()
            .filter(|(w, _)| Some(*w) != avoid && self.workers.get(w).is_some_and(|x| x.takes_work()))
            .max_by_key(|x| rank(x));
        if let Some(&(w, bytes)) = anchor
            && self.stays_with_data(&task.func, bytes)
        {
            return Some(w);
        }
        // The least loaded other worker has room if any other has.
        match self.placeable.iter().map(|&(_, w)| w).find(|w| Some(*w) != avoid) {
            Some(w) if self.has_room(w, root) => Some(w),
            _ => avoid.filter(|w| self.has_room(*w, root)),
        }
    }

    /// The worker for a ready root task of `func` (no dependencies, nothing to avoid): the
    /// least loaded, if it has room below [`root_slots`](Self::root_slots). This is what
    /// [`decide_worker`](Self::decide_worker) decides for such a task, without looking the
    /// task up again: the root queue asks once per event that frees room. O(log W).
    fn root_worker(&self, func: &Key) -> Option<WorkerId> {
        let &(_, w) = self.placeable.first()?;
        self.has_room(w, Some(func)).then_some(w)
    }

    /// Places a task whose dependencies are all in memory, or queues it. A root task behind
    /// others held back by root-task queuing joins the queue without looking for a worker:
    /// the queue is served in order at the end of the event (`fill_from_queue`), so it can
    /// neither overtake them nor, in a large submission, probe once per task for room that
    /// the queue's head already found missing.
    pub(crate) fn make_ready(&mut self, key: &Key, avoid: Option<WorkerId>) {
        let Some(t) = self.tasks.get(key) else { return };
        if avoid.is_none() && t.deps.is_empty() && !self.root_queue.is_empty() {
            if t.state != TaskState::Queued {
                self.set_state(key, TaskState::Queued);
                self.compact_queue();
            }
            return;
        }
        match self.decide_worker(key, avoid) {
            Some(w) => self.assign(key, w),
            None => {
                if self.tasks.get(key).is_some_and(|t| t.state != TaskState::Queued) {
                    self.set_state(key, TaskState::Queued);
                    self.compact_queue();
                }
            }
        }
    }

    /// Sends a task to a worker as a new run, with where each dependency lives.
    pub(crate) fn assign(&mut self, key: &Key, w: WorkerId) {
        let run = self.new_run();
        if let Some(t) = self.tasks.get_mut(key) {
            t.run = run;
        }
        self.set_state(key, TaskState::Processing(w));
        let Some(t) = self.tasks.get(key) else { return };
        let who_has = t.deps.iter().map(|d| (d.clone(), self.holder_addresses(d))).collect();
        let msg =
            SchedulerToWorker::Compute { key: key.clone(), run, func: t.func.clone(), args: t.args.clone(), who_has };
        self.send_worker(w, msg);
    }

    /// Assigns queued tasks while some worker has room: tasks with dependencies first (they
    /// consume data), then held-back root tasks. Stale queue entries (tasks that left the
    /// queue) are skipped as they come up.
    pub(crate) fn fill_from_queue(&mut self) {
        for root in [false, true] {
            loop {
                let queue = if root { &mut self.root_queue } else { &mut self.queue };
                let Some((key, seq)) = queue.front() else { break };
                let (key, seq) = (key.clone(), *seq);
                if root && self.root_probe == Some((self.placement_gen, seq)) {
                    break; // Nothing changed since this head found no worker.
                }
                let task = self.tasks.get(&key).filter(|t| t.state == TaskState::Queued && t.queue_seq == seq);
                let Some(task) = task else {
                    queue.pop_front();
                    continue;
                };
                let target = if root { self.root_worker(&task.func) } else { self.decide_worker(&key, None) };
                let Some(w) = target else {
                    if root {
                        self.root_probe = Some((self.placement_gen, seq));
                    }
                    break;
                };
                if root { &mut self.root_queue } else { &mut self.queue }.pop_front();
                self.assign(&key, w);
            }
        }
        for queue in [&mut self.queue, &mut self.root_queue] {
            if queue.is_empty() && queue.capacity() > 4096 {
                queue.shrink_to(64);
            }
        }
    }

    /// Drops stale queue entries once they outnumber the live ones (amortised O(1)).
    fn compact_queue(&mut self) {
        if self.queue.len() + self.root_queue.len() > 2 * self.queued + 1024 {
            let tasks = &self.tasks;
            let live = |(k, seq): &(Key, u64)| {
                tasks.get(k).is_some_and(|t| t.state == TaskState::Queued && t.queue_seq == *seq)
            };
            self.queue.retain(live);
            self.root_queue.retain(live);
        }
    }

    /// Work stealing: while threads are idle, asks overloaded workers (more tasks than
    /// threads, most loaded first) to give up tasks they have not started, except tasks whose
    /// inputs there cost more to move than the task takes to run
    /// ([`stays_with_data`](Self::stays_with_data)); at most [`STEAL_SCAN`] candidates are
    /// looked at per victim. A task moves only
    /// when its worker confirms ([`Scheduler::steal_reply`]), so stealing never runs a task
    /// twice. Cost: O(steals issued + overloaded workers visited).
    pub(crate) fn steal(&mut self) {
        let mut budget = self.idle_threads.saturating_sub(self.steals_in_flight);
        if budget == 0 {
            return;
        }
        // The most loaded first, from both indexes.
        let overloaded = |index: &crate::collections::SortedSet<(u64, WorkerId)>| {
            index.iter().rev().take_while(|(load, _)| *load > 1024).take(budget).copied().collect::<Vec<_>>()
        };
        let mut victims = overloaded(&self.placeable);
        victims.extend(overloaded(&self.held_back));
        victims.sort_unstable_by(|a, b| b.cmp(a));
        let victims: Vec<WorkerId> = victims.into_iter().take(budget).map(|(_, w)| w).collect();
        for victim in victims {
            let Some(worker) = self.workers.get(&victim) else { continue };
            let excess = worker.processing.len().saturating_sub(worker.nthreads as usize);
            let picks: Vec<(Key, RunId)> = worker
                .processing
                .iter()
                // Bounded scan: tasks that stay with their data are skipped, not searched past.
                .take(STEAL_SCAN)
                .filter_map(|k| self.tasks.get(k).map(|t| (k, t)))
                .filter(|(k, t)| {
                    !t.stealing && !t.steal_refused && !self.stays_with_data(&t.func, self.input_bytes_on(k, victim))
                })
                .take(excess.min(budget))
                .map(|(k, t)| (k.clone(), t.run))
                .collect();
            for (key, run) in picks {
                if let Some(t) = self.tasks.get_mut(&key) {
                    t.stealing = true;
                }
                self.steals_in_flight += 1;
                budget -= 1;
                self.send_worker(victim, SchedulerToWorker::Steal { key, run });
            }
            if budget == 0 {
                break;
            }
        }
    }

    /// The victim's answer to `Steal`. Given up: the task is placed again, elsewhere if
    /// possible. Refused: it has started, and is not asked again.
    pub(crate) fn steal_reply(&mut self, w: WorkerId, key: Key, run: RunId, stolen: bool) {
        if !self.is_current(&key, w, run) || !self.tasks.get(&key).is_some_and(|t| t.stealing) {
            return;
        }
        if let Some(t) = self.tasks.get_mut(&key) {
            t.stealing = false;
            t.steal_refused = !stolen;
        }
        self.steals_in_flight -= 1;
        if stolen {
            self.reschedule(&key, Some(w));
        }
        if let Some(super::state::Worker { status: super::state::WorkerStatus::Retiring(r), .. }) = self.workers.get(&w)
        {
            let r = *r;
            self.advance_retirement(r);
        }
        self.fill_from_queue();
    }
}
