//! One Courier comm over one ZMTP connection: a reader task, a bounded inbox, credit-based
//! flow control, heartbeats and close, the same on both ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use courier_core::stream::{AddressPlace, ConnectionSlot, log_violation, write_all_vectored};
use courier_core::{
    Address, CloseSignal, CloseWatch, Comm, CommError, CommRecv, CommSend, ErrorKind, Limits, Message, PeerInfo,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use crate::protocol::{self, HEARTBEAT, Incoming};
use crate::zmtp::{self, Budget, Command, Decoder, Event, Step};

/// Bytes requested from the socket per read when not reading a large part directly.
const READ_CHUNK: usize = 256 * 1024;

/// The write half of a connection, shared by a comm's sender, its control task and its reader
/// (which answers `PING`s).
#[async_trait]
pub(crate) trait Outbox: Send + Sync + 'static {
    /// Writes one multipart message.
    async fn send(&self, parts: Vec<Bytes>) -> Result<(), CommError>;
    /// Writes an encoded command frame.
    async fn send_command(&self, frame: Bytes) -> Result<(), CommError>;
    /// Ends the write direction (the peer reads EOF).
    async fn shutdown(&self);
}

struct Writer<W> {
    write: W,
    chunks: Vec<Bytes>,
    /// A send was interrupted mid-write: the stream may hold half a message.
    poisoned: bool,
}

/// An [`Outbox`] over a byte stream's write half.
pub(crate) struct StreamOutbox<W> {
    writer: tokio::sync::Mutex<Writer<W>>,
    peer: Address,
}

