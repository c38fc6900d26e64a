//! Comms over any byte stream: the glue between the sans-IO [codec](crate::codec) and
//! [handshake](crate::handshake) and tokio's `AsyncRead`/`AsyncWrite`.
//!
//! A stream transport (tcp://, unix://, tls://, or yours) only opens and accepts byte streams;
//! [`handshake_stream`] turns a connected stream into a [`Comm`], and [`HandshakingListener`]
//! turns a [`StreamAcceptor`] into a [`Listener`] that handshakes each peer in its own task
//! (with the handshake timeout) so a silent or hostile peer never delays the others.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::budget::{RecvBudget, SharedBudget};
use crate::codec::{Decoder, Encoder};
use crate::comm::{CloseSignal, CloseWatch, Comm, CommRecv, CommSend, PeerInfo};
use crate::compression::{Compression, Link};
use crate::error::{CommError, ErrorKind};
use crate::handshake::{FLAG_REQUIRES_CREDENTIAL, Hello, VERDICT_OK, negotiate};
use crate::message::Message;
use crate::ratelimit::RateLimit;
use crate::transport::{CommConfig, Listener, RejectionLog};

/// Bytes requested from the stream per read when not reading a large frame directly.
pub const READ_CHUNK: usize = 256 * 1024;
/// IoSlices handed to one vectored write.
const MAX_IOV: usize = 64;
/// Handshakes a listener runs at once (among peers that have sent bytes).
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// First and largest pause after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connected byte stream, split, with its addresses.
#[derive(Debug)]
pub struct StreamParts<R, W> {
    /// Read half.
    pub read: R,
    /// Write half.
    pub write: W,
    /// This end's address.
    pub local: Address,
    /// The peer's address.
    pub peer: Address,
    /// Compression to use when the config leaves it open (transports pick none for loopback
    /// peers and `auto` across machines).
    pub default_compression: Compression,
}

/// Runs the handshake over a connected stream (the connecting side) and returns the comm,
/// within `config.handshake_timeout` (else `HandshakeTimeout`). If the listener checks
/// credentials, `config.credential` is presented and the listener's verdict awaited: a
/// refusal is `Unauthorized`.
pub async fn handshake_stream<R, W>(parts: StreamParts<R, W>, config: &CommConfig) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    handshake_stream_halves(parts, config).await.map(StreamHalves::into_comm)
}

/// [`handshake_stream`], returning the comm's halves as their concrete types: for a
/// transport that wraps Courier's stream comm in its own (shm://), so that each send and
/// receive goes through one boxed future, not two.
pub async fn handshake_stream_halves<R, W>(
    parts: StreamParts<R, W>,
    config: &CommConfig,
) -> Result<StreamHalves<R, W>, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let timeout = config.handshake_timeout;
    let peer = parts.peer.clone();
    match tokio::time::timeout(timeout, handshake_inner(parts, config, None)).await {
        Ok(result) => result,
        Err(_) => {
            Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no handshake from {peer} within {timeout:?}")))
        }
    }
}

/// A handshaken stream comm as its two concrete halves, with what [`Comm::new`] needs.
#[derive(Debug)]
pub struct StreamHalves<R, W> {
    /// The send half.
    pub send: StreamSend<W>,
    /// The receive half.
    pub recv: StreamRecv<R>,
    /// This end's address.
    pub local: Address,
    /// The peer's address.
    pub peer: Address,
    /// What the peer said in the handshake.
    pub info: PeerInfo,
}

impl<R, W> StreamHalves<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// The comm of these halves.
    pub fn into_comm(self) -> Comm {
        Comm::new(Box::new(self.send), Box::new(self.recv), self.local, self.peer, self.info)
    }
}

/// A connection a [`HandshakingListener`] admitted, handed to [`StreamAcceptor::handshake`]:
/// its place under the listener's connection cap and the listener's shared receive pool.
#[derive(Debug, Clone)]
pub struct Admission {
    pool: Arc<SharedBudget>,
    slot: ConnectionSlot,
    first: Option<AddressPlace>,
}

impl Admission {
    /// A receive budget of `per_connection` bytes that also draws from the listener's pool.
    pub fn budget(&self, per_connection: u64) -> RecvBudget {
        RecvBudget::new(per_connection, Some(self.pool.clone()))
    }

