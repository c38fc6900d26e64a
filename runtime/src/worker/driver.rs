//! The worker's tokio driver: feeds the [`WorkerState`] machine and carries out its actions.
//! It decides nothing. Quick functions run inline on the event loop; blocking ones on at most
//! `nthreads` threads of tokio's blocking pool, which take the runs the state machine hands
//! over (a few more than `nthreads`, see [`WorkerLimits::execute_ahead`]) in order. Fetches run
//! as independent tasks through a [`DataPool`] (ids, timeouts, no shared lock), so fetches
//! from different peers proceed independently.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{CloseSignal, CommError, CommReceiver, Payload, Registry, into_value};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::HEARTBEAT_INTERVAL;
use super::spill::SpillStore;
use super::state::{ConnId, FetchId, MemoryLimits, Value, WorkerAction, WorkerEvent, WorkerLimits, WorkerState};
use crate::collections::Map;
use crate::driver::batched::Outbox;
use crate::driver::pool::DataPool;
use crate::functions::Functions;
use crate::protocol::{
    DataReply, DataRequest, Hello, Key, LocalContact, RunId, SchedulerToWorker, TransferCount, WorkerToScheduler,
    WorkerTransfers,
};
use courier_core::CommSender;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The scheduler's URL; its scheme picks the transport for everything.
    pub scheduler: String,
    /// Where to listen for peers and clients (default: the scheduler's scheme on
    /// 127.0.0.1, any port; `inproc://` and `unix://` get a fresh name).
    pub listen: Option<String>,
    /// Runs executed at once (default 1).
    pub nthreads: u32,
    /// A name (default: the data address).
    pub name: Option<String>,
    /// How long a fetch from a peer may take before it is abandoned (default 60 s).
    pub fetch_timeout: Duration,
    /// Also listen on shm:// and announce it, so peers and clients on this host fetch
    /// through shared memory (default true; needs shm:// in the registry, else skipped).
    pub shm: bool,
    /// Memory limit and thresholds (default none: results stay in memory, never paused).
    pub memory: Option<MemoryLimits>,
    /// Where spilled results go: a directory of this worker's own is made inside (default:
    /// the system's temporary directory).
    pub spill_dir: Option<std::path::PathBuf>,
    /// Where memory samples come from (default: the process's RSS from `/proc/self/statm`);
    /// tests substitute their own.
    pub memory_probe: Option<MemoryProbe>,
}

/// A source of memory samples (bytes).
#[derive(Clone)]
pub struct MemoryProbe(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for MemoryProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryProbe")
    }
}

/// How often a worker with a memory limit samples its RSS.
pub const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// This process's resident set size in bytes (`VmRSS` of `/proc/self/status`; 0 where it
/// cannot be read).
pub fn process_rss() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The default memory limit of a worker of `nthreads` on this machine: the machine's memory
/// (or the cgroup's limit, when lower) times `nthreads / cores` (capped at all of it), as
/// Dask's `auto`; `None` when it cannot be read.
pub fn default_memory_limit(nthreads: u32) -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })?;
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    let machine = cgroup.map_or(total, |c| c.min(total));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some((machine as f64 * (f64::from(nthreads) / cores).min(1.0)) as u64)
}

impl WorkerConfig {
    /// A worker of one thread for `scheduler`.
    pub fn new(scheduler: impl Into<String>) -> Self {
        WorkerConfig {
            scheduler: scheduler.into(),
            listen: None,
            nthreads: 1,
            name: None,
            fetch_timeout: Duration::from_secs(60),
            shm: true,
            memory: None,
            spill_dir: None,
            memory_probe: None,
        }
    }
}