impl<W> StreamOutbox<W> {
    pub(crate) fn new(write: W, peer: Address) -> Self {
        StreamOutbox { writer: tokio::sync::Mutex::new(Writer { write, chunks: Vec::new(), poisoned: false }), peer }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamOutbox<W> {
    async fn write(&self, fill: impl FnOnce(&mut Vec<Bytes>)) -> Result<(), CommError> {
        let mut w = self.writer.lock().await;
        let Writer { write, chunks, poisoned } = &mut *w;
        if *poisoned {
            return Err(CommError::closed(format!("zmq:// connection to {} broke in an interrupted send", self.peer)));
        }
        chunks.clear();
        fill(chunks);
        *poisoned = true;
        let result = match write_all_vectored(write, chunks).await {
            Ok(()) => write.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| CommError::from_io(format!("sending to {}", self.peer), e))?;
        *poisoned = false;
        Ok(())
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> Outbox for StreamOutbox<W> {
    async fn send(&self, parts: Vec<Bytes>) -> Result<(), CommError> {
        self.write(|chunks| zmtp::encode_message(&parts, chunks)).await
    }

    async fn send_command(&self, frame: Bytes) -> Result<(), CommError> {
        self.write(|chunks| chunks.push(frame)).await
    }

    async fn shutdown(&self) {
        let mut w = self.writer.lock().await;
        w.poisoned = true;
        let _ = w.write.shutdown().await;
    }
}

/// Timing of liveness checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) peer_timeout: Duration,
}

/// State shared by a comm's halves, its control task and its reader.
#[derive(Debug)]
pub(crate) struct Shared {
    credits: Semaphore,
    local_closed: CloseSignal,
    peer_gone: CloseSignal,
    failure: Mutex<Option<(ErrorKind, String)>>,
    last_heard: Mutex<Instant>,
    consumed: AtomicU32,
    credit_wanted: Notify,
    /// The application took a message: budget it held is free again.
    budget_freed: Notify,
    budget: Arc<Mutex<Budget>>,
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

    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn add_credits(&self, n: u32) {
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

    fn ended(&self) -> bool {
        self.local_closed.is_closed() || self.peer_gone.is_closed()
    }
}

/// Everything a comm is built from once its handshake is done.
pub(crate) struct Parts<R> {
    pub(crate) read: R,
    /// Bytes read past the handshake, and the decoder in session phase.
    pub(crate) rbuf: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) budget: Arc<Mutex<Budget>>,
    pub(crate) outbox: Arc<dyn Outbox>,
    /// The peer's receive limits (sends beyond them are refused locally).
    pub(crate) peer_limits: Limits,
    /// This side's inbox capacity (announced in its hello) and the peer's.
    pub(crate) window: u32,
    pub(crate) peer_window: u32,
    pub(crate) liveness: Liveness,
    /// For comms a listener accepted: the first message must arrive within this.
    pub(crate) first_message_timeout: Option<Duration>,
    /// Inside a message, a read must bring bytes within this.
    pub(crate) message_timeout: Duration,
    pub(crate) slot: Option<ConnectionSlot>,
    /// For comms a listener accepted: the place under the per-address limit, dropped at the
    /// first message.
    pub(crate) until_first: Option<AddressPlace>,
    pub(crate) local: Address,
    pub(crate) peer: Address,
    pub(crate) info: PeerInfo,
}

/// Builds a comm and spawns its reader and control tasks.
pub(crate) fn new_comm<R: AsyncRead + Unpin + Send + 'static>(p: Parts<R>) -> Comm {
    let window = p.window.max(2);
    let shared = Arc::new(Shared {
        // We may send as many messages as the peer's inbox holds; it returns credit as its
        // application consumes, in batches of half its window.
        credits: Semaphore::new((p.peer_window as usize).min(Semaphore::MAX_PERMITS)),
        local_closed: CloseSignal::new(),
        peer_gone: CloseSignal::new(),
        failure: Mutex::new(None),
        last_heard: Mutex::new(Instant::now()),
        consumed: AtomicU32::new(0),
        credit_wanted: Notify::new(),
        budget_freed: Notify::new(),
        budget: p.budget,
        window,
        peer: p.peer.clone(),
    });
    let (tx, rx) = mpsc::channel(window as usize);
    let reader = Reader {
        read: p.read,
        rbuf: p.rbuf,
        decoder: p.decoder,
        inbox: tx,
        local_closed: shared.local_closed.watch(),
        peer_gone: shared.peer_gone.watch(),
        shared: shared.clone(),
        outbox: p.outbox.clone(),
        first_deadline: p.first_message_timeout.map(|t| Instant::now() + t),
        message_timeout: p.message_timeout,
        until_first: p.until_first,
        _slot: p.slot.clone(),
    };
    tokio::spawn(reader.run());
    tokio::spawn(control(p.outbox.clone(), shared.clone(), p.liveness, p.slot.clone()));
    let send = ZmqSend {
        outbox: p.outbox,
        local_closed: shared.local_closed.watch(),
        shared: shared.clone(),
        peer_limits: p.peer_limits,
        _slot: p.slot.clone(),
    };
    let recv = ZmqRecv { rx, local_closed: shared.local_closed.watch(), shared, _slot: p.slot };
    Comm::new(Box::new(send), Box::new(recv), p.local, p.peer, p.info)
}

/// Reads the connection: delivers messages to the inbox, applies credit, answers `PING`.
struct Reader<R> {
    read: R,
    rbuf: BytesMut,
    decoder: Decoder,
    inbox: mpsc::Sender<(Message, u64)>,
    /// Subscriptions to the shared close signals, waited on before every read.
    local_closed: CloseWatch,
    peer_gone: CloseWatch,
    shared: Arc<Shared>,
    outbox: Arc<dyn Outbox>,
    first_deadline: Option<Instant>,
    message_timeout: Duration,
    until_first: Option<AddressPlace>,
    _slot: Option<ConnectionSlot>,
}

impl<R: AsyncRead + Unpin + Send + 'static> Reader<R> {
    async fn run(mut self) {
        if let Err(e) = self.read_until_end().await {
            if matches!(e.kind(), ErrorKind::Protocol | ErrorKind::FrameTooLarge) {
                log_violation(&self.shared.peer, &e);
            }
            self.shared.peer_failed(e.kind(), e.message().to_owned());
        }
    }

    /// Returns `Ok` when the comm ended for another reason (closed locally, peer said `X`).
    async fn read_until_end(&mut self) -> Result<(), CommError> {
        loop {
            if self.shared.ended() {
                return Ok(());
            }
            let step = self.decoder.decode(&mut self.rbuf, &self.shared.budget)?;
            match step {
                Step::Event(event) => {
                    self.shared.heard();
                    if !self.handle(event).await? {
                        return Ok(());
                    }
                }
                Step::NeedBudget => {
                    tokio::select! {
                        () = self.shared.budget_freed.notified() => {}
                        () = self.local_closed.closed() => return Ok(()),
                        () = self.peer_gone.closed() => return Ok(()),
                    }
                }
                Step::NeedBytes => self.read_more().await?,
            }
        }
    }

    /// Handles one event; `Ok(false)` ends the reader without an error of its own.
    async fn handle(&mut self, event: Event) -> Result<bool, CommError> {
        match event {
            Event::Message(parts, held) => match protocol::parse(parts)? {
                Incoming::Message(m) => {
                    self.first_deadline = None;
                    self.until_first = None;
                    match self.inbox.try_send((m, held)) {
                        Ok(()) => Ok(true),
                        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            Err(CommError::protocol("zmq:// peer sent beyond its credit"))
                        }
                    }
                }
                Incoming::Credit(n) => {
                    self.shared.add_credits(n);
                    Ok(true)
                }
                Incoming::Heartbeat => Ok(true),
                Incoming::Close(reason) => {
                    let why = if reason.is_empty() { "peer closed the comm".to_owned() } else { reason };
                    self.shared.peer_failed(ErrorKind::Closed, why);
                    Ok(false)
                }
                Incoming::Hello(..) => Err(CommError::protocol("zmq:// peer sent a second hello")),
            },
            Event::Command(Command::Ping { context }) => {
                self.outbox.send_command(zmtp::pong(&context)).await?;
                Ok(true)
            }
            Event::Command(Command::Pong | Command::Other(_)) => Ok(true),
            Event::Command(Command::Error(reason)) => {
                self.shared.peer_failed(ErrorKind::Closed, format!("zmq:// peer sent a ZMTP ERROR: {reason}"));
                Ok(false)
            }
            Event::Command(Command::Ready(_)) | Event::Greeting => {
                Err(CommError::protocol("zmq:// peer repeated its ZMTP handshake"))
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), CommError> {
        // Mid-message the peer must keep sending; before its first message an accepted peer
        // has a deadline; otherwise a comm may idle (heartbeats keep it alive).
        let mid_message = !self.decoder.is_idle() || !self.rbuf.is_empty();
        let progress = mid_message.then(|| Instant::now() + self.message_timeout);
        let stalled = match (progress, self.first_deadline) {
            (Some(p), Some(f)) => p <= f,
            (p, _) => p.is_some(),
        };
        let deadline = match (progress, self.first_deadline) {
            (Some(p), Some(f)) => Some(p.min(f)),
            (p, f) => p.or(f),
        };
        let Self { read, rbuf, decoder, shared, message_timeout, local_closed, peer_gone, .. } = self;
        let peer = &shared.peer;
        let n = tokio::select! {
            biased;
            () = local_closed.closed() => return Ok(()),
            () = peer_gone.closed() => return Ok(()),
            () = sleep_until_or_forever(deadline) => {
                let why = if stalled {
                    format!("{peer} stalled in the middle of a message for {message_timeout:?}")
                } else {
                    format!("{peer} sent no message after connecting")
                };
                return Err(CommError::new(ErrorKind::Timeout, why));
            }
            r = async {
                match decoder.read_target() {
                    Some(target) => read.read_buf(target).await,
                    None => {
                        rbuf.reserve(READ_CHUNK);
                        read.read_buf(rbuf).await
                    }
                }
            } => r.map_err(|e| {
                // A peer that vanished with unread data resets rather than closes: say so.
                let doing = match e.kind() {
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                        format!("{peer} reset the connection")
                    }
                    _ => format!("receiving from {peer}"),
                };
                CommError::from_io(doing, e)
            })?,
        };
        if n == 0 {
            let mid = if mid_message { " in the middle of a message" } else { "" };
            return Err(CommError::closed(format!("{peer} closed the connection{mid}")));
        }
        Ok(())
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Returns credits, sends heartbeats, watches the peer's, and says goodbye on close.
async fn control(outbox: Arc<dyn Outbox>, shared: Arc<Shared>, liveness: Liveness, _slot: Option<ConnectionSlot>) {
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
    outbox.shutdown().await;
}

struct ZmqSend {
    outbox: Arc<dyn Outbox>,
    /// A subscription to `shared.local_closed`, for sends that wait for credit.
    local_closed: CloseWatch,
    shared: Arc<Shared>,
    peer_limits: Limits,
    _slot: Option<ConnectionSlot>,
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
        if s.ended() {
            return Err(s.error());
        }
        courier_core::codec::check_limits(&msg, &self.peer_limits)?;
        // One credit per message: the peer's inbox has room for it.
        tokio::select! {
            permit = s.credits.acquire() => match permit {
                Ok(p) => p.forget(),
                Err(_) => return Err(s.error()),
            },
            () = self.local_closed.closed() => return Err(s.error()),
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
    rx: mpsc::Receiver<(Message, u64)>,
    /// A subscription to `shared.local_closed`: each receive waits on it.
    local_closed: CloseWatch,
    shared: Arc<Shared>,
    _slot: Option<ConnectionSlot>,
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
            () = self.local_closed.closed() => Err(CommError::closed("zmq comm is closed")),
            m = self.rx.recv() => match m {
                Some((m, held)) => {
                    {
                        let mut b = s.budget.lock().unwrap_or_else(|p| p.into_inner());
                        b.inner.release(held);
                        b.queued -= held;
                    }
                    s.budget_freed.notify_one();
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
