//! The client: submit work, get futures, gather results straight from the workers.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use courier_core::{CloseSignal, CommError, Payload, Registry};
use futures::Stream;
use futures::task::AtomicWaker;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::protocol::{ArgSpec, FromScheduler, FromWorker, Key, TaskSpec, ToScheduler, ToWorker};
use crate::wire::{recv_batch, send_batch};

/// Why a future has no value.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task (or one it depends on) failed; `message` is the remote error.
    #[error("task {key} failed: {message}")]
    Failed {
        /// The task.
        key: Key,
        /// What the worker (or scheduler) reported.
        message: String,
    },
    /// The task was cancelled.
    #[error("task {key} was cancelled")]
    Cancelled {
        /// The task.
        key: Key,
    },
    /// The result could not be fetched or decoded.
    #[error("result of {key} unavailable: {source}")]
    Fetch {
        /// The task.
        key: Key,
        /// The cause.
        source: CommError,
    },
    /// Talking to the cluster failed.
    #[error(transparent)]
    Comm(#[from] CommError),
}

/// A future's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not finished.
    Pending,
    /// Finished; the result is on these workers.
    Finished,
    /// Failed with this message.
    Error(String),
}

#[derive(Debug)]
enum KeyStatus {
    Pending,
    Done(Vec<String>),
    Erred(String),
}

#[derive(Debug)]
struct KeyState {
    status: KeyStatus,
    refs: usize,
    changed: Arc<Notify>,
    subscribers: Vec<Arc<Completions>>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Key, KeyState>,
    lost: Option<String>,
    retirements: HashMap<u64, tokio::sync::oneshot::Sender<Option<String>>>,
    targets: HashMap<u64, tokio::sync::oneshot::Sender<(usize, Vec<String>)>>,
}

type Peers = Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<courier_core::Comm>>>>>;

#[derive(Debug)]
struct Inner {
    registry: Registry,
    to_scheduler: mpsc::Sender<ToScheduler>,
    state: Mutex<State>,
    /// The worker addresses as last reported; watchers wait on it race-free.
    workers: tokio::sync::watch::Sender<Vec<String>>,
    prefix: String,
    counter: AtomicU64,
    peers: Peers,
    closed: CloseSignal,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn track(&self, key: &Key) {
        let mut s = self.state();
        let k = s.keys.entry(key.clone()).or_insert_with(|| KeyState {
            status: KeyStatus::Pending,
            refs: 0,
            changed: Arc::new(Notify::new()),
            subscribers: Vec::new(),
        });
        k.refs += 1;
        if let Some(why) = &s.lost {
            let why = why.clone();
            if let Some(k) = s.keys.get_mut(key)
                && matches!(k.status, KeyStatus::Pending)
            {
                k.status = KeyStatus::Erred(why);
            }
        }
    }

    fn untrack(&self, key: &Key) {
        let mut s = self.state();
        let Some(k) = s.keys.get_mut(key) else { return };
        k.refs -= 1;
        if k.refs == 0 {
            s.keys.remove(key);
            drop(s);
            // The last reference is gone: the cluster may forget the data.
            let _ = self.to_scheduler.try_send(ToScheduler::Release { keys: vec![key.clone()] });
        }
    }

    fn settle(&self, key: &Key, status: KeyStatus) {
        let mut s = self.state();
        if let Some(k) = s.keys.get_mut(key) {
            k.status = status;
            k.changed.notify_waiters();
            for sub in k.subscribers.drain(..) {
                sub.push(key.clone());
            }
        }
    }
}

/// A connection to a scheduler.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A task's eventual result of type `T`. Cloning is cheap; when the last clone of a key's
/// futures is dropped, the cluster forgets its data.
pub struct TaskFuture<T> {
    key: Key,
    inner: Arc<Inner>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TaskFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture").field("key", &self.key).finish()
    }
}

impl<T> Clone for TaskFuture<T> {
    fn clone(&self) -> Self {
        self.inner.track(&self.key);
        TaskFuture { key: self.key.clone(), inner: self.inner.clone(), _t: PhantomData }
    }
}

impl<T> Drop for TaskFuture<T> {
    fn drop(&mut self) {
        self.inner.untrack(&self.key);
    }
}

/// A task argument: a value, or another task's result.
pub fn arg<T: Serialize + ?Sized>(value: &T) -> ArgSpec {
    ArgSpec::Value(Payload::new(value).expect("task arguments must serialize"))
}