/// A running worker's handle.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    /// Its data address.
    pub address: String,
    shutdown: CloseSignal,
    terminated: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerHandle {
    /// Asks the worker to stop.
    pub fn shutdown(&self) {
        self.shutdown.close();
    }

    /// True when the worker stopped because its process reached the memory terminate
    /// threshold: its caller should start a fresh worker (`courier worker` does).
    pub fn terminated_for_memory(&self) -> bool {
        self.terminated.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What reaches the worker's event loop.
pub(crate) enum Input {
    Scheduler(Vec<SchedulerToWorker>),
    SchedulerLost(CommError),
    /// A data comm opened, over this scheme.
    DataConn(ConnId, Outbox<DataReply>, String),
    DataConnClosed(ConnId),
    Data(ConnId, DataRequest),
    FetchDone(FetchId, Result<Vec<Option<Payload>>, String>),
    ExecuteDone(Key, RunId, Result<Payload, String>, f64),
    /// Any other event for the state machine (spills, reads back).
    Event(WorkerEvent),
    /// A reply whose spilled values were read back.
    Loaded(ConnId, DataReply),
}

fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("", |(s, _)| s)
}

/// The address a node listens on for data, on the same transport as the scheduler.
pub(crate) fn data_listen_url(scheduler: &str) -> String {
    match scheduler.split_once("://").map(|(s, _)| s) {
        Some("inproc") | None => "inproc://".into(),
        Some("unix") => "unix://".into(),
        Some("shm") => "shm://".into(),
        Some(scheme) => format!("{scheme}://127.0.0.1:0"),
    }
}

/// Starts a worker; returns once it has sent its hello to the scheduler. The worker runs
/// until the scheduler retires it (`Ok`), [`WorkerHandle::shutdown`] (`Ok`), or the scheduler
/// is lost (`Err`).
pub async fn start_worker(
    registry: Registry,
    functions: Arc<Functions>,
    config: WorkerConfig,
) -> Result<(WorkerHandle, tokio::task::JoinHandle<Result<(), CommError>>), CommError> {
    let listen = config.listen.clone().unwrap_or_else(|| data_listen_url(&config.scheduler));
    let listener = registry.listen(&listen).await?;
    let address = listener.contact_address().to_string();
    let shutdown = CloseSignal::new();
    let (inputs_tx, inputs) = mpsc::channel::<Input>(4096);
    let conn_ids = Arc::new(std::sync::atomic::AtomicU64::new(1));
    super::data_server::spawn(listener, inputs_tx.clone(), shutdown.clone(), conn_ids.clone());
    let host = LocalContact::this_host();
    let local = match (&host, config.shm && !matches!(scheme_of(&address), "shm" | "inproc")) {
        (Some(host), true) => match registry.listen("shm://").await {
            Ok(l) => {
                let contact = LocalContact { address: l.contact_address().to_string(), host: host.clone() };
                super::data_server::spawn(l, inputs_tx.clone(), shutdown.clone(), conn_ids);
                Some(contact)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no shm:// data listener; peers on this host use the network");
                None
            }
        },
        _ => None,
    };

    let name = config.name.clone().unwrap_or_else(|| address.clone());
    let comm = match registry.connect(&config.scheduler).await {
        Ok(c) => c,
        Err(e) => {
            shutdown.close();
            return Err(e);
        }
    };
    let (tx, rx) = comm.split();
    let nthreads = config.nthreads.max(1);
    // The hello goes first and alone, as the protocol requires.
    let mut tx = tx;
    tx.send(courier_core::to_message(&[Hello::Worker { name, address: address.clone(), nthreads, local }])?).await?;
    let scheduler = SchedulerLink::new(tx, config.scheduler.clone());
    let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = WorkerHandle { address: address.clone(), shutdown: shutdown.clone(), terminated: terminated.clone() };
    let spill = config.memory.map(|m| {
        // Recycled receive buffers are memory the limit does not see: keep at most 1/16 of it.
        let pool = courier_core::aligned::set_pool_limit(0);
        courier_core::aligned::set_pool_limit(pool.min((m.limit / 16) as usize));
        Arc::new(SpillStore::new(config.spill_dir.clone().unwrap_or_else(std::env::temp_dir)))
    });
    let probe = config.memory_probe.clone().unwrap_or_else(|| MemoryProbe(Arc::new(process_rss)));
    let driver = Driver {
        state: WorkerState::new(WorkerLimits {
            memory: config.memory,
            ..WorkerLimits::new(address, nthreads as usize)
        }),
        spill,
        probe,
        terminated,
        functions,
        pool: DataPool::new(registry, config.fetch_timeout),
        scheduler,
        data_conns: Map::default(),
        served: Map::default(),
        reported: WorkerTransfers::default(),
        fetches: Map::default(),
        inputs_tx,
        lanes: Lanes::new(nthreads as usize),
        local: VecDeque::new(),
        host,
    };
    let task = tokio::spawn(driver.run(inputs, rx, shutdown));
    Ok((handle, task))
}

/// A run handed to the execution lanes.
type Job = Box<dyn FnOnce() + Send>;

/// The worker's execution queue: the runs the state machine handed over (at most `nthreads +
/// execute_ahead`), started in order on at most `nthreads` threads of tokio's blocking pool. A
/// thread that finishes a run takes the next queued one itself, so two runs on one thread are
/// separated by a lock, not by a wake-up of the event loop and then of a pool thread (on a host
/// whose cores are all computing, each wake-up waits for a time slice: milliseconds). With
/// nothing queued the thread returns to the pool. Runs not started when the worker stops are
/// dropped.
struct Lanes {
    shared: Arc<std::sync::Mutex<LaneQueue>>,
    nthreads: usize,
}

#[derive(Default)]
struct LaneQueue {
    jobs: VecDeque<Job>,
    /// Threads taking jobs from the queue.
    running: usize,
}

impl Lanes {
    fn new(nthreads: usize) -> Self {
        Lanes { shared: Arc::default(), nthreads: nthreads.max(1) }
    }

    fn push(&self, job: Job) {
        let mut q = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.jobs.push_back(job);
        if q.running < self.nthreads {
            q.running += 1;
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || Self::lane(&shared));
        }
    }

    /// One thread's loop: the next job, until the queue is empty (checked and left under the
    /// lock, so a job pushed meanwhile is never stranded).
    fn lane(shared: &std::sync::Mutex<LaneQueue>) {
        loop {
            let job = {
                let mut q = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.running -= 1;
                        return;
                    }
                }
            };
            job();
        }
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).jobs.clear();
    }
}

