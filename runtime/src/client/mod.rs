//! The client: submits work, holds futures, gathers results straight from the workers.
//!
//! - [`futures`](TaskFuture): one entry per key it holds futures for, reference-counted;
//!   dropping the last future releases the key (a non-blocking push).
//! - [`as_completed`](AsCompleted): completion order, accepting new futures while running.
//! - fetching: results come from the workers' data listeners, one request per worker per
//!   gather, concurrently, matched by request id, with timeouts; a failing holder makes the
//!   client ask the scheduler where the key lives now.
//!
//! Everything sent to the scheduler goes through one batched outbox; requests expecting a
//! reply (scatter, retire, who-has, the adaptive target) carry an id, and their replies are
//! matched by it.

mod as_completed;
mod fetch;
mod futures;
mod graph;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::{CloseSignal, CommError, Payload, Registry, into_value, to_message};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, oneshot};

pub use self::as_completed::AsCompleted;
use self::futures::{KeyStatus, Keys, lock, settle_in};
pub use self::futures::{Status, TaskError, TaskFuture, arg, try_arg};
pub use self::graph::Graph;
use crate::collections::Map;
use crate::driver::batched::Outbox;
use crate::driver::pool::DataPool;
use crate::protocol::bounds::MAX_TASKS_PER_SUBMIT;
use crate::protocol::{
    ArgSpec, ClientToScheduler, DataReply, DataRequest, Hello, Key, RequestId, RetireError, ScatterError,
    SchedulerToClient, TaskSpec, TransferCount,
};

