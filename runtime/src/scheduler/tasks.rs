//! Task life cycle: submission (validation, ownership, cycles), completion, failure,
//! cancellation, release and forgetting. Everything that walks the graph uses an explicit work
//! list, so no user-sized structure can exhaust the stack.

use std::collections::VecDeque;

use super::state::{Task, TaskState, WorkerStatus};
use super::{ClientId, Scheduler, WorkerId};
use crate::collections::Map;
use crate::protocol::bounds::{MAX_TASKS_PER_SUBMIT, check_task, clip_message};
use crate::protocol::{Failure, Key, RunId, SchedulerToClient, TaskSpec};

impl Scheduler {
    fn reject(&mut self, client: ClientId, key: Key, failure: Failure) {
        self.send_client(client, SchedulerToClient::Erred { key, failure });
    }

    /// Interns a function name: tasks of one function share one allocation.
    fn intern(&self, func: &Key) -> Key {
        match self.outstanding.get_key_value(func) {
            Some((k, _)) => k.clone(),
            None => func.clone(),
        }
    }

    /// Accepts a batch of tasks from `client`. Invalid specs, keys of other clients, unknown
    /// dependencies and dependency cycles are answered with `Erred` (`Rejected`), and so are
    /// the batch's tasks depending on them. O(batch + its edges).
    pub(crate) fn submit(&mut self, client: ClientId, specs: Vec<TaskSpec>) {
        if specs.len() > MAX_TASKS_PER_SUBMIT {
            // A protocol violation: answering each key would let one message make the
            // scheduler queue millions of replies. The client is cut off instead.
            let reason = format!("a Submit of {} tasks exceeds the bound of {MAX_TASKS_PER_SUBMIT}", specs.len());
            self.out.push(super::Action::DropClient { id: client, reason });
            return;
        }
        // 1. Validate each spec; keys already known are this client's or refused.
        let mut index: Map<Key, usize> = Map::default();
        let mut batch: Vec<TaskSpec> = Vec::new();
        for spec in specs {
            if let Err(reason) = check_task(&spec) {
                self.reject(client, spec.key, Failure::rejected(reason));
                continue;
            }
            if let Some(t) = self.tasks.get_mut(&spec.key) {
                if t.owner != client {
                    let reason = format!("key {} belongs to another client", spec.key);
                    self.reject(client, spec.key, Failure::rejected(reason));
                } else if spec.wanted && !t.wanted {
                    t.wanted = true;
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.wanted.insert(spec.key.clone());
                    }
                    match &t.state {
                        TaskState::Erred(f) => {
                            let failure = f.clone();
                            self.reject(client, spec.key, failure);
                        }
                        TaskState::Memory(_) => self.notify_done(&spec.key),
                        _ => {}
                    }
                }
                continue;
            }
            if index.contains_key(&spec.key) {
                let reason = format!("key {} appears twice in one submission", spec.key);
                self.reject(client, spec.key, Failure::rejected(reason));
                continue;
            }
            index.insert(spec.key.clone(), batch.len());
            batch.push(spec);
        }
        // 2. Dependencies outside the batch must be known and not failed.
        let n = batch.len();
        let deps: Vec<Vec<Key>> = batch.iter().map(TaskSpec::dependencies).collect();
        let mut failure: Vec<Option<Failure>> = vec![None; n];
        let mut internal = false;
        for (i, ds) in deps.iter().enumerate() {
            for d in ds {
                if index.contains_key(d) {
                    internal = true;
                } else if failure[i].is_none() {
                    failure[i] = match self.tasks.get(d).map(|t| &t.state) {
                        None => Some(Failure::rejected(format!(
                            "depends on {d}, which the scheduler does not know (released or never submitted)"
                        ))),
                        Some(TaskState::Erred(f)) => Some(f.inherited(d)),
                        Some(_) => None,
                    };
                }
            }
        }
        // 3. Insert in dependency order. A batch whose tasks depend on none of each other (a
        //    map, a batch of roots) is in order as it came.
        let mut revive = Vec::new();
        if !internal {
            for ((spec, ds), f) in batch.into_iter().zip(deps).zip(failure) {
                self.insert_task(client, spec, ds, f, &mut revive);
            }
        } else {
            let order = self.dependency_order(client, &batch, &index, &deps, &mut failure);
            let mut specs: Vec<Option<TaskSpec>> = batch.into_iter().map(Some).collect();
            let mut deps: Vec<Option<Vec<Key>>> = deps.into_iter().map(Some).collect();
            for i in order {
                let (Some(spec), Some(ds)) = (specs[i].take(), deps[i].take()) else { continue };
                let f = failure[i].take();
                self.insert_task(client, spec, ds, f, &mut revive);
            }
        }
        for d in revive {
            self.recompute(&d);
        }
    }

    /// The order of `batch` in which dependencies come first (Kahn). A task depending on a
    /// failed one inherits its failure; tasks left out (in a cycle or depending on one) are
    /// rejected here. O(batch + its edges).
    fn dependency_order(
        &mut self,
        client: ClientId,
        batch: &[TaskSpec],
        index: &Map<Key, usize>,
        deps: &[Vec<Key>],
        failure: &mut [Option<Failure>],
    ) -> Vec<usize> {
        let n = batch.len();
        let mut indegree = vec![0usize; n];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for d in ds {
                if let Some(&j) = index.get(d) {
                    indegree[i] += 1;
                    children[j].push(i);
                }
            }
        }
        let mut ready: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &c in &children[i] {
                if let Some(f) = &failure[i]
                    && failure[c].is_none()
                {
                    failure[c] = Some(f.inherited(&batch[i].key));
                }
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.push_back(c);
                }
            }
        }
        let mut in_order = vec![false; n];
        for &i in &order {
            in_order[i] = true;
        }
        for i in (0..n).filter(|&i| !in_order[i]) {
            let reason = format!("{} is part of, or depends on, a dependency cycle", batch[i].key);
            self.reject(client, batch[i].key.clone(), Failure::rejected(reason));
        }
        order
    }

    /// Adds one validated task of a submission, its dependencies (`deps`) already in the
    /// table: waiting on those not in memory (released ones go to `revive`, to be computed
    /// again), or ready at once. A task with a `failure` is rejected, and kept as failed if
    /// wanted.
    fn insert_task(
        &mut self,
        client: ClientId,
        spec: TaskSpec,
        deps: Vec<Key>,
        failure: Option<Failure>,
        revive: &mut Vec<Key>,
    ) {
        if let Some(f) = failure {
            if spec.wanted {
                // Kept as failed while wanted, so a later submission depending on it
                // inherits its failure instead of finding an unknown key.
                let mut task = Task::new(client, self.intern(&spec.func), Vec::new(), Vec::new());
                task.wanted = true;
                if let Some(c) = self.clients.get_mut(&client) {
                    c.wanted.insert(spec.key.clone());
                }
                self.tasks.insert(spec.key.clone(), Box::new(task));
                self.set_state(&spec.key, TaskState::Erred(f.clone()));
            }
            return self.reject(client, spec.key, f);
        }
        let key = spec.key;
        let mut task = Task::new(client, self.intern(&spec.func), spec.args, Vec::new());
        task.retries = spec.retries;
        task.wanted = spec.wanted;
        if let Some(d) = deps.iter().find(|d| !self.tasks.contains_key(*d)) {
            // Validated above; defensive all the same: a gap is a rejection, not a panic.
            let reason = format!("depends on {d}, which the scheduler does not know");
            return self.reject(client, key, Failure::rejected(reason));
        }
        let mut waiting = 0;
        for d in &deps {
            let Some(dt) = self.tasks.get_mut(d) else { continue };
            dt.dependents.insert(key.clone());
            match dt.state {
                TaskState::Memory(_) => {}
                TaskState::Released => {
                    waiting += 1;
                    revive.push(d.clone());
                }
                _ => waiting += 1,
            }
        }
        task.deps = deps;
        task.waiting_on = waiting;
        if spec.wanted
            && let Some(c) = self.clients.get_mut(&client)
        {
            c.wanted.insert(key.clone());
        }
        self.tasks.insert(key.clone(), Box::new(task));
        self.observer.counters.submitted += 1;
        if waiting == 0 {
            // Every input is in memory (or there are none): straight to a worker or the
            // queue. Nothing later in the submission can change that (recomputing a released
            // input concerns only tasks waiting on it).
            self.make_ready(&key, None);
        } else {
            self.set_state(&key, TaskState::Waiting);
        }
    }

    /// True when `run` of `key` is the one `w` is processing now.
    pub(crate) fn is_current(&self, key: &Key, w: WorkerId, run: RunId) -> bool {
        self.tasks.get(key).is_some_and(|t| t.state == TaskState::Processing(w) && t.run == run)
    }

    /// True when the scheduler expects `w` to hold or produce `key`: it is processing it
    /// there, holds it there, or awaits a scattered value there.
    pub(crate) fn expects(&self, w: WorkerId, key: &Key) -> bool {
        match self.tasks.get(key).map(|t| &t.state) {
            Some(TaskState::Processing(p) | TaskState::Scattering(p)) => *p == w,
            Some(TaskState::Memory(h)) => h.contains(&w),
            _ => false,
        }
    }

    /// `w` reported holding `key` in a way that is not current (a late report of a superseded
    /// run, an unrequested copy): unless the scheduler expects something of `w` for this key,
    /// `w` is told to drop it. Never otherwise: a `Release` would also stop a current run.
    pub(crate) fn release_stray(&mut self, w: WorkerId, key: Key) {
        if !self.expects(w, &key) {
            tracing::debug!(worker = w, %key, "dropping a copy nobody accounts for");
            self.release_on(w, key);
        }
    }

    pub(crate) fn finished(&mut self, w: WorkerId, key: Key, run: RunId, nbytes: u64, seconds: f64) {
        if !self.is_current(&key, w, run) {
            return self.release_stray(w, key);
        }
        let seconds = if seconds.is_finite() && seconds >= 0.0 { seconds } else { 0.0 };
        if let Some(t) = self.tasks.get_mut(&key) {
            t.nbytes = nbytes;
            let func = t.func.clone();
            self.observer.executed(w, &func, seconds, self.now);
            let d = self.durations.entry(func).or_insert((0.0, 0));
            *d = (d.0 + seconds, d.1 + 1);
            self.placement_gen += 1; // Root slots depend on the mean duration.
        }
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.ran += 1;
        }
        self.set_state(&key, TaskState::Memory(smallvec::smallvec![w]));
        self.became_memory(&key);
        if let Some(super::state::Worker { status: WorkerStatus::Retiring(r), .. }) = self.workers.get(&w) {
            let r = *r;
            self.replicate_if_unique(r, &key);
            self.advance_retirement(r);
        }
        self.fill_from_queue();
    }

    /// What follows a key reaching memory: its owner hears, waiting dependents may become
    /// ready, and its dependencies (and itself) may no longer be needed.
    pub(crate) fn became_memory(&mut self, key: &Key) {
        self.notify_done(key);
        let Some(t) = self.tasks.get(key) else { return };
        let dependents: Vec<Key> = t.dependents.iter().cloned().collect();
        let deps = t.deps.clone();
        for d in dependents {
            if let Some(dt) = self.tasks.get_mut(&d)
                && dt.state == TaskState::Waiting
            {
                dt.waiting_on -= 1;
                if dt.waiting_on == 0 {
                    self.make_ready(&d, None);
                }
            }
        }
        for d in deps {
            self.maybe_forget(&d);
        }
        self.maybe_forget(key);
    }

    pub(crate) fn erred(&mut self, w: WorkerId, key: Key, run: RunId, message: String) {
        if !self.is_current(&key, w, run) {
            return;
        }
        let message = clip_message(message);
        let retry = self.tasks.get_mut(&key).is_some_and(|t| {
            let r = t.retries > 0;
            t.retries = t.retries.saturating_sub(1);
            r
        });
        if retry {
            self.reschedule(&key, None);
        } else {
            self.fail(&key, Failure::Error { message });
        }
        if let Some(super::state::Worker { status: WorkerStatus::Retiring(r), .. }) = self.workers.get(&w) {
            let r = *r;
            self.advance_retirement(r);
        }
        self.fill_from_queue();
    }

    /// Fails `key` (whatever its state) and every outstanding task depending on it, telling
    /// the owners that want them and stopping runs in progress.
    pub(crate) fn fail(&mut self, key: &Key, failure: Failure) {
        let mut stack = vec![(key.clone(), failure, true)];
        let mut touched = Vec::new();
        while let Some((k, f, root)) = stack.pop() {
            let Some(t) = self.tasks.get(&k) else { continue };
            if matches!(t.state, TaskState::Erred(_)) || (!root && !t.state.is_outstanding()) {
                continue;
            }
            let stop: Vec<WorkerId> = match &t.state {
                TaskState::Processing(w) | TaskState::Scattering(w) => vec![*w],
                TaskState::Memory(holders) => holders.to_vec(),
                _ => Vec::new(),
            };
            for d in &t.dependents {
                stack.push((d.clone(), f.inherited(&k), false));
            }
            touched.extend(t.deps.iter().cloned());
            let (owner, wanted) = (t.owner, t.wanted);
            for w in stop {
                self.release_on(w, k.clone());
            }
            self.set_state(&k, TaskState::Erred(f.clone()));
            if wanted && self.clients.contains_key(&owner) {
                self.send_client(owner, SchedulerToClient::Erred { key: k.clone(), failure: f });
            }
            touched.push(k);
        }
        for k in touched {
            self.maybe_forget(&k);
        }
    }

    /// The owner cancels `key`: unfinished work fails as cancelled, and the key is released.
    pub(crate) fn cancel(&mut self, client: ClientId, key: &Key) {
        let Some(t) = self.tasks.get(key) else { return };
        if t.owner != client {
            tracing::warn!(client, %key, "a client tried to cancel another client's key; ignored");
            return;
        }
        if t.state.is_outstanding() || matches!(t.state, TaskState::Scattering(_)) {
            self.fail(key, Failure::Cancelled);
        }
        self.release(client, key);
    }

    /// The owner no longer wants `key`.
    pub(crate) fn release(&mut self, client: ClientId, key: &Key) {
        let Some(t) = self.tasks.get_mut(key) else { return };
        if t.owner != client {
            tracing::warn!(client, %key, "a client tried to release another client's key; ignored");
            return;
        }
        if t.wanted {
            t.wanted = false;
            if let Some(c) = self.clients.get_mut(&client) {
                c.wanted.remove(key);
                crate::collections::shrink_set(&mut c.wanted);
            }
            self.maybe_forget(key);
        }
    }

    /// Drops what nobody needs. A task no client wants and no outstanding task depends on
    /// has its data released (and an unfinished run stopped); once nothing depends on it at
    /// all it is forgotten, which may make its own dependencies forgettable. Scattered values
    /// are kept while anything depends on them, since they cannot be recomputed.
    pub(crate) fn maybe_forget(&mut self, key: &Key) {
        // The first key is not put on the stack: most calls forget one task or none, and then
        // allocate nothing.
        let mut next = Some(key.clone());
        let mut stack = Vec::new();
        while let Some(k) = next.take().or_else(|| stack.pop()) {
            let Some(t) = self.tasks.get(&k) else { continue };
            if t.wanted || t.pending_dependents > 0 {
                continue;
            }
            if t.scattered && !t.dependents.is_empty() {
                continue;
            }
            match &t.state {
                TaskState::Memory(holders) => {
                    // Usually one holder: copied without allocating.
                    for w in holders.clone() {
                        self.release_on(w, k.clone());
                    }
                    self.set_state(&k, TaskState::Released);
                }
                &TaskState::Processing(w) | &TaskState::Scattering(w) => {
                    self.release_on(w, k.clone());
                    self.set_state(&k, TaskState::Released);
                }
                TaskState::Waiting | TaskState::Queued => self.set_state(&k, TaskState::Released),
                TaskState::Released | TaskState::Erred(_) => {}
            }
            if self.tasks.get(&k).is_none_or(|t| !t.dependents.is_empty()) {
                continue;
            }
            let Some(t) = self.tasks.remove(&k) else { continue };
            for d in t.deps {
                if let Some(dt) = self.tasks.get_mut(&d) {
                    dt.dependents.remove(&k);
                    crate::collections::shrink_set(&mut dt.dependents);
                }
                stack.push(d);
            }
        }
    }
}