    /// The connection's place under the cap: the comm built on it must hold a clone until
    /// it closes, so the listener counts it as open.
    pub fn slot(&self) -> ConnectionSlot {
        self.slot.clone()
    }

    /// The connection's place among its address's connections that have not yet sent a
    /// first message: the comm's receiving half holds it until its first message arrives,
    /// then drops it, so one address cannot fill the listener with idle comms.
    pub fn until_first_message(&self) -> Option<AddressPlace> {
        self.first.clone()
    }
}

/// Counts a connection against its address's limit of connections still handshaking or not
/// yet active ([`CommConfig::max_pending_per_address`]) while any clone lives.
#[derive(Debug, Clone)]
pub struct AddressPlace(#[allow(dead_code, reason = "held for its Drop")] Arc<PendingGuard>);

/// Keeps an accepted connection counted under its listener's connection cap while any clone
/// lives.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(#[allow(dead_code, reason = "held for its Drop")] Arc<ConnGuard>);

/// The listening side of Courier's stream handshake, for a connection a
/// [`HandshakingListener`] admitted: checks credentials if `config.access` is set, and gives
/// the comm a receive budget and first-message deadline from `config`.
pub async fn accept_stream<R, W>(
    parts: StreamParts<R, W>,
    config: &CommConfig,
    admission: Admission,
) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    handshake_inner(parts, config, Some(admission)).await.map(StreamHalves::into_comm)
}

/// [`accept_stream`], returning the comm's halves as their concrete types (see
/// [`handshake_stream_halves`]).
pub async fn accept_stream_halves<R, W>(
    parts: StreamParts<R, W>,
    config: &CommConfig,
    admission: Admission,
) -> Result<StreamHalves<R, W>, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    handshake_inner(parts, config, Some(admission)).await
}

/// Logs that `peer` broke the protocol and its comm was closed (at most ten lines a second
/// across the process). Transports with their own framing call this on every violation.
pub fn log_violation(peer: &Address, e: &CommError) {
    if let Some(suppressed) = VIOLATIONS.allow() {
        tracing::warn!(%peer, error = %e, suppressed, "closing a comm that broke the protocol");
    }
}

async fn handshake_inner<R, W>(
    parts: StreamParts<R, W>,
    config: &CommConfig,
    accepting: Option<Admission>,
) -> Result<StreamHalves<R, W>, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let StreamParts { mut read, mut write, local, peer, default_compression } = parts;
    let compression = config.compression.unwrap_or(default_compression);
    let checks = accepting.is_some() && config.access.is_some();
    let flags = if checks { FLAG_REQUIRES_CREDENTIAL } else { 0 };
    let mut hello = Hello::new(config.limits, compression, config.name.clone()).with_flags(flags);
    if accepting.is_none() {
        hello = hello.with_credential(config.credential.as_ref());
    }
    let writing = async {
        write.write_all(&hello.encode()).await?;
        write.flush().await
    };
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let reading = async {
        loop {
            if let Some(h) = Hello::decode(&mut rbuf)? {
                return Ok::<_, CommError>(h);
            }
            let n =
                read.read_buf(&mut rbuf).await.map_err(|e| CommError::from_io(format!("handshake with {peer}"), e))?;
            if n == 0 {
                return Err(CommError::closed(format!("{peer} closed the connection during the handshake")));
            }
        }
    };
    let (written, theirs) = tokio::join!(writing, reading);
    let theirs = theirs?;
    written.map_err(|e| CommError::from_io(format!("sending handshake to {peer}"), e))?;
    let mut role = None;
    if checks {
        let access = config.access.as_ref().expect("checked above");
        match access.check(&theirs.credential) {
            Some(r) => {
                role = Some(r.to_owned());
                write.write_all(&VERDICT_OK).await.map_err(|e| CommError::from_io(format!("answering {peer}"), e))?;
                write.flush().await.map_err(|e| CommError::from_io(format!("answering {peer}"), e))?;
            }
            None => {
                let what =
                    if theirs.credential.is_empty() { "no credential" } else { "a credential not accepted here" };
                return Err(CommError::new(ErrorKind::Unauthorized, format!("{peer} presented {what}")));
            }
        }
    } else if accepting.is_none() && theirs.flags & FLAG_REQUIRES_CREDENTIAL != 0 {
        if config.credential.is_none() {
            return Err(CommError::new(
                ErrorKind::Unauthorized,
                format!("{peer} requires a credential (an auth token) and none is configured"),
            ));
        }
        while rbuf.len() < VERDICT_OK.len() {
            let n =
                read.read_buf(&mut rbuf).await.map_err(|e| CommError::from_io(format!("handshake with {peer}"), e))?;
            if n == 0 {
                return Err(CommError::new(ErrorKind::Unauthorized, format!("{peer} refused this side's credential")));
            }
        }
        if rbuf.split_to(VERDICT_OK.len())[..] != VERDICT_OK {
            return Err(CommError::protocol(format!("{peer} sent a malformed handshake verdict")));
        }
    }
    let session = negotiate(config.limits, compression, theirs);
    let info = PeerInfo {
        name: session.peer.name.clone(),
        version: session.peer.version,
        role,
        limits: Some(session.send_limits),
    };
    let close = CloseSignal::new();
    let per_conn = config.budget.connection_bytes(session.recv_limits.max_message_size);
    let (budget, guard, first_deadline, until_first) = match accepting {
        Some(a) => {
            let deadline = config.first_message_timeout.map(|t| tokio::time::Instant::now() + t);
            (a.budget(per_conn), Some(a.slot()), deadline, a.until_first_message())
        }
        None => (RecvBudget::new(per_conn, None), None, None, None),
    };
    let send = StreamSend {
        write,
        encoder: Encoder::new(session.send_limits, session.send_compression).with_codecs(session.send_codecs),
        chunks: Vec::new(),
        close: close.clone(),
        state: SendState::Open,
        peer: peer.clone(),
        _guard: guard.clone(),
    };
    let recv = StreamRecv {
        read,
        rbuf,
        decoder: Decoder::with(session.recv_limits, compression.offered_mask(), budget),
        close_watch: close.watch(),
        close,
        failed: false,
        peer: peer.clone(),
        first_deadline,
        until_first,
        message_timeout: config.message_timeout,
        _guard: guard,
    };
    Ok(StreamHalves { send, recv, local, peer, info })
}