/// Tasks per `Submit` message.
const SUBMIT_CHUNK: usize = 4096;
/// Tasks in the first `Submit` of a `map`; each next one doubles, up to [`SUBMIT_CHUNK`]. The
/// scheduler starts on the first tasks while the client is still making the rest (a first
/// batch of 4,096 trivial tasks kept it idle for ~4 ms, ~2 % of a 100,000-task map).
const FIRST_CHUNK: usize = 256;
/// Messages queued for the scheduler beyond which producers (`submit`, `map`) wait.
const HIGH_WATER: usize = 16_384;
/// How long a data request to a worker may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a cluster-wide request (scatter, retirement) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The scheduler refused or could not complete the retirement.
    #[error(transparent)]
    Retire(#[from] RetireError),
    /// The scheduler refused the scatter.
    #[error(transparent)]
    Scatter(#[from] ScatterError),
    /// A worker refused a scattered value.
    #[error("worker {worker} refused {key}: {reason}")]
    Refused {
        /// The worker.
        worker: String,
        /// The key.
        key: Key,
        /// Why.
        reason: String,
    },
    /// Talking to the cluster failed.
    #[error(transparent)]
    Comm(#[from] CommError),
}

#[derive(Debug)]
pub(crate) struct Inner {
    outbox: Outbox<ClientToScheduler>,
    pub(crate) keys: Mutex<Keys>,
    requests: Mutex<Map<RequestId, oneshot::Sender<SchedulerToClient>>>,
    /// The worker addresses as last reported; watchers wait on it race-free.
    workers: tokio::sync::watch::Sender<Vec<String>>,
    prefix: String,
    counter: AtomicU64,
    pub(crate) pool: DataPool,
    closed: CloseSignal,
    /// This host's identity, when the registry has shm://: workers announcing it are fetched
    /// from at their same-host address.
    host: Option<String>,
}

impl Inner {
    pub(crate) fn changed(&self, key: &Key) -> Option<Arc<Notify>> {
        lock(&self.keys).keys.get_mut(key).map(|k| k.changed())
    }

    /// Sends a request built from a fresh id and waits for the reply with that id.
    async fn ask(&self, build: impl FnOnce(RequestId) -> ClientToScheduler) -> Result<SchedulerToClient, CommError> {
        let id = self.counter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.requests).insert(id, tx);
        let _unregister = Unregister { requests: &self.requests, id };
        self.outbox.send(build(id)).map_err(|e| CommError::closed(format!("the scheduler comm: {e}")))?;
        rx.await.map_err(|_| CommError::closed("lost the scheduler before it answered"))
    }

    pub(crate) async fn who_has(&self, keys: Vec<Key>) -> Result<Vec<Vec<String>>, CommError> {
        match self.ask(|id| ClientToScheduler::WhoHas { id, keys }).await? {
            SchedulerToClient::WhoHasReply { holders, .. } => Ok(holders),
            other => Err(CommError::protocol(format!("unexpected answer to WhoHas: {other:?}"))),
        }
    }

    fn reply(&self, id: RequestId, msg: SchedulerToClient) {
        if let Some(tx) = lock(&self.requests).remove(&id) {
            let _ = tx.send(msg);
        }
    }

    /// Handles a batch from the scheduler. Runs of task news (most of a batch) settle under
    /// one lock of the key table, held for at most [`SETTLE_RUN`] keys at a time.
    fn on_batch(&self, batch: Vec<SchedulerToClient>) {
        /// Most keys settled per lock of the key table: callers waiting on it wait briefly.
        const SETTLE_RUN: usize = 256;
        let mut batch = batch.into_iter();
        while batch.len() > 0 {
            let mut other = None;
            {
                let mut s = lock(&self.keys);
                for msg in batch.by_ref().take(SETTLE_RUN) {
                    match task_news(msg) {
                        Ok((key, status)) => settle_in(&mut s, &key, status),
                        Err(msg) => {
                            other = Some(msg);
                            break;
                        }
                    }
                }
            }
            if let Some(msg) = other {
                self.on_message(msg);
            }
        }
    }

    fn on_message(&self, msg: SchedulerToClient) {
        match msg {
            SchedulerToClient::Done { key, holders } => self.settle(&key, KeyStatus::Done(holders)),
            SchedulerToClient::Erred { key, failure } => self.settle(&key, KeyStatus::Failed(failure)),
            SchedulerToClient::Lost { key } => self.settle(&key, KeyStatus::Pending),
            SchedulerToClient::Workers { added, removed, local } => {
                for a in &removed {
                    self.pool.forget(a);
                }
                for (address, contact) in &local {
                    if self.host.as_ref() == Some(&contact.host) {
                        self.pool.set_local(address, &contact.address);
                    }
                }
                self.workers.send_modify(|w| {
                    w.retain(|a| !removed.contains(a));
                    w.extend(added);
                });
            }
            m @ SchedulerToClient::ScatterTargets { id, .. }
            | m @ SchedulerToClient::WhoHasReply { id, .. }
            | m @ SchedulerToClient::Retired { id, .. }
            | m @ SchedulerToClient::Target { id, .. }
            | m @ SchedulerToClient::WorkerInfo { id, .. } => self.reply(id, m),
        }
    }

    /// The scheduler is gone: nothing pending can finish; fail it rather than hang.
    fn lost(&self, why: String) {
        let pending: Vec<Key> = {
            let mut s = lock(&self.keys);
            s.lost = Some(why.clone());
            s.keys.iter().filter(|(_, k)| matches!(k.status, KeyStatus::Pending)).map(|(k, _)| k.clone()).collect()
        };
        for k in pending {
            self.settle(&k, KeyStatus::Disconnected(why.clone()));
        }
        lock(&self.requests).clear();
        self.closed.close();
    }
}

/// A message's news of one task, as the status it gives the key; other messages back.
fn task_news(msg: SchedulerToClient) -> Result<(Key, KeyStatus), SchedulerToClient> {
    match msg {
        SchedulerToClient::Done { key, holders } => Ok((key, KeyStatus::Done(holders))),
        SchedulerToClient::Erred { key, failure } => Ok((key, KeyStatus::Failed(failure))),
        SchedulerToClient::Lost { key } => Ok((key, KeyStatus::Pending)),
        other => Err(other),
    }
}

struct Unregister<'a> {
    requests: &'a Mutex<Map<RequestId, oneshot::Sender<SchedulerToClient>>>,
    id: RequestId,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        lock(self.requests).remove(&self.id);
    }
}

