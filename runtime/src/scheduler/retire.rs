//! Graceful retirement: a retiring worker takes no new work, gives up tasks it has not
//! started, finishes the others, has every result only it holds copied to a staying worker,
//! and only then is told to shut down. Refused when no staying worker could take its data.

use super::state::{TaskState, WorkerStatus};
use super::{ClientId, Scheduler, WorkerId};
use crate::collections::Map;
use crate::protocol::bounds::MAX_WORKERS_PER_RETIRE;
use crate::protocol::{Key, RequestId, RetireError, SchedulerToClient, SchedulerToWorker};

/// Copies of one key tried before a retirement is abandoned.
const COPY_ATTEMPTS: u32 = 3;

/// A retirement in progress.
#[derive(Debug)]
pub(crate) struct Retirement {
    /// Who to answer (`None` once that client left).
    pub(crate) client: Option<ClientId>,
    pub(crate) id: RequestId,
    /// The retiring workers still present.
    pub(crate) workers: Vec<WorkerId>,
    pub(crate) addresses: Vec<String>,
    /// Retiring workers that died meanwhile.
    pub(crate) died: Vec<String>,
    /// Keys being copied away: target and attempts so far.
    pub(crate) copying: Map<Key, (WorkerId, u32)>,
    /// The last target chosen (targets go round the staying workers).
    last_target: Option<(u64, WorkerId)>,
}

impl Scheduler {
    fn answer_retire(&mut self, client: Option<ClientId>, id: RequestId, result: Result<(), RetireError>) {
        if let Some(c) = client
            && self.clients.contains_key(&c)
        {
            self.send_client(c, SchedulerToClient::Retired { id, result });
        }
    }

