//! Workers joining and leaving, lost data, lineage recomputation and dead-worker detection.

use std::cmp::Reverse;

use super::state::{TaskState, Worker, WorkerStatus};
use super::{Action, Scheduler, WorkerId};
use crate::collections::Set;
use crate::protocol::bounds::{MAX_ADDRESS_LEN, MAX_NAME_LEN, MAX_NTHREADS, check_text, clip_message};
use crate::protocol::{Failure, Key, LocalContact, RunId, SchedulerToClient, SchedulerToWorker};

impl Scheduler {
    fn check_registration(&self, name: &str, address: &str, nthreads: u32) -> Result<(), String> {
        check_text("worker name", name, MAX_NAME_LEN)?;
        check_text("worker address", address, MAX_ADDRESS_LEN)?;
        address.parse::<courier_core::Address>().map_err(|e| format!("worker address: {e}"))?;
        if !(1..=MAX_NTHREADS).contains(&nthreads) {
            return Err(format!("nthreads {nthreads} is outside 1..={MAX_NTHREADS}"));
        }
        if self.by_address.contains_key(address) {
            return Err(format!("another worker already has the address {address}"));
        }
        Ok(())
    }

    pub(crate) fn worker_joined(
        &mut self,
        id: WorkerId,
        name: String,
        address: String,
        nthreads: u32,
        local: Option<LocalContact>,
    ) {
        if self.workers.contains_key(&id) {
            return;
        }
        if let Err(reason) = self.check_registration(&name, &address, nthreads) {
            tracing::warn!(worker = id, %reason, "refused a worker registration");
            self.out.push(Action::DropWorker { id, reason });
            return;
        }
        let local = local.filter(|l| {
            let ok = l.is_valid() && l.address.parse::<courier_core::Address>().is_ok();
            if !ok {
                tracing::warn!(worker = id, "ignored an invalid same-host contact");
            }
            ok
        });
        tracing::info!(%name, %address, nthreads, local = ?local.as_ref().map(|l| &l.address), "worker joined");
        self.by_address.insert(address.clone(), id);
        self.workers.insert(
            id,
            Worker {
                name,
                sole_holder: std::sync::Arc::from([std::sync::Arc::from(address.as_str())]),
                address: address.clone(),
                nthreads,
                local: local.clone(),
                processing: Set::default(),
                has: Set::default(),
                expecting: Set::default(),
                nbytes: 0,
                status: WorkerStatus::Running,
                last_seen: self.now,
                ran: 0,
                load_key: 0,
                placed: false,
                free_counted: 0,
                memory: Default::default(),
            },
        );
        self.total_threads += u64::from(nthreads);
        self.observer.counters.workers_joined += 1;
        self.reindex(id);
        self.timeouts.push(Reverse((self.now + self.config.worker_timeout, id)));
        let clients: Vec<_> = self.clients.keys().copied().collect();
        for c in clients {
            let local = local.iter().map(|l| (address.clone(), l.clone())).collect();
            self.send_client(
                c,
                SchedulerToClient::Workers { added: vec![address.clone()], removed: Vec::new(), local },
            );
        }
        if let Some(contact) = local {
            self.introduce_same_host(id, &address, contact);
        }
        self.fill_from_queue();
    }

    /// Tells a worker with a same-host contact about the workers already on its host, and them
    /// about it. Only workers of one host hear of each other: the cost is per host, not per
    /// cluster.
    fn introduce_same_host(&mut self, id: WorkerId, address: &str, contact: LocalContact) {
        let neighbours = self.by_host.entry(contact.host.clone()).or_default().clone();
        let known: Vec<(String, LocalContact)> = neighbours
            .iter()
            .filter_map(|w| {
                let w = self.workers.get(w)?;
                Some((w.address.clone(), w.local.clone()?))
            })
            .collect();
        if !known.is_empty() {
            self.send_worker(id, SchedulerToWorker::LocalPeers { peers: known });
        }
        for w in neighbours {
            let peers = vec![(address.to_owned(), contact.clone())];
            self.send_worker(w, SchedulerToWorker::LocalPeers { peers });
        }
        self.by_host.entry(contact.host).or_default().push(id);
    }

