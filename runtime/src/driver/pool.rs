//! Requests to workers' data listeners, from workers (dependencies) and clients (results,
//! scatter): one pooled comm per peer, replies matched by request id.
//!
//! A request registers its id, is pushed into the peer's [`Outbox`](super::batched::Outbox)
//! and waits for the reply with that id, up to a timeout. If the waiting future is dropped
//! (a timeout, a `select!`), its id is unregistered and a late reply is discarded: it can
//! never be read as the answer to another request. Comms are opened without holding any lock
//! (a new peer's outbox queues requests while it connects), so requests to different peers
//! never wait on each other. When a comm fails, its pending requests fail at once and the
//! next request opens a new one.
//!
//! A peer on this host may have a same-host address ([`DataPool::set_local`], e.g. shm://):
//! its comm is opened there, and over its network address if that fails. Values received are
//! counted per transport scheme ([`DataPool::stats`]), so which transport carried the data is
//! observable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use courier_core::{CommError, ErrorKind, Registry, into_value};
use tokio::sync::oneshot;

use super::batched::Outbox;
use crate::collections::Map;
use crate::protocol::{DataReply, DataRequest, RequestId, TransferCount};

/// Unsent requests a peer may accumulate before its comm is given up.
const OUTBOX_LIMIT: usize = 65_536;

type Pending = Arc<Mutex<Map<RequestId, oneshot::Sender<DataReply>>>>;

#[derive(Debug)]
struct Conn {
    outbox: Outbox<DataRequest>,
    pending: Pending,
    /// The scheme of the comm once open.
    scheme: Arc<OnceLock<String>>,
}

