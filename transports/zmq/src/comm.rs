//! One Courier comm over one ZMTP connection: a read side that whoever needs it reads
//! (inline in the application's receive), credit-based flow control, heartbeats and close, the
//! same on both ends.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use courier_core::stream::{AddressPlace, ConnectionSlot, log_violation, write_all_vectored};
use courier_core::{
    Address, CloseSignal, CloseWatch, Comm, CommError, CommRecv, CommSend, ErrorKind, Limits, Message, PeerInfo,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::protocol::{self, HEARTBEAT, Incoming};
use crate::zmtp::{self, Budget, Command, Decoder, Event, Step};

/// Bytes requested from the socket per read when not reading a large part directly.
const READ_CHUNK: usize = 256 * 1024;

/// What [`StreamOutbox`] guards.
struct Writer<W> {
    write: W,
    chunks: Vec<Bytes>,
    /// A send was interrupted mid-write: the stream may hold half a message.
    poisoned: bool,
}

/// The write half of a connection, shared by a comm's sender and its control task (which
/// returns credit, answers `PING`s and sends heartbeats).
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

    /// Writes one multipart message.
    async fn send(&self, parts: Vec<Bytes>) -> Result<(), CommError> {
        self.write(|chunks| zmtp::encode_message(&parts, chunks)).await
    }

    /// Writes a Courier message (`M`, the header, the frames) without collecting its parts.
    async fn send_message(&self, msg: &Message) -> Result<(), CommError> {
        let kind = protocol::kind(protocol::MESSAGE);
        let parts = std::iter::once(&kind).chain(std::iter::once(&msg.header)).chain(msg.frames.iter());
        self.write(|chunks| zmtp::encode_parts(parts, msg.frames.len() + 2, chunks)).await
    }

    /// Writes an encoded command frame.
    async fn send_command(&self, frame: Bytes) -> Result<(), CommError> {
        self.write(|chunks| chunks.push(frame)).await
    }

    /// Ends the write direction (the peer reads EOF).
    async fn shutdown(&self) {
        let mut w = self.writer.lock().await;
        w.poisoned = true;
        let _ = w.write.shutdown().await;
    }
}

/// Credit is returned once the application has consumed half the window, or messages of
/// this many bytes if that comes first: large messages then keep the sender's credit from
/// running dry while the socket could carry more (at 1 MiB per message and the default window
/// of 16, every fourth message rather than every eighth).
const CREDIT_BYTES: u64 = 4 << 20;

/// Timing of liveness checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) peer_timeout: Duration,
}

/// State shared by a comm's halves and its control task.
#[derive(Debug)]
pub(crate) struct Shared {
    credits: Semaphore,
    local_closed: CloseSignal,
    peer_gone: CloseSignal,
    failure: Mutex<Option<(ErrorKind, String)>>,
    /// Events read from the peer so far; the control task watches it for silence.
    heard: AtomicU64,
    consumed: AtomicU32,
    /// Budget bytes of the messages counted in `consumed`.
    consumed_bytes: AtomicU64,
    /// Messages the peer may have sent so far: this side's window plus every credit returned
    /// (counted when the control task decides to return it, before it is sent).
    granted: AtomicU64,
    /// Credit to return or a `PONG` to send: work for the control task.
    control_wanted: Notify,
    /// The context of the latest `PING` not answered yet (one is enough: a flood of `PING`s
    /// cannot queue `PONG`s without bound).
    pong: Mutex<Option<Bytes>>,
    /// The application took a message: budget it held is free again.
    budget_freed: Notify,
    /// Messages decoded for the application by a reader other than its receive (a send
    /// waiting for credit, the control task), with the budget each holds, in order. The
    /// receive takes them without the read side's lock: a send waiting for credit holds that
    /// lock while it waits for more bytes, and a message it decoded must not wait with it
    /// (it did, until the peer's next bytes: up to a heartbeat interval).
    inbox: Mutex<VecDeque<(Message, u64)>>,
    /// How many messages `inbox` holds (written under its lock): a receive looks here first
    /// and locks nothing while it is empty, as it nearly always is.
    inbox_len: AtomicUsize,
    /// A message was put in `inbox`.
    inbox_filled: Notify,
    budget: Arc<Mutex<Budget>>,
    window: u32,
    peer: Address,
}

impl Shared {
    /// The peer closed, died or broke the protocol: sends fail from now on; messages already
    /// received are still delivered.
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