/// A peer's or client's comm to this worker's data server.
struct DataConn {
    outbox: Outbox<DataReply>,
    /// Its transport's scheme, for the served counters.
    scheme: String,
}

struct Driver {
    state: WorkerState,
    functions: Arc<Functions>,
    pool: DataPool,
    scheduler: SchedulerLink,
    data_conns: Map<ConnId, DataConn>,
    /// Values served to peers and clients, per scheme (reported with heartbeats).
    served: Map<String, TransferCount>,
    /// The transfer counters last reported.
    reported: WorkerTransfers,
    fetches: Map<FetchId, AbortHandle>,
    inputs_tx: mpsc::Sender<Input>,
    /// Where blocking runs execute.
    lanes: Lanes,
    /// Events produced by carrying out actions (inline executions), handled next.
    local: VecDeque<WorkerEvent>,
    /// This host's identity, if known: same-host contacts of peers with it are used.
    host: Option<String>,
    /// Where results are spilled (with a memory limit).
    spill: Option<Arc<SpillStore>>,
    probe: MemoryProbe,
    terminated: Arc<std::sync::atomic::AtomicBool>,
}

/// Tells the state machine that the values read back for a reply are gone from memory.
struct Served {
    serve: u64,
    tx: mpsc::Sender<Input>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let event = Input::Event(WorkerEvent::Served { serve: self.serve });
        if let Err(mpsc::error::TrySendError::Full(event)) = self.tx.try_send(event) {
            // Rare (a full input queue): deliver it from a task rather than lose the release.
            let tx = self.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(event).await;
                });
            }
        }
    }
}