/// One open connection of a listener; dropping the last clone (both halves of its comm)
/// frees its place under the listener's connection cap.
#[derive(Debug)]
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs of refused connections and protocol violations, at most 10 lines a second each.
static REFUSED: RateLimit = RateLimit::new(10);
static VIOLATIONS: RateLimit = RateLimit::new(10);

#[derive(Debug, PartialEq)]
enum SendState {
    Open,
    /// A send future was dropped mid-write: the stream may hold half a message.
    Poisoned,
    Closed,
}

/// The send half of Courier's stream comm over a write half `W`.
pub struct StreamSend<W> {
    write: W,
    encoder: Encoder,
    chunks: Vec<Bytes>,
    close: CloseSignal,
    state: SendState,
    peer: Address,
    _guard: Option<ConnectionSlot>,
}

impl<W> std::fmt::Debug for StreamSend<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSend").field("peer", &self.peer).field("state", &self.state).finish_non_exhaustive()
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> CommSend for StreamSend<W> {
    async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        self.send_message(msg).await
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.close_stream().await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamSend<W> {
    /// The peer's address.
    pub fn peer_address(&self) -> &Address {
        &self.peer
    }

    /// [`CommSend::send`], without a boxed future.
    pub async fn send_message(&mut self, msg: Message) -> Result<(), CommError> {
        self.send_encoded(&msg, None).await
    }

    /// Sends `msg` with `trailer` as one more, last frame (see
    /// [`Encoder::encode_with_trailer`]).
    pub async fn send_message_with_trailer(&mut self, msg: Message, trailer: Bytes) -> Result<(), CommError> {
        self.send_encoded(&msg, Some(&trailer)).await
    }

    async fn send_encoded(&mut self, msg: &Message, trailer: Option<&Bytes>) -> Result<(), CommError> {
        if self.state != SendState::Open || self.close.is_closed() {
            return Err(CommError::closed(format!("comm to {} is closed", self.peer)));
        }
        self.chunks.clear();
        match trailer {
            None => self.encoder.encode(msg, &mut self.chunks)?,
            Some(t) => self.encoder.encode_with_trailer(msg, t, &mut self.chunks)?,
        }
        self.state = SendState::Poisoned;
        let wire_bytes: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        // The link's bandwidth, for `auto` compression, is measured on large messages only:
        // a small one reads no clock. tokio's clock: std's, except in tests that pause time.
        let start = (wire_bytes >= Link::MEASURE_MIN).then(tokio::time::Instant::now);
        let result = write_all_vectored(&mut self.write, &mut self.chunks).await;
        let result = match result {
            Ok(()) => self.write.flush().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if let Some(start) = start {
                    self.encoder.observe(wire_bytes, start.elapsed());
                }
                self.state = SendState::Open;
                Ok(())
            }
            Err(e) => {
                self.state = SendState::Closed;
                self.close.close();
                Err(CommError::from_io(format!("sending to {}", self.peer), e))
            }
        }
    }

    /// [`CommSend::close`], without a boxed future.
    pub async fn close_stream(&mut self) -> Result<(), CommError> {
        self.close.close();
        if self.state != SendState::Closed {
            self.state = SendState::Closed;
            // The peer may be gone already: a failed shutdown still leaves us closed.
            let _ = self.write.shutdown().await;
        }
        Ok(())
    }
}