impl<T> TaskFuture<T> {
    /// The task's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This future as an argument of another task (a dependency).
    pub fn arg(&self) -> ArgSpec {
        ArgSpec::Key(self.key.clone())
    }

    /// The workers holding the result (empty until it is finished).
    pub fn who_has(&self) -> Vec<String> {
        match self.inner.state().keys.get(&self.key).map(|k| &k.status) {
            Some(KeyStatus::Done(h)) => h.clone(),
            _ => Vec::new(),
        }
    }

    /// Where the task is.
    pub fn status(&self) -> Status {
        match self.inner.state().keys.get(&self.key).map(|k| &k.status) {
            Some(KeyStatus::Done(_)) => Status::Finished,
            Some(KeyStatus::Erred(e)) => Status::Error(e.clone()),
            _ => Status::Pending,
        }
    }

    /// Waits until the task finished or failed.
    pub async fn wait(&self) -> Result<(), TaskError> {
        self.holders().await.map(|_| ())
    }

    async fn holders(&self) -> Result<Vec<String>, TaskError> {
        loop {
            let changed = {
                let s = self.inner.state();
                let k = s.keys.get(&self.key).expect("a live future's key is tracked");
                match &k.status {
                    KeyStatus::Done(h) => return Ok(h.clone()),
                    KeyStatus::Erred(e) if e == "cancelled" => {
                        return Err(TaskError::Cancelled { key: self.key.clone() });
                    }
                    KeyStatus::Erred(e) => return Err(TaskError::Failed { key: self.key.clone(), message: e.clone() }),
                    KeyStatus::Pending => k.changed.clone(),
                }
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !matches!(self.inner.state().keys.get(&self.key).map(|k| &k.status), Some(KeyStatus::Pending)) {
                continue;
            }
            notified.await;
        }
    }
}

impl<T: DeserializeOwned> TaskFuture<T> {
    /// Waits for the task and fetches its result from a worker holding it.
    pub async fn result(&self) -> Result<T, TaskError> {
        let holders = self.holders().await?;
        let payload = fetch_one(&self.inner, &holders, &self.key).await?;
        payload.decode::<T>().map_err(|source| TaskError::Fetch { key: self.key.clone(), source })
    }
}

async fn pooled(inner: &Inner, addr: &str) -> Result<Arc<tokio::sync::Mutex<courier_core::Comm>>, CommError> {
    let mut p = inner.peers.lock().await;
    if let Some(c) = p.get(addr) {
        return Ok(c.clone());
    }
    let c = Arc::new(tokio::sync::Mutex::new(inner.registry.connect(addr).await?));
    p.insert(addr.to_owned(), c.clone());
    Ok(c)
}

/// Sends one batch of requests to a worker and returns its replies.
async fn ask_worker(inner: &Inner, addr: &str, requests: &[ToWorker]) -> Result<Vec<FromWorker>, CommError> {
    let comm = pooled(inner, addr).await?;
    let mut comm = comm.lock().await;
    let result = async {
        comm.send(courier_core::to_message(requests)?).await?;
        courier_core::from_message::<Vec<FromWorker>>(&comm.recv().await?)
    }
    .await;
    if result.is_err() {
        inner.peers.lock().await.remove(addr);
    }
    result
}

async fn fetch_one(inner: &Inner, holders: &[String], key: &Key) -> Result<Payload, TaskError> {
    let mut last = CommError::closed(format!("no worker holds {key}"));
    for addr in holders {
        match ask_worker(inner, addr, &[ToWorker::Get { keys: vec![key.clone()] }]).await {
            Ok(replies) => {
                if let Some(FromWorker::Data { mut values }) = replies.into_iter().next()
                    && let Some(Some(v)) = values.pop()
                {
                    return Ok(v);
                }
                last = CommError::closed(format!("{addr} no longer holds {key}"));
            }
            Err(e) => last = e,
        }
    }
    Err(TaskError::Fetch { key: key.clone(), source: last })
}

/// A graph of tasks to submit at once (for [`Client::persist`] and [`Client::compute`]).
#[derive(Debug, Default, Clone)]
pub struct Graph {
    tasks: Vec<TaskSpec>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task; returns its key, usable as an argument via [`ArgSpec::Key`].
    pub fn task(&mut self, func: &str, args: Vec<ArgSpec>) -> Key {
        let key = format!("{func}-g{}-{}", fastrand::u64(..), self.tasks.len());
        self.tasks.push(TaskSpec { key: key.clone(), func: func.to_owned(), args, retries: 0 });
        key
    }
}

impl Client {
    /// Connects to the scheduler at `url` (the scheme picks the transport).
    pub async fn connect(registry: Registry, url: &str) -> Result<Client, CommError> {
        let comm = registry.connect(url).await?;
        let (mut tx, mut rx) = comm.split();
        send_batch(&mut tx, &[ToScheduler::RegisterClient { name: format!("client-{}", std::process::id()) }]).await?;
        let (to_scheduler, mut outgoing) = mpsc::channel::<ToScheduler>(65_536);
        let inner = Arc::new(Inner {
            registry,
            to_scheduler,
            state: Mutex::default(),
            workers: tokio::sync::watch::Sender::new(Vec::new()),
            prefix: format!("{:x}", fastrand::u64(..)),
            counter: AtomicU64::new(0),
            peers: Arc::default(),
            closed: CloseSignal::new(),
        });
        // Writer: batches whatever is queued into one message.
        let closed = inner.closed.clone();
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    () = closed.closed() => break,
                    m = outgoing.recv() => match m { Some(m) => m, None => break },
                };
                let mut batch = vec![first];
                while let Ok(m) = outgoing.try_recv() {
                    batch.push(m);
                    if batch.len() >= 16_384 {
                        break;
                    }
                }
                if send_batch(&mut tx, &batch).await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
        });
        // Reader: settles futures. Holds only a weak reference so dropping the client ends it.
        let weak = Arc::downgrade(&inner);
        let closed = inner.closed.clone();
        tokio::spawn(async move {
            let why = loop {
                let batch = tokio::select! {
                    () = closed.closed() => break "the client was closed".to_owned(),
                    b = recv_batch::<FromScheduler>(&mut rx) => match b {
                        Ok(b) => b,
                        Err(e) => break format!("lost the scheduler: {e}"),
                    },
                };
                let Some(inner) = weak.upgrade() else { return };
                for msg in batch {
                    match msg {
                        FromScheduler::Done { key, holders } => inner.settle(&key, KeyStatus::Done(holders)),
                        FromScheduler::Erred { key, error } => inner.settle(&key, KeyStatus::Erred(error)),
                        FromScheduler::Target { id, workers, idle } => {
                            if let Some(tx) = inner.state().targets.remove(&id) {
                                let _ = tx.send((workers, idle));
                            }
                        }
                        FromScheduler::Retired { id, error } => {
                            if let Some(tx) = inner.state().retirements.remove(&id) {
                                let _ = tx.send(error);
                            }
                        }
                        FromScheduler::Workers { addresses } => {
                            inner.workers.send_replace(addresses);
                        }
                        other => tracing::warn!(?other, "unexpected message for a client"),
                    }
                }
            };
            // Nothing pending can finish now: fail it rather than hang.
            if let Some(inner) = weak.upgrade() {
                let pending: Vec<Key> = {
                    let mut s = inner.state();
                    s.lost = Some(why.clone());
                    s.keys
                        .iter()
                        .filter(|(_, k)| matches!(k.status, KeyStatus::Pending))
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                for k in pending {
                    inner.settle(&k, KeyStatus::Erred(why.clone()));
                }
            }
        });
        Ok(Client { inner })
    }

    fn future<T>(&self, key: Key) -> TaskFuture<T> {
        self.inner.track(&key);
        TaskFuture { key, inner: self.inner.clone(), _t: PhantomData }
    }

    fn new_key(&self, func: &str) -> Key {
        format!("{func}-{}-{}", self.inner.prefix, self.inner.counter.fetch_add(1, Ordering::Relaxed))
    }

    async fn send(&self, msg: ToScheduler) -> Result<(), CommError> {
        self.inner.to_scheduler.send(msg).await.map_err(|_| CommError::closed("the client is closed"))
    }

    /// Runs `func(args…)` on a worker.
    pub async fn submit<T>(&self, func: &str, args: Vec<ArgSpec>) -> Result<TaskFuture<T>, CommError> {
        self.submit_with_retries(func, args, 0).await
    }

    /// Like [`Client::submit`], retrying a failed task up to `retries` times.
    pub async fn submit_with_retries<T>(
        &self,
        func: &str,
        args: Vec<ArgSpec>,
        retries: u32,
    ) -> Result<TaskFuture<T>, CommError> {
        let key = self.new_key(func);
        let f = self.future(key.clone());
        self.send(ToScheduler::Submit { tasks: vec![TaskSpec { key, func: func.to_owned(), args, retries }] }).await?;
        Ok(f)
    }

    /// Runs `func` once per argument list; the futures come back in the same order.
    pub async fn map<T>(
        &self,
        func: &str,
        arg_lists: impl IntoIterator<Item = Vec<ArgSpec>>,
    ) -> Result<Vec<TaskFuture<T>>, CommError> {
        let mut futures = Vec::new();
        let mut tasks = Vec::new();
        for args in arg_lists {
            let key = self.new_key(func);
            futures.push(self.future(key.clone()));
            tasks.push(TaskSpec { key, func: func.to_owned(), args, retries: 0 });
        }
        for chunk in tasks.chunks(4096) {
            self.send(ToScheduler::Submit { tasks: chunk.to_vec() }).await?;
        }
        Ok(futures)
    }

    /// Waits for all futures and fetches their results, in order, one request per worker.
    pub async fn gather<T: DeserializeOwned>(&self, futures: &[TaskFuture<T>]) -> Result<Vec<T>, TaskError> {
        let mut holders = Vec::with_capacity(futures.len());
        for f in futures {
            holders.push(f.holders().await?);
        }
        let mut by_worker: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, h) in holders.iter().enumerate() {
            let first = h.first().ok_or_else(|| TaskError::Fetch {
                key: futures[i].key.clone(),
                source: CommError::closed("no worker holds the result"),
            })?;
            by_worker.entry(first.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<T>> = (0..futures.len()).map(|_| None).collect();
        for (addr, idx) in by_worker {
            let keys: Vec<Key> = idx.iter().map(|&i| futures[i].key.clone()).collect();
            let replies = ask_worker(&self.inner, addr, &[ToWorker::Get { keys }]).await?;
            let Some(FromWorker::Data { values }) = replies.into_iter().next() else {
                return Err(TaskError::Comm(CommError::protocol("unexpected reply to Get")));
            };
            for (&i, v) in idx.iter().zip(values) {
                let f = &futures[i];
                let v = match v {
                    Some(v) => v,
                    // Moved or lost meanwhile: try the other holders.
                    None => fetch_one(&self.inner, &holders[i], &f.key).await?,
                };
                out[i] = Some(v.decode::<T>().map_err(|source| TaskError::Fetch { key: f.key.clone(), source })?);
            }
        }
        Ok(out.into_iter().map(|v| v.expect("every index was fetched")).collect())
    }

    /// Puts values into worker memory (spread over the workers) and returns their futures.
    pub async fn scatter<T: Serialize>(&self, values: &[T]) -> Result<Vec<TaskFuture<T>>, CommError> {
        let workers =
            tokio::time::timeout(std::time::Duration::from_secs(30), self.wait_for_workers(|w| !w.is_empty()))
                .await
                .map_err(|_| CommError::closed("no workers to scatter to"))?;
        // Per worker: the store requests, and the keys with sizes to report.
        type Batch = (Vec<ToWorker>, Vec<(Key, u64)>);
        let mut per_worker: HashMap<&str, Batch> = HashMap::new();
        let mut futures = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let key = self.new_key("scatter");
            let value = Payload::new(v)?;
            let w = per_worker.entry(workers[i % workers.len()].as_str()).or_default();
            w.1.push((key.clone(), value.byte_len()));
            w.0.push(ToWorker::Store { key: key.clone(), value });
            futures.push(self.future(key));
        }
        for (addr, (stores, keys)) in per_worker {
            ask_worker(&self.inner, addr, &stores).await?;
            self.send(ToScheduler::Scattered { worker: addr.to_owned(), keys }).await?;
        }
        Ok(futures)
    }

    /// Submits a graph; its results stay on the workers. Returns futures for `outputs`; the
    /// other tasks' results are forgotten once nothing depends on them.
    pub async fn persist<T>(&self, graph: &Graph, outputs: &[Key]) -> Result<Vec<TaskFuture<T>>, CommError> {
        let all: Vec<TaskFuture<()>> = graph.tasks.iter().map(|t| self.future(t.key.clone())).collect();
        let wanted = outputs.iter().map(|k| self.future(k.clone())).collect();
        self.send(ToScheduler::Submit { tasks: graph.tasks.clone() }).await?;
        drop(all);
        Ok(wanted)
    }

    /// Runs a graph and brings the results of `outputs` back.
    pub async fn compute<T: DeserializeOwned>(&self, graph: &Graph, outputs: &[Key]) -> Result<Vec<T>, TaskError> {
        let futures = self.persist::<T>(graph, outputs).await?;
        self.gather(&futures).await
    }

    /// Cancels tasks: their futures fail with [`TaskError::Cancelled`].
    pub async fn cancel<T>(&self, futures: &[&TaskFuture<T>]) -> Result<(), CommError> {
        self.send(ToScheduler::Cancel { keys: futures.iter().map(|f| f.key.clone()).collect() }).await
    }

    /// Waits until every future finished or failed.
    pub async fn wait<T>(&self, futures: &[TaskFuture<T>]) {
        for f in futures {
            let _ = f.wait().await;
        }
    }

    /// A stream of `futures` in the order they complete, to which more can be added while it
    /// is consumed.
    pub fn as_completed<T>(&self, futures: impl IntoIterator<Item = TaskFuture<T>>) -> AsCompleted<T> {
        let mut ac = AsCompleted { shared: Arc::default(), futures: HashMap::new() };
        for f in futures {
            ac.add(f);
        }
        ac
    }

    /// Retires workers gracefully: results only they hold are copied to other workers first,
    /// then they shut down. Refused (the workers stay) when no other worker can take the data.
    pub async fn retire_workers(&self, addresses: &[String]) -> Result<(), TaskError> {
        let id = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.state().retirements.insert(id, tx);
        self.send(ToScheduler::Retire { id, workers: addresses.to_vec() }).await?;
        match rx.await {
            Ok(None) => Ok(()),
            Ok(Some(error)) => {
                Err(TaskError::Failed { key: format!("retire {}", addresses.join(", ")), message: error })
            }
            Err(_) => Err(TaskError::Comm(CommError::closed("lost the scheduler while retiring workers"))),
        }
    }

    /// How many workers the scheduler's outstanding work calls for, and which workers are idle
    /// (for adaptive scaling).
    pub async fn adaptive_target(&self) -> Result<(usize, Vec<String>), CommError> {
        let id = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.state().targets.insert(id, tx);
        self.send(ToScheduler::AdaptiveTarget { id }).await?;
        rx.await.map_err(|_| CommError::closed("lost the scheduler"))
    }

    /// Current worker addresses, as the scheduler last reported them.
    pub fn workers(&self) -> Vec<String> {
        self.inner.workers.borrow().clone()
    }

    /// Waits until the worker addresses satisfy `predicate` (checked now, then on every
    /// change; no update is missed) and returns them. Pending forever if the scheduler goes.
    pub async fn wait_for_workers(&self, mut predicate: impl FnMut(&Vec<String>) -> bool) -> Vec<String> {
        let mut rx = self.inner.workers.subscribe();
        // Clone out before any further await: the watch guard must not be held across one.
        let found = rx.wait_for(|w| predicate(w)).await.map(|w| w.clone());
        match found {
            Ok(w) => w,
            Err(_) => std::future::pending().await,
        }
    }

    /// Disconnects; the cluster releases this client's data.
    pub async fn close(&self) {
        self.inner.closed.close();
    }
}