    /// Removes a worker from every index and table entry; returns it. Its tasks are left
    /// pointing at it: the caller moves them.
    fn remove_worker_entry(&mut self, id: WorkerId) -> Option<Worker> {
        let worker = self.workers.remove(&id)?;
        self.by_address.remove(&worker.address);
        if let Some(l) = &worker.local
            && let Some(same) = self.by_host.get_mut(&l.host)
        {
            same.retain(|&w| w != id);
            if same.is_empty() {
                self.by_host.remove(&l.host);
            }
        }
        if worker.placed { &mut self.placeable } else { &mut self.held_back }.remove(&(worker.load_key, id));
        self.placement_gen += 1;
        self.idle.remove(&id);
        self.idle_threads -= worker.free_counted;
        self.total_threads -= u64::from(worker.nthreads);
        let clients: Vec<_> = self.clients.keys().copied().collect();
        for c in clients {
            self.send_client(
                c,
                SchedulerToClient::Workers {
                    added: Vec::new(),
                    removed: vec![worker.address.clone()],
                    local: Vec::new(),
                },
            );
        }
        Some(worker)
    }

    /// A worker's comm closed, or it was declared dead: its running tasks are rescheduled
    /// (or fail as `KilledWorker`), results only it held are recomputed from lineage (or, for
    /// scattered values, fail as lost), and the other workers stop fetching from it.
    pub(crate) fn worker_left(&mut self, id: WorkerId) {
        let Some(worker) = self.remove_worker_entry(id) else { return };
        tracing::info!(name = %worker.name, address = %worker.address, "worker left");
        self.observer.transfers.remove(&id);
        match worker.status {
            WorkerStatus::Retiring(_) => self.observer.counters.workers_retired += 1,
            WorkerStatus::Running => self.observer.counters.workers_lost += 1,
        }
        if let WorkerStatus::Retiring(r) = worker.status
            && let Some(ret) = self.retirements.get_mut(&r)
        {
            ret.workers.retain(|w| *w != id);
            ret.died.push(worker.address.clone());
        }
        // Results held there.
        let mut lost = Vec::new();
        let mut now_unique = Vec::new();
        for k in &worker.has {
            let Some(t) = self.tasks.get_mut(k) else { continue };
            let TaskState::Memory(holders) = &mut t.state else { continue };
            holders.retain(|h| *h != id);
            if holders.is_empty() {
                lost.push(k.clone());
            } else if !self.retirements.is_empty() {
                now_unique.push(k.clone());
            }
        }
        for k in lost {
            self.lose(&k, &format!("{} held it and left", worker.address));
        }
        // Its running tasks go elsewhere, unless they keep killing workers.
        for k in &worker.processing {
            let Some(t) = self.tasks.get_mut(k) else { continue };
            if t.state != TaskState::Processing(id) {
                continue;
            }
            t.deaths.push(worker.address.clone());
            if t.deaths.len() as u32 > self.config.allowed_failures {
                let workers = t.deaths.clone();
                self.fail(k, Failure::KilledWorker { workers });
            } else {
                self.reschedule(k, None);
            }
        }
        for k in &worker.expecting {
            if self.task_state(k) == Some(&TaskState::Scattering(id)) {
                let reason = format!("{} left before the scattered value arrived", worker.address);
                self.set_state(k, TaskState::Released);
                self.fail(k, Failure::DataLost { reason });
            }
        }
        self.scatter_worker_left(id, &worker.address);
        self.retirement_worker_left(id, &now_unique);
        let others: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in others {
            self.send_worker(w, SchedulerToWorker::PeerGone { address: worker.address.clone() });
        }
        self.fill_from_queue();
    }

