//! One Courier comm over a ZeroMQ peer: bounded inbox, credit-based flow control,
//! heartbeats, and close, the same on both ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{Address, CloseSignal, Comm, CommError, CommRecv, CommSend, ErrorKind, Limits, Message, PeerInfo};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use crate::protocol::{self, HEARTBEAT};

/// Where a comm's outgoing parts go: a DEALER socket, or a ROUTER socket addressed to one peer.
#[async_trait]
pub(crate) trait Outbox: Send + Sync + 'static {
    async fn send(&self, parts: Vec<Bytes>) -> Result<(), CommError>;
}

/// Timing of liveness checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) peer_timeout: Duration,
}

/// State shared by a comm's halves, its control task and the socket's demultiplexer.
#[derive(Debug)]
pub(crate) struct Shared {
    credits: Semaphore,
    local_closed: CloseSignal,
    peer_gone: CloseSignal,
    failure: Mutex<Option<(ErrorKind, String)>>,
    last_heard: Mutex<Instant>,
    consumed: AtomicU32,
    credit_wanted: Notify,
    window: u32,
    peer: Address,
}

impl Shared {
    /// The peer closed, died or broke the protocol: sends fail from now on; the inbox drains.
    pub(crate) fn peer_failed(&self, kind: ErrorKind, message: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::debug!(peer = %self.peer, %message, "zmq comm ended");
            *f = Some((kind, message));
        }
        drop(f);
        self.peer_gone.close();
        self.credits.close();
    }

    pub(crate) fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub(crate) fn add_credits(&self, n: u32) {
        // A peer granting absurd credit cannot overflow the semaphore.
        let room = (Semaphore::MAX_PERMITS - self.credits.available_permits()).min(n as usize);
        self.credits.add_permits(room);
    }

    fn error(&self) -> CommError {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((kind, msg)) => CommError::new(*kind, msg.clone()),
            None => CommError::closed(format!("zmq comm with {} is closed", self.peer)),
        }
    }
}

/// The demultiplexer's handle on a comm: where its messages go.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) inbox: mpsc::Sender<Message>,
    pub(crate) shared: Arc<Shared>,
}

impl Entry {
    /// Handles one parsed incoming part set. Returns false when the entry must be removed.
    pub(crate) fn deliver(&self, incoming: protocol::Incoming) -> bool {
        use protocol::Incoming;
        self.shared.heard();
        match incoming {
            Incoming::Message(m) => match self.inbox.try_send(m) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.shared.peer_failed(ErrorKind::Protocol, "zmq:// peer sent beyond its credit".into());
                    false
                }
            },
            Incoming::Credit(n) => {
                self.shared.add_credits(n);
                true
            }
            Incoming::Heartbeat => true,
            Incoming::Close(reason) => {
                let why = if reason.is_empty() { "peer closed the comm".to_owned() } else { reason };
                self.shared.peer_failed(ErrorKind::Closed, why);
                false
            }
            Incoming::Hello(..) => {
                self.shared.peer_failed(ErrorKind::Protocol, "zmq:// peer sent a second hello".into());
                false
            }
        }
    }
}

/// Builds a comm and spawns its control task; returns it with the demultiplexer's entry.
/// `window` is this side's inbox capacity (announced in its hello), `peer_window` the peer's.
/// `on_exit` runs when the control task ends (the comm is closed or dead).
#[allow(clippy::too_many_arguments, reason = "internal constructor shared by both ends")]
pub(crate) fn new_comm(
    outbox: Arc<dyn Outbox>,
    peer_limits: Limits,
    window: u32,
    peer_window: u32,
    liveness: Liveness,
    local: Address,
    peer: Address,
    info: PeerInfo,
    on_exit: impl FnOnce() + Send + 'static,
) -> (Comm, Entry) {
    let window = window.max(2);
    let shared = Arc::new(Shared {
        // We may send as many messages as the peer's inbox holds; it returns credit as its
        // application consumes, in batches of half its window.
        credits: Semaphore::new((peer_window as usize).min(Semaphore::MAX_PERMITS)),
        local_closed: CloseSignal::new(),
        peer_gone: CloseSignal::new(),
        failure: Mutex::new(None),
        last_heard: Mutex::new(Instant::now()),
        consumed: AtomicU32::new(0),
        credit_wanted: Notify::new(),
        window,
        peer: peer.clone(),
    });
    let (tx, rx) = mpsc::channel(window as usize);
    tokio::spawn(control(outbox.clone(), shared.clone(), liveness, on_exit));
    let send = ZmqSend { outbox, shared: shared.clone(), peer_limits };
    let recv = ZmqRecv { rx, shared: shared.clone() };
    (Comm::new(Box::new(send), Box::new(recv), local, peer, info), Entry { inbox: tx, shared })
}

