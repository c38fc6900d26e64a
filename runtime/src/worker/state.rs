//! The worker as a sans-IO state machine: [`WorkerState::handle`] takes a [`WorkerEvent`] and
//! the time, and returns [`WorkerAction`]s for the driver to carry out (send to the scheduler,
//! reply to a data request, fetch from a peer, execute a function). No locks, no spawns, no
//! clock: Dask's `WorkerState.handle_stimulus` is the model.
//!
//! ## What it decides
//!
//! - **Execution slots.** At most `nthreads + execute_ahead` runs are handed to the driver at
//!   once (it runs `nthreads` of them and queues the rest, so a thread goes straight from one
//!   run to the next; only `nthreads` with a memory limit); runs whose inputs are all here
//!   wait in a ready queue (validated lazily, so dropping one is O(1)).
//! - **Fetching.** A dependency it lacks is fetched from a holder the scheduler named, at most
//!   `fetches_per_peer` requests in flight per peer and `fetches_total` overall, several keys
//!   per request. A holder that fails (error, timeout, "not here", or `PeerGone`) is marked
//!   tried and the next is asked; when all have failed, the runs that needed the dependency
//!   are dropped and reported as `MissingData`. A fetched copy is kept only while local runs
//!   need it, and never replaces a value held here (computed while the fetch was on its way).
//! - **Stealing's worker half.** `Steal` gives a run up only if it has not started executing;
//!   otherwise it is refused. Either way the answer is exact, so no run executes twice.
//! - **Release and cancellation.** `Release` drops data and unstarted runs; a run already
//!   executing finishes quietly and its result is dropped. A newer run of the same key waits
//!   for that old execution to end.
//! - **Scatter tickets.** A `Store` is accepted only for a key the scheduler announced with
//!   `ExpectScatter`, with the same ticket, and never overwrites a held key.
//! - **Memory** (with [`MemoryLimits`]). Managed bytes (results held in memory) are counted
//!   exactly; the driver samples the process's RSS ([`WorkerEvent::Memory`]). Above *target*
//!   managed bytes, or above *spill* RSS, least-recently-used results are spilled
//!   ([`WorkerAction::Spill`], at most [`MAX_SPILLS_IN_FLIGHT`] at once) until managed bytes
//!   are back under target (by the RSS excess, for RSS); a spilled result is served and used
//!   as an input by reading it back ([`Value::Disk`]). A value released while it is being
//!   written stays counted until the write ends (the write holds it), one released while an
//!   execution uses it until that execution ends. A failed spill keeps the value in
//!   memory, reports the error and stops spilling for [`SPILL_RETRY`]. Above *pause* no run
//!   starts and no fetch begins until the process is back under it, and the scheduler is told
//!   at once. At *terminate* (unless the spills in flight would bring it back under) the
//!   worker asks its driver to restart it ([`WorkerAction::Terminate`]) before the kernel
//!   kills it. Pause and terminate look at the process's RSS only: managed values can be
//!   spilled. LRU order is a `BTreeMap` by last use: O(log n) per use and per spill.
//! - **Room before work.** With a limit, whatever would add memory waits until it fits:
//!   an execution reserves its inputs read back or fetched for it alone plus a result as
//!   large as its function's largest here, spills to make room, and waits for those spills
//!   and for fetches in flight (and, at most [`SERVE_WAIT`], for replies reading values back);
//!   a reply holds a reservation for its values until the driver reports them dropped
//!   (`Served`), and starts only under pause or when nothing executes or is fetched; a fetch
//!   (each key expected as large as the largest value seen) starts only under pause or when
//!   nothing else is fetched or executed, with as many keys as fit. Each wait ends because what it
//!   waits for ends, so nothing deadlocks; when nothing is left to spill, work starts anyway.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::Payload;

use super::spill::SpillFile;
use crate::protocol::{IoCount, WorkerMemory};

use crate::collections::{Map, Set, shrink_map};
use crate::protocol::bounds::{MAX_KEYS_PER_MESSAGE, clip_message};
use crate::protocol::{
    ArgSpec, DataReply, DataRequest, Key, RequestId, RunId, SchedulerToWorker, Ticket, WorkerToScheduler,
};

/// A data connection, numbered by the driver.
pub type ConnId = u64;
/// A fetch request, numbered by the state machine.
pub type FetchId = u64;

/// Limits of the worker state machine.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// This worker's own data address (it never fetches from itself).
    pub address: String,
    /// Runs executing at once.
    pub nthreads: usize,
    /// Runs handed to the driver beyond `nthreads`: they wait in the driver's execution queue
    /// and start the moment a thread frees, on that thread, with no hop through the event loop
    /// between two runs (on a busy host each hop is a wake-up the thread sits idle for).
    /// Such a run counts as executing: it is not given up to `Steal`. Default `nthreads` (one
    /// queued run per thread); 0 hands a run over only when a thread is free. Ignored (0) with
    /// a memory limit: a queued run would start after the worker paused, and its pinned inputs
    /// would keep the runs before it from making room.
    pub execute_ahead: usize,
    /// Fetch requests in flight to one peer. Default 4.
    pub fetches_per_peer: usize,
    /// Fetch requests in flight in all. Default 64.
    pub fetches_total: usize,
    /// Keys asked for in one fetch request. Default 128.
    pub keys_per_fetch: usize,
    /// How long a scatter ticket stays valid. Default 5 minutes.
    pub ticket_ttl: Duration,
    /// Memory management; `None`: no limit, nothing spilled, never paused.
    pub memory: Option<MemoryLimits>,
}

/// A worker's memory limit and its thresholds, as fractions of the limit (Dask's defaults,
/// which the same reasoning supports here: spill early enough that writing keeps up, pause
/// well before the limit, restart before the kernel's OOM killer would act).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryLimits {
    /// Bytes the worker's process may use.
    pub limit: u64,
    /// Managed bytes above which least-recently-used results are spilled. Default 0.6.
    pub target: f64,
    /// Process RSS above which results are spilled until managed bytes drop by the excess
    /// over target. Default 0.7.
    pub spill: f64,
    /// Process RSS above which no run starts and no fetch begins. Default 0.8.
    pub pause: f64,
    /// Process RSS at which the worker restarts. Default 0.95.
    pub terminate: f64,
}

impl MemoryLimits {
    /// A limit of `limit` bytes with the default thresholds.
    pub fn new(limit: u64) -> Self {
        MemoryLimits { limit, target: 0.6, spill: 0.7, pause: 0.8, terminate: 0.95 }
    }

    /// Checks that the fractions are in (0, 1] and ordered target ≤ spill ≤ pause ≤ terminate.
    pub fn validate(&self) -> Result<(), String> {
        let f = [self.target, self.spill, self.pause, self.terminate];
        if self.limit == 0 {
            return Err("a memory limit of 0 bytes".into());
        }
        if f.iter().any(|x| !(x.is_finite() && *x > 0.0 && *x <= 1.0)) {
            return Err(format!("memory thresholds must be in (0, 1]: {f:?}"));
        }
        if f.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("memory thresholds must be ordered target ≤ spill ≤ pause ≤ terminate: {f:?}"));
        }
        Ok(())
    }

    fn at(&self, fraction: f64) -> u64 {
        (self.limit as f64 * fraction) as u64
    }
}