impl Driver {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut from_scheduler: CommReceiver,
        shutdown: CloseSignal,
    ) -> Result<(), CommError> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sampler = tokio::time::interval(MEMORY_SAMPLE_INTERVAL);
        sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sampling = self.spill.is_some();
        let result = loop {
            let event = tokio::select! {
                biased;
                () = shutdown.closed() => break Ok(()),
                written = self.scheduler.written(), if self.scheduler.is_writing() => match written {
                    Ok(()) => {
                        self.scheduler.start();
                        continue;
                    }
                    Err(e) => break Err(CommError::closed(format!("the comm to the scheduler failed: {e}"))),
                },
                // Read in the loop itself (cancel-safe): no task hop between the scheduler and
                // the state machine.
                m = from_scheduler.recv() => match m.and_then(into_value::<Vec<SchedulerToWorker>>) {
                    Ok(batch) => Input::Scheduler(batch),
                    Err(e) => Input::SchedulerLost(e),
                },
                input = inputs.recv() => match input {
                    Some(i) => i,
                    None => break Ok(()),
                },
                _ = heartbeat.tick() => {
                    self.step(WorkerEvent::Tick);
                    self.report_transfers();
                    self.flush();
                    continue;
                }
                _ = sampler.tick(), if sampling => {
                    let rss = (self.probe.0)();
                    self.step(WorkerEvent::Memory { rss });
                    self.flush();
                    if let Some(e) = self.terminate_error() {
                        break Err(e);
                    }
                    continue;
                }
            };
            match event {
                Input::Scheduler(batch) => self.on_scheduler_batch(batch),
                Input::SchedulerLost(e) => {
                    break if e.is_closed() {
                        Err(CommError::closed(format!("lost the scheduler: {e}")))
                    } else {
                        Err(e)
                    };
                }
                Input::DataConn(conn, outbox, scheme) => {
                    self.data_conns.insert(conn, DataConn { outbox, scheme });
                }
                Input::DataConnClosed(conn) => {
                    self.data_conns.remove(&conn);
                }
                Input::Data(conn, request) => self.on_data(conn, request),
                Input::FetchDone(id, result) => {
                    self.fetches.remove(&id);
                    self.step(WorkerEvent::FetchDone { id, result });
                }
                Input::ExecuteDone(key, run, result, seconds) => {
                    self.step(WorkerEvent::ExecuteDone { key, run, result, seconds })
                }
                Input::Event(e) => self.step(e),
                Input::Loaded(conn, reply) => self.reply(conn, reply),
            }
            // Whatever else is already here joins this round before anything is written.
            let mut more = 0;
            while more < 1024 {
                let Ok(input) = inputs.try_recv() else { break };
                more += 1;
                match input {
                    Input::Scheduler(batch) => self.on_scheduler_batch(batch),
                    Input::Data(conn, request) => self.on_data(conn, request),
                    Input::FetchDone(id, result) => {
                        self.fetches.remove(&id);
                        self.step(WorkerEvent::FetchDone { id, result });
                    }
                    Input::ExecuteDone(key, run, result, seconds) => {
                        self.step(WorkerEvent::ExecuteDone { key, run, result, seconds })
                    }
                    Input::Event(e) => self.step(e),
                    Input::Loaded(conn, reply) => self.reply(conn, reply),
                    Input::DataConn(conn, outbox, scheme) => {
                        self.data_conns.insert(conn, DataConn { outbox, scheme });
                    }
                    Input::DataConnClosed(conn) => {
                        self.data_conns.remove(&conn);
                    }
                    Input::SchedulerLost(e) => {
                        self.flush();
                        shutdown.close();
                        return Err(CommError::closed(format!("lost the scheduler: {e}")));
                    }
                }
            }
            self.flush();
            if self.scheduler.overflowed() {
                break Err(CommError::closed("the scheduler stopped reading this worker's messages"));
            }
            if self.state.is_shutting_down() {
                tracing::info!("retired by the scheduler; exiting");
                break Ok(());
            }
            if let Some(e) = self.terminate_error() {
                break Err(e);
            }
        };
        shutdown.close();
        for (_, f) in self.fetches.drain() {
            f.abort();
        }
        self.scheduler.close().await;
        self.pool.close();
        result
    }

    fn on_scheduler_batch(&mut self, batch: Vec<SchedulerToWorker>) {
        for msg in &batch {
            match msg {
                SchedulerToWorker::PeerGone { address } => self.pool.forget(address),
                SchedulerToWorker::LocalPeers { peers } => {
                    for (address, contact) in peers {
                        if self.host.as_ref() == Some(&contact.host) {
                            self.pool.set_local(address, &contact.address);
                        }
                    }
                }
                _ => {}
            }
        }
        self.step(WorkerEvent::SchedulerBatch(batch));
    }

    /// A data request: transfer counters are the driver's to report; the rest is the state
    /// machine's.
    fn on_data(&mut self, conn: ConnId, request: DataRequest) {
        if let DataRequest::Stats { id } = request {
            if let Some(c) = self.data_conns.get(&conn) {
                let _ = c.outbox.push(DataReply::Stats { id, fetched: self.pool.stats() });
            }
            return;
        }
        self.step(WorkerEvent::Data { conn, request });
    }

    /// Feeds one event, then every event its actions produce inline.
    fn step(&mut self, event: WorkerEvent) {
        self.local.push_back(event);
        while let Some(e) = self.local.pop_front() {
            let mut actions = self.state.handle(e, Instant::now());
            for a in actions.drain(..) {
                self.carry_out(a);
            }
            self.state.recycle(actions);
        }
    }

    /// The error the worker stops with once the state machine asked to terminate.
    fn terminate_error(&self) -> Option<CommError> {
        self.terminated
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| CommError::closed("the worker reached its memory terminate threshold; restarting"))
    }

    fn reply(&mut self, conn: ConnId, reply: DataReply) {
        let Some(c) = self.data_conns.get(&conn) else { return };
        if let DataReply::Data { values, .. } = &reply {
            let count = match self.served.get_mut(&c.scheme) {
                Some(count) => count,
                None => self
                    .served
                    .entry(c.scheme.clone())
                    .or_insert_with(|| TransferCount { scheme: c.scheme.clone(), ..TransferCount::default() }),
            };
            count.requests += 1;
            for v in values.iter().flatten() {
                count.values += 1;
                count.bytes += v.byte_len();
            }
        }
        if let Err(e) = c.outbox.push(reply) {
            tracing::warn!(conn, error = %e, "a data requester is not reading its replies; disconnected it");
            self.data_conns.remove(&conn);
        }
    }

    fn carry_out(&mut self, action: WorkerAction) {
        match action {
            WorkerAction::ToScheduler(msg) => self.scheduler.push(msg),
            WorkerAction::Reply { conn, reply } => self.reply(conn, reply),
            WorkerAction::ReplyLoading { conn, id, values, serve } => {
                let tx = self.inputs_tx.clone();
                // Reported when the last byte read back for this reply is dropped.
                let guard = Arc::new(Served { serve, tx: tx.clone() });
                tokio::spawn(async move {
                    let loaded = tokio::task::spawn_blocking(move || {
                        let mut events = Vec::new();
                        let (mut bytes, mut count, started) = (0, 0, Instant::now());
                        let values = values
                            .into_iter()
                            .map(|v| match v? {
                                Value::Memory(p) => Some(guarded(p, &guard)),
                                Value::Disk { key, file } => match file.read_with(guard.clone()) {
                                    Ok(p) => {
                                        (bytes, count) = (bytes + p.byte_len(), count + 1);
                                        Some(p)
                                    }
                                    Err(error) => {
                                        events.push(WorkerEvent::Unreadable { key, error, run: None });
                                        None
                                    }
                                },
                            })
                            .collect();
                        let seconds = started.elapsed().as_secs_f64();
                        events.push(WorkerEvent::Unspilled { bytes, count, seconds });
                        (DataReply::Data { id, values }, events)
                    })
                    .await;
                    let Ok((reply, events)) = loaded else { return };
                    for e in events {
                        let _ = tx.send(Input::Event(e)).await;
                    }
                    let _ = tx.send(Input::Loaded(conn, reply)).await;
                });
            }
            WorkerAction::Spill { key, id, value } => {
                let (tx, store) = (self.inputs_tx.clone(), self.spill.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = match store {
                        Some(store) => tokio::task::spawn_blocking(move || store.write(&value).map(Arc::new))
                            .await
                            .unwrap_or_else(|e| Err(format!("spilling panicked: {e}"))),
                        None => Err("this worker has no spill directory".into()),
                    };
                    let seconds = started.elapsed().as_secs_f64();
                    let _ = tx.send(Input::Event(WorkerEvent::Spilled { key, id, result, seconds })).await;
                });
            }
            WorkerAction::Terminate { reason } => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let kinds: Vec<&str> = status.lines().filter(|l| l.starts_with("Rss")).collect();
                tracing::error!(%reason, resident = %kinds.join(", "), "terminating the worker before the kernel kills it");
                self.terminated.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            WorkerAction::Fetch { id, peer, keys } => {
                let (pool, tx) = (self.pool.clone(), self.inputs_tx.clone());
                let task = tokio::spawn(async move {
                    let result = pool.get(&peer, keys).await.map_err(|e| e.to_string());
                    let _ = tx.send(Input::FetchDone(id, result)).await;
                });
                self.fetches.insert(id, task.abort_handle());
            }
            WorkerAction::AbortFetch { id } => {
                if let Some(f) = self.fetches.remove(&id) {
                    f.abort();
                }
            }
            WorkerAction::Execute { key, run, func, args } => self.execute(key, run, &func, args),
            WorkerAction::Shutdown => {}
        }
    }

    fn execute(&mut self, key: Key, run: RunId, func: &str, args: Vec<Value>) {
        let Some(f) = self.functions.get(func).cloned() else {
            let error = format!("unknown function {func:?} on this worker");
            self.local.push_back(WorkerEvent::ExecuteDone { key, run, result: Err(error), seconds: 0.0 });
            return;
        };
        let args = match in_memory(args) {
            Ok(args) if !f.blocking => {
                let started = Instant::now();
                let result = crate::functions::run_guarded(&f.f, args);
                let seconds = started.elapsed().as_secs_f64();
                self.local.push_back(WorkerEvent::ExecuteDone { key, run, result, seconds });
                return;
            }
            Ok(args) => args.into_iter().map(Value::Memory).collect(),
            // Spilled inputs are read back on the blocking pool, then the function runs there.
            Err(args) => args,
        };
        let tx = self.inputs_tx.clone();
        // Onto the execution lanes, reporting from there: no task in between to wake (on a
        // busy host every wake-up between two runs is latency the thread sits idle).
        self.lanes.push(Box::new(move || {
            let report = |inputs: Vec<Input>| {
                for i in inputs {
                    if tx.blocking_send(i).is_err() {
                        return;
                    }
                }
            };
            let (mut bytes, mut count, started) = (0, 0, Instant::now());
            let mut loaded = Vec::with_capacity(args.len());
            for a in args {
                match a {
                    Value::Memory(p) => loaded.push(p),
                    Value::Disk { key: dep, file } => match file.read() {
                        Ok(p) => {
                            (bytes, count) = (bytes + p.byte_len(), count + 1);
                            loaded.push(p);
                        }
                        Err(error) => {
                            let run = Some((key.clone(), run));
                            return report(vec![Input::Event(WorkerEvent::Unreadable { key: dep, error, run })]);
                        }
                    },
                }
            }
            let mut out = Vec::new();
            if count > 0 {
                let seconds = started.elapsed().as_secs_f64();
                out.push(Input::Event(WorkerEvent::Unspilled { bytes, count, seconds }));
            }
            let started = Instant::now();
            let result = crate::functions::run_guarded(&f.f, loaded);
            out.push(Input::ExecuteDone(key, run, result, started.elapsed().as_secs_f64()));
            report(out);
        }));
    }

    /// Sends the transfer counters to the scheduler when they changed since the last report.
    fn report_transfers(&mut self) {
        let mut served: Vec<TransferCount> = self.served.values().cloned().collect();
        served.sort_by(|a, b| a.scheme.cmp(&b.scheme));
        let now = WorkerTransfers { fetched: self.pool.stats(), served };
        if now != self.reported {
            self.reported = now.clone();
            self.scheduler.push(WorkerToScheduler::Transfers(now));
        }
    }

    fn flush(&mut self) {
        self.scheduler.start();
        for c in self.data_conns.values() {
            c.outbox.flush();
        }
    }
}