    /// Why a receive ends: closed here, or the peer's failure.
    fn recv_error(&self) -> CommError {
        if self.local_closed.is_closed() { CommError::closed("zmq comm is closed") } else { self.error() }
    }

    fn ended(&self) -> bool {
        self.local_closed.is_closed() || self.peer_gone.is_closed()
    }

    /// Keeps a message decoded for the application (by whoever holds the read side).
    fn keep(&self, m: (Message, u64)) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        inbox.push_back(m);
        self.inbox_len.store(inbox.len(), Ordering::Release);
        drop(inbox);
        self.inbox_filled.notify_one();
    }

    /// The oldest message kept for the application.
    fn kept(&self) -> Option<(Message, u64)> {
        if self.inbox_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let m = inbox.pop_front();
        self.inbox_len.store(inbox.len(), Ordering::Release);
        m
    }

    /// The application took a message: its budget is free, and credit is due every half window.
    fn taken(&self, held: u64) {
        if held > 0 {
            let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            b.inner.release(held);
            b.queued -= held;
            drop(b);
            self.budget_freed.notify_one();
        }
        let n = self.consumed.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = self.consumed_bytes.fetch_add(held, Ordering::AcqRel) + held;
        if n >= self.window / 2 || bytes >= CREDIT_BYTES {
            self.control_wanted.notify_one();
        }
    }
}

/// Everything a comm is built from once its handshake is done.
pub(crate) struct Parts<R, W> {
    pub(crate) read: R,
    /// Bytes read past the handshake, and the decoder in session phase.
    pub(crate) rbuf: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) budget: Arc<Mutex<Budget>>,
    pub(crate) outbox: Arc<StreamOutbox<W>>,
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

/// Builds a comm and spawns its control task.
pub(crate) fn new_comm<R, W>(p: Parts<R, W>) -> Comm
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let window = p.window.max(2);
    let shared = Arc::new(Shared {
        // We may send as many messages as the peer's inbox holds; it returns credit as its
        // application consumes, in batches of half its window.
        credits: Semaphore::new((p.peer_window as usize).min(Semaphore::MAX_PERMITS)),
        local_closed: CloseSignal::new(),
        peer_gone: CloseSignal::new(),
        failure: Mutex::new(None),
        heard: AtomicU64::new(0),
        consumed: AtomicU32::new(0),
        consumed_bytes: AtomicU64::new(0),
        granted: AtomicU64::new(u64::from(window)),
        control_wanted: Notify::new(),
        pong: Mutex::new(None),
        budget_freed: Notify::new(),
        inbox: Mutex::new(VecDeque::new()),
        inbox_len: AtomicUsize::new(0),
        inbox_filled: Notify::new(),
        budget: p.budget,
        window,
        peer: p.peer.clone(),
    });
    let side = Arc::new(tokio::sync::Mutex::new(ReadSide {
        read: p.read,
        rbuf: p.rbuf,
        decoder: p.decoder,
        received: 0,
        local_closed: shared.local_closed.watch(),
        peer_gone: shared.peer_gone.watch(),
        first_deadline: p.first_message_timeout.map(|t| Instant::now() + t),
        progress_deadline: None,
        message_timeout: p.message_timeout,
        until_first: p.until_first,
        done: false,
    }));
    tokio::spawn(control(p.outbox.clone(), shared.clone(), side.clone(), p.liveness, p.slot.clone()));
    let send = ZmqSend {
        outbox: p.outbox,
        side: side.clone(),
        local_closed: shared.local_closed.watch(),
        shared: shared.clone(),
        peer_limits: p.peer_limits,
        _slot: p.slot.clone(),
    };
    let recv = ZmqRecv { side, local_closed: shared.local_closed.watch(), shared, _slot: p.slot };
    Comm::new(Box::new(send), Box::new(recv), p.local, p.peer, p.info)
}

/// The read direction of a connection. No task owns it: whoever needs the peer's bytes takes
/// the lock and reads. That is the application's receive, inline, so that a message goes from
/// the decoder to the caller without a queue or a second task; a send waiting for credit; and
/// the control task once per heartbeat interval, without waiting, so that the peer's
/// heartbeats, credit and `PING`s are seen while the application does not receive. Messages
/// that anyone but the receiver decodes wait in [`Shared::inbox`], in order.
///
/// Every await in [`ReadSide::step`] happens before anything is consumed, so a reader may be
/// cancelled at any await and the next one carries on where it stopped.
struct ReadSide<R> {
    read: R,
    rbuf: BytesMut,
    decoder: Decoder,
    /// Courier messages received so far (never more than `Shared::granted`).
    received: u64,
    /// Subscriptions to the shared close signals, for whoever reads.
    local_closed: CloseWatch,
    peer_gone: CloseWatch,
    first_deadline: Option<Instant>,
    /// In the middle of a message: the peer must send more bytes by then.
    progress_deadline: Option<Instant>,
    message_timeout: Duration,
    until_first: Option<AddressPlace>,
    /// The connection broke; nothing more is read.
    done: bool,
}

