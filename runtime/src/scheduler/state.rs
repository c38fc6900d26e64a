//! The scheduler's tables and the one function that moves a task between states.

use std::time::Instant;

use super::{Scheduler, WorkerId};
use crate::collections::Set;
use crate::protocol::{ArgSpec, Failure, Key, RunId};

/// The workers holding a result.
pub type Holders = smallvec::SmallVec<[WorkerId; 1]>;

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Some dependencies are not in memory yet.
    Waiting,
    /// Ready; waiting for a worker with room.
    Queued,
    /// Assigned to a worker (the run is the task's current `run`).
    Processing(WorkerId),
    /// Done; the result lives on these workers (usually one: held without allocating).
    Memory(Holders),
    /// Done once, data dropped; the spec is kept while dependents exist so the task can be
    /// computed again if one of them is lost (its lineage).
    Released,
    /// Failed for good.
    Erred(Failure),
    /// A scattered value announced to this worker; the client's `Store` has not arrived.
    Scattering(WorkerId),
}

impl TaskState {
    /// Waiting, queued or processing: work not yet done.
    pub(crate) fn is_outstanding(&self) -> bool {
        matches!(self, TaskState::Waiting | TaskState::Queued | TaskState::Processing(_))
    }
}

#[derive(Debug)]
pub(crate) struct Task {
    /// Empty for scattered values. Interned: tasks of one function share one `Key`, so the
    /// per-function tables hash no string.
    pub(crate) func: Key,
    /// Shared with every `Compute` message of the task: a run sends no copy.
    pub(crate) args: std::sync::Arc<Vec<ArgSpec>>,
    pub(crate) deps: Vec<Key>,
    pub(crate) dependents: Set<Key>,
    /// Dependencies not in memory (meaningful while `Waiting`).
    pub(crate) waiting_on: usize,
    /// Dependents that are outstanding: while any is, this task's data is needed.
    pub(crate) pending_dependents: usize,
    pub(crate) state: TaskState,
    pub(crate) owner: super::ClientId,
    pub(crate) wanted: bool,
    pub(crate) retries: u32,
    /// Workers that died while running it.
    pub(crate) deaths: Vec<String>,
    pub(crate) nbytes: u64,
    pub(crate) scattered: bool,
    pub(crate) run: RunId,
    /// A `Steal` for the current run is unanswered.
    pub(crate) stealing: bool,
    /// The current run refused to be stolen (it has started).
    pub(crate) steal_refused: bool,
    /// Which queue entry is current (older entries are stale).
    pub(crate) queue_seq: u64,
}

impl Task {
    pub(crate) fn new(owner: super::ClientId, func: Key, args: Vec<ArgSpec>, deps: Vec<Key>) -> Task {
        Task {
            func,
            args: args.into(),
            deps,
            dependents: Set::default(),
            waiting_on: 0,
            pending_dependents: 0,
            state: TaskState::Released,
            owner,
            wanted: false,
            retries: 0,
            deaths: Vec::new(),
            nbytes: 0,
            scattered: false,
            run: 0,
            stealing: false,
            steal_refused: false,
            queue_seq: 0,
        }
    }
}

/// Whether a worker takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerStatus {
    Running,
    /// Leaving, as part of this retirement.
    Retiring(u64),
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) name: String,
    pub(crate) address: String,
    /// `[address]`, shared by the `Done` of every task this worker alone holds.
    pub(crate) sole_holder: std::sync::Arc<[std::sync::Arc<str>]>,
    pub(crate) nthreads: u32,
    /// Its same-host contact, if it announced one.
    pub(crate) local: Option<crate::protocol::LocalContact>,
    pub(crate) processing: Set<Key>,
    pub(crate) has: Set<Key>,
    pub(crate) expecting: Set<Key>,
    pub(crate) nbytes: u64,
    pub(crate) status: WorkerStatus,
    pub(crate) last_seen: Instant,
    pub(crate) ran: u64,
    /// The load this worker is indexed under, in `placeable` or `held_back`.
    pub(crate) load_key: u64,
    /// Whether it is indexed in `placeable` (else in `held_back`, or, before its first
    /// `reindex`, nowhere).
    pub(crate) placed: bool,
    /// Idle threads this worker contributes to `idle_threads`.
    pub(crate) free_counted: usize,
    /// Its last memory report.
    pub(crate) memory: crate::protocol::WorkerMemory,
}

impl Worker {
    pub(crate) fn load(&self) -> u64 {
        self.processing.len() as u64 * 1024 / u64::from(self.nthreads.max(1))
    }