/// A connection to a scheduler. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Marks wanted every task that a task of a later batch (of `batch` specs) depends on, unless
/// it already was; returns those keys, to release once all batches are sent.
fn hold_across_batches(specs: &mut [TaskSpec], batch: usize) -> Vec<Key> {
    let batch_of: crate::collections::Map<Key, usize> =
        specs.iter().enumerate().map(|(i, t)| (t.key.clone(), i / batch)).collect();
    let mut held: crate::collections::Set<Key> = crate::collections::Set::default();
    for (i, t) in specs.iter().enumerate() {
        for d in t.dependencies() {
            if batch_of.get(&d).is_some_and(|&b| b < i / batch) {
                held.insert(d);
            }
        }
    }
    let mut keys = Vec::new();
    for t in specs.iter_mut().filter(|t| !t.wanted && held.contains(&t.key)) {
        t.wanted = true;
        keys.push(t.key.clone());
    }
    keys
}

impl Client {
    /// Connects to the scheduler at `url` (the scheme picks the transport).
    pub async fn connect(registry: Registry, url: &str) -> Result<Client, CommError> {
        let comm = registry.connect(url).await?;
        let (mut tx, mut rx) = comm.split();
        let name = format!("client-{}", std::process::id());
        tx.send(to_message(&[Hello::Client { name }])?).await?;
        let prefix = format!("{:016x}", getrandom::u64().unwrap_or_else(|_| fastrand::u64(..)));
        let inner = Arc::new(Inner {
            outbox: Outbox::spawn(tx, usize::MAX, url.to_owned()),
            keys: Mutex::default(),
            requests: Mutex::default(),
            workers: tokio::sync::watch::Sender::new(Vec::new()),
            prefix,
            counter: AtomicU64::new(1),
            host: registry.schemes().contains(&"shm").then(crate::protocol::LocalContact::this_host).flatten(),
            pool: DataPool::new(registry, FETCH_TIMEOUT),
            closed: CloseSignal::new(),
        });
        // The reader holds only a weak reference, so dropping every `Client` ends it.
        let weak = Arc::downgrade(&inner);
        let closed = inner.closed.clone();
        let outbox = inner.outbox.clone();
        tokio::spawn(async move {
            let why = loop {
                let m = tokio::select! {
                    () = closed.closed() => break "the client was closed".to_owned(),
                    // Whichever side notices first, a caller sees the same reason.
                    () = outbox.closed() => break "lost the scheduler: the comm to it closed".to_owned(),
                    m = rx.recv() => m,
                };
                let batch = match m.and_then(into_value::<Vec<SchedulerToClient>>) {
                    Ok(b) => b,
                    Err(e) => break format!("lost the scheduler: {e}"),
                };
                let Some(inner) = weak.upgrade() else { return };
                inner.on_batch(batch);
            };
            tracing::debug!(reason = %why, "the client's scheduler comm ended");
            if let Some(inner) = weak.upgrade() {
                inner.lost(why);
            }
            outbox.abort();
        });
        tracing::debug!(scheduler = %url, "client connected");
        Ok(Client { inner })
    }

    fn future<T>(&self, key: Key) -> TaskFuture<T> {
        TaskFuture::new(key, self.inner.clone())
    }

    fn new_key(&self, func: &str) -> Key {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        // `{func}-{prefix}-{n}`, written without the formatting machinery (which cost more
        // than the rest of submitting a task) and sized up front.
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = std::str::from_utf8(&digits[at..]).unwrap_or_default();
        let parts = [func, "-", &self.inner.prefix, "-", digits];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Most keys are assembled on the stack, so the key's shared text is the one allocation.
        let mut short = [0u8; 128];
        if len <= short.len() {
            let mut end = 0;
            for p in parts {
                short[end..end + p.len()].copy_from_slice(p.as_bytes());
                end += p.len();
            }
            if let Ok(text) = std::str::from_utf8(&short[..end]) {
                return Key::from(text);
            }
        }
        Key::from(parts.concat())
    }

    async fn send(&self, msg: ClientToScheduler) -> Result<(), CommError> {
        self.inner.outbox.wait_below(HIGH_WATER).await;
        self.inner.outbox.send(msg).map_err(|e| CommError::closed(format!("the scheduler comm: {e}")))
    }