/// Unsent messages to the scheduler beyond which the worker gives up on it.
const SCHEDULER_BACKLOG: usize = 1 << 20;

/// Messages to the scheduler, written by the event loop itself: a write in flight is one of
/// the loop's `select!` branches, so the loop keeps reading and serving data while it
/// completes, and no task hop sits between the state machine and the socket (the latency of
/// every task's round trip). What accumulates during a write goes out as the next batch.
struct SchedulerLink {
    label: String,
    idle: Option<CommSender>,
    writing: Option<WriteFuture>,
    queue: Vec<WorkerToScheduler>,
}

type WriteFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (CommSender, Result<(), CommError>)> + Send>>;

impl SchedulerLink {
    fn new(tx: CommSender, label: String) -> Self {
        SchedulerLink { label, idle: Some(tx), writing: None, queue: Vec::new() }
    }

    fn push(&mut self, msg: WorkerToScheduler) {
        self.queue.push(msg);
    }

    fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// True when messages pile up beyond what a reading scheduler would leave (it is stuck).
    fn overflowed(&self) -> bool {
        self.queue.len() > SCHEDULER_BACKLOG
    }

    /// Starts writing what is queued, unless a write is in flight.
    fn start(&mut self) {
        if self.writing.is_some() || self.queue.is_empty() {
            return;
        }
        let Some(mut tx) = self.idle.take() else { return };
        let batch = std::mem::take(&mut self.queue);
        let label = self.label.clone();
        self.writing = Some(Box::pin(async move {
            let r = crate::driver::batched::send_split(&mut tx, &label, batch).await;
            (tx, r)
        }));
    }

