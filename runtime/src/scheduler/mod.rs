//! The scheduler as a sans-IO state machine: [`Scheduler::handle`] takes an [`Event`] and the
//! current time and returns [`Action`]s (messages to send, peers to drop). It has no I/O and
//! no clock; the driver ([`crate::start_scheduler`]) owns the comms and only moves messages.
//! Every decision is therefore tested deterministically, alone (unit tests) and together with
//! workers and clients in simulated time ([`crate::sim`]).
//!
//! ## Task life cycle
//!
//! `Waiting` (some dependencies not in memory) → `Queued` (ready, no worker has room) →
//! `Processing(worker, run)` → `Memory(holders)`; or `Erred(failure)`. A result no client
//! wants and no unfinished task needs is `Released` (data dropped, spec kept as lineage while
//! dependents exist, so a lost dependent can be recomputed); a task nothing refers to is
//! forgotten. Scattered values are `Scattering(worker)` until the client's `Store` arrives.
//! One function, `set_state`, moves a task between states and keeps every index in step
//! (workers' processing and holdings, the queue, per-function counts, dependents' counts).
//!
//! ## Costs
//!
//! Every event costs time proportional to what it touches, never to the size of the tables:
//! placement looks at the holders of a task's dependencies and at the least-loaded worker
//! (an ordered index, O(log W)); stealing visits only overloaded workers and idle threads;
//! requeueing is O(1) (the queue is validated lazily); failure, release and recomputation walk
//! explicit work lists over the tasks concerned (no recursion, however deep the lineage);
//! heartbeat timeouts are a heap; the adaptive target is kept as running counts per function.
//!
//! ## Trust
//!
//! Peers are validated, not trusted: registrations and task specs are checked against
//! [`bounds`](crate::protocol::bounds); keys belong to the client that created them (others
//! cannot cancel, release or overwrite them); reports about runs that are not current are
//! ignored; scattered data is accepted only from the worker the scheduler chose, for the
//! ticket it issued.

mod adaptive;
mod observe;
mod placement;
mod recovery;
mod retire;
mod scatter;
mod state;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::collections::{Map, shrink_map};
use crate::protocol::{ClientToScheduler, Key, RunId, SchedulerToClient, SchedulerToWorker, WorkerToScheduler};

pub use observe::{
    Counters, DURATION_BUCKETS, Durations, Execution, Group, MAX_GROUPS, OTHER, STREAM_KEEP, Snapshot, WorkerView,
};
use state::{ClientState, Task, Worker};
pub use state::{Holders, TaskState};

/// A worker's id, given by the driver.
pub type WorkerId = u64;
/// A client's id, given by the driver.
pub type ClientId = u64;

/// Scheduling settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tasks a worker may have assigned per thread (running or waiting on it); ready tasks
    /// beyond that wait on the scheduler. Default 128.
    pub tasks_per_thread: usize,
    /// How many workers may die while running a task before it fails as `KilledWorker`.
    /// Default 3.
    pub allowed_failures: u32,
    /// A worker silent for longer than this (no heartbeat, no message) is removed as dead.
    /// Default 30 s.
    pub worker_timeout: Duration,
    /// Root-task queuing: ready tasks without dependencies are assigned to a worker only
    /// while it has fewer than `ceil(nthreads × saturation)` tasks (Dask's
    /// `worker-saturation`), so a wide graph consumes its inputs as they are produced instead
    /// of materializing all of them first. Default 1.1; `f64::INFINITY` turns queuing off
    /// (root tasks then fill `tasks_per_thread` like any other).
    pub worker_saturation: f64,
    /// How much work a worker keeps queued per thread while root tasks are held back: a
    /// function whose measured mean run time is shorter than this gets
    /// `root_window / mean` slots per thread (at least `worker_saturation`, at most
    /// `tasks_per_thread`), so trivial tasks never wait on a scheduler round trip. Default 5 ms.
    pub root_window: Duration,
    /// Bytes per second a transfer between workers is assumed to run at, to weigh moving a
    /// task's inputs against waiting for the worker that holds them (see
    /// `Scheduler::stays_with_data`). Default 1 GiB/s. Infinite where moving a value costs
    /// nothing (workers in one process over inproc://, which hand over the same buffer):
    /// tasks are then placed by load alone.
    pub transfer_bandwidth: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            tasks_per_thread: 128,
            allowed_failures: 3,
            worker_timeout: Duration::from_secs(30),
            worker_saturation: 1.1,
            root_window: Duration::from_millis(5),
            transfer_bandwidth: (1u64 << 30) as f64,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker's comm registered (its first message was `Hello::Worker`).
    WorkerJoined {
        /// Driver-given id.
        id: WorkerId,
        /// Its name.
        name: String,
        /// Its data address.
        address: String,
        /// Its thread count.
        nthreads: u32,
        /// Its same-host contact, if it has one.
        local: Option<crate::protocol::LocalContact>,
    },
    /// A worker's comm closed: it is dead or gone.
    WorkerLeft {
        /// Id.
        id: WorkerId,
    },
    /// A client's comm registered.
    ClientJoined {
        /// Id.
        id: ClientId,
        /// Its name.
        name: String,
    },
    /// A client's comm closed: everything it wanted is released.
    ClientLeft {
        /// Id.
        id: ClientId,
    },
    /// A client sent something.
    FromClient {
        /// Id.
        id: ClientId,
        /// The message.
        msg: ClientToScheduler,
    },
    /// A worker sent something.
    FromWorker {
        /// Id.
        id: WorkerId,
        /// The message.
        msg: WorkerToScheduler,
    },
    /// Time passed: check for silent workers, steal work for idle threads.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A message for a worker.
    ToWorker(WorkerId, SchedulerToWorker),
    /// A message for a client.
    ToClient(ClientId, SchedulerToClient),
    /// Close a worker's comm: it registered with invalid values, or it was declared dead.
    DropWorker {
        /// The worker.
        id: WorkerId,
        /// Why, for the log.
        reason: String,
    },
    /// Close a client's comm: it broke the protocol (a message over a documented bound).
    DropClient {
        /// The client.
        id: ClientId,
        /// Why, for the log.
        reason: String,
    },
}

