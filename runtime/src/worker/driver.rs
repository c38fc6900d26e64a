//! The worker's tokio driver: feeds the [`WorkerState`] machine and carries out its actions.
//! It decides nothing. Quick functions run inline on the event loop; blocking ones on tokio's
//! blocking pool (the state machine never starts more than `nthreads` at once). Fetches run
//! as independent tasks through a [`DataPool`] (ids, timeouts, no shared lock), so fetches
//! from different peers proceed independently.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{CloseSignal, CommError, CommReceiver, Payload, Registry, from_message};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::HEARTBEAT_INTERVAL;
use super::state::{ConnId, FetchId, WorkerAction, WorkerEvent, WorkerLimits, WorkerState};
use crate::collections::Map;
use crate::driver::batched::Outbox;
use crate::driver::pool::DataPool;
use crate::functions::Functions;
use crate::protocol::{DataReply, DataRequest, Hello, Key, LocalContact, RunId, SchedulerToWorker, WorkerToScheduler};
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
        }
    }
}

/// A running worker's handle.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    /// Its data address.
    pub address: String,
    shutdown: CloseSignal,
}

impl WorkerHandle {
    /// Asks the worker to stop.
    pub fn shutdown(&self) {
        self.shutdown.close();
    }
}

/// What reaches the worker's event loop.
pub(crate) enum Input {
    Scheduler(Vec<SchedulerToWorker>),
    SchedulerLost(CommError),
    DataConn(ConnId, Outbox<DataReply>),
    DataConnClosed(ConnId),
    Data(ConnId, DataRequest),
    FetchDone(FetchId, Result<Vec<Option<Payload>>, String>),
    ExecuteDone(Key, RunId, Result<Payload, String>, f64),
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
    let handle = WorkerHandle { address: address.clone(), shutdown: shutdown.clone() };
    let driver = Driver {
        state: WorkerState::new(WorkerLimits::new(address, nthreads as usize)),
        functions,
        pool: DataPool::new(registry, config.fetch_timeout),
        scheduler,
        data_conns: Map::default(),
        fetches: Map::default(),
        inputs_tx,
        local: VecDeque::new(),
        host,
    };
    let task = tokio::spawn(driver.run(inputs, rx, shutdown));
    Ok((handle, task))
}

struct Driver {
    state: WorkerState,
    functions: Arc<Functions>,
    pool: DataPool,
    scheduler: SchedulerLink,
    data_conns: Map<ConnId, Outbox<DataReply>>,
    fetches: Map<FetchId, AbortHandle>,
    inputs_tx: mpsc::Sender<Input>,
    /// Events produced by carrying out actions (inline executions), handled next.
    local: VecDeque<WorkerEvent>,
    /// This host's identity, if known: same-host contacts of peers with it are used.
    host: Option<String>,
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
                m = from_scheduler.recv() => match m.and_then(|m| from_message::<Vec<SchedulerToWorker>>(&m)) {
                    Ok(batch) => Input::Scheduler(batch),
                    Err(e) => Input::SchedulerLost(e),
                },
                input = inputs.recv() => match input {
                    Some(i) => i,
                    None => break Ok(()),
                },
                _ = heartbeat.tick() => {
                    self.step(WorkerEvent::Tick);
                    self.flush();
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
                Input::DataConn(conn, outbox) => {
                    self.data_conns.insert(conn, outbox);
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
                    Input::DataConn(conn, outbox) => {
                        self.data_conns.insert(conn, outbox);
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
            if let Some(outbox) = self.data_conns.get(&conn) {
                let _ = outbox.push(DataReply::Stats { id, fetched: self.pool.stats() });
            }
            return;
        }
        self.step(WorkerEvent::Data { conn, request });
    }

    /// Feeds one event, then every event its actions produce inline.
    fn step(&mut self, event: WorkerEvent) {
        self.local.push_back(event);
        while let Some(e) = self.local.pop_front() {
            let actions = self.state.handle(e, Instant::now());
            for a in actions {
                self.carry_out(a);
            }
        }
    }

    fn carry_out(&mut self, action: WorkerAction) {
        match action {
            WorkerAction::ToScheduler(msg) => self.scheduler.push(msg),
            WorkerAction::Reply { conn, reply } => {
                if let Some(outbox) = self.data_conns.get(&conn)
                    && let Err(e) = outbox.push(reply)
                {
                    tracing::warn!(conn, error = %e, "a data requester is not reading its replies; disconnected it");
                    self.data_conns.remove(&conn);
                }
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

    fn execute(&mut self, key: Key, run: RunId, func: &str, args: Vec<Payload>) {
        let Some(f) = self.functions.get(func).cloned() else {
            let error = format!("unknown function {func:?} on this worker");
            self.local.push_back(WorkerEvent::ExecuteDone { key, run, result: Err(error), seconds: 0.0 });
            return;
        };
        if !f.blocking {
            let started = Instant::now();
            let result = crate::functions::run_guarded(&f.f, args);
            let seconds = started.elapsed().as_secs_f64();
            self.local.push_back(WorkerEvent::ExecuteDone { key, run, result, seconds });
            return;
        }
        let tx = self.inputs_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || crate::functions::run_guarded(&f.f, args))
                .await
                .unwrap_or_else(|e| Err(format!("task panicked: {e}")));
            let _ = tx.send(Input::ExecuteDone(key, run, result, started.elapsed().as_secs_f64())).await;
        });
    }

    fn flush(&mut self) {
        self.scheduler.start();
        for outbox in self.data_conns.values() {
            outbox.flush();
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