    pub(crate) fn running(&self) -> bool {
        self.status == WorkerStatus::Running
    }

    /// Running and not paused for memory: new work may go there.
    pub(crate) fn takes_work(&self) -> bool {
        self.running() && !self.memory.paused
    }
}

/// What the scheduler knows of a client.
#[derive(Debug, Default)]
pub(crate) struct ClientState {
    /// Keys it owns and wants (holds futures for).
    pub(crate) wanted: Set<Key>,
}

impl Scheduler {
    /// Moves `key` to `new`, keeping every index in step: the workers' processing, holdings
    /// and expected sets and their load, the queue, per-function outstanding counts, and the
    /// dependencies' counts of outstanding dependents. Cost: O(1) plus O(holders) for memory
    /// and O(dependencies) when the task starts or stops being outstanding. The task is looked
    /// up once (twice more only to count its dependencies' dependents, when it has any): a
    /// task passes through five or six states, and this was the scheduler's commonest lookup.
    pub(crate) fn set_state(&mut self, key: &Key, new: TaskState) {
        // Split borrows: the task stays borrowed while the other tables change.
        let Scheduler { tasks, observer, workers, retirements, queue, root_queue, .. } = self;
        let Some(t) = tasks.get_mut(key) else { return };
        let old = std::mem::replace(&mut t.state, new);
        observer.moved(&t.func, &old, &t.state);
        let (was_out, is_out) = (old.is_outstanding(), t.state.is_outstanding());
        // A steal or a refusal concerns one run; any change of state ends it.
        let was_stealing = std::mem::take(&mut t.stealing);
        t.steal_refused = false;
        let nbytes = t.nbytes;
        // Workers whose processing set changed, reindexed once the task is in place.
        let mut left = None;
        let mut entered = None;
        // Leave the old state.
        match old {
            TaskState::Processing(w) => {
                if let Some(worker) = workers.get_mut(&w) {
                    worker.processing.remove(key);
                }
                left = Some(w);
            }
            TaskState::Memory(holders) => {
                for w in holders {
                    if let Some(worker) = workers.get_mut(&w) {
                        worker.has.remove(key);
                        worker.nbytes = worker.nbytes.saturating_sub(nbytes);
                    }
                }
                // Copies a retirement was making of it are moot.
                for ret in retirements.values_mut() {
                    ret.copying.remove(key);
                }
            }
            TaskState::Queued => {
                self.queued -= 1;
                self.placement_gen += 1; // The root queue's head may be this task.
            }
            TaskState::Scattering(w) => {
                if let Some(worker) = workers.get_mut(&w) {
                    worker.expecting.remove(key);
                }
            }
            TaskState::Waiting | TaskState::Released | TaskState::Erred(_) => {}
        }
        // Enter the new one (the state is read in place, not cloned).
        match &t.state {
            TaskState::Processing(w) => {
                if let Some(worker) = workers.get_mut(w) {
                    worker.processing.insert(key.clone());
                }
                entered = Some(*w);
            }
            TaskState::Memory(holders) => {
                for w in holders {
                    if let Some(worker) = workers.get_mut(w) {
                        worker.has.insert(key.clone());
                        worker.nbytes += nbytes;
                    }
                }
            }
            TaskState::Queued => {
                self.queued += 1;
                self.queue_seq += 1;
                t.queue_seq = self.queue_seq;
                if t.deps.is_empty() {
                    root_queue.push_back((key.clone(), self.queue_seq));
                } else {
                    queue.push_back((key.clone(), self.queue_seq));
                }
            }
            TaskState::Scattering(w) => {
                if let Some(worker) = workers.get_mut(w) {
                    worker.expecting.insert(key.clone());
                }
            }
            TaskState::Waiting | TaskState::Released | TaskState::Erred(_) => {}
        }
        // The dependencies' counts, when this task starts or stops being outstanding: its
        // dependency list is taken out while they are updated.
        let counted = (was_out != is_out).then(|| (t.func.clone(), std::mem::take(&mut t.deps)));
        for w in [left, entered].into_iter().flatten() {
            self.reindex(w);
        }
        if let Some((func, deps)) = counted {
            self.count_outstanding(key, &func, deps, is_out);
        }
        if was_stealing {
            self.steals_in_flight -= 1;
        }
    }