/// Figures about the scheduler, for tests, benchmarks and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Tasks in the table.
    pub tasks: usize,
    /// Workers.
    pub workers: usize,
    /// Clients.
    pub clients: usize,
    /// Ready tasks waiting for room on a worker.
    pub queued: usize,
    /// Tasks waiting, queued or processing.
    pub outstanding: usize,
    /// Workers retiring.
    pub retiring: usize,
}

/// Where issued scatter tickets come from: the OS's randomness, or a seeded sequence in the
/// simulator.
#[derive(Debug)]
enum TicketSource {
    Os,
    Seeded(fastrand::Rng),
}

impl TicketSource {
    fn next(&mut self) -> u64 {
        match self {
            TicketSource::Os => getrandom::u64().unwrap_or_else(|_| fastrand::u64(..)),
            TicketSource::Seeded(rng) => rng.u64(..),
        }
    }
}

/// The scheduler state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    /// Boxed: a table slot is then 32 bytes, not ~270, so lookups, inserts and regrowth touch
    /// and move a seventh of the memory (the table is the scheduler's largest).
    tasks: Map<Key, Box<Task>>,
    workers: BTreeMap<WorkerId, Worker>,
    by_address: Map<String, WorkerId>,
    /// Workers with a same-host contact, by host identity.
    by_host: Map<String, Vec<WorkerId>>,
    clients: Map<ClientId, ClientState>,
    /// Workers taking work (running, not paused) by load: placement takes the first.
    placeable: crate::collections::SortedSet<(u64, WorkerId)>,
    /// The others (retiring or paused) by load: every worker is in exactly one of the two,
    /// so a change of load updates one index. Stealing takes victims from the ends of both.
    held_back: crate::collections::SortedSet<(u64, WorkerId)>,
    /// Running workers with nothing assigned.
    idle: BTreeSet<WorkerId>,
    /// Threads of running workers with nothing to run.
    idle_threads: usize,
    queue: VecDeque<(Key, u64)>,
    /// Ready root tasks (no dependencies) held back by root-task queuing.
    root_queue: VecDeque<(Key, u64)>,
    /// Bumped by every change that can give a queued root task a place: a worker's load,
    /// status or departure, a function's measured duration, a task leaving the queue.
    placement_gen: u64,
    /// `(placement_gen, queue entry)` when the root queue's head last found no worker: until
    /// either changes, it would find none again, and `fill_from_queue` does not ask (most
    /// events, such as a client's releases, change neither).
    root_probe: Option<(u64, u64)>,
    queued: usize,
    queue_seq: u64,
    next_run: RunId,
    steals_in_flight: usize,
    timeouts: BinaryHeap<std::cmp::Reverse<(Instant, WorkerId)>>,
    retirements: BTreeMap<u64, retire::Retirement>,
    next_retirement: u64,
    scatters: BTreeMap<u64, scatter::PendingScatter>,
    next_scatter: u64,
    durations: Map<Key, (f64, u64)>,
    outstanding: Map<Key, usize>,
    outstanding_total: usize,
    total_threads: u64,
    tickets: TicketSource,
    /// Keys to release, per worker, not yet sent.
    releases: BTreeMap<WorkerId, Vec<Key>>,
    /// The longest release list of the last event that released any (a new list starts with this much
    /// room: bursts of releases come in runs of similar size, and growing a list of
    /// thousands of keys one doubling at a time copied it a dozen times).
    release_hint: usize,
    out: Vec<Action>,
    now: Instant,
    observer: observe::Observer,
}