    /// The last copy of `key` is gone. Waiting and queued dependents wait for it again; if it
    /// is wanted or they need it, it is recomputed from lineage (a scattered value cannot be,
    /// and fails); otherwise it stays released.
    pub(crate) fn lose(&mut self, key: &Key, why: &str) {
        let Some(t) = self.tasks.get_mut(key) else { return };
        if let TaskState::Memory(holders) = &mut t.state {
            holders.clear();
        }
        self.set_state(key, TaskState::Released);
        let Some(t) = self.tasks.get(key) else { return };
        let (scattered, wanted, owner) = (t.scattered, t.wanted, t.owner);
        let dependents: Vec<Key> = t.dependents.iter().cloned().collect();
        let mut needed = wanted;
        for d in dependents {
            let Some(dt) = self.tasks.get_mut(&d) else { continue };
            match dt.state {
                TaskState::Waiting => {
                    dt.waiting_on += 1;
                    needed = true;
                }
                TaskState::Queued => {
                    self.set_state(&d, TaskState::Waiting);
                    if let Some(dt) = self.tasks.get_mut(&d) {
                        dt.waiting_on = 1;
                    }
                    needed = true;
                }
                _ => {}
            }
        }
        if scattered {
            self.fail(key, Failure::DataLost { reason: format!("scattered value {key} is gone: {why}") });
        } else if needed {
            if wanted && self.clients.contains_key(&owner) {
                self.send_client(owner, SchedulerToClient::Lost { key: key.clone() });
            }
            self.recompute(key);
        } else {
            self.maybe_forget(key);
        }
    }

    /// Puts a released task, and every released task it needs, back on the path to memory.
    /// An explicit work list: lineage of any depth.
    pub(crate) fn recompute(&mut self, key: &Key) {
        let mut stack = vec![key.clone()];
        let mut ready = Vec::new();
        while let Some(k) = stack.pop() {
            let Some(t) = self.tasks.get(&k) else { continue };
            if t.state != TaskState::Released {
                continue;
            }
            if t.scattered {
                self.fail(&k, Failure::DataLost { reason: format!("scattered value {k} is gone") });
                continue;
            }
            let mut waiting = 0;
            let mut failure = None;
            let mut revive = Vec::new();
            for d in &t.deps {
                match self.tasks.get(d).map(|dt| &dt.state) {
                    Some(TaskState::Memory(_)) => {}
                    Some(TaskState::Released) => {
                        waiting += 1;
                        revive.push(d.clone());
                    }
                    Some(TaskState::Erred(f)) => {
                        failure = Some(f.inherited(d));
                        break;
                    }
                    Some(_) => waiting += 1,
                    None => {
                        failure = Some(Failure::rejected(format!("dependency {d} was forgotten")));
                        break;
                    }
                }
            }
            if let Some(f) = failure {
                self.fail(&k, f);
                continue;
            }
            self.set_state(&k, TaskState::Waiting);
            if let Some(t) = self.tasks.get_mut(&k) {
                t.waiting_on = waiting;
            }
            if waiting == 0 {
                ready.push(k);
            }
            stack.extend(revive);
        }
        for k in ready {
            if self.tasks.get(&k).is_some_and(|t| t.state == TaskState::Waiting && t.waiting_on == 0) {
                self.make_ready(&k, None);
            }
        }
    }

    /// A task that was processing must run again (its worker died, gave it up to a steal or
    /// could not get its inputs, or it failed and is retried). Its inputs may have been lost
    /// while it ran: it waits for those not in memory (recomputing released ones), else is
    /// placed at once, on a worker other than `avoid` if possible. Every return from
    /// `Processing` goes through here.
    pub(crate) fn reschedule(&mut self, key: &Key, avoid: Option<WorkerId>) {
        let Some(t) = self.tasks.get(key) else { return };
        let mut waiting = 0;
        let mut revive = Vec::new();
        for d in &t.deps {
            match self.tasks.get(d).map(|dt| &dt.state) {
                Some(TaskState::Memory(_)) => {}
                Some(TaskState::Erred(f)) => {
                    let f = f.inherited(d);
                    return self.fail(key, f);
                }
                Some(TaskState::Released) => {
                    waiting += 1;
                    revive.push(d.clone());
                }
                Some(_) => waiting += 1,
                None => return self.fail(key, Failure::rejected(format!("dependency {d} was forgotten"))),
            }
        }
        self.set_state(key, TaskState::Waiting);
        if let Some(t) = self.tasks.get_mut(key) {
            t.waiting_on = waiting;
        }
        for d in revive {
            self.recompute(&d);
        }
        if waiting == 0 {
            self.make_ready(key, avoid);
        }
    }