    pub(crate) fn retire(&mut self, client: ClientId, id: RequestId, mut addresses: Vec<String>) {
        let refuse = |reason: String, workers: &[String]| RetireError::Refused { workers: workers.to_vec(), reason };
        if addresses.len() > MAX_WORKERS_PER_RETIRE {
            let e = refuse(format!("{} workers named; at most {MAX_WORKERS_PER_RETIRE}", addresses.len()), &[]);
            return self.answer_retire(Some(client), id, Err(e));
        }
        addresses.sort();
        addresses.dedup();
        let mut ids = Vec::with_capacity(addresses.len());
        for a in &addresses {
            let Some(&w) = self.by_address.get(a) else {
                return self.answer_retire(Some(client), id, Err(RetireError::UnknownWorker { address: a.clone() }));
            };
            if self.workers.get(&w).is_none_or(|w| !w.running()) {
                let e = refuse(format!("{a} is already retiring"), &addresses);
                return self.answer_retire(Some(client), id, Err(e));
            }
            ids.push(w);
        }
        // O(W), once per retirement (paused workers stay but are not placeable).
        let staying = self.workers.values().filter(|w| w.running()).count() - ids.len();
        let busy = ids
            .iter()
            .filter_map(|w| self.workers.get(w))
            .any(|w| !w.has.is_empty() || !w.processing.is_empty() || !w.expecting.is_empty());
        if staying == 0 && busy {
            let e = refuse("no other worker can take their data and tasks".into(), &addresses);
            return self.answer_retire(Some(client), id, Err(e));
        }
        let r = self.next_retirement;
        self.next_retirement += 1;
        tracing::info!(workers = ?addresses, "retiring workers");
        self.retirements.insert(
            r,
            Retirement {
                client: Some(client),
                id,
                workers: ids.clone(),
                addresses,
                died: Vec::new(),
                copying: Map::default(),
                last_target: None,
            },
        );
        for &w in &ids {
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.status = WorkerStatus::Retiring(r);
            }
            self.reindex(w);
        }
        for &w in &ids {
            let Some(worker) = self.workers.get(&w) else { continue };
            // Unstarted tasks leave through the steal protocol (so none runs twice).
            let to_steal: Vec<(Key, u64)> = worker
                .processing
                .iter()
                .filter_map(|k| self.tasks.get(k).filter(|t| !t.stealing).map(|t| (k.clone(), t.run)))
                .collect();
            let held: Vec<Key> = worker.has.iter().cloned().collect();
            let expecting: Vec<Key> = worker.expecting.iter().cloned().collect();
            for (key, run) in to_steal {
                if let Some(t) = self.tasks.get_mut(&key) {
                    t.stealing = true;
                }
                self.steals_in_flight += 1;
                self.send_worker(w, SchedulerToWorker::Steal { key, run });
            }
            for k in held {
                self.replicate_if_unique(r, &k);
            }
            for k in expecting {
                let reason = "its worker was retired before the scattered value arrived".to_owned();
                self.set_state(&k, TaskState::Released);
                self.fail(&k, crate::protocol::Failure::DataLost { reason });
            }
        }
        self.advance_retirement(r);
    }

    /// A staying worker to copy data to: round the staying workers, in load order.
    fn copy_target(&mut self, r: u64) -> Option<WorkerId> {
        let last = self.retirements.get(&r)?.last_target;
        let next = match last {
            Some(after) => self.placeable.iter_from(&after).find(|e| **e != after).or_else(|| self.placeable.first()),
            None => self.placeable.first(),
        }
        .copied()?;
        if let Some(ret) = self.retirements.get_mut(&r) {
            ret.last_target = Some(next);
        }
        Some(next.1)
    }

    /// Copies `key` to a staying worker if only retiring workers hold it.
    pub(crate) fn replicate_if_unique(&mut self, r: u64, key: &Key) {
        let Some(TaskState::Memory(holders)) = self.task_state(key) else { return };
        if holders.iter().any(|h| self.workers.get(h).is_some_and(|w| w.running())) {
            return;
        }
        if self.retirements.get(&r).is_none_or(|ret| ret.copying.contains_key(key)) {
            return;
        }
        self.copy(r, key, 1);
    }

    fn copy(&mut self, r: u64, key: &Key, attempt: u32) {
        let Some(target) = self.copy_target(r) else {
            return self.abandon_retirement(r, key);
        };
        let from = self.holder_addresses(key);
        if let Some(ret) = self.retirements.get_mut(&r) {
            ret.copying.insert(key.clone(), (target, attempt));
        }
        self.send_worker(target, SchedulerToWorker::Replicate { key: key.clone(), from });
    }

    /// A worker's answer to `Replicate`.
    pub(crate) fn replicated(&mut self, w: WorkerId, key: Key, ok: bool) {
        let found = self
            .retirements
            .iter()
            .find_map(|(&r, ret)| ret.copying.get(&key).filter(|(t, _)| *t == w).map(|&(_, a)| (r, a)));
        let in_memory = matches!(self.task_state(&key), Some(TaskState::Memory(_)));
        let Some((r, attempt)) = found else {
            // Not asked for (any more): the copy must not linger unaccounted.
            if ok {
                self.release_stray(w, key);
            }
            return;
        };
        if let Some(ret) = self.retirements.get_mut(&r) {
            ret.copying.remove(&key);
        }
        match (ok, in_memory) {
            (true, true) => self.add_holder(&key, w),
            (true, false) => self.release_stray(w, key),
            (false, true) if attempt < COPY_ATTEMPTS => self.copy(r, &key, attempt + 1),
            (false, true) => return self.abandon_retirement(r, &key),
            (false, false) => {}
        }
        self.advance_retirement(r);
    }

    /// A worker left: copies it was receiving go elsewhere; keys it shared with retiring
    /// workers (`now_unique`) are copied if nobody staying holds them any more.
    pub(crate) fn retirement_worker_left(&mut self, w: WorkerId, now_unique: &[Key]) {
        let rs: Vec<u64> = self.retirements.keys().copied().collect();
        for r in rs {
            // Finishing one retirement removes its workers, which can end others: look again.
            let Some(ret) = self.retirements.get(&r) else { continue };
            let redo: Vec<(Key, u32)> =
                ret.copying.iter().filter(|(_, (t, _))| *t == w).map(|(k, (_, a))| (k.clone(), *a)).collect();
            for (k, attempt) in redo {
                self.copy(r, &k, attempt);
            }
            for k in now_unique {
                if self.retirements.contains_key(&r) {
                    self.replicate_if_unique(r, k);
                }
            }
            self.advance_retirement(r);
        }
    }

    /// Finishes a retirement once its workers run nothing and hold nothing only they hold.
    pub(crate) fn advance_retirement(&mut self, r: u64) {
        let Some(ret) = self.retirements.get(&r) else { return };
        let busy = ret
            .workers
            .iter()
            .any(|w| self.workers.get(w).is_some_and(|w| !w.processing.is_empty() || !w.expecting.is_empty()));
        if busy || !ret.copying.is_empty() {
            return;
        }
        let Some(ret) = self.retirements.remove(&r) else { return };
        let mut moved = Vec::new();
        for &w in &ret.workers {
            let held: Vec<Key> = self.workers.get(&w).map(|w| w.has.iter().cloned().collect()).unwrap_or_default();
            for k in held {
                if self.remove_holder(&k, w) {
                    // Every key was copied before this point; a last copy here is a bug, and
                    // the data is recomputed rather than lost.
                    tracing::error!(%k, "a retiring worker held the last copy; recomputing it");
                    self.lose(&k, "its retiring worker held the last copy");
                } else {
                    moved.push(k);
                }
            }
        }
        // Owners hear where their results went before they hear the workers are gone: a client
        // acting on the departure (a gather) then already has the new holders.
        moved.sort();
        moved.dedup();
        for k in moved {
            self.notify_done(&k);
        }
        for &w in &ret.workers {
            self.send_worker(w, SchedulerToWorker::Shutdown);
            if let Some(worker) = self.remove_worker_entry_for_retirement(w) {
                tracing::info!(address = %worker, "worker retired");
            }
        }
        let result = if ret.died.is_empty() { Ok(()) } else { Err(RetireError::Died { workers: ret.died }) };
        self.answer_retire(ret.client, ret.id, result);
        self.fill_from_queue();
    }

    fn remove_worker_entry_for_retirement(&mut self, w: WorkerId) -> Option<String> {
        let worker = self.workers.get(&w)?;
        debug_assert!(worker.processing.is_empty() && worker.has.is_empty());
        let address = worker.address.clone();
        self.worker_left(w);
        Some(address)
    }

    /// Gives up: the workers go back to work and the client hears why.
    fn abandon_retirement(&mut self, r: u64, key: &Key) {
        let Some(ret) = self.retirements.remove(&r) else { return };
        tracing::warn!(%key, workers = ?ret.addresses, "retirement abandoned: could not copy a key away");
        for &w in &ret.workers {
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.status = WorkerStatus::Running;
            }
            self.reindex(w);
        }
        self.answer_retire(ret.client, ret.id, Err(RetireError::CopyFailed { key: key.clone() }));
        self.fill_from_queue();
    }
}