/// Writes every chunk with vectored writes, straight from the chunks' buffers, and empties
/// `chunks`. Not cancel-safe: a dropped future may leave part of a chunk written.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = if first + 1 == chunks.len() {
            // One chunk (every small message: all coalesced): no list of slices to allocate.
            w.write(&chunks[first]).await?
        } else {
            let slices: Vec<IoSlice<'_>> = chunks[first..].iter().take(MAX_IOV).map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "stream accepted no bytes"));
        }
        let mut left = n;
        while left > 0 {
            let c = &mut chunks[first];
            let take = left.min(c.len());
            c.advance(take);
            left -= take;
            if c.is_empty() {
                first += 1;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    chunks.clear();
    Ok(())
}

/// The receive half of Courier's stream comm over a read half `R`.
pub struct StreamRecv<R> {
    read: R,
    rbuf: BytesMut,
    decoder: Decoder,
    close: CloseSignal,
    /// This loop's subscription to `close`, so that a pending read ends when the comm closes.
    close_watch: CloseWatch,
    failed: bool,
    peer: Address,
    /// For comms a listener accepted: the first message must arrive by then.
    first_deadline: Option<tokio::time::Instant>,
    /// For comms a listener accepted: its place under the per-address limit, until the first
    /// message.
    until_first: Option<AddressPlace>,
    /// Inside a message, a read must bring bytes within this.
    message_timeout: Duration,
    _guard: Option<ConnectionSlot>,
}

impl<R> std::fmt::Debug for StreamRecv<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRecv").field("peer", &self.peer).field("failed", &self.failed).finish_non_exhaustive()
    }
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send + 'static> CommRecv for StreamRecv<R> {
    /// Cancel-safe: partial messages live in `self.rbuf` and the decoder; a dropped read
    /// consumed nothing.
    async fn recv(&mut self) -> Result<Message, CommError> {
        self.recv_message().await
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> StreamRecv<R> {
    /// [`CommRecv::recv`], without a boxed future; cancel-safe in the same way.
    pub async fn recv_message(&mut self) -> Result<Message, CommError> {
        loop {
            if self.failed || self.close.is_closed() {
                return Err(CommError::closed(format!("comm with {} is closed", self.peer)));
            }
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(msg)) => {
                    self.first_deadline = None;
                    self.until_first = None;
                    return Ok(msg);
                }
                Ok(None) => {}
                Err(e) => {
                    log_violation(&self.peer, &e);
                    self.fail();
                    return Err(e);
                }
            }
            // Mid-message the peer must keep sending; before its first message an accepted
            // peer has a deadline; otherwise a comm may idle.
            let mid_message = !self.decoder.is_idle() || !self.rbuf.is_empty();
            let progress = mid_message.then(|| tokio::time::Instant::now() + self.message_timeout);
            // Both bounds apply: the next bytes of a message, and the first message overall.
            let stalled = match (progress, self.first_deadline) {
                (Some(p), Some(f)) => p <= f,
                (p, _) => p.is_some(),
            };
            let deadline = match (progress, self.first_deadline) {
                (Some(p), Some(f)) => Some(p.min(f)),
                (p, f) => p.or(f),
            };
            let Self { read, rbuf, decoder, close_watch, .. } = self;
            let read_result = tokio::select! {
                biased;
                () = close_watch.closed() => continue,
                () = sleep_until_or_forever(deadline) => {
                    let why = if stalled {
                        format!("{} stalled in the middle of a message for {:?}", self.peer, self.message_timeout)
                    } else {
                        format!("{} sent no message after connecting", self.peer)
                    };
                    self.fail();
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
                } => r,
            };
            match read_result {
                Ok(0) => {
                    self.fail();
                    let mid =
                        if self.decoder.is_idle() && self.rbuf.is_empty() { "" } else { " in the middle of a message" };
                    return Err(CommError::closed(format!("{} closed the connection{mid}", self.peer)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.fail();
                    return Err(CommError::from_io(format!("receiving from {}", self.peer), e));
                }
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<R> StreamRecv<R> {
    /// A broken stream cannot be resynchronised: refuse further use of both halves.
    fn fail(&mut self) {
        self.failed = true;
        self.close.close();
    }
}

/// The raw side of a stream listener: accepts connections and upgrades them to streams.
///
/// `accept_raw` should return quickly (an OS accept); `upgrade` runs in the connection's
/// own task under the handshake timeout (e.g. a TLS handshake, or just splitting a socket).
#[async_trait]
pub trait StreamAcceptor: Send + Sync + 'static {
    /// A freshly accepted connection.
    type Conn: Send + 'static;
    /// The read half after upgrade.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half after upgrade.
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Accepts the next connection from the OS.
    async fn accept_raw(&self) -> io::Result<Self::Conn>;

    /// Turns an accepted connection into stream halves with addresses.
    async fn upgrade(&self, conn: Self::Conn) -> Result<StreamParts<Self::Read, Self::Write>, CommError>;

    /// Resolves once the connection has bytes to read (or fails). The listener waits for
    /// this before giving the connection a handshake slot, so silent connections do not
    /// hold slots. Default: at once.
    async fn readable(&self, _conn: &Self::Conn) -> io::Result<()> {
        Ok(())
    }

    /// The peer's IP address, for per-address limits (`None`: not an IP transport).
    fn peer_ip(&self, _conn: &Self::Conn) -> Option<std::net::IpAddr> {
        None
    }

    /// Runs the handshake on an upgraded connection and returns its comm, within the
    /// listener's handshake timeout. Default: Courier's stream handshake ([`accept_stream`]);
    /// transports with their own framing (zmq://) replace it.
    async fn handshake(
        &self,
        parts: StreamParts<Self::Read, Self::Write>,
        config: &CommConfig,
        admission: Admission,
    ) -> Result<Comm, CommError> {
        accept_stream(parts, config, admission).await
    }
}

/// A [`Listener`] over a [`StreamAcceptor`]: accepts in a background task, handshakes each
/// peer in its own task, and queues handshaken comms (bounded) for [`Listener::accept`].
#[derive(Debug)]
pub struct HandshakingListener {
    listen: Address,
    contact: Address,
    ready: mpsc::Receiver<Comm>,
    rejections: RejectionLog,
    task: Option<JoinHandle<()>>,
    /// A socket file to remove once the listener is closed or dropped.
    socket_file: Option<std::path::PathBuf>,
}

impl HandshakingListener {
    /// Starts accepting with `acceptor`.
    ///
    /// Admission: at most `config.connection_cap()` connections open at once (handshaking
    /// or accepted; beyond it new ones are closed at once); at most
    /// `config.max_pending_per_address` handshaking from one IP; a connection gets one of
    /// the 256 handshake slots only once its first bytes arrive, and must complete the
    /// handshake within `config.handshake_timeout`. Accept errors (out of file descriptors)
    /// back off exponentially up to a second. Every refusal is recorded and logged (at most
    /// ten lines a second).
    pub fn spawn<A: StreamAcceptor>(acceptor: A, listen: Address, contact: Address, config: CommConfig) -> Self {
        let (tx, ready) = mpsc::channel(config.queue_capacity.max(1));
        let rejections = RejectionLog::default();
        let log = rejections.clone();
        let acceptor = Arc::new(acceptor);
        let pool = SharedBudget::new(config.budget.listener_bytes());
        let cap = config.connection_cap();
        let config = Arc::new(config);
        let open = Arc::new(AtomicUsize::new(0));
        let pending: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
            let mut backoff = ACCEPT_BACKOFF_MIN;
            loop {
                let conn = match acceptor.accept_raw().await {
                    Ok(conn) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        conn
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        if let Some(suppressed) = REFUSED.allow() {
                            tracing::warn!(error = %e, ?backoff, suppressed, "accept failed; backing off");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let ip = acceptor.peer_ip(&conn);
                let refuse = |why: String| {
                    let e = CommError::new(ErrorKind::Closed, why);
                    if let Some(suppressed) = REFUSED.allow() {
                        tracing::warn!(peer = ?ip, error = %e, suppressed, "refused a connection");
                    }
                    log.record(&e);
                };
                if open.load(Ordering::Acquire) >= cap {
                    drop(conn);
                    refuse(format!("the listener has {cap} connections open, its cap"));
                    continue;
                }
                let pending_guard = match ip {
                    Some(ip) => {
                        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                        let n = p.entry(ip).or_insert(0);
                        if *n >= config.max_pending_per_address {
                            drop(p);
                            drop(conn);
                            refuse(format!(
                                "{ip} has {} connections handshaking or not yet active, its limit",
                                config.max_pending_per_address
                            ));
                            continue;
                        }
                        *n += 1;
                        Some(AddressPlace(Arc::new(PendingGuard { map: pending.clone(), ip })))
                    }
                    None => None,
                };
                open.fetch_add(1, Ordering::AcqRel);
                let slot = ConnectionSlot(Arc::new(ConnGuard(open.clone())));
                let (acceptor, config, tx, log, permits, pool) =
                    (acceptor.clone(), config.clone(), tx.clone(), log.clone(), permits.clone(), pool.clone());
                tokio::spawn(async move {
                    let timeout = config.handshake_timeout;
                    let attempt = async {
                        // No slot until the peer says something: silent peers hold none.
                        acceptor.readable(&conn).await.map_err(|e| CommError::from_io("waiting for a handshake", e))?;
                        let _permit =
                            permits.acquire_owned().await.map_err(|_| CommError::closed("listener closed"))?;
                        let parts = acceptor.upgrade(conn).await?;
                        acceptor.handshake(parts, &config, Admission { pool, slot, first: pending_guard }).await
                    };
                    let result = match tokio::time::timeout(timeout, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(CommError::new(
                            ErrorKind::HandshakeTimeout,
                            format!("no complete handshake within {timeout:?}"),
                        )),
                    };
                    match result {
                        Ok(comm) => {
                            // The listener was dropped: the comm is dropped, closing it.
                            let _ = tx.send(comm).await;
                        }
                        Err(e) => {
                            if let Some(suppressed) = REFUSED.allow() {
                                tracing::warn!(peer = ?ip, error = %e, suppressed, "refused a handshake");
                            }
                            log.record(&e);
                        }
                    }
                });
            }
        });
        HandshakingListener { listen, contact, ready, rejections, task: Some(task), socket_file: None }
    }

    /// Removes `path` (a Unix socket's file) when the listener is closed or dropped.
    pub fn removing_on_close(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.socket_file = path;
        self
    }

    fn remove_socket_file(&mut self) {
        if let Some(p) = self.socket_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A connection's place among its address's pending connections.
#[derive(Debug)]
struct PendingGuard {
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut p = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.ip);
            }
        }
    }
}

#[async_trait]
impl Listener for HandshakingListener {
    async fn accept(&mut self) -> Result<Comm, CommError> {
        self.ready.recv().await.ok_or_else(|| CommError::closed(format!("listener on {} is closed", self.contact)))
    }

    fn listen_address(&self) -> &Address {
        &self.listen
    }

    fn contact_address(&self) -> &Address {
        &self.contact
    }

    async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait until the OS socket is dropped, so the address can be bound again.
            let _ = task.await;
        }
        self.ready.close();
        // Comms handshaken but not yet accepted are dropped, which closes them.
        while self.ready.try_recv().is_ok() {}
        self.remove_socket_file();
    }

    fn rejections(&self) -> Option<RejectionLog> {
        Some(self.rejections.clone())
    }
}

impl Drop for HandshakingListener {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.remove_socket_file();
    }
}