    /// Resolves when the write in flight completes (cancel-safe: polling it again continues
    /// the same write).
    async fn written(&mut self) -> Result<(), CommError> {
        let Some(w) = self.writing.as_mut() else { return Ok(()) };
        let (tx, r) = w.await;
        self.writing = None;
        self.idle = Some(tx);
        r
    }

    /// Sends what is queued, then closes the comm.
    async fn close(&mut self) {
        if self.written().await.is_err() {
            return;
        }
        self.start();
        let _ = self.written().await;
        if let Some(mut tx) = self.idle.take() {
            let _ = tx.close().await;
        }
    }
}

/// The arguments as payloads when none is on disk; else unchanged.
fn in_memory(args: Vec<Value>) -> Result<Vec<Payload>, Vec<Value>> {
    if args.iter().any(|a| matches!(a, Value::Disk { .. })) {
        return Err(args);
    }
    Ok(args
        .into_iter()
        .filter_map(|a| match a {
            Value::Memory(p) => Some(p),
            Value::Disk { .. } => None,
        })
        .collect())
}

/// `p` with `guard` kept alive by each of its buffers (views of the same bytes, no copy).
fn guarded(p: Payload, guard: &Arc<Served>) -> Payload {
    let wrap = |b: bytes::Bytes| {
        if b.is_empty() {
            return b;
        }
        bytes::Bytes::from_owner(Guarded { bytes: b, _guard: guard.clone() })
    };
    Payload { header: wrap(p.header), frames: p.frames.into_iter().map(wrap).collect() }
}