/// Returns credits, sends heartbeats, watches the peer's, and says goodbye on close.
async fn control(outbox: Arc<dyn Outbox>, shared: Arc<Shared>, liveness: Liveness, on_exit: impl FnOnce()) {
    let mut tick = tokio::time::interval(liveness.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.local_closed.closed() => {
                if !shared.peer_gone.is_closed() {
                    let _ = outbox.send(protocol::close_parts("")).await;
                }
                break;
            }
            () = shared.peer_gone.closed() => break,
            () = shared.credit_wanted.notified() => {
                let n = shared.consumed.swap(0, Ordering::AcqRel);
                if n > 0
                    && let Err(e) = outbox.send(protocol::credit_parts(n)).await
                {
                    shared.peer_failed(e.kind(), e.message().to_owned());
                }
            }
            _ = tick.tick() => {
                let silent = shared.last_heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                if silent > liveness.peer_timeout {
                    shared.peer_failed(ErrorKind::Closed, format!("no word from the zmq:// peer for {silent:?}: presumed dead"));
                    break;
                }
                if let Err(e) = outbox.send(vec![protocol::kind(HEARTBEAT)]).await {
                    shared.peer_failed(e.kind(), e.message().to_owned());
                }
            }
        }
    }
    on_exit();
}

struct ZmqSend {
    outbox: Arc<dyn Outbox>,
    shared: Arc<Shared>,
    peer_limits: Limits,
}

impl std::fmt::Debug for ZmqSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqSend").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

#[async_trait]
impl CommSend for ZmqSend {
    async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        let s = &self.shared;
        if s.local_closed.is_closed() || s.peer_gone.is_closed() {
            return Err(s.error());
        }
        courier_core::codec::check_limits(&msg, &self.peer_limits)?;
        // One credit per message: the peer's inbox has room for it.
        tokio::select! {
            permit = s.credits.acquire() => match permit {
                Ok(p) => p.forget(),
                Err(_) => return Err(s.error()),
            },
            () = s.local_closed.closed() => return Err(s.error()),
        }
        self.outbox.send(protocol::message_parts(msg)).await.inspect_err(|e| {
            s.peer_failed(e.kind(), e.message().to_owned());
        })
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.shared.local_closed.close();
        Ok(())
    }
}

impl Drop for ZmqSend {
    fn drop(&mut self) {
        self.shared.local_closed.close();
    }
}

#[derive(Debug)]
struct ZmqRecv {
    rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
}

#[async_trait]
impl CommRecv for ZmqRecv {
    /// Cancel-safe: the inbox is an mpsc receiver, and credit is returned by the control task.
    async fn recv(&mut self) -> Result<Message, CommError> {
        let s = &self.shared;
        if s.local_closed.is_closed() {
            return Err(CommError::closed("zmq comm is closed"));
        }
        tokio::select! {
            biased;
            () = s.local_closed.closed() => Err(CommError::closed("zmq comm is closed")),
            m = self.rx.recv() => match m {
                Some(m) => {
                    if s.consumed.fetch_add(1, Ordering::AcqRel) + 1 >= s.window / 2 {
                        s.credit_wanted.notify_one();
                    }
                    Ok(m)
                }
                None => Err(s.error()),
            },
        }
    }
}

impl Drop for ZmqRecv {
    fn drop(&mut self) {
        // Dropping either half closes a zmq:// comm: nobody would return the peer's credit.
        self.shared.local_closed.close();
    }
}