    /// Counts `key` (of function `func`, with dependencies `deps`, taken out of its task and
    /// put back here) in or out of the outstanding tasks.
    fn count_outstanding(&mut self, key: &Key, func: &Key, deps: Vec<Key>, now_outstanding: bool) {
        if now_outstanding {
            *self.outstanding.entry(func.clone()).or_insert(0) += 1;
            self.outstanding_total += 1;
        } else {
            if let Some(n) = self.outstanding.get_mut(func) {
                *n -= 1;
                if *n == 0 {
                    self.outstanding.remove(func);
                }
            }
            self.outstanding_total -= 1;
        }
        if deps.is_empty() {
            return;
        }
        for d in &deps {
            if let Some(dt) = self.tasks.get_mut(d) {
                if now_outstanding {
                    dt.pending_dependents += 1;
                } else {
                    dt.pending_dependents -= 1;
                }
            }
        }
        if let Some(t) = self.tasks.get_mut(key) {
            t.deps = deps;
        }
    }

    /// Adds a holder to a task in memory.
    pub(crate) fn add_holder(&mut self, key: &Key, w: WorkerId) {
        let Some(t) = self.tasks.get_mut(key) else { return };
        let TaskState::Memory(holders) = &mut t.state else { return };
        if holders.contains(&w) {
            return;
        }
        holders.push(w);
        let nbytes = t.nbytes;
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.has.insert(key.clone());
            worker.nbytes += nbytes;
        }
    }

    /// Removes a holder from a task in memory; returns true when that was the last one (the
    /// caller decides what losing the data means).
    pub(crate) fn remove_holder(&mut self, key: &Key, w: WorkerId) -> bool {
        let Some(t) = self.tasks.get_mut(key) else { return false };
        let TaskState::Memory(holders) = &mut t.state else { return false };
        let Some(i) = holders.iter().position(|h| *h == w) else { return false };
        holders.swap_remove(i);
        let (last, nbytes) = (holders.is_empty(), t.nbytes);
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.has.remove(key);
            worker.nbytes = worker.nbytes.saturating_sub(nbytes);
        }
        last
    }

    /// Puts a worker back into the load indexes after its processing set or status changed.
    pub(crate) fn reindex(&mut self, w: WorkerId) {
        self.placement_gen += 1;
        let Some(worker) = self.workers.get_mut(&w) else { return };
        let (old, new) = (worker.load_key, worker.load());
        let free =
            if worker.takes_work() { (worker.nthreads as usize).saturating_sub(worker.processing.len()) } else { 0 };
        let (old_free, running, empty) = (worker.free_counted, worker.takes_work(), worker.processing.is_empty());
        let was_placed = std::mem::replace(&mut worker.placed, running);
        worker.load_key = new;
        worker.free_counted = free;
        self.idle_threads = self.idle_threads + free - old_free;
        if was_placed { &mut self.placeable } else { &mut self.held_back }.remove(&(old, w));
        if running { &mut self.placeable } else { &mut self.held_back }.insert((new, w));
        if running && empty {
            self.idle.insert(w);
        } else {
            self.idle.remove(&w);
        }
    }

    /// Data addresses of the workers holding `key` (empty unless in memory).
    pub(crate) fn holder_addresses(&self, key: &Key) -> Vec<String> {
        match self.tasks.get(key).map(|t| &t.state) {
            Some(TaskState::Memory(h)) => {
                h.iter().filter_map(|w| self.workers.get(w)).map(|w| w.address.clone()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Tells the owner of `key`, if it wants it, that it is in memory (and where).
    pub(crate) fn notify_done(&mut self, key: &Key) {
        let Some(t) = self.tasks.get(key) else { return };
        if !t.wanted || !matches!(t.state, TaskState::Memory(_)) || !self.clients.contains_key(&t.owner) {
            return;
        }
        let owner = t.owner;
        let holders = match &t.state {
            TaskState::Memory(h) if h.len() == 1 => {
                self.workers.get(&h[0]).map_or_else(|| std::sync::Arc::from([]), |w| w.sole_holder.clone())
            }
            TaskState::Memory(h) => {
                h.iter().filter_map(|w| self.workers.get(w)).map(|w| w.sole_holder[0].clone()).collect()
            }
            _ => std::sync::Arc::from([]),
        };
        self.send_client(owner, crate::protocol::SchedulerToClient::Done { key: key.clone(), holders });
    }

    /// Checks every index against the tables (tests and the simulator call this after each
    /// event; it is O(tables)). Returns the first inconsistency found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut processing = 0usize;
        let mut outstanding = 0usize;
        let mut queued = 0usize;
        for (k, t) in &self.tasks {
            match &t.state {
                TaskState::Processing(w) => {
                    processing += 1;
                    let worker = self.workers.get(w).ok_or(format!("{k} processing on unknown worker {w}"))?;
                    if !worker.processing.contains(k) {
                        return Err(format!("{k} processing on {w} but not in its set"));
                    }
                }
                TaskState::Memory(h) => {
                    if h.is_empty() {
                        return Err(format!("{k} in memory nowhere"));
                    }
                    for w in h {
                        let worker = self.workers.get(w).ok_or(format!("{k} held by unknown worker {w}"))?;
                        if !worker.has.contains(k) {
                            return Err(format!("{k} held by {w} but not in its set"));
                        }
                    }
                }
                TaskState::Waiting => {
                    let missing = t
                        .deps
                        .iter()
                        .filter(|d| !matches!(self.tasks.get(*d).map(|d| &d.state), Some(TaskState::Memory(_))))
                        .count();
                    if missing != t.waiting_on {
                        return Err(format!("{k} waits on {} but {missing} deps are not in memory", t.waiting_on));
                    }
                    if missing == 0 {
                        return Err(format!("{k} waiting with every dependency in memory"));
                    }
                }
                TaskState::Queued => queued += 1,
                _ => {}
            }
            if t.state.is_outstanding() {
                outstanding += 1;
            }
            let pending =
                t.dependents.iter().filter(|d| self.tasks.get(*d).is_some_and(|dt| dt.state.is_outstanding())).count();
            if pending != t.pending_dependents {
                return Err(format!("{k} counts {} pending dependents, has {pending}", t.pending_dependents));
            }
            for d in &t.deps {
                match self.tasks.get(d) {
                    Some(dt) if dt.dependents.contains(k) => {}
                    Some(_) => return Err(format!("{d} does not list its dependent {k}")),
                    None => return Err(format!("{k} depends on forgotten {d}")),
                }
            }
            if t.wanted && !self.clients.get(&t.owner).is_some_and(|c| c.wanted.contains(k)) {
                return Err(format!("{k} wanted but not in its owner's set"));
            }
        }
        for (w, worker) in &self.workers {
            for k in &worker.processing {
                if self.tasks.get(k).map(|t| &t.state) != Some(&TaskState::Processing(*w)) {
                    return Err(format!("worker {w} lists {k} as processing"));
                }
            }
            for k in &worker.has {
                if !matches!(self.tasks.get(k).map(|t| &t.state), Some(TaskState::Memory(h)) if h.contains(w)) {
                    return Err(format!("worker {w} lists {k} as held"));
                }
            }
            let entry = (worker.load_key, *w);
            if worker.load_key != worker.load() || !(self.placeable.contains(&entry) || self.held_back.contains(&entry))
            {
                return Err(format!("worker {w} indexed under a stale load"));
            }
            if worker.takes_work() != self.placeable.contains(&entry)
                || worker.takes_work() == self.held_back.contains(&entry)
                || worker.placed != worker.takes_work()
            {
                return Err(format!("worker {w} placeable index is stale"));
            }
        }
        let processing_sets: usize = self.workers.values().map(|w| w.processing.len()).sum();
        if processing_sets != processing {
            return Err(format!("{processing} tasks processing, worker sets list {processing_sets}"));
        }
        if outstanding != self.outstanding_total || self.outstanding.values().sum::<usize>() != outstanding {
            return Err(format!("{outstanding} outstanding, counted {}", self.outstanding_total));
        }
        if queued != self.queued {
            return Err(format!("{queued} queued, counted {}", self.queued));
        }
        self.observer.check(&self.tasks)?;
        // While a failed probe of the root queue's head is cached, the first root task still
        // queued (the head, unless the head is a stale entry) must find no worker either.
        if let Some((_, head)) = self.root_queue.front()
            && self.root_probe == Some((self.placement_gen, *head))
            && let Some((key, _)) = self
                .root_queue
                .iter()
                .find(|(k, seq)| self.tasks.get(k).is_some_and(|t| t.state == TaskState::Queued && t.queue_seq == *seq))
            && let Some(w) = self.decide_worker(key, None)
        {
            return Err(format!("root task {key} is held back by a stale probe; worker {w} has room"));
        }
        let free: usize = self
            .workers
            .values()
            .filter(|w| w.takes_work())
            .map(|w| (w.nthreads as usize).saturating_sub(w.processing.len()))
            .sum();
        if free != self.idle_threads {
            return Err(format!("{free} idle threads, counted {}", self.idle_threads));
        }
        Ok(())
    }
}