/// A pool of data comms to workers. Cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct DataPool {
    registry: Registry,
    conns: Arc<Mutex<Map<String, Arc<Conn>>>>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    /// Same-host addresses of peers, by their data address.
    local: Arc<Mutex<Map<String, String>>>,
    /// Values received, by the scheme of the comm they came over.
    counts: Arc<Mutex<Map<String, TransferCount>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataPool {
    /// A pool whose requests time out after `timeout`.
    pub(crate) fn new(registry: Registry, timeout: Duration) -> Self {
        DataPool {
            registry,
            conns: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
            local: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// Reaches the peer whose data address is `addr` at `local` from now on (a comm already
    /// open stays as it is until it closes).
    pub(crate) fn set_local(&self, addr: &str, local: &str) {
        lock(&self.local).insert(addr.to_owned(), local.to_owned());
    }

    /// Values received so far, per transport scheme.
    pub(crate) fn stats(&self) -> Vec<TransferCount> {
        let mut v: Vec<TransferCount> = lock(&self.counts).values().cloned().collect();
        v.sort_by(|a, b| a.scheme.cmp(&b.scheme));
        v
    }

    fn conn(&self, addr: &str) -> Arc<Conn> {
        let mut conns = lock(&self.conns);
        if let Some(c) = conns.get(addr)
            && !c.outbox.is_closed()
        {
            return c.clone();
        }
        let pending: Pending = Arc::default();
        let (rx_tx, rx_rx) = oneshot::channel();
        let (registry, target) = (self.registry.clone(), addr.to_owned());
        let via = lock(&self.local).get(addr).cloned();
        let scheme: Arc<OnceLock<String>> = Arc::default();
        let opened = scheme.clone();
        let outbox = Outbox::spawn_lazy(
            async move {
                let comm = match via {
                    Some(local) => match registry.connect(&local).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(peer = %target, %local, error = %e, "same-host address failed; using the network");
                            registry.connect(&target).await?
                        }
                    },
                    None => registry.connect(&target).await?,
                };
                let _ = opened.set(comm.peer_address().scheme().to_owned());
                let (tx, rx) = comm.split();
                let _ = rx_tx.send(rx);
                Ok(tx)
            },
            OUTBOX_LIMIT,
            addr.to_owned(),
        );
        let conn = Arc::new(Conn { outbox: outbox.clone(), pending: pending.clone(), scheme });
        conns.insert(addr.to_owned(), conn.clone());
        drop(conns);
        let (pool, addr) = (self.conns.clone(), addr.to_owned());
        let mine = conn.clone();
        tokio::spawn(async move {
            if let Ok(mut rx) = rx_rx.await {
                loop {
                    let batch = tokio::select! {
                        () = outbox.closed() => break,
                        m = rx.recv() => match m.and_then(into_value::<Vec<DataReply>>) {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::debug!(peer = %addr, error = %e, "data comm ended");
                                break;
                            }
                        },
                    };
                    for reply in batch {
                        let waiter = lock(&pending).remove(&reply.id());
                        if let Some(w) = waiter {
                            let _ = w.send(reply);
                        }
                    }
                }
            }
            outbox.abort();
            // Pending requests fail now (their senders are dropped), not at their timeout.
            lock(&pending).clear();
            let mut conns = lock(&pool);
            if conns.get(&addr).is_some_and(|c| Arc::ptr_eq(c, &mine)) {
                conns.remove(&addr);
            }
        });
        conn
    }

    /// Sends the request built from a fresh id to the data listener at `addr` and waits for
    /// its reply (`Closed` if the comm fails, `Timeout` after the pool's timeout).
    pub(crate) async fn request(
        &self,
        addr: &str,
        build: impl FnOnce(RequestId) -> DataRequest,
    ) -> Result<DataReply, CommError> {
        self.request_on(&self.conn(addr), addr, build).await
    }

    async fn request_on(
        &self,
        conn: &Conn,
        addr: &str,
        build: impl FnOnce(RequestId) -> DataRequest,
    ) -> Result<DataReply, CommError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        let _unregister = Unregister { pending: &conn.pending, id };
        conn.outbox.send(build(id)).map_err(|e| {
            conn.outbox.connect_error().unwrap_or_else(|| CommError::closed(format!("data comm to {addr}: {e}")))
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(conn
                .outbox
                .connect_error()
                .unwrap_or_else(|| CommError::closed(format!("the data comm to {addr} closed")))),
            Err(_) => {
                Err(CommError::new(ErrorKind::Timeout, format!("no reply from {addr} within {:?}", self.timeout)))
            }
        }
    }

    /// Gets `keys` from the worker at `addr`: the values in order (`None`: not held there).
    pub(crate) async fn get(
        &self,
        addr: &str,
        keys: Vec<crate::protocol::Key>,
    ) -> Result<Vec<Option<courier_core::Payload>>, CommError> {
        let n = keys.len();
        let conn = self.conn(addr);
        match self.request_on(&conn, addr, |id| DataRequest::Get { id, keys }).await? {
            DataReply::Data { values, .. } if values.len() == n => {
                let scheme = conn.scheme.get().cloned().unwrap_or_default();
                let mut counts = lock(&self.counts);
                let c = counts.entry(scheme.clone()).or_insert_with(|| TransferCount { scheme, ..Default::default() });
                c.requests += 1;
                for v in values.iter().flatten() {
                    c.values += 1;
                    c.bytes += v.byte_len();
                }
                Ok(values)
            }
            DataReply::Data { values, .. } => {
                Err(CommError::protocol(format!("{addr} answered {} values for {n} keys", values.len())))
            }
            DataReply::Refused { reason, .. } => Err(CommError::closed(format!("{addr} refused: {reason}"))),
            other => Err(CommError::protocol(format!("unexpected reply to Get from {addr}: {other:?}"))),
        }
    }

    /// Drops the comm to `addr` (the peer is gone): its pending requests fail at once.
    pub(crate) fn forget(&self, addr: &str) {
        lock(&self.local).remove(addr);
        if let Some(c) = lock(&self.conns).remove(addr) {
            c.outbox.abort();
            lock(&c.pending).clear();
        }
    }

    /// Closes every comm.
    pub(crate) fn close(&self) {
        for (_, c) in lock(&self.conns).drain() {
            c.outbox.close();
        }
    }
}

/// Removes a request's id when its waiter is done or dropped.
struct Unregister<'a> {
    pending: &'a Mutex<Map<RequestId, oneshot::Sender<DataReply>>>,
    id: RequestId,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}