/// Most room a release list starts with (a `Release` carries at most 65,536 keys anyway).
const MAX_RELEASE_HINT: usize = 4096;

impl Scheduler {
    /// A scheduler with `config`; tickets come from the OS's randomness.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            tasks: Map::default(),
            workers: BTreeMap::new(),
            by_address: Map::default(),
            by_host: Map::default(),
            clients: Map::default(),
            placeable: crate::collections::SortedSet::default(),
            held_back: crate::collections::SortedSet::default(),
            idle: BTreeSet::new(),
            idle_threads: 0,
            queue: VecDeque::new(),
            root_queue: VecDeque::new(),
            placement_gen: 0,
            root_probe: None,
            queued: 0,
            queue_seq: 0,
            next_run: 1,
            steals_in_flight: 0,
            timeouts: BinaryHeap::new(),
            retirements: BTreeMap::new(),
            next_retirement: 1,
            scatters: BTreeMap::new(),
            next_scatter: 1,
            durations: Map::default(),
            outstanding: Map::default(),
            outstanding_total: 0,
            total_threads: 0,
            tickets: TicketSource::Os,
            releases: BTreeMap::new(),
            release_hint: 0,
            out: Vec::new(),
            now: Instant::now(),
            observer: observe::Observer::new(Instant::now()),
        }
    }

    /// A scheduler whose tickets come from a seeded sequence (for the simulator).
    pub fn with_seed(config: SchedulerConfig, seed: u64) -> Self {
        Scheduler { tickets: TicketSource::Seeded(fastrand::Rng::with_seed(seed)), ..Scheduler::new(config) }
    }

    /// Applies one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.now = now;
        match event {
            Event::WorkerJoined { id, name, address, nthreads, local } => {
                self.worker_joined(id, name, address, nthreads, local)
            }
            Event::WorkerLeft { id } => self.worker_left(id),
            Event::ClientJoined { id, name } => self.client_joined(id, name),
            Event::ClientLeft { id } => self.client_left(id),
            Event::FromClient { id, msg } => {
                if self.clients.contains_key(&id) {
                    self.on_client(id, msg);
                }
            }
            Event::FromWorker { id, msg } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.last_seen = now;
                    self.on_worker(id, msg);
                }
            }
            Event::Tick => {
                self.expire_silent_workers();
                self.steal();
                shrink_map(&mut self.tasks);
            }
        }
        // Whatever the event freed (a finish, a release, a departure, a new worker), ready
        // tasks take it: O(1) when the queue is empty or its head cannot be placed.
        self.fill_from_queue();
        if !self.releases.is_empty() {
            let longest = self.releases.values().map(Vec::len).max().unwrap_or(0);
            self.release_hint = longest.min(MAX_RELEASE_HINT);
            for (w, keys) in std::mem::take(&mut self.releases) {
                if self.workers.contains_key(&w) {
                    self.out.push(Action::ToWorker(w, SchedulerToWorker::Release { keys }));
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Gives back a vector [`handle`](Self::handle) returned, once its actions are carried
    /// out: the next call fills it instead of allocating (an allocation per event otherwise).
    /// A vector grown large is dropped instead of kept.
    pub fn recycle(&mut self, actions: Vec<Action>) {
        crate::collections::reuse_vec(&mut self.out, actions);
    }

    fn on_client(&mut self, client: ClientId, msg: ClientToScheduler) {
        match msg {
            ClientToScheduler::Submit { tasks } => self.submit(client, tasks),
            ClientToScheduler::Release { keys } => {
                for k in keys {
                    self.release(client, &k);
                }
            }
            ClientToScheduler::Cancel { keys } => {
                for k in keys {
                    self.cancel(client, &k);
                }
            }
            ClientToScheduler::Scatter { id, keys } => self.scatter(client, id, keys),
            ClientToScheduler::WhoHas { id, keys } => {
                let holders = keys
                    .iter()
                    .take(crate::protocol::bounds::MAX_KEYS_PER_MESSAGE)
                    .map(|k| self.holder_addresses(k))
                    .collect();
                self.out.push(Action::ToClient(client, SchedulerToClient::WhoHasReply { id, holders }));
            }
            ClientToScheduler::Retire { id, workers } => self.retire(client, id, workers),
            ClientToScheduler::WorkerInfo { id } => {
                let workers = self
                    .workers
                    .values()
                    .take(crate::protocol::bounds::MAX_KEYS_PER_MESSAGE)
                    .map(|w| crate::protocol::WorkerSummary {
                        name: w.name.clone(),
                        address: w.address.clone(),
                        nthreads: w.nthreads,
                        processing: w.processing.len() as u64,
                        held: w.has.len() as u64,
                        ran: w.ran,
                        retiring: !w.running(),
                        memory: w.memory.clone(),
                    })
                    .collect();
                self.out.push(Action::ToClient(client, SchedulerToClient::WorkerInfo { id, workers }));
            }
            ClientToScheduler::AdaptiveTarget { id } => {
                let (workers, idle) = (self.adaptive_target(), self.idle_addresses(1024));
                self.out.push(Action::ToClient(client, SchedulerToClient::Target { id, workers, idle }));
            }
        }
    }

    fn on_worker(&mut self, w: WorkerId, msg: WorkerToScheduler) {
        match msg {
            WorkerToScheduler::Finished { key, run, nbytes, seconds } => self.finished(w, key, run, nbytes, seconds),
            WorkerToScheduler::Erred { key, run, message } => self.erred(w, key, run, message),
            WorkerToScheduler::MissingData { key, run, dep, tried } => self.missing_data(w, key, run, dep, tried),
            WorkerToScheduler::StealReply { key, run, stolen } => self.steal_reply(w, key, run, stolen),
            WorkerToScheduler::Replicated { key, ok } => self.replicated(w, key, ok),
            WorkerToScheduler::ScatterReady { id } => self.scatter_ready(w, id),
            WorkerToScheduler::Stored { key, nbytes } => self.stored(w, key, nbytes),
            WorkerToScheduler::Heartbeat => {}
            WorkerToScheduler::Memory(report) => self.worker_memory(w, report),
            WorkerToScheduler::Transfers(report) => self.observer.transfers(w, report),
            WorkerToScheduler::DataLost { key, reason } => self.data_lost(w, key, &reason),
        }
    }

    fn client_joined(&mut self, id: ClientId, name: String) {
        tracing::debug!(client = id, %name, "client joined");
        self.clients.insert(id, ClientState::default());
        let added = self.workers.values().map(|w| w.address.clone()).collect();
        let local = self.workers.values().filter_map(|w| Some((w.address.clone(), w.local.clone()?))).collect();
        self.out.push(Action::ToClient(id, SchedulerToClient::Workers { added, removed: Vec::new(), local }));
    }

    fn client_left(&mut self, id: ClientId) {
        let Some(client) = self.clients.remove(&id) else { return };
        tracing::debug!(client = id, keys = client.wanted.len(), "client left; releasing what it wanted");
        for key in client.wanted {
            if let Some(t) = self.tasks.get_mut(&key) {
                t.wanted = false;
                self.maybe_forget(&key);
            }
        }
        for r in self.retirements.values_mut() {
            if r.client == Some(id) {
                r.client = None;
            }
        }
        self.scatters.retain(|_, s| s.client != id);
    }

    /// The state of a task, if the scheduler still knows it.
    pub fn task_state(&self, key: &str) -> Option<&TaskState> {
        self.tasks.get(&Key::from(key)).map(|t| &t.state)
    }

    /// The run id of a task's current or last assignment.
    pub fn task_run(&self, key: &str) -> Option<RunId> {
        self.tasks.get(&Key::from(key)).map(|t| t.run)
    }

    /// How many tasks the scheduler knows.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Counts of the scheduler's tables.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            tasks: self.tasks.len(),
            workers: self.workers.len(),
            clients: self.clients.len(),
            queued: self.queued,
            outstanding: self.outstanding_total,
            retiring: self.workers.len() - self.placeable.len(),
        }
    }

    /// Tasks each worker has completed, by address.
    pub fn tasks_run(&self) -> Vec<(String, u64)> {
        self.workers.values().map(|w| (w.address.clone(), w.ran)).collect()
    }

    fn send_worker(&mut self, w: WorkerId, msg: SchedulerToWorker) {
        if self.workers.contains_key(&w) {
            // Releases gathered for this worker go first: order per worker is preserved.
            if let Some(keys) = self.releases.remove(&w) {
                self.out.push(Action::ToWorker(w, SchedulerToWorker::Release { keys }));
            }
            self.out.push(Action::ToWorker(w, msg));
        }
    }

    /// Tells `w` to drop `key`. Releases are gathered per worker into one message (a client
    /// leaving with 100,000 keys makes one message per worker, not 100,000), sent before any
    /// later message to that worker and at the end of the event.
    fn release_on(&mut self, w: WorkerId, key: Key) {
        if self.workers.contains_key(&w) {
            let hint = self.release_hint;
            self.releases.entry(w).or_insert_with(|| Vec::with_capacity(hint)).push(key);
        }
    }

    fn send_client(&mut self, c: ClientId, msg: SchedulerToClient) {
        self.out.push(Action::ToClient(c, msg));
    }

    fn new_run(&mut self) -> RunId {
        self.next_run += 1;
        self.next_run
    }
}