    /// Submits `tasks` in batches of [`SUBMIT_CHUNK`], in order.
    async fn submit_specs(&self, tasks: Vec<TaskSpec>) -> Result<(), CommError> {
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            let chunk: Vec<TaskSpec> = tasks.by_ref().take(SUBMIT_CHUNK).collect();
            self.send(ClientToScheduler::Submit { tasks: chunk }).await?;
        }
        Ok(())
    }

    /// Runs `func(args…)` on a worker.
    pub async fn submit<T>(&self, func: &str, args: Vec<ArgSpec>) -> Result<TaskFuture<T>, CommError> {
        self.submit_with_retries(func, args, 0).await
    }

    /// Like [`Client::submit`], retrying a failed function up to `retries` times.
    pub async fn submit_with_retries<T>(
        &self,
        func: &str,
        args: Vec<ArgSpec>,
        retries: u32,
    ) -> Result<TaskFuture<T>, CommError> {
        let key = self.new_key(func);
        let f = self.future(key.clone());
        let spec = TaskSpec { key, func: func.into(), args, retries, wanted: true };
        self.send(ClientToScheduler::Submit { tasks: vec![spec] }).await?;
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
        // One shared name for every task of the map.
        let name = Key::from(func);
        let mut chunk = FIRST_CHUNK;
        for args in arg_lists {
            let key = self.new_key(func);
            futures.push(self.future(key.clone()));
            tasks.push(TaskSpec { key, func: name.clone(), args, retries: 0, wanted: true });
            if tasks.len() == chunk {
                self.submit_specs(std::mem::take(&mut tasks)).await?;
                chunk = (chunk * 2).min(SUBMIT_CHUNK);
            }
        }
        self.submit_specs(tasks).await?;
        Ok(futures)
    }

    /// Waits for all futures and fetches their results, in order: one request per worker,
    /// sent concurrently. Fails as soon as one of the tasks has failed, without waiting for
    /// the others.
    pub async fn gather<T: DeserializeOwned>(&self, futures: &[TaskFuture<T>]) -> Result<Vec<T>, TaskError> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        let payloads = fetch::gather_payloads(&self.inner, &keys).await?;
        payloads
            .into_iter()
            .zip(keys)
            .map(|(p, key)| p.decode::<T>().map_err(|source| TaskError::Fetch { key, source }))
            .collect()
    }

    /// Puts values into worker memory (spread over the workers) and returns their futures,
    /// once the scheduler knows every value is in place.
    pub async fn scatter<T: Serialize>(&self, values: &[T]) -> Result<Vec<TaskFuture<T>>, ClusterError> {
        let mut keys = Vec::with_capacity(values.len());
        let mut payloads = Vec::with_capacity(values.len());
        for v in values {
            let p = Payload::new(v)?;
            keys.push((self.new_key("scatter"), p.byte_len()));
            payloads.push(p);
        }
        let futures: Vec<TaskFuture<T>> = keys.iter().map(|(k, _)| self.future(k.clone())).collect();
        let request = keys.clone();
        let targets = match self.inner.ask(|id| ClientToScheduler::Scatter { id, keys: request }).await? {
            SchedulerToClient::ScatterTargets { result, .. } => result?,
            other => return Err(CommError::protocol(format!("unexpected answer to Scatter: {other:?}")).into()),
        };
        let stores = targets.into_iter().zip(payloads).map(|(t, value)| {
            let pool = &self.inner.pool;
            async move {
                let reply = pool
                    .request(&t.worker, |id| DataRequest::Store { id, key: t.key.clone(), ticket: t.ticket, value })
                    .await?;
                match reply {
                    DataReply::Stored { .. } => Ok(()),
                    DataReply::Refused { reason, .. } => {
                        Err(ClusterError::Refused { worker: t.worker.clone(), key: t.key.clone(), reason })
                    }
                    other => Err(CommError::protocol(format!("unexpected answer to Store: {other:?}")).into()),
                }
            }
        });
        for r in ::futures::future::join_all(stores).await {
            r?;
        }
        for f in &futures {
            f.wait().await.map_err(|e| match e {
                TaskError::Comm(c) | TaskError::Fetch { source: c, .. } => ClusterError::Comm(c),
                TaskError::Failed { key, failure } => {
                    ClusterError::Refused { worker: String::new(), key, reason: failure.to_string() }
                }
            })?;
        }
        Ok(futures)
    }

    /// Submits a graph; its results stay on the workers. Returns futures for `outputs`; the
    /// other tasks' results are forgotten once nothing depends on them.
    ///
    /// A large graph goes in several `Submit` batches. A result that a later batch needs is
    /// submitted as wanted, so the scheduler cannot forget it before its dependents arrive,
    /// and released once every batch is sent.
    pub async fn persist<T>(&self, graph: &Graph, outputs: &[Key]) -> Result<Vec<TaskFuture<T>>, CommError> {
        let wanted: Vec<TaskFuture<T>> = outputs.iter().map(|k| self.future(k.clone())).collect();
        let mut specs = graph.specs(outputs);
        let held = hold_across_batches(&mut specs, SUBMIT_CHUNK);
        self.submit_specs(specs).await?;
        for keys in held.chunks(crate::protocol::bounds::MAX_KEYS_PER_MESSAGE) {
            self.send(ClientToScheduler::Release { keys: keys.to_vec() }).await?;
        }
        Ok(wanted)
    }

    /// Runs a graph and brings the results of `outputs` back.
    pub async fn compute<T: DeserializeOwned>(&self, graph: &Graph, outputs: &[Key]) -> Result<Vec<T>, TaskError> {
        let futures = self.persist::<T>(graph, outputs).await?;
        self.gather(&futures).await
    }

    /// Cancels tasks: their futures (and those of tasks depending on them) fail as cancelled,
    /// at once, whether or not a worker has started them.
    pub async fn cancel<T>(&self, futures: &[&TaskFuture<T>]) -> Result<(), CommError> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        for k in &keys {
            self.inner.settle(k, KeyStatus::Failed(crate::protocol::Failure::Cancelled));
        }
        self.send(ClientToScheduler::Cancel { keys }).await
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
        let mut ac = AsCompleted::new();
        for f in futures {
            ac.add(f);
        }
        ac
    }

    /// Retires workers gracefully: results only they hold are copied to other workers first,
    /// then they shut down. Refused (the workers stay) when no other worker can take the data.
    pub async fn retire_workers(&self, addresses: &[String]) -> Result<(), ClusterError> {
        let workers = addresses.to_vec();
        match self.inner.ask(|id| ClientToScheduler::Retire { id, workers }).await? {
            SchedulerToClient::Retired { result, .. } => Ok(result?),
            other => Err(CommError::protocol(format!("unexpected answer to Retire: {other:?}")).into()),
        }
    }

    /// How many workers the scheduler's outstanding work calls for, and which workers are idle
    /// (for adaptive scaling).
    pub async fn adaptive_target(&self) -> Result<(usize, Vec<String>), CommError> {
        match self.inner.ask(|id| ClientToScheduler::AdaptiveTarget { id }).await? {
            SchedulerToClient::Target { workers, idle, .. } => Ok((workers, idle)),
            other => Err(CommError::protocol(format!("unexpected answer to AdaptiveTarget: {other:?}"))),
        }
    }

    /// Every worker as the scheduler sees it: threads, runs, results held, and memory
    /// (managed, spilled, RSS, paused, spill and unspill counts, the last spill error).
    pub async fn worker_info(&self) -> Result<Vec<crate::protocol::WorkerSummary>, CommError> {
        match self.inner.ask(|id| ClientToScheduler::WorkerInfo { id }).await? {
            SchedulerToClient::WorkerInfo { workers, .. } => Ok(workers),
            other => Err(CommError::protocol(format!("unexpected answer to WorkerInfo: {other:?}"))),
        }
    }

    /// Where each key lives now, as the scheduler says (empty: not in memory).
    pub async fn who_has(&self, keys: &[Key]) -> Result<Vec<Vec<String>>, CommError> {
        self.inner.who_has(keys.to_vec()).await
    }

    /// Current worker addresses, as the scheduler last reported them.
    pub fn workers(&self) -> Vec<String> {
        self.inner.workers.borrow().clone()
    }

    /// Values this client has fetched from workers (gathers), per transport scheme: shows
    /// whether same-host workers were reached over shm://.
    pub fn transfer_stats(&self) -> Vec<TransferCount> {
        self.inner.pool.stats()
    }

    /// Values the worker at `address` has fetched from its peers, per transport scheme.
    pub async fn worker_transfer_stats(&self, address: &str) -> Result<Vec<TransferCount>, CommError> {
        match self.inner.pool.request(address, |id| DataRequest::Stats { id }).await? {
            DataReply::Stats { fetched, .. } => Ok(fetched),
            other => Err(CommError::protocol(format!("unexpected reply to Stats from {address}: {other:?}"))),
        }
    }

    /// Waits until the worker addresses satisfy `predicate` (checked now, then on every
    /// change; no update is missed) and returns them. Fails if the scheduler is lost.
    pub async fn wait_for_workers(
        &self,
        mut predicate: impl FnMut(&Vec<String>) -> bool,
    ) -> Result<Vec<String>, CommError> {
        let mut rx = self.inner.workers.subscribe();
        let closed = self.inner.closed.clone();
        tokio::select! {
            found = rx.wait_for(|w| predicate(w)) => match found {
                Ok(w) => Ok(w.clone()),
                Err(_) => Err(CommError::closed("the client is gone")),
            },
            () = closed.closed() => Err(CommError::closed("lost the scheduler")),
        }
    }

    /// Disconnects; the cluster releases this client's data.
    pub async fn close(&self) {
        self.inner.outbox.close();
        self.inner.closed.close();
        self.inner.pool.close();
    }

    /// Keys this client holds futures for (for tests of reference counting).
    pub fn tracked_keys(&self) -> usize {
        lock(&self.inner.keys).keys.len()
    }
}

