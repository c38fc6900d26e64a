//! The worker: runs tasks the scheduler assigns, keeps results in memory, fetches
//! dependencies from peer workers directly, and serves its data to peers and clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_core::{CloseSignal, CommError, CommSender, ErrorKind, Payload, Registry};
use tokio::sync::{Semaphore, mpsc};

use crate::functions::Functions;
use crate::protocol::{ArgSpec, FromScheduler, FromWorker, Key, ToScheduler, ToWorker};
use crate::wire::{data_listen_url, recv_batch, send_batch};

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The scheduler's URL; its scheme picks the transport for everything.
    pub scheduler: String,
    /// Where to listen for peers and clients (default: the scheduler's scheme on 127.0.0.1:0).
    pub listen: Option<String>,
    /// Tasks run at once for blocking functions (default 1).
    pub nthreads: u32,
    /// A name (default: the data address).
    pub name: Option<String>,
}

impl WorkerConfig {
    /// A worker of one thread for `scheduler`.
    pub fn new(scheduler: impl Into<String>) -> Self {
        WorkerConfig { scheduler: scheduler.into(), listen: None, nthreads: 1, name: None }
    }
}

type Store = Arc<Mutex<HashMap<Key, Payload>>>;

/// How often a worker tells the scheduler it is alive.
pub(crate) const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn lock(s: &Store) -> std::sync::MutexGuard<'_, HashMap<Key, Payload>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
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

/// Starts a worker; returns once it is registered with the scheduler. The worker runs until
/// the scheduler goes away or [`WorkerHandle::shutdown`].
pub async fn start_worker(
    registry: Registry,
    functions: Arc<Functions>,
    config: WorkerConfig,
) -> Result<(WorkerHandle, tokio::task::JoinHandle<Result<(), CommError>>), CommError> {
    let listen = config.listen.clone().unwrap_or_else(|| data_listen_url(&config.scheduler));
    let mut listener = registry.listen(&listen).await?;
    let address = listener.contact_address().to_string();
    let store: Store = Arc::default();
    let shutdown = CloseSignal::new();

    // Serve data to peers and clients.
    let serve_store = store.clone();
    let serve_stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let comm = tokio::select! {
                () = serve_stop.closed() => break,
                c = listener.accept() => match c { Ok(c) => c, Err(_) => break },
            };
            let (store, stop) = (serve_store.clone(), serve_stop.clone());
            tokio::spawn(async move {
                let (mut tx, mut rx) = comm.split();
                loop {
                    // A retired or stopped worker serves no more data.
                    let batch = tokio::select! {
                        () = stop.closed() => break,
                        b = recv_batch::<ToWorker>(&mut rx) => match b { Ok(b) => b, Err(_) => break },
                    };
                    let mut replies = Vec::with_capacity(batch.len());
                    for req in batch {
                        replies.push(match req {
                            ToWorker::Get { keys } => {
                                let s = lock(&store);
                                FromWorker::Data { values: keys.iter().map(|k| s.get(k).cloned()).collect() }
                            }
                            ToWorker::Store { key, value } => {
                                lock(&store).insert(key, value);
                                FromWorker::Stored
                            }
                        });
                    }
                    if send_batch(&mut tx, &replies).await.is_err() {
                        break;
                    }
                }
            });
        }
        listener.close().await;
    });

    let name = config.name.clone().unwrap_or_else(|| address.clone());
    let comm = registry.connect(&config.scheduler).await?;
    let (mut tx, rx) = comm.split();
    let nthreads = config.nthreads.max(1);
    send_batch(&mut tx, &[ToScheduler::RegisterWorker { name, address: address.clone(), nthreads }]).await?;
    let handle = WorkerHandle { address: address.clone(), shutdown: shutdown.clone() };
    let state = WorkerLoop {
        registry,
        functions,
        store,
        peers: Arc::default(),
        threads: Arc::new(Semaphore::new(nthreads as usize)),
        out: Vec::new(),
        shutting_down: false,
        slots: Arc::default(),
    };
    let task = tokio::spawn(state.run(tx, rx, shutdown));
    Ok((handle, task))
}

type Peers = Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<courier_core::Comm>>>>>;

struct WorkerLoop {
    registry: Registry,
    functions: Arc<Functions>,
    store: Store,
    peers: Peers,
    threads: Arc<Semaphore>,
    out: Vec<ToScheduler>,
    shutting_down: bool,
    slots: Slots,
}

/// Where a blocking task is on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Waiting for a thread: can still be stolen.
    Queued,
    /// Started: stays here.
    Running,
}

