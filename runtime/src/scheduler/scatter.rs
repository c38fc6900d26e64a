//! Scatter: a client stores values on workers itself, with one-time tickets the scheduler
//! issues, so no peer can store (or overwrite) a key nobody asked for.
//!
//! `Scatter` (client) → the scheduler reserves the keys for the client, chooses workers and
//! sends each `ExpectScatter` with the keys' tickets → each worker answers `ScatterReady` →
//! the scheduler answers the client with `ScatterTargets` → the client sends `Store` with the
//! ticket to the worker → the worker reports `Stored` → the key is in memory; `Done`.

use std::collections::BTreeSet;

use super::state::{Task, TaskState};
use super::{ClientId, Scheduler, WorkerId};
use crate::collections::Set;
use crate::protocol::bounds::{MAX_KEY_LEN, MAX_KEYS_PER_MESSAGE, check_text};
use crate::protocol::{Key, RequestId, ScatterError, ScatterTarget, SchedulerToClient, SchedulerToWorker, Ticket};

/// A scatter waiting for its workers to accept the tickets.
#[derive(Debug)]
pub(crate) struct PendingScatter {
    pub(crate) client: ClientId,
    id: RequestId,
    targets: Vec<ScatterTarget>,
    awaiting: BTreeSet<WorkerId>,
}

impl Scheduler {
    fn answer_scatter(&mut self, client: ClientId, id: RequestId, result: Result<Vec<ScatterTarget>, ScatterError>) {
        if self.clients.contains_key(&client) {
            self.send_client(client, SchedulerToClient::ScatterTargets { id, result });
        }
    }

    pub(crate) fn scatter(&mut self, client: ClientId, id: RequestId, keys: Vec<(Key, u64)>) {
        if keys.len() > MAX_KEYS_PER_MESSAGE {
            let e = ScatterError::InvalidKey {
                key: "".into(),
                reason: format!("{} keys in one scatter; at most {MAX_KEYS_PER_MESSAGE}", keys.len()),
            };
            return self.answer_scatter(client, id, Err(e));
        }
        let mut seen = Set::default();
        for (k, _) in &keys {
            let reason = check_text("key", k, MAX_KEY_LEN).err().or_else(|| {
                if self.tasks.contains_key(k) || !seen.insert(&**k) {
                    Some("the key already exists".to_owned())
                } else {
                    None
                }
            });
            if let Some(reason) = reason {
                return self.answer_scatter(client, id, Err(ScatterError::InvalidKey { key: k.clone(), reason }));
            }
        }
        if self.placeable.is_empty() {
            return self.answer_scatter(client, id, Err(ScatterError::NoWorkers));
        }
        let workers: Vec<WorkerId> = self.placeable.iter().take(keys.len()).map(|&(_, w)| w).collect();
        let sid = self.next_scatter;
        self.next_scatter += 1;
        let mut per_worker: Vec<(WorkerId, Vec<(Key, Ticket)>)> = workers.iter().map(|&w| (w, Vec::new())).collect();
        let mut targets = Vec::with_capacity(keys.len());
        for (i, (key, nbytes)) in keys.into_iter().enumerate() {
            let slot = i % workers.len();
            let w = workers[slot];
            let ticket = self.tickets.next();
            let mut task = Task::new(client, Key::from(""), Vec::new(), Vec::new());
            task.scattered = true;
            task.wanted = true;
            task.nbytes = nbytes;
            self.tasks.insert(key.clone(), Box::new(task));
            if let Some(c) = self.clients.get_mut(&client) {
                c.wanted.insert(key.clone());
            }
            self.set_state(&key, TaskState::Scattering(w));
            per_worker[slot].1.push((key.clone(), ticket));
            let worker = self.workers.get(&w).map(|w| w.address.clone()).unwrap_or_default();
            targets.push(ScatterTarget { key, worker, ticket });
        }
        let awaiting = workers.iter().copied().collect();
        for (w, keys) in per_worker {
            self.send_worker(w, SchedulerToWorker::ExpectScatter { id: sid, keys });
        }
        self.scatters.insert(sid, PendingScatter { client, id, targets, awaiting });
    }

    pub(crate) fn scatter_ready(&mut self, w: WorkerId, sid: RequestId) {
        let Some(s) = self.scatters.get_mut(&sid) else { return };
        s.awaiting.remove(&w);
        if s.awaiting.is_empty()
            && let Some(s) = self.scatters.remove(&sid)
        {
            self.answer_scatter(s.client, s.id, Ok(s.targets));
        }
    }

    /// A worker took a scattered value with a valid ticket.
    pub(crate) fn stored(&mut self, w: WorkerId, key: Key, nbytes: u64) {
        if self.task_state(&key) != Some(&TaskState::Scattering(w)) {
            return self.release_stray(w, key);
        }
        if let Some(t) = self.tasks.get_mut(&key) {
            t.nbytes = nbytes;
        }
        self.set_state(&key, TaskState::Memory(smallvec::smallvec![w]));
        self.became_memory(&key);
    }

    /// Scatters waiting on a worker that left fail; the client releases their keys.
    pub(crate) fn scatter_worker_left(&mut self, w: WorkerId, address: &str) {
        let failed: Vec<u64> =
            self.scatters.iter().filter(|(_, s)| s.awaiting.contains(&w)).map(|(&id, _)| id).collect();
        for sid in failed {
            let Some(s) = self.scatters.remove(&sid) else { continue };
            self.answer_scatter(s.client, s.id, Err(ScatterError::WorkerLeft { worker: address.to_owned() }));
        }
    }
}