    /// A worker's memory report. Pausing takes it out of placement and asks it to give up
    /// every run it has not started (each moves only once the worker confirms, as in
    /// stealing); resuming puts it back. Cost: O(its processing tasks) on a change, O(1) else.
    pub(crate) fn worker_memory(&mut self, w: WorkerId, mut report: crate::protocol::WorkerMemory) {
        report.spill_error = report.spill_error.map(clip_message);
        let Some(worker) = self.workers.get_mut(&w) else { return };
        let changed = worker.memory.paused != report.paused;
        let paused = report.paused;
        worker.memory = report;
        if !changed {
            return;
        }
        tracing::info!(worker = %worker.address, paused, "worker memory pause changed");
        self.reindex(w);
        if paused {
            let Some(worker) = self.workers.get(&w) else { return };
            let picks: Vec<(Key, RunId)> = worker
                .processing
                .iter()
                .filter_map(|k| self.tasks.get(k).map(|t| (k, t)))
                .filter(|(_, t)| !t.stealing)
                .map(|(k, t)| (k.clone(), t.run))
                .collect();
            for (key, run) in picks {
                if let Some(t) = self.tasks.get_mut(&key) {
                    t.stealing = true;
                    t.steal_refused = false;
                }
                self.steals_in_flight += 1;
                self.send_worker(w, SchedulerToWorker::Steal { key, run });
            }
        }
    }

    /// A worker lost a result it held (it could not read it back from disk).
    pub(crate) fn data_lost(&mut self, w: WorkerId, key: Key, reason: &str) {
        if self.remove_holder(&key, w) {
            self.lose(&key, &format!("its holder could not read it back: {}", clip_message(reason.to_owned())));
        }
    }

    /// A worker could not fetch `dep` for `key` from the holders it tried. Those holders are
    /// removed (and told to drop the key, so views agree); the task runs again once `dep` is
    /// available, recomputed if no holder is left.
    pub(crate) fn missing_data(&mut self, w: WorkerId, key: Key, run: RunId, dep: Key, tried: Vec<String>) {
        if !self.is_current(&key, w, run) {
            return;
        }
        tracing::debug!(worker = w, %key, %dep, ?tried, "a worker could not fetch a dependency");
        let mut last = false;
        for addr in tried.iter().take(64) {
            let Some(&h) = self.by_address.get(addr) else { continue };
            if !matches!(self.task_state(&dep), Some(TaskState::Memory(hs)) if hs.contains(&h)) {
                continue;
            }
            last |= self.remove_holder(&dep, h);
            self.release_on(h, dep.clone());
        }
        if last {
            self.lose(&dep, "its holders could not serve it");
        }
        if self.is_current(&key, w, run) {
            self.reschedule(&key, None);
        }
        self.fill_from_queue();
    }

    /// Drops workers silent for longer than the timeout. A heap of deadlines, checked lazily:
    /// O(log W) per worker per timeout period.
    pub(crate) fn expire_silent_workers(&mut self) {
        while let Some(&Reverse((deadline, id))) = self.timeouts.peek() {
            if deadline > self.now {
                break;
            }
            self.timeouts.pop();
            let Some(worker) = self.workers.get(&id) else { continue };
            let due = worker.last_seen + self.config.worker_timeout;
            if due > self.now {
                self.timeouts.push(Reverse((due, id)));
                continue;
            }
            let reason = format!(
                "no message or heartbeat from {} for {:?}; treating it as dead",
                worker.address, self.config.worker_timeout
            );
            tracing::warn!(%reason);
            self.observer.counters.heartbeats_missed += 1;
            self.out.push(Action::DropWorker { id, reason });
            self.worker_left(id);
        }
    }
}