#[derive(Debug, Default)]
struct Completions {
    ready: Mutex<VecDeque<Key>>,
    waker: AtomicWaker,
}

impl Completions {
    fn push(&self, key: Key) {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).push_back(key);
        self.waker.wake();
    }
}

/// Futures in completion order; see [`Client::as_completed`].
#[derive(Debug)]
pub struct AsCompleted<T> {
    shared: Arc<Completions>,
    futures: HashMap<Key, TaskFuture<T>>,
}

impl<T> AsCompleted<T> {
    /// Adds a future; it is yielded once complete (at once if it already is).
    pub fn add(&mut self, f: TaskFuture<T>) {
        {
            let mut s = f.inner.state();
            let k = s.keys.get_mut(&f.key).expect("a live future's key is tracked");
            if matches!(k.status, KeyStatus::Pending) {
                k.subscribers.push(self.shared.clone());
            } else {
                self.shared.push(f.key.clone());
            }
        }
        self.futures.insert(f.key.clone(), f);
    }

    /// Futures not yet yielded.
    pub fn len(&self) -> usize {
        self.futures.len()
    }

    /// True when nothing is left to yield.
    pub fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }
}

impl<T> Stream for AsCompleted<T> {
    type Item = TaskFuture<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TaskFuture<T>>> {
        let this = self.get_mut();
        loop {
            if this.futures.is_empty() {
                return Poll::Ready(None);
            }
            this.shared.waker.register(cx.waker());
            let next = this.shared.ready.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            match next {
                Some(key) => {
                    if let Some(f) = this.futures.remove(&key) {
                        return Poll::Ready(Some(f));
                    }
                }
                None => return Poll::Pending,
            }
        }
    }
}