const _: () = assert!(SUBMIT_CHUNK <= MAX_TASKS_PER_SUBMIT);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::arg;

    /// A tree reduction of `n` leaves, fan-in `k`; returns the graph and its root.
    fn tree(n: usize, k: usize) -> (Graph, Key) {
        let mut g = Graph::new();
        let mut level: Vec<Key> = (0..n).map(|i| g.task("inc", vec![arg(&(i as i64))])).collect();
        while level.len() > 1 {
            level = level.chunks(k).map(|c| g.task("add", c.iter().cloned().map(ArgSpec::Key).collect())).collect();
        }
        (g, level.pop().unwrap())
    }

    #[test]
    fn specs_come_depth_first_with_dependencies_before_dependents() {
        let (g, root) = tree(64, 4);
        let specs = g.specs(std::slice::from_ref(&root));
        let position: std::collections::HashMap<&str, usize> =
            specs.iter().enumerate().map(|(i, t)| (&*t.key, i)).collect();
        for (i, t) in specs.iter().enumerate() {
            assert!(t.dependencies().iter().all(|d| position[&**d] < i), "{} before its inputs", t.key);
        }
        // Each reduction step directly follows its last input.
        assert_eq!(specs[4].func, "add");
        assert_eq!(specs[4].dependencies(), specs[..4].iter().map(|t| t.key.clone()).collect::<Vec<_>>());
        assert!(specs.iter().all(|t| t.wanted == (t.key == root)));
    }

    /// Regression: a graph sent in several batches lost results a later batch needed (the
    /// scheduler forgot an unwanted result whose dependents had not arrived yet, and rejected
    /// them). Such results are now held until every batch is sent.
    #[test]
    fn results_a_later_batch_needs_are_held() {
        let (g, root) = tree(10, 4);
        let mut specs = g.specs(std::slice::from_ref(&root));
        let held = hold_across_batches(&mut specs, 4);
        let batch_of = |k: &Key| specs.iter().position(|t| &t.key == k).unwrap() / 4;
        for (i, t) in specs.iter().enumerate() {
            for d in t.dependencies() {
                let crosses = batch_of(&d) < i / 4;
                assert_eq!(held.contains(&d), crosses, "{d} is needed by {} in batch {}", t.key, i / 4);
                if crosses {
                    assert!(specs[specs.iter().position(|s| s.key == d).unwrap()].wanted);
                }
            }
        }
        assert!(!held.is_empty() && !held.contains(&root));
        let mut none = g.specs(std::slice::from_ref(&root));
        assert!(hold_across_batches(&mut none, 100).is_empty(), "one batch holds nothing");
    }
}