/// Spills written at once.
pub const MAX_SPILLS_IN_FLIGHT: usize = 4;
/// How long an execution that needs room waits for a reply reading spilled values back.
pub const SERVE_WAIT: Duration = Duration::from_secs(5);
/// How long spilling stops after a failed spill (a full or unwritable disk).
pub const SPILL_RETRY: Duration = Duration::from_secs(30);

/// A held value as an input or a reply: in memory, or spilled (the driver reads it back).
#[derive(Debug, Clone)]
pub enum Value {
    /// In memory.
    Memory(Payload),
    /// On disk.
    Disk {
        /// Its key (to report it if it cannot be read back).
        key: Key,
        /// The file.
        file: Arc<SpillFile>,
    },
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Memory(a), Value::Memory(b)) => a == b,
            (Value::Disk { file: a, .. }, Value::Disk { file: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl WorkerLimits {
    /// Defaults for a worker at `address` with `nthreads` threads.
    pub fn new(address: impl Into<String>, nthreads: usize) -> Self {
        WorkerLimits {
            address: address.into(),
            nthreads: nthreads.max(1),
            execute_ahead: nthreads.max(1),
            fetches_per_peer: 4,
            fetches_total: 64,
            keys_per_fetch: 128,
            ticket_ttl: Duration::from_secs(300),
            memory: None,
        }
    }
}

/// What happened to a worker.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// The scheduler sent something.
    Scheduler(SchedulerToWorker),
    /// The scheduler sent a batch (one comm message): handled in order, then fetches and
    /// executions are started, so the batch's dependencies share fetch requests.
    SchedulerBatch(Vec<SchedulerToWorker>),
    /// A peer or client sent a data request on connection `conn`.
    Data {
        /// The connection, to address the reply.
        conn: ConnId,
        /// The request.
        request: DataRequest,
    },
    /// A fetch finished: the values in the order asked (`None`: the peer does not hold it),
    /// or why it failed (connection error, timeout, refusal).
    FetchDone {
        /// The fetch.
        id: FetchId,
        /// The outcome.
        result: Result<Vec<Option<Payload>>, String>,
    },
    /// A run's function returned.
    ExecuteDone {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
        /// The result, or the function's error.
        result: Result<Payload, String>,
        /// How long it ran.
        seconds: f64,
    },
    /// Time passed (the heartbeat interval).
    Tick,
    /// The driver sampled the process's resident memory.
    Memory {
        /// Resident set size in bytes.
        rss: u64,
    },
    /// A spill finished: the file, or why it could not be written.
    Spilled {
        /// Key.
        key: Key,
        /// The spill, as in [`WorkerAction::Spill`].
        id: u64,
        /// The file, or the error (naming the path).
        result: Result<Arc<SpillFile>, String>,
        /// How long writing took.
        seconds: f64,
    },
    /// The values read back for `ReplyLoading` `serve` are gone from memory.
    Served {
        /// As in `ReplyLoading`.
        serve: u64,
    },
    /// The driver read spilled values back (for a reply or an execution).
    Unspilled {
        /// Bytes read.
        bytes: u64,
        /// Values read.
        count: u64,
        /// How long reading took.
        seconds: f64,
    },
    /// A spilled value could not be read back (corrupt or vanished): it is dropped here and
    /// the scheduler told; `run`, if given, is the execution that needed it.
    Unreadable {
        /// The spilled key.
        key: Key,
        /// Why.
        error: String,
        /// The run that needed it as an input, if any.
        run: Option<(Key, RunId)>,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerAction {
    /// Send to the scheduler.
    ToScheduler(WorkerToScheduler),
    /// Reply on data connection `conn`.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The reply.
        reply: DataReply,
    },
    /// Ask `peer` for `keys` (a `Get`), with a timeout; report with `FetchDone`.
    Fetch {
        /// The fetch's id.
        id: FetchId,
        /// The peer's data address.
        peer: String,
        /// Keys.
        keys: Vec<Key>,
    },
    /// A fetch's result is no longer wanted; the driver may stop waiting for it.
    AbortFetch {
        /// The fetch.
        id: FetchId,
    },
    /// Run `func` on `args` (reading spilled ones back first); report with `ExecuteDone`,
    /// or `Unreadable` naming the run when a spilled input cannot be read.
    Execute {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
        /// Function name.
        func: Key,
        /// Argument values.
        args: Vec<Value>,
    },
    /// Reply `Data` on `conn` once the spilled values among `values` are read back (each
    /// that cannot be is answered as not held, and reported with `Unreadable`).
    ReplyLoading {
        /// The connection.
        conn: ConnId,
        /// The request's id.
        id: RequestId,
        /// The values, in the order asked.
        values: Vec<Option<Value>>,
        /// Report `Served` with this once every value read back for it has been dropped
        /// (the reply was written, or abandoned).
        serve: u64,
    },
    /// Write `value` to disk; report with `Spilled`.
    Spill {
        /// Key.
        key: Key,
        /// This spill's id.
        id: u64,
        /// The value.
        value: Payload,
    },
    /// The process is at its terminate threshold: stop and restart (its results are
    /// recomputed elsewhere).
    Terminate {
        /// Why, for the log.
        reason: String,
    },
    /// Exit: the scheduler retired this worker.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Some inputs are being fetched.
    Fetching,
    /// Every input is here; waiting for a slot.
    Ready,
    /// Executing.
    Executing,
}

#[derive(Debug)]
struct Run {
    run: RunId,
    func: Key,
    args: std::sync::Arc<Vec<ArgSpec>>,
    deps: Vec<Key>,
    /// Inputs not here yet.
    missing: usize,
    phase: Phase,
}

#[derive(Debug)]
enum Origin {
    /// Computed here, stored by a client, or replicated at the scheduler's request: the
    /// scheduler counts this worker as a holder.
    Own,
    /// Fetched for local runs: kept while `users` of them still need it.
    Fetched { users: usize },
}

#[derive(Debug)]
enum Stored {
    Memory(Payload),
    /// Being written (spill id); still served from memory.
    Spilling(Payload, u64),
    Disk(Arc<SpillFile>),
}

#[derive(Debug)]
struct Held {
    stored: Stored,
    origin: Origin,
    nbytes: u64,
    /// Last use, the key of `lru` while in memory (under a memory limit).
    used: u64,
}

impl Held {
    fn value(&self, key: &Key) -> Value {
        match &self.stored {
            Stored::Memory(p) | Stored::Spilling(p, _) => Value::Memory(p.clone()),
            Stored::Disk(f) => Value::Disk { key: key.clone(), file: f.clone() },
        }
    }
}

/// Memory bookkeeping (see the module docs).
#[derive(Debug, Default)]
struct Memory {
    /// Bytes executions use beyond managed memory (inputs read back or fetched for them
    /// alone, and their expected result), per executing key.
    reserved: u64,
    reservations: Map<Key, u64>,
    /// Values executions are using (not spilled while they run), with how many use each.
    pinned: Map<Key, usize>,
    /// The values each executing key pinned.
    pins: Map<Key, Vec<Key>>,
    /// Replies waiting to read spilled values back until memory allows (an execution is
    /// running and the reply would take the worker past pause).
    waiting_serves: VecDeque<(ConnId, RequestId, Vec<Option<Value>>, u64)>,
    /// Bytes read back for replies not yet written, per serve.
    serving: Map<u64, (u64, Instant)>,
    next_serve: u64,
    /// The largest result of each function seen here: the expected size of its next one.
    result_sizes: Map<Key, u64>,
    /// The largest value held here so far: the expected size of a fetch.
    largest: u64,
    /// Bytes of held values in memory (including those being spilled).
    managed: u64,
    /// Bytes of those being spilled.
    spilling: u64,
    /// Bytes of held values on disk.
    spilled: u64,
    /// Values in memory by last use.
    lru: BTreeMap<u64, Key>,
    next_use: u64,
    /// Spills in flight.
    in_flight: Set<u64>,
    /// Spills in flight of values released meanwhile: the write still holds each value until
    /// it ends, so its bytes stay counted (by spill id) until then.
    orphaned: Map<u64, u64>,
    orphaned_bytes: u64,
    /// Values removed while executions still use them (a cancelled run finishing, or a fetched
    /// input whose other runs ended): their bytes stay counted until the last execution that
    /// pinned them ends.
    released_pinned: Map<Key, u64>,
    released_pinned_bytes: u64,
    next_spill: u64,
    rss: u64,
    paused: bool,
    terminating: bool,
    error: Option<String>,
    retry_at: Option<Instant>,
    spill_io: IoCount,
    unspill_io: IoCount,
    reported: Option<WorkerMemory>,
}

#[derive(Debug, Default)]
struct Dep {
    holders: Vec<String>,
    tried: Vec<String>,
    /// Local runs waiting for it.
    waiters: Set<Key>,
    /// The scheduler asked for a copy (retirement).
    replicate: bool,
    in_flight: Option<FetchId>,
    queued_on: Option<String>,
}

#[derive(Debug)]
struct InFlight {
    peer: String,
    keys: Vec<Key>,
}

/// The worker state machine. See the [module docs](self).
#[derive(Debug)]
pub struct WorkerState {
    limits: WorkerLimits,
    runs: Map<Key, Run>,
    ready: VecDeque<(Key, RunId)>,
    /// Keys executing now, and the run each execution belongs to (a released run's
    /// execution stays here until it returns).
    executing: Map<Key, RunId>,
    /// Ready runs held back until an old execution of the same key returns.
    deferred: Set<Key>,
    data: Map<Key, Held>,
    deps: Map<Key, Dep>,
    in_flight: Map<FetchId, InFlight>,
    /// Keys in the fetches in flight (a fetch asks for several).
    fetching_keys: usize,
    per_peer: Map<String, usize>,
    peer_queues: Map<String, VecDeque<Key>>,
    /// Peers the scheduler said are gone (most recent 1,024).
    gone: VecDeque<String>,
    tickets: Map<Key, (Ticket, Instant)>,
    mem: Memory,
    next_fetch: FetchId,
    shutting_down: bool,
    out: Vec<WorkerAction>,
    now: Instant,
}

impl WorkerState {
    /// A worker with these limits, holding nothing.
    pub fn new(limits: WorkerLimits) -> Self {
        WorkerState {
            limits,
            runs: Map::default(),
            ready: VecDeque::new(),
            executing: Map::default(),
            deferred: Set::default(),
            data: Map::default(),
            deps: Map::default(),
            in_flight: Map::default(),
            fetching_keys: 0,
            per_peer: Map::default(),
            peer_queues: Map::default(),
            gone: VecDeque::new(),
            tickets: Map::default(),
            mem: Memory::default(),
            next_fetch: 0,
            shutting_down: false,
            out: Vec::new(),
            now: Instant::now(),
        }
    }

    /// Applies one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, event: WorkerEvent, now: Instant) -> Vec<WorkerAction> {
        self.now = now;
        match event {
            WorkerEvent::Scheduler(msg) => self.on_scheduler(msg),
            WorkerEvent::SchedulerBatch(batch) => {
                for msg in batch {
                    self.on_scheduler(msg);
                }
            }
            WorkerEvent::Data { conn, request } => self.on_data(conn, request),
            WorkerEvent::FetchDone { id, result } => self.fetch_done(id, result),
            WorkerEvent::ExecuteDone { key, run, result, seconds } => self.execute_done(key, run, result, seconds),
            WorkerEvent::Tick => {
                self.send(WorkerToScheduler::Heartbeat);
                self.report_memory(false);
                let ttl = self.limits.ticket_ttl;
                self.tickets.retain(|_, (_, issued)| now.saturating_duration_since(*issued) < ttl);
                shrink_map(&mut self.data);
                shrink_map(&mut self.runs);
            }
            WorkerEvent::Memory { rss } => {
                self.mem.rss = rss;
                self.manage_memory(true);
            }
            WorkerEvent::Spilled { key, id, result, seconds } => self.spilled(key, id, result, seconds),
            WorkerEvent::Unspilled { bytes, count, seconds } => {
                let io = &mut self.mem.unspill_io;
                io.count += count;
                io.bytes += bytes;
                io.seconds += seconds;
            }
            WorkerEvent::Unreadable { key, error, run } => self.unreadable(key, error, run),
            WorkerEvent::Served { serve } => {
                if let Some((n, _)) = self.mem.serving.remove(&serve) {
                    self.mem.reserved -= n;
                }
            }
        }
        self.manage_memory(false);
        self.schedule();
        std::mem::take(&mut self.out)
    }

    /// Gives back a vector [`handle`](Self::handle) returned, once its actions are carried
    /// out: the next call fills it instead of allocating (an allocation per event otherwise).
    /// A vector grown large is dropped instead of kept.
    pub fn recycle(&mut self, actions: Vec<WorkerAction>) {
        crate::collections::reuse_vec(&mut self.out, actions);
    }

    /// Inserts a value in memory (replacing any held one), most recently used.
    fn insert_data(&mut self, key: Key, value: Payload, origin: Origin) {
        self.remove_data(&key);
        let nbytes = value.byte_len();
        self.mem.next_use += 1;
        let used = self.mem.next_use;
        self.mem.managed += nbytes;
        self.mem.largest = self.mem.largest.max(nbytes);
        if self.spills() {
            self.mem.lru.insert(used, key.clone());
        }
        self.data.insert(key, Held { stored: Stored::Memory(value), origin, nbytes, used });
    }

    /// Removes a held value, keeping the memory counts in step (a spill in flight finds it
    /// gone and its file is deleted).
    fn remove_data(&mut self, key: &Key) -> Option<Held> {
        let held = self.data.remove(key)?;
        match &held.stored {
            Stored::Memory(_) => {
                self.mem.managed -= held.nbytes;
                if self.spills() {
                    self.mem.lru.remove(&held.used);
                }
                // An execution holds it: counted until the last such execution ends. (Inputs
                // fetched for one execution are in its reservation instead, and not pinned.)
                if self.mem.pinned.contains_key(key) {
                    *self.mem.released_pinned.entry(key.clone()).or_insert(0) += held.nbytes;
                    self.mem.released_pinned_bytes += held.nbytes;
                }
            }
            Stored::Spilling(_, id) => {
                self.mem.managed -= held.nbytes;
                self.mem.spilling -= held.nbytes;
                self.mem.orphaned.insert(*id, held.nbytes);
                self.mem.orphaned_bytes += held.nbytes;
            }
            Stored::Disk(_) => self.mem.spilled -= held.nbytes,
        }
        Some(held)
    }

    /// Values are spilled only under a memory limit; without one, no LRU order is kept (it
    /// cost a B-tree insert and remove per value and per use, 7 % of a trivial task in process).
    fn spills(&self) -> bool {
        self.limits.memory.is_some()
    }

    /// Marks a held value used now (its LRU position) and returns it.
    fn use_value(&mut self, key: &Key) -> Option<Value> {
        let next = self.mem.next_use + 1;
        let spills = self.spills();
        let held = self.data.get_mut(key)?;
        if spills && matches!(held.stored, Stored::Memory(_)) {
            self.mem.lru.remove(&held.used);
            self.mem.lru.insert(next, key.clone());
            held.used = next;
            self.mem.next_use = next;
        }
        Some(held.value(key))
    }

    /// Pause, terminate and spill decisions. RSS-based spilling acts only on a fresh sample
    /// (`sampled`), so one sample does not trigger spills twice.
    fn manage_memory(&mut self, sampled: bool) {
        let Some(m) = self.limits.memory else { return };
        if self.mem.terminating {
            return;
        }
        // Managed values can be spilled; the process's resident memory is what the kernel
        // counts, so it alone pauses and terminates.
        let process = self.mem.rss;
        if sampled && self.mem.rss > m.at(m.spill) {
            tracing::debug!(
                rss = self.mem.rss,
                managed = self.mem.managed,
                spilling = self.mem.spilling,
                reserved = self.mem.reserved,
                spilled = self.mem.spilled,
                executing = self.executing.len(),
                fetching = self.in_flight.len(),
                "memory above the spill threshold"
            );
        }
        // Values being written are still resident; if writing them would bring the process
        // back under, wait for them rather than restart.
        if process.saturating_sub(self.mem.spilling + self.mem.orphaned_bytes) >= m.at(m.terminate) {
            self.mem.terminating = true;
            let reason = format!(
                "process memory {process} bytes reached the terminate threshold ({} of the {} byte limit); \
                 managed {} (spilling {}), reserved {}, executing {}, fetching {}, replies {}",
                m.terminate,
                m.limit,
                self.mem.managed,
                self.mem.spilling,
                self.mem.reserved,
                self.executing.len(),
                self.in_flight.len(),
                self.mem.serving.len()
            );
            self.out.push(WorkerAction::Terminate { reason });
            return;
        }
        let paused = process > m.at(m.pause);
        if paused != self.mem.paused {
            self.mem.paused = paused;
            if paused {
                tracing::warn!(process, limit = m.limit, "worker paused: memory above the pause threshold");
            } else {
                tracing::info!(process, limit = m.limit, "worker resumed: memory below the pause threshold");
            }
            self.report_memory(true);
        }
        if self.mem.retry_at.is_some_and(|t| self.now < t) {
            return;
        }
        let target = m.at(m.target);
        let mut excess = (self.mem.managed - self.mem.spilling + self.mem.reserved).saturating_sub(target);
        if sampled && self.mem.rss > m.at(m.spill) {
            excess = excess.max(self.mem.rss.saturating_sub(target).saturating_sub(self.mem.spilling));
        }
        self.spill_lru(excess);
    }

    /// Spills least-recently-used values in memory until `excess` bytes are on their way
    /// out (at most [`MAX_SPILLS_IN_FLIGHT`] at once, never while spilling is suspended).
    fn spill_lru(&mut self, mut excess: u64) {
        if self.mem.retry_at.is_some_and(|t| self.now < t) {
            return;
        }
        // Least recently used first, skipping values executions hold (O(pinned) extra).
        let mut after = 0;
        while excess > 0 && self.mem.in_flight.len() < MAX_SPILLS_IN_FLIGHT {
            let Some((&used, key)) = self.mem.lru.range(after..).find(|(_, k)| !self.mem.pinned.contains_key(*k))
            else {
                break;
            };
            let key = key.clone();
            after = used + 1;
            self.mem.lru.remove(&used);
            let Some(held) = self.data.get_mut(&key) else { continue };
            let Stored::Memory(value) = &held.stored else { continue };
            let value = value.clone();
            self.mem.next_spill += 1;
            let id = self.mem.next_spill;
            held.stored = Stored::Spilling(value.clone(), id);
            self.mem.spilling += held.nbytes;
            excess = excess.saturating_sub(held.nbytes);
            self.mem.in_flight.insert(id);
            self.out.push(WorkerAction::Spill { key, id, value });
        }
    }

    fn spilled(&mut self, key: Key, id: u64, result: Result<Arc<SpillFile>, String>, seconds: f64) {
        self.mem.in_flight.remove(&id);
        if let Some(n) = self.mem.orphaned.remove(&id) {
            self.mem.orphaned_bytes -= n;
        }
        let Some(held) = self.data.get_mut(&key) else { return };
        if !matches!(held.stored, Stored::Spilling(_, i) if i == id) {
            // Released or replaced meanwhile: the file goes with the handle.
            return;
        }
        let nbytes = held.nbytes;
        match result {
            Ok(file) => {
                held.stored = Stored::Disk(file);
                self.mem.managed -= nbytes;
                self.mem.spilling -= nbytes;
                self.mem.spilled += nbytes;
                let io = &mut self.mem.spill_io;
                io.count += 1;
                io.bytes += nbytes;
                io.seconds += seconds.max(0.0);
            }
            Err(error) => {
                if let Stored::Spilling(value, _) = &held.stored {
                    held.stored = Stored::Memory(value.clone());
                }
                self.mem.spilling -= nbytes;
                self.mem.lru.insert(held.used, key);
                tracing::error!(%error, "spilling failed; the value stays in memory");
                self.mem.error = Some(error);
                self.mem.retry_at = Some(self.now + SPILL_RETRY);
                self.report_memory(true);
            }
        }
    }

    fn unreadable(&mut self, key: Key, error: String, run: Option<(Key, RunId)>) {
        tracing::error!(%key, %error, "a spilled value could not be read back; dropped");
        if self.data.get(&key).is_some_and(|h| matches!(h.stored, Stored::Disk(_))) {
            let own = self.remove_data(&key).is_some_and(|h| matches!(h.origin, Origin::Own));
            if own {
                self.send(WorkerToScheduler::DataLost { key: key.clone(), reason: clip_message(error.clone()) });
            }
        }
        self.mem.error = Some(error);
        if let Some((k, r)) = run
            && self.executing.get(&k) == Some(&r)
        {
            self.executing.remove(&k);
            self.unreserve(&k);
            if self.runs.get(&k).is_some_and(|x| x.run == r) {
                self.runs.remove(&k);
                self.send(WorkerToScheduler::MissingData { key: k.clone(), run: r, dep: key, tried: Vec::new() });
            }
            if self.deferred.remove(&k)
                && let Some(x) = self.runs.get(&k)
            {
                let run = x.run;
                self.ready.push_front((k, run));
            }
        }
    }

    /// Tells the scheduler this worker's memory figures: on a tick when they changed, at once
    /// when `now` (a pause or a spill error).
    fn report_memory(&mut self, now: bool) {
        let report = self.memory();
        if now || self.mem.reported.as_ref() != Some(&report) {
            if !now && self.limits.memory.is_none() && report.managed == 0 && self.mem.reported.is_none() {
                return;
            }
            self.mem.reported = Some(report.clone());
            self.send(WorkerToScheduler::Memory(report));
        }
    }

    /// The memory counts that must all be zero once nothing is held, waiting or in flight
    /// (tests check that none leaks): bytes managed, being spilled, spilled, reserved, held by
    /// spill writes or executions after release, keys being fetched, and the number of entries
    /// in the per-key and per-serve tables behind them.
    #[cfg(test)]
    pub(crate) fn memory_counts(&self) -> [u64; 8] {
        let m = &self.mem;
        let entries = m.pinned.len()
            + m.pins.len()
            + m.orphaned.len()
            + m.released_pinned.len()
            + m.serving.len()
            + m.reservations.len()
            + m.in_flight.len();
        [
            m.managed,
            m.spilling,
            m.spilled,
            m.reserved,
            m.orphaned_bytes,
            m.released_pinned_bytes,
            self.fetching_keys as u64,
            entries as u64,
        ]
    }

    /// The buffers of the values held in memory (written or not), by address and length:
    /// with what executions, spill writes and replies hold, what the process really holds.
    #[cfg(test)]
    pub(crate) fn buffers_held(&self) -> Vec<(usize, u64)> {
        let frames = |p: &Payload| p.frames.iter().map(|f| (f.as_ptr() as usize, f.len() as u64)).collect::<Vec<_>>();
        self.data
            .values()
            .flat_map(|h| match &h.stored {
                Stored::Memory(p) | Stored::Spilling(p, _) => frames(p),
                Stored::Disk(_) => Vec::new(),
            })
            .collect()
    }

    /// This worker's memory figures.
    pub fn memory(&self) -> WorkerMemory {
        WorkerMemory {
            limit: self.limits.memory.map_or(0, |m| m.limit),
            managed: self.mem.managed,
            spilled: self.mem.spilled,
            rss: self.mem.rss,
            paused: self.mem.paused,
            spill: self.mem.spill_io,
            unspill: self.mem.unspill_io,
            spill_error: self.mem.error.clone(),
        }
    }

    /// True while paused for memory.
    pub fn is_paused(&self) -> bool {
        self.mem.paused
    }

    /// True once the scheduler told this worker to shut down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The value held under `key`, if it is in memory.
    pub fn value(&self, key: &str) -> Option<&Payload> {
        self.data.get(&Key::from(key)).and_then(|h| match &h.stored {
            Stored::Memory(p) | Stored::Spilling(p, _) => Some(p),
            Stored::Disk(_) => None,
        })
    }

    /// True when `key` is held on disk.
    pub fn is_spilled(&self, key: &str) -> bool {
        self.data.get(&Key::from(key)).is_some_and(|h| matches!(h.stored, Stored::Disk(_)))
    }

    /// Keys held (own results, stored, replicated and fetched copies).
    pub fn held_keys(&self) -> usize {
        self.data.len()
    }

    /// Runs assigned and not finished (fetching, ready or executing).
    pub fn assigned(&self) -> usize {
        self.runs.len()
    }

    /// Executions in progress (including released runs finishing quietly).
    pub fn executing(&self) -> usize {
        self.executing.len()
    }

    /// True while fetch `id` is in flight (its answer would be used).
    pub fn fetch_pending(&self, id: FetchId) -> bool {
        self.in_flight.contains_key(&id)
    }

    /// Fetch requests in flight.
    pub fn fetches_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn send(&mut self, msg: WorkerToScheduler) {
        self.out.push(WorkerAction::ToScheduler(msg));
    }

    fn on_scheduler(&mut self, msg: SchedulerToWorker) {
        match msg {
            SchedulerToWorker::Compute { key, run, func, args, who_has } => self.compute(key, run, func, args, who_has),
            SchedulerToWorker::Release { keys } => {
                for k in keys {
                    self.release(&k);
                }
            }
            SchedulerToWorker::Steal { key, run } => {
                let stolen = self.runs.get(&key).is_some_and(|r| r.run == run && r.phase != Phase::Executing);
                if stolen {
                    self.drop_run(&key);
                }
                self.send(WorkerToScheduler::StealReply { key, run, stolen });
            }
            SchedulerToWorker::Replicate { key, from } => self.replicate(key, from),
            SchedulerToWorker::ExpectScatter { id, keys } => {
                for (k, ticket) in keys {
                    self.tickets.insert(k, (ticket, self.now));
                }
                self.send(WorkerToScheduler::ScatterReady { id });
            }
            SchedulerToWorker::PeerGone { address } => self.peer_gone(address),
            // Where to reach peers is the driver's business (its data pool), not a decision.
            SchedulerToWorker::LocalPeers { .. } => {}
            SchedulerToWorker::Shutdown => {
                self.shutting_down = true;
                self.out.push(WorkerAction::Shutdown);
            }
        }
    }

    fn compute(
        &mut self,
        key: Key,
        run: RunId,
        func: Key,
        args: std::sync::Arc<Vec<ArgSpec>>,
        who_has: Vec<(Key, Vec<String>)>,
    ) {
        if let Some(held) = self.data.get_mut(&key) {
            // Already here (a fetched copy counts: the value is the same computation's).
            held.origin = Origin::Own;
            let nbytes = held.nbytes;
            self.send(WorkerToScheduler::Finished { key, run, nbytes, seconds: 0.0 });
            return;
        }
        if let Some(existing) = self.runs.get(&key) {
            if existing.run == run {
                return;
            }
            self.drop_run(&key);
        }
        let mut deps: Vec<Key> = Vec::new();
        for a in args.iter() {
            if let ArgSpec::Key(k) = a
                && !deps.contains(k)
            {
                deps.push(k.clone());
            }
        }
        // Holders the scheduler names now are alive (a `PeerGone` for an address reused by a
        // new worker arrived before this message).
        self.gone.retain(|g| !who_has.iter().any(|(_, h)| h.contains(g)));
        let holders: Map<&Key, &Vec<String>> = who_has.iter().map(|(k, h)| (k, h)).collect();
        // A dependency neither here, nor being fetched, nor with any holder to ask: report it
        // before registering anything.
        for d in &deps {
            let available = self.data.contains_key(d)
                || self.deps.contains_key(d)
                || holders.get(d).is_some_and(|h| h.iter().any(|a| self.may_ask(a)));
            if !available {
                self.send(WorkerToScheduler::MissingData { key, run, dep: d.clone(), tried: Vec::new() });
                return;
            }
        }
        let mut missing = 0;
        for d in &deps {
            if let Some(held) = self.data.get_mut(d) {
                if let Origin::Fetched { users } = &mut held.origin {
                    *users += 1;
                }
                continue;
            }
            missing += 1;
            let dep = self.deps.entry(d.clone()).or_default();
            dep.waiters.insert(key.clone());
            for a in holders.get(d).map(|h| h.iter()).into_iter().flatten().take(64) {
                if !dep.holders.contains(a) {
                    dep.holders.push(a.clone());
                }
            }
            if dep.in_flight.is_none() && dep.queued_on.is_none() {
                self.enqueue_fetch(d.clone());
            }
        }
        let phase = if missing == 0 { Phase::Ready } else { Phase::Fetching };
        self.runs.insert(key.clone(), Run { run, func, args, deps, missing, phase });
        if missing == 0 {
            self.ready.push_back((key, run));
        }
    }

    fn may_ask(&self, peer: &str) -> bool {
        peer != self.limits.address && !self.gone.iter().any(|g| g == peer)
    }

    /// Queues a fetch of `key` on its next untried holder, or gives up on it.
    fn enqueue_fetch(&mut self, key: Key) {
        let Some(dep) = self.deps.get(&key) else { return };
        let next = dep.holders.iter().find(|h| !dep.tried.contains(h) && self.may_ask(h)).cloned();
        match next {
            Some(peer) => {
                if let Some(dep) = self.deps.get_mut(&key) {
                    dep.queued_on = Some(peer.clone());
                }
                self.peer_queues.entry(peer).or_default().push_back(key);
            }
            None => self.fetch_exhausted(&key),
        }
    }

    /// No holder of `key` could serve it: runs that needed it are dropped and reported.
    fn fetch_exhausted(&mut self, key: &Key) {
        let Some(dep) = self.deps.remove(key) else { return };
        if dep.replicate {
            self.send(WorkerToScheduler::Replicated { key: key.clone(), ok: false });
        }
        let mut waiters: Vec<Key> = dep.waiters.into_iter().collect();
        waiters.sort();
        for w in waiters {
            let Some(run) = self.runs.get(&w).map(|r| r.run) else { continue };
            self.drop_run(&w);
            self.send(WorkerToScheduler::MissingData { key: w, run, dep: key.clone(), tried: dep.tried.clone() });
        }
    }

    fn fetch_done(&mut self, id: FetchId, result: Result<Vec<Option<Payload>>, String>) {
        let Some(fl) = self.in_flight.remove(&id) else { return };
        self.fetching_keys -= fl.keys.len();
        self.peer_slot_freed(&fl.peer);
        match result {
            Ok(values) if values.len() == fl.keys.len() => {
                for (k, v) in fl.keys.into_iter().zip(values) {
                    match v {
                        Some(value) => self.dep_arrived(k, value, id),
                        None => self.dep_failed(k, &fl.peer, id),
                    }
                }
            }
            Ok(values) => {
                tracing::warn!(peer = %fl.peer, asked = fl.keys.len(), got = values.len(), "a peer answered a fetch with the wrong number of values");
                for k in fl.keys {
                    self.dep_failed(k, &fl.peer, id);
                }
            }
            Err(why) => {
                tracing::debug!(peer = %fl.peer, %why, "fetch failed");
                for k in fl.keys {
                    self.dep_failed(k, &fl.peer, id);
                }
            }
        }
    }

    fn peer_slot_freed(&mut self, peer: &str) {
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }

    fn dep_arrived(&mut self, key: Key, value: Payload, id: FetchId) {
        if self.deps.get(&key).is_none_or(|d| d.in_flight != Some(id)) {
            return;
        }
        let Some(dep) = self.deps.remove(&key) else { return };
        let users = dep.waiters.len();
        if let Some(held) = self.data.get_mut(&key) {
            // Computed here while the fetch was on its way: the value held is kept (a fetched
            // copy never replaces it) and the waiting runs use it.
            if let Origin::Fetched { users: u } = &mut held.origin {
                *u += users;
            }
            if dep.replicate {
                self.send(WorkerToScheduler::Replicated { key: key.clone(), ok: true });
            }
        } else if dep.replicate {
            self.insert_data(key.clone(), value, Origin::Own);
            self.send(WorkerToScheduler::Replicated { key: key.clone(), ok: true });
        } else if users > 0 {
            self.insert_data(key.clone(), value, Origin::Fetched { users });
        }
        for w in dep.waiters {
            if let Some(r) = self.runs.get_mut(&w) {
                r.missing -= 1;
                if r.missing == 0 {
                    r.phase = Phase::Ready;
                    let run = r.run;
                    self.ready.push_back((w, run));
                }
            }
        }
    }

    fn dep_failed(&mut self, key: Key, peer: &str, id: FetchId) {
        let Some(dep) = self.deps.get_mut(&key) else { return };
        if dep.in_flight != Some(id) {
            return;
        }
        dep.in_flight = None;
        dep.tried.push(peer.to_owned());
        self.enqueue_fetch(key);
    }

    fn peer_gone(&mut self, address: String) {
        if !self.gone.contains(&address) {
            if self.gone.len() == 1024 {
                self.gone.pop_front();
            }
            self.gone.push_back(address.clone());
        }
        let failed: Vec<FetchId> =
            self.in_flight.iter().filter(|(_, f)| f.peer == address).map(|(&id, _)| id).collect();
        for id in failed {
            self.out.push(WorkerAction::AbortFetch { id });
            self.fetch_done(id, Err(format!("{address} left the cluster")));
        }
        if let Some(queue) = self.peer_queues.remove(&address) {
            for k in queue {
                if let Some(dep) = self.deps.get_mut(&k)
                    && dep.queued_on.as_deref() == Some(&address)
                {
                    dep.queued_on = None;
                    dep.tried.push(address.clone());
                    self.enqueue_fetch(k);
                }
            }
        }
    }

    fn replicate(&mut self, key: Key, from: Vec<String>) {
        if let Some(held) = self.data.get_mut(&key) {
            held.origin = Origin::Own;
            self.send(WorkerToScheduler::Replicated { key, ok: true });
            return;
        }
        self.gone.retain(|g| !from.contains(g));
        let dep = self.deps.entry(key.clone()).or_default();
        dep.replicate = true;
        for a in from.into_iter().take(64) {
            if !dep.holders.contains(&a) {
                dep.holders.push(a);
            }
        }
        if dep.in_flight.is_none() && dep.queued_on.is_none() {
            self.enqueue_fetch(key);
        }
    }

    /// Forgets a run that has not started executing, and its claims on inputs.
    fn drop_run(&mut self, key: &Key) {
        let Some(run) = self.runs.remove(key) else { return };
        if run.phase == Phase::Executing {
            // Its execution finishes quietly: `executing` still names the old run.
            return;
        }
        self.deferred.remove(key);
        for d in &run.deps {
            self.unclaim(d, key);
        }
    }

    /// `user` no longer needs dependency `d`.
    fn unclaim(&mut self, d: &Key, user: &Key) {
        // A run claimed `d` either by waiting for its fetch or by using the value held here.
        // Both can exist at once (the key came to be computed here while the fetch was on its
        // way): the waiter is the claim then.
        if let Some(dep) = self.deps.get_mut(d)
            && dep.waiters.remove(user)
        {
            if dep.waiters.is_empty() && !dep.replicate {
                // Not wanted any more: an answer in flight is ignored; a queued entry is skipped.
                self.deps.remove(d);
            }
            return;
        }
        if let Some(held) = self.data.get_mut(d)
            && let Origin::Fetched { users } = &mut held.origin
        {
            *users -= 1;
            if *users == 0 {
                self.remove_data(d);
            }
        }
    }

    fn release(&mut self, key: &Key) {
        if self.data.get(key).is_some_and(|h| matches!(h.origin, Origin::Own)) {
            self.remove_data(key);
        }
        self.tickets.remove(key);
        if let Some(dep) = self.deps.get_mut(key)
            && dep.replicate
        {
            dep.replicate = false;
            if dep.waiters.is_empty() {
                self.deps.remove(key);
            }
        }
        self.drop_run(key);
    }

    fn on_data(&mut self, conn: ConnId, request: DataRequest) {
        let reply = match request {
            // Transfer counters live in the driver, which answers `Stats` itself.
            DataRequest::Stats { id } => DataReply::Stats { id, fetched: Vec::new() },
            DataRequest::Get { id, keys } => {
                if keys.len() > MAX_KEYS_PER_MESSAGE {
                    refused(id, format!("{} keys asked for; at most {MAX_KEYS_PER_MESSAGE}", keys.len()))
                } else if self.shutting_down {
                    refused(id, "this worker is shutting down".into())
                } else {
                    let values: Vec<Option<Value>> = keys.iter().map(|k| self.use_value(k)).collect();
                    // A reply holds its values until written, even those spilled meanwhile: with
                    // a memory limit every reply is reserved for (in-memory values counted
                    // twice while they are also managed: conservative) until `Served`.
                    let limited = self.limits.memory.is_some();
                    let need: u64 = values
                        .iter()
                        .map(|v| match v {
                            Some(Value::Disk { file, .. }) => file.nbytes(),
                            Some(Value::Memory(p)) if limited => p.byte_len(),
                            _ => 0,
                        })
                        .sum();
                    if values.iter().any(|v| matches!(v, Some(Value::Disk { .. }))) || need > 0 {
                        self.mem.waiting_serves.push_back((conn, id, values, need));
                        return;
                    }
                    let values = values
                        .into_iter()
                        .map(|v| match v {
                            Some(Value::Memory(p)) => Some(p),
                            _ => None,
                        })
                        .collect();
                    DataReply::Data { id, values }
                }
            }
            DataRequest::Store { id, key, ticket, value } => {
                let valid = self.tickets.get(&key).is_some_and(|(t, _)| *t == ticket);
                if !valid {
                    refused(id, format!("no scatter of {key} with this ticket was announced to this worker"))
                } else if self.data.contains_key(&key) {
                    refused(id, format!("{key} is already held here"))
                } else {
                    self.tickets.remove(&key);
                    let nbytes = value.byte_len();
                    self.insert_data(key.clone(), value, Origin::Own);
                    self.send(WorkerToScheduler::Stored { key, nbytes });
                    DataReply::Stored { id }
                }
            }
        };
        self.out.push(WorkerAction::Reply { conn, reply });
    }

    fn execute_done(&mut self, key: Key, run: RunId, result: Result<Payload, String>, seconds: f64) {
        if self.executing.get(&key) != Some(&run) {
            return;
        }
        self.executing.remove(&key);
        self.unreserve(&key);
        let current = self.runs.get(&key).is_some_and(|r| r.run == run && r.phase == Phase::Executing);
        if current {
            let func = self.runs.remove(&key).map(|r| r.func);
            match result {
                Ok(value) => {
                    let nbytes = value.byte_len();
                    if let Some(func) = func
                        && self.limits.memory.is_some()
                    {
                        let size = self.mem.result_sizes.entry(func).or_insert(0);
                        *size = (*size).max(nbytes);
                    }
                    self.insert_data(key.clone(), value, Origin::Own);
                    self.send(WorkerToScheduler::Finished { key: key.clone(), run, nbytes, seconds });
                }
                Err(message) => {
                    self.send(WorkerToScheduler::Erred { key: key.clone(), run, message: clip_message(message) })
                }
            }
        }
        if self.deferred.remove(&key)
            && let Some(r) = self.runs.get(&key)
        {
            let run = r.run;
            self.ready.push_front((key, run));
        }
    }

    /// Starts fetches, executions and replies that read back while there is room.
    fn schedule(&mut self) {
        self.schedule_fetches();
        self.schedule_executions();
        self.schedule_serves();
    }

    /// Replies that read spilled values back start in order, each once nothing executes or
    /// its values fit under pause; what they read is reserved until `Served`.
    fn schedule_serves(&mut self) {
        while let Some((_, _, _, need)) = self.mem.waiting_serves.front() {
            let need = *need;
            let fits = self.limits.memory.is_none_or(|m| self.committed() + need <= m.at(m.pause));
            if !fits {
                // Spill to make room first, and wait for it; start over the threshold only
                // when nothing else runs and nothing more could be spilled (progress). Started
                // at once whenever idle, a 64 MiB read-back in a 256 MiB worker passed the
                // terminate threshold between two samples of its memory.
                if let Some(m) = self.limits.memory {
                    let excess = (self.committed() + need).saturating_sub(m.at(m.pause));
                    self.spill_lru(excess.saturating_sub(self.mem.spilling));
                }
                if !self.memory_idle() {
                    break;
                }
            }
            let Some((conn, id, values, need)) = self.mem.waiting_serves.pop_front() else { break };
            self.mem.next_serve += 1;
            let serve = self.mem.next_serve;
            self.mem.reserved += need;
            self.mem.serving.insert(serve, (need, self.now));
            self.out.push(WorkerAction::ReplyLoading { conn, id, values, serve });
        }
    }

    fn schedule_fetches(&mut self) {
        if self.peer_queues.is_empty() || self.in_flight.len() >= self.limits.fetches_total || self.mem.paused {
            return;
        }
        let mut peers: Vec<String> = self.peer_queues.keys().cloned().collect();
        peers.sort();
        // With a memory limit, a fetch (each key expected as large as the largest value seen)
        // starts only if it fits under pause, or nothing else is being fetched or executed.
        let room = |s: &Self| {
            s.limits.memory.is_none_or(|m| s.committed() + s.mem.largest <= m.at(m.pause)) || s.memory_idle()
        };
        if !room(self)
            && let Some(m) = self.limits.memory
        {
            // Make room for it: spilling what is not in use brings it under pause.
            let excess = (self.committed() + self.mem.largest).saturating_sub(m.at(m.pause));
            self.spill_lru(excess.saturating_sub(self.mem.spilling));
        }
        for peer in peers {
            while self.in_flight.len() < self.limits.fetches_total
                && self.per_peer.get(&peer).copied().unwrap_or(0) < self.limits.fetches_per_peer
                && room(self)
            {
                let mut keys = Vec::new();
                // With a memory limit, as many keys as fit under pause at the largest size seen.
                let per_fetch = match self.limits.memory {
                    Some(m) if self.mem.largest > 0 => {
                        let room = m.at(m.pause).saturating_sub(self.committed()) / self.mem.largest;
                        (room as usize).clamp(1, self.limits.keys_per_fetch)
                    }
                    _ => self.limits.keys_per_fetch,
                };
                let Some(queue) = self.peer_queues.get_mut(&peer) else { break };
                while keys.len() < per_fetch {
                    let Some(k) = queue.pop_front() else { break };
                    if self.deps.get(&k).is_some_and(|d| d.queued_on.as_deref() == Some(&peer) && d.in_flight.is_none())
                    {
                        keys.push(k);
                    }
                }
                if queue.is_empty() {
                    self.peer_queues.remove(&peer);
                }
                if keys.is_empty() {
                    break;
                }
                self.next_fetch += 1;
                let id = self.next_fetch;
                for k in &keys {
                    if let Some(d) = self.deps.get_mut(k) {
                        d.queued_on = None;
                        d.in_flight = Some(id);
                    }
                }
                *self.per_peer.entry(peer.clone()).or_insert(0) += 1;
                self.fetching_keys += keys.len();
                self.in_flight.insert(id, InFlight { peer: peer.clone(), keys: keys.clone() });
                self.out.push(WorkerAction::Fetch { id, peer: peer.clone(), keys });
            }
        }
    }

    fn schedule_executions(&mut self) {
        while self.executing_current() < self.limits.nthreads + self.ahead() && !self.shutting_down && !self.mem.paused
        {
            let Some((key, run)) = self.ready.pop_front() else { break };
            let Some(r) = self.runs.get(&key) else { continue };
            if r.run != run || r.phase != Phase::Ready {
                continue;
            }
            if self.executing.contains_key(&key) {
                // An old, released execution of this key is still running.
                self.deferred.insert(key);
                continue;
            }
            let specs = r.args.clone();
            let mut args = Vec::with_capacity(specs.len());
            let mut absent = None;
            for a in specs.iter() {
                match a {
                    ArgSpec::Value(p) => args.push(Value::Memory(p.clone())),
                    ArgSpec::Key(k) => match self.use_value(k) {
                        Some(v) => args.push(v),
                        None => {
                            absent = Some(k.clone());
                            break;
                        }
                    },
                }
            }
            if let Some(dep) = absent {
                // Released under it (cannot happen while the run claims it); report rather
                // than run with a wrong input.
                self.drop_run(&key);
                self.send(WorkerToScheduler::MissingData { key, run, dep, tried: Vec::new() });
                continue;
            }
            // Room first: what this execution will hold beyond managed memory (inputs read back
            // or fetched for it alone, and a result as large as this function's largest here,
            // else as its largest input). While spills that make room are in flight, it waits.
            let need = self.execution_need(&key, &args);
            // Its own inputs are not spilled to make room for it (that would free nothing).
            let deps = self.runs.get(&key).map(|r| r.deps.clone()).unwrap_or_default();
            self.pin_inputs(&key, &deps);
            if let Some(m) = self.limits.memory {
                // Values being written still occupy memory until their spill completes, and
                // fetches in flight until they land: wait for both.
                let total = self.committed() + need;
                let target = m.at(m.target);
                if total > target {
                    self.spill_lru((total - target).saturating_sub(self.mem.spilling));
                    // A reply holding values read back is waited for only briefly: a peer that
                    // does not read must not stall this worker's executions.
                    let now = self.now;
                    let serving =
                        self.mem.serving.values().any(|(_, t)| now.saturating_duration_since(*t) < SERVE_WAIT);
                    if !self.mem.in_flight.is_empty() || !self.in_flight.is_empty() || serving {
                        self.unreserve(&key);
                        self.ready.push_front((key, run));
                        break;
                    }
                }
            }
            let Some(r) = self.runs.get_mut(&key) else { continue };
            r.phase = Phase::Executing;
            let func = r.func.clone();
            if need > 0 {
                self.mem.reserved += need;
                self.mem.reservations.insert(key.clone(), need);
            }
            self.executing.insert(key.clone(), run);
            for d in &deps {
                self.unclaim(d, &key);
            }
            self.out.push(WorkerAction::Execute { key, run, func, args });
        }
    }

    /// Nothing that holds memory outside managed values is in flight: no execution, fetch,
    /// spill or reply. Work that does not fit may then start anyway (progress).
    fn memory_idle(&self) -> bool {
        self.executing.is_empty()
            && self.in_flight.is_empty()
            && self.mem.in_flight.is_empty()
            && self.mem.serving.is_empty()
    }

    /// Memory committed now: managed values (including those being written), released values
    /// still being written or used by an execution, reservations of executions and replies,
    /// and each key being fetched at the largest value seen here. (Counting fetches rather
    /// than keys, or forgetting a released value that a spill still held, let work start that
    /// took a 256 MiB worker reducing 64 MiB arrays past its terminate threshold in CI.)
    pub(crate) fn committed(&self) -> u64 {
        self.mem.managed
            + self.mem.orphaned_bytes
            + self.mem.released_pinned_bytes
            + self.mem.reserved
            + self.fetching_keys as u64 * self.mem.largest
    }

    /// Bytes an execution of `key` with `args` will hold beyond managed memory.
    fn execution_need(&self, key: &Key, args: &[Value]) -> u64 {
        if self.limits.memory.is_none() {
            return 0;
        }
        let Some(r) = self.runs.get(key) else { return 0 };
        let mut need = 0;
        let mut largest = 0;
        for d in &r.deps {
            let Some(h) = self.data.get(d) else { continue };
            largest = largest.max(h.nbytes);
            // Inputs the execution holds outside managed memory: read back, being written
            // (gone from managed when the write completes), or fetched for it alone.
            if matches!(h.stored, Stored::Disk(_) | Stored::Spilling(..)) || self.fetched_for_one(d, h) {
                need += h.nbytes;
            }
        }
        for a in args {
            if let Value::Memory(p) = a {
                largest = largest.max(p.byte_len());
            }
        }
        need + self.mem.result_sizes.get(&r.func).copied().unwrap_or(largest)
    }

    /// Releases an execution's reservation and the inputs it pinned.
    fn unreserve(&mut self, key: &Key) {
        if let Some(n) = self.mem.reservations.remove(key) {
            self.mem.reserved -= n;
        }
        for d in self.mem.pins.remove(key).unwrap_or_default() {
            if let Some(n) = self.mem.pinned.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    self.mem.pinned.remove(&d);
                    if let Some(n) = self.mem.released_pinned.remove(&d) {
                        self.mem.released_pinned_bytes -= n;
                    }
                }
            }
        }
    }

    /// `d` was fetched for one run only, and no execution holds it: the run that starts with
    /// it takes it out of managed memory into its reservation. (An execution that holds it
    /// keeps it counted until it ends, even if the run that started later ends first.)
    fn fetched_for_one(&self, d: &Key, h: &Held) -> bool {
        matches!(h.origin, Origin::Fetched { users } if users <= 1) && !self.mem.pinned.contains_key(d)
    }

    /// Pins the inputs of `key`'s execution that stay in managed memory: spilling them while
    /// it runs would free nothing (it holds them) and make managed memory undercount.
    fn pin_inputs(&mut self, key: &Key, deps: &[Key]) {
        if self.limits.memory.is_none() {
            return;
        }
        // An input fetched for this execution alone is in its reservation, and leaves managed
        // memory as it starts: nothing to pin.
        let kept: Vec<Key> = deps
            .iter()
            .filter(|d| {
                self.data.get(*d).is_some_and(|h| matches!(h.stored, Stored::Memory(_)) && !self.fetched_for_one(d, h))
            })
            .cloned()
            .collect();
        for d in &kept {
            *self.mem.pinned.entry(d.clone()).or_insert(0) += 1;
        }
        if !kept.is_empty() {
            self.mem.pins.insert(key.clone(), kept);
        }
    }

    /// Runs handed to the driver beyond `nthreads` ([`WorkerLimits::execute_ahead`]; none with
    /// a memory limit).
    fn ahead(&self) -> usize {
        if self.limits.memory.is_some() { 0 } else { self.limits.execute_ahead }
    }

    /// Executions that hold a slot: every execution, released or not, occupies a thread.
    fn executing_current(&self) -> usize {
        self.executing.len()
    }

    /// A stable description for tests: counts of each table (and the first held keys).
    pub fn describe(&self) -> String {
        let mut held: Vec<&Key> = self.data.keys().collect();
        held.sort();
        held.truncate(4);
        format!(
            "runs {} ready {} executing {} data {} {held:?} deps {} in_flight {} tickets {}",
            self.runs.len(),
            self.ready.len(),
            self.executing.len(),
            self.data.len(),
            self.deps.len(),
            self.in_flight.len(),
            self.tickets.len()
        )
    }
}

fn refused(id: RequestId, reason: String) -> DataReply {
    DataReply::Refused { id, reason }
}