type Slots = Arc<Mutex<HashMap<Key, Slot>>>;

fn lock_slots(s: &Slots) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A task's outcome: its result and how long it ran, or its error.
type Done = Result<(Payload, f64), String>;

/// Why a task's arguments could not be assembled.
#[derive(Debug)]
enum ArgsError {
    /// A dependency could not be fetched from any holder.
    Missing(Key, String),
}

/// A task whose arguments were fetched (or could not be).
type Ready = (Key, String, Result<Vec<Payload>, ArgsError>);

impl WorkerLoop {
    async fn run(
        mut self,
        mut tx: CommSender,
        mut rx: courier_core::CommReceiver,
        shutdown: CloseSignal,
    ) -> Result<(), CommError> {
        let (ready_tx, mut ready_rx) = mpsc::channel::<Ready>(4096);
        let (done_tx, mut done_rx) = mpsc::channel::<(Key, Done)>(4096);
        let (copied_tx, mut copied_rx) = mpsc::channel::<Key>(4096);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                () = shutdown.closed() => break Ok(()),
                batch = recv_batch::<FromScheduler>(&mut rx) => match batch {
                    Ok(batch) => for msg in batch { self.on_scheduler(msg, &ready_tx, &done_tx, &copied_tx) },
                    Err(e) if e.is_closed() => break Ok(()),
                    Err(e) => break Err(e),
                },
                Some((key, func, args)) = ready_rx.recv() => match args {
                    Ok(args) => self.execute(key, &func, args, &done_tx),
                    Err(ArgsError::Missing(dep, why)) => {
                        tracing::debug!(%key, %dep, %why, "dependency unavailable");
                        self.out.push(ToScheduler::MissingData { key, dep });
                    }
                },
                Some((key, result)) = done_rx.recv() => self.record(key, result),
                Some(key) = copied_rx.recv() => self.out.push(ToScheduler::Replicated { key }),
                _ = heartbeat.tick() => self.out.push(ToScheduler::Heartbeat),
            }
            // Batch whatever else is already here before writing to the scheduler.
            while let Ok((key, result)) = done_rx.try_recv() {
                self.record(key, result);
            }
            if !self.out.is_empty() {
                let out = std::mem::take(&mut self.out);
                if let Err(e) = send_batch(&mut tx, &out).await {
                    break if e.is_closed() { Ok(()) } else { Err(e) };
                }
            }
            if self.shutting_down {
                tracing::info!("retired by the scheduler; exiting");
                break Ok(());
            }
        };
        shutdown.close();
        let _ = tx.close().await;
        result
    }

    fn on_scheduler(
        &mut self,
        msg: FromScheduler,
        ready: &mpsc::Sender<Ready>,
        done: &mpsc::Sender<(Key, Done)>,
        copied: &mpsc::Sender<Key>,
    ) {
        match msg {
            FromScheduler::Compute { key, func, args, who_has } => {
                let local: Option<Vec<Payload>> = {
                    let s = lock(&self.store);
                    args.iter()
                        .map(|a| match a {
                            ArgSpec::Value(p) => Some(p.clone()),
                            ArgSpec::Key(k) => s.get(k).cloned(),
                        })
                        .collect()
                };
                match local {
                    Some(values) => self.execute(key, &func, values, done),
                    None => {
                        let (registry, store, peers, ready) =
                            (self.registry.clone(), self.store.clone(), self.peers.clone(), ready.clone());
                        tokio::spawn(async move {
                            let values = gather_args(&registry, &store, &peers, &args, &who_has).await;
                            let _ = ready.send((key, func, values)).await;
                        });
                    }
                }
            }
            FromScheduler::Release { keys } => {
                let mut s = lock(&self.store);
                for k in keys {
                    s.remove(&k);
                }
            }
            FromScheduler::Replicate { key, from } => {
                let (registry, store, peers, copied) =
                    (self.registry.clone(), self.store.clone(), self.peers.clone(), copied.clone());
                tokio::spawn(async move {
                    for addr in &from {
                        if let Ok(Some(v)) = fetch(&registry, &peers, addr, &key).await {
                            lock(&store).insert(key.clone(), v);
                            let _ = copied.send(key).await;
                            return;
                        }
                    }
                    tracing::warn!(%key, ?from, "could not replicate");
                });
            }
            FromScheduler::Shutdown => self.shutting_down = true,
            FromScheduler::Steal { key } => {
                // Transactional: a queued task is removed under the same lock its runner checks,
                // so it either runs here or is given up, never both.
                let stolen = {
                    let mut slots = lock_slots(&self.slots);
                    if slots.get(&key) == Some(&Slot::Queued) {
                        slots.remove(&key);
                        true
                    } else {
                        false
                    }
                };
                self.out.push(ToScheduler::StealReply { key, stolen });
            }
            other => tracing::warn!(?other, "unexpected message for a worker"),
        }
    }

    fn execute(&mut self, key: Key, func: &str, args: Vec<Payload>, done: &mpsc::Sender<(Key, Done)>) {
        let Some(f) = self.functions.get(func).cloned() else {
            return self.record(key, Err(format!("unknown function {func:?} on this worker")));
        };
        if !f.blocking {
            let started = std::time::Instant::now();
            let result = run_guarded(&f.f, args);
            return self.record(key, result.map(|p| (p, started.elapsed().as_secs_f64())));
        }
        let (threads, done, slots) = (self.threads.clone(), done.clone(), self.slots.clone());
        lock_slots(&slots).insert(key.clone(), Slot::Queued);
        tokio::spawn(async move {
            let Ok(_permit) = threads.acquire_owned().await else { return };
            {
                let mut s = lock_slots(&slots);
                match s.get_mut(&key) {
                    Some(slot) => *slot = Slot::Running,
                    None => return, // stolen while queued: another worker runs it
                }
            }
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || run_guarded(&f.f, args))
                .await
                .unwrap_or_else(|e| Err(format!("task panicked: {e}")))
                .map(|p| (p, started.elapsed().as_secs_f64()));
            lock_slots(&slots).remove(&key);
            let _ = done.send((key, result)).await;
        });
    }

    fn record(&mut self, key: Key, result: Result<(Payload, f64), String>) {
        match result {
            Ok((value, seconds)) => {
                let nbytes = value.byte_len();
                lock(&self.store).insert(key.clone(), value);
                self.out.push(ToScheduler::Finished { key, nbytes, seconds });
            }
            Err(error) => self.out.push(ToScheduler::Erred { key, error }),
        }
    }
}