struct Guarded {
    bytes: bytes::Bytes,
    _guard: Arc<Served>,
}

impl AsRef<[u8]> for Guarded {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_run_queued_jobs_on_at_most_nthreads_threads() {
        let lanes = Lanes::new(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (started_tx, mut started) = mpsc::channel::<usize>(16);
        let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        for i in 0..6 {
            let (running, most, started_tx, gate) = (running.clone(), most.clone(), started_tx.clone(), gate.clone());
            lanes.push(Box::new(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = started_tx.try_send(i);
                // Each job holds its thread until the test lets one go.
                let _ = gate.lock().map(|g| g.recv());
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        let mut order = vec![started.recv().await, started.recv().await];
        order.sort();
        assert_eq!(order, [Some(0), Some(1)], "the first two start on the two threads");
        for _ in 0..6 {
            gate_tx.send(()).unwrap();
        }
        for _ in 2..6 {
            order.push(started.recv().await);
        }
        order.sort();
        assert_eq!(order, (0..6).map(Some).collect::<Vec<_>>(), "every job ran");
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than nthreads at once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lane_runs_jobs_in_the_order_handed_over() {
        let lanes = Lanes::new(1);
        let (tx, mut rx) = mpsc::channel::<usize>(16);
        for i in 0..5 {
            let tx = tx.clone();
            lanes.push(Box::new(move || {
                let _ = tx.try_send(i);
            }));
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(rx.recv().await);
        }
        assert_eq!(order, (0..5).map(Some).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_not_started_when_the_lanes_are_dropped_never_run() {
        let lanes = Lanes::new(1);
        let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, mut started) = mpsc::channel::<u32>(16);
        let tx = started_tx.clone();
        lanes.push(Box::new(move || {
            let _ = tx.try_send(0);
            let _ = gate.recv();
        }));
        lanes.push(Box::new(move || {
            let _ = started_tx.try_send(1);
        }));
        assert_eq!(started.recv().await, Some(0));
        drop(lanes);
        gate_tx.send(()).unwrap();
        // The queued job was dropped with its sender: the channel closes without a 1.
        assert_eq!(started.recv().await, None);
    }
}