/// The comm is over (closed here, closed or failed by the peer, or broken); its reason is in
/// [`Shared`].
struct Ended;

/// What one [`ReadSide::step`] did.
enum Stepped {
    /// Decoded a Courier message, with the budget it holds.
    Message((Message, u64)),
    /// Handled something else (credit, a heartbeat, a command).
    Handled,
    /// The budget is held by messages the application has not taken: read again once it
    /// takes one. A reader other than the receiver must let go of the read side meanwhile, or
    /// the receiver could never take them.
    Full,
}

impl<R: AsyncRead + Unpin + Send + 'static> ReadSide<R> {
    /// Reads until one event arrives and handles it; a Courier message is returned for the
    /// caller to deliver or keep.
    async fn step(&mut self, shared: &Shared) -> Result<Stepped, Ended> {
        loop {
            if self.done || shared.ended() {
                return Err(Ended);
            }
            let outcome = match self.decoder.decode(&mut self.rbuf, &shared.budget) {
                Ok(Step::Event(event)) => {
                    shared.heard.fetch_add(1, Ordering::Relaxed);
                    match self.handle(shared, event) {
                        Ok(Some(m)) => return Ok(Stepped::Message(m)),
                        Ok(None) => return Ok(Stepped::Handled),
                        Err(e) => Err(e),
                    }
                }
                Ok(Step::NeedBudget) => return Ok(Stepped::Full),
                Ok(Step::NeedBytes) => self.read_more(shared).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                if matches!(e.kind(), ErrorKind::Protocol | ErrorKind::FrameTooLarge) {
                    log_violation(&shared.peer, &e);
                }
                self.done = true;
                shared.peer_failed(e.kind(), e.message().to_owned());
                return Err(Ended);
            }
        }
    }

    /// Reads what is there without waiting, keeping messages for the application.
    fn drain(&mut self, shared: &Shared) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let polled = std::pin::pin!(self.step(shared)).poll(&mut cx);
            match polled {
                Poll::Ready(Ok(Stepped::Message(m))) => shared.keep(m),
                Poll::Ready(Ok(Stepped::Handled)) => {}
                Poll::Ready(Ok(Stepped::Full) | Err(Ended)) | Poll::Pending => return,
            }
        }
    }

    /// Handles one event; a Courier message is returned.
    fn handle(&mut self, shared: &Shared, event: Event) -> Result<Option<(Message, u64)>, CommError> {
        match event {
            Event::Message(parts, held) => match protocol::parse(parts)? {
                Incoming::Message(m) => {
                    // Credit returned is counted before it is sent, so a peer is never
                    // accused of using credit it has not been given yet.
                    self.received += 1;
                    if self.received > shared.granted.load(Ordering::Acquire) {
                        return Err(CommError::protocol("zmq:// peer sent beyond its credit"));
                    }
                    self.first_deadline = None;
                    self.until_first = None;
                    Ok(Some((m, held)))
                }
                Incoming::Credit(n) => {
                    shared.add_credits(n);
                    Ok(None)
                }
                Incoming::Heartbeat => Ok(None),
                Incoming::Close(reason) => {
                    let why = if reason.is_empty() { "peer closed the comm".to_owned() } else { reason };
                    shared.peer_failed(ErrorKind::Closed, why);
                    Ok(None)
                }
                Incoming::Hello(..) => Err(CommError::protocol("zmq:// peer sent a second hello")),
            },
            Event::Command(Command::Ping { context }) => {
                *shared.pong.lock().unwrap_or_else(|p| p.into_inner()) = Some(context);
                shared.control_wanted.notify_one();
                Ok(None)
            }
            Event::Command(Command::Pong | Command::Other(_)) => Ok(None),
            Event::Command(Command::Error(reason)) => {
                shared.peer_failed(ErrorKind::Closed, format!("zmq:// peer sent a ZMTP ERROR: {reason}"));
                Ok(None)
            }
            Event::Command(Command::Ready(_)) | Event::Greeting => {
                Err(CommError::protocol("zmq:// peer repeated its ZMTP handshake"))
            }
        }
    }

    /// Reads more bytes; `Ok` also when the comm was closed meanwhile.
    async fn read_more(&mut self, shared: &Shared) -> Result<(), CommError> {
        // Mid-message the peer must keep sending; before its first message an accepted peer
        // has a deadline; otherwise a comm may idle (heartbeats keep it alive).
        let mid_message = !self.decoder.is_idle() || !self.rbuf.is_empty();
        if !mid_message {
            self.progress_deadline = None;
        } else if self.progress_deadline.is_none() {
            self.progress_deadline = Some(Instant::now() + self.message_timeout);
        }
        let (stalled, deadline) = match (self.progress_deadline, self.first_deadline) {
            (Some(p), Some(f)) => (p <= f, Some(p.min(f))),
            (p, f) => (p.is_some(), p.or(f)),
        };
        let Self { read, rbuf, decoder, message_timeout, local_closed, peer_gone, .. } = self;
        let peer = &shared.peer;
        let n = tokio::select! {
            biased;
            () = local_closed.closed() => return Ok(()),
            () = peer_gone.closed() => return Ok(()),
            // Before the deadline: bytes already there count even if it has passed.
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
            () = sleep_until_or_forever(deadline) => {
                let why = if stalled {
                    format!("{peer} stalled in the middle of a message for {message_timeout:?}")
                } else {
                    format!("{peer} sent no message after connecting")
                };
                return Err(CommError::new(ErrorKind::Timeout, why));
            }
        };
        if n == 0 {
            let mid = if mid_message { " in the middle of a message" } else { "" };
            return Err(CommError::closed(format!("{peer} closed the connection{mid}")));
        }
        self.progress_deadline = None;
        Ok(())
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Returns credit, answers `PING`, sends heartbeats, reads what nobody else reads once per
/// heartbeat interval, watches the peer's heartbeats, and says goodbye on close.
async fn control<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin + Send + 'static>(
    outbox: Arc<StreamOutbox<W>>,
    shared: Arc<Shared>,
    side: Arc<tokio::sync::Mutex<ReadSide<R>>>,
    liveness: Liveness,
    _slot: Option<ConnectionSlot>,
) {
    let mut tick = tokio::time::interval(liveness.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (shared.heard.load(Ordering::Relaxed), Instant::now());
    let (local_closed, peer_gone) = (shared.local_closed.watch(), shared.peer_gone.watch());
    loop {
        tokio::select! {
            () = local_closed.closed() => {
                if !shared.peer_gone.is_closed() {
                    let _ = outbox.send(protocol::close_parts("")).await;
                }
                break;
            }
            () = peer_gone.closed() => break,
            () = shared.control_wanted.notified() => {
                shared.consumed_bytes.store(0, Ordering::Release);
                let n = shared.consumed.swap(0, Ordering::AcqRel);
                let pong = shared.pong.lock().unwrap_or_else(|p| p.into_inner()).take();
                let mut sent = Ok(());
                if n > 0 {
                    shared.granted.fetch_add(u64::from(n), Ordering::AcqRel);
                    sent = outbox.send(protocol::credit_parts(n)).await;
                }
                if let (Ok(()), Some(context)) = (&sent, pong) {
                    sent = outbox.send_command(zmtp::pong(&context)).await;
                }
                if let Err(e) = sent {
                    shared.peer_failed(e.kind(), e.message().to_owned());
                }
            }
            _ = tick.tick() => {
                // Whoever holds the read side is reading and counts what arrives; otherwise
                // read what the peer sent while nobody received.
                if let Ok(mut side) = side.try_lock() {
                    side.drain(&shared);
                }
                let heard = shared.heard.load(Ordering::Relaxed);
                if heard != last.0 {
                    last = (heard, Instant::now());
                } else if last.1.elapsed() > liveness.peer_timeout {
                    let silent = last.1.elapsed();
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

struct ZmqSend<R, W> {
    outbox: Arc<StreamOutbox<W>>,
    /// Read while waiting for credit, if nobody else reads.
    side: Arc<tokio::sync::Mutex<ReadSide<R>>>,
    /// A subscription to `shared.local_closed`, for sends that wait for credit.
    local_closed: CloseWatch,
    shared: Arc<Shared>,
    peer_limits: Limits,
    _slot: Option<ConnectionSlot>,
}

impl<R, W> std::fmt::Debug for ZmqSend<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqSend").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static, W> ZmqSend<R, W> {
    /// Takes one credit: the peer's inbox has room for one more message. Credit arrives on the
    /// read side, so while waiting the send reads unless someone else does.
    async fn credit(&mut self) -> Result<(), CommError> {
        let s = &*self.shared;
        // The read side found the budget full of messages kept for the application: wait
        // for it to take one, without holding the read side.
        let mut full = false;
        loop {
            match s.credits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    return Ok(());
                }
                Err(TryAcquireError::Closed) => return Err(s.error()),
                Err(TryAcquireError::NoPermits) => {}
            }
            tokio::select! {
                biased;
                () = self.local_closed.closed() => return Err(s.error()),
                permit = s.credits.acquire() => match permit {
                    Ok(p) => {
                        p.forget();
                        return Ok(());
                    }
                    Err(_) => return Err(s.error()),
                },
                () = s.budget_freed.notified(), if full => full = false,
                read = async {
                    let mut side = self.side.lock().await;
                    match side.step(s).await? {
                        Stepped::Message(m) => s.keep(m),
                        Stepped::Handled => {}
                        Stepped::Full => return Ok(true),
                    }
                    Ok(false)
                }, if !full => match read {
                    Ok(f) => full = f,
                    Err(Ended) => return Err(s.error()),
                },
            }
        }
    }
}

#[async_trait]
impl<R, W> CommSend for ZmqSend<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        let s = &self.shared;
        if s.ended() {
            return Err(s.error());
        }
        courier_core::codec::check_limits(&msg, &self.peer_limits)?;
        self.credit().await?;
        let s = &self.shared;
        self.outbox.send_message(&msg).await.inspect_err(|e| {
            s.peer_failed(e.kind(), e.message().to_owned());
        })
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.shared.local_closed.close();
        Ok(())
    }
}

impl<R, W> Drop for ZmqSend<R, W> {
    fn drop(&mut self) {
        self.shared.local_closed.close();
    }
}

struct ZmqRecv<R> {
    side: Arc<tokio::sync::Mutex<ReadSide<R>>>,
    /// A subscription to `shared.local_closed`, for receives waiting for the read side.
    local_closed: CloseWatch,
    shared: Arc<Shared>,
    _slot: Option<ConnectionSlot>,
}

impl<R> std::fmt::Debug for ZmqRecv<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqRecv").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send + 'static> CommRecv for ZmqRecv<R> {
    /// Cancel-safe: a message is only taken from the read side when it is returned.
    async fn recv(&mut self) -> Result<Message, CommError> {
        let s = &*self.shared;
        let next = loop {
            if s.local_closed.is_closed() {
                return Err(s.recv_error());
            }
            if let Some(m) = s.kept() {
                break Ok(m);
            }
            let mut side = match self.side.try_lock() {
                Ok(side) => side,
                Err(_) => {
                    // Enabled before the inbox is looked at again: a message kept after the
                    // look wakes it.
                    let filled = s.inbox_filled.notified();
                    tokio::pin!(filled);
                    filled.as_mut().enable();
                    if let Some(m) = s.kept() {
                        break Ok(m);
                    }
                    tokio::select! {
                        biased;
                        () = self.local_closed.closed() => return Err(s.recv_error()),
                        // Whoever reads kept a message: take it without waiting for the lock.
                        () = &mut filled => continue,
                        side = self.side.lock() => side,
                    }
                }
            };
            // Only the read side's holder keeps messages: what is kept came before anything
            // this receive would read now.
            if let Some(m) = s.kept() {
                break Ok(m);
            }
            break loop {
                match side.step(s).await {
                    Ok(Stepped::Message(m)) => break Ok(m),
                    Ok(Stepped::Handled) => {}
                    // Only messages not taken yet hold budget this way, and the receiver takes
                    // the kept ones first; should it happen, wait as any reader would.
                    Ok(Stepped::Full) => tokio::select! {
                        biased;
                        () = self.local_closed.closed() => break Err(Ended),
                        () = s.budget_freed.notified() => {}
                    },
                    Err(Ended) => break Err(Ended),
                }
            };
        };
        match next {
            Ok((m, held)) => {
                s.taken(held);
                Ok(m)
            }
            Err(Ended) => Err(s.recv_error()),
        }
    }
}

impl<R> Drop for ZmqRecv<R> {
    fn drop(&mut self) {
        // Dropping either half closes a zmq:// comm: nobody would return the peer's credit.
        self.shared.local_closed.close();
    }
}