/// Runs a task function; a panic becomes the task's error instead of killing the worker.
fn run_guarded(f: &crate::functions::TaskFn, args: Vec<Payload>) -> Result<Payload, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(args))).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(format!("task panicked: {}", msg.unwrap_or_default()))
    })
}

/// Resolves arguments, fetching missing dependencies from the workers that hold them.
async fn gather_args(
    registry: &Registry,
    store: &Store,
    peers: &Peers,
    args: &[ArgSpec],
    who_has: &[(Key, Vec<String>)],
) -> Result<Vec<Payload>, ArgsError> {
    let holders: HashMap<&Key, &Vec<String>> = who_has.iter().map(|(k, h)| (k, h)).collect();
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        match a {
            ArgSpec::Value(p) => values.push(p.clone()),
            ArgSpec::Key(k) => {
                if let Some(v) = lock(store).get(k).cloned() {
                    values.push(v);
                    continue;
                }
                let mut last = format!("no worker holds dependency {k}");
                let mut found = None;
                for addr in holders.get(k).map(|v| v.as_slice()).unwrap_or_default() {
                    match fetch(registry, peers, addr, k).await {
                        Ok(Some(v)) => {
                            found = Some(v);
                            break;
                        }
                        Ok(None) => last = format!("{addr} no longer holds dependency {k}"),
                        Err(e) => last = format!("fetching dependency {k} from {addr}: {e}"),
                    }
                }
                values.push(found.ok_or_else(|| ArgsError::Missing(k.clone(), last))?);
            }
        }
    }
    Ok(values)
}

/// Gets one key from a peer, over a pooled comm.
pub(crate) async fn fetch(
    registry: &Registry,
    peers: &Peers,
    addr: &str,
    key: &Key,
) -> Result<Option<Payload>, CommError> {
    let comm = {
        let mut p = peers.lock().await;
        match p.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(tokio::sync::Mutex::new(registry.connect(addr).await?));
                p.insert(addr.to_owned(), c.clone());
                c
            }
        }
    };
    let mut comm = comm.lock().await;
    let result = async {
        comm.send(courier_core::to_message(&[ToWorker::Get { keys: vec![key.clone()] }])?).await?;
        let reply: Vec<FromWorker> = courier_core::from_message(&comm.recv().await?)?;
        match reply.into_iter().next() {
            Some(FromWorker::Data { mut values }) if values.len() == 1 => Ok(values.pop().flatten()),
            _ => Err(CommError::new(ErrorKind::Protocol, "unexpected reply to Get")),
        }
    }
    .await;
    if result.is_err() {
        peers.lock().await.remove(addr);
    }
    result
}
