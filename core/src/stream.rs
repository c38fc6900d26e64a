//! Comms over any byte stream: the glue between the sans-IO [codec](crate::codec) and
//! [handshake](crate::handshake) and tokio's `AsyncRead`/`AsyncWrite`.
//!
//! A stream transport (tcp://, unix://, tls://, or yours) only opens and accepts byte streams;
//! [`handshake_stream`] turns a connected stream into a [`Comm`], and [`HandshakingListener`]
//! turns a [`StreamAcceptor`] into a [`Listener`] that handshakes each peer in its own task
//! (with the handshake timeout) so a silent or hostile peer never delays the others.

use std::io::{self, IoSlice};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::codec::{Decoder, Encoder};
use crate::comm::{CloseSignal, Comm, CommRecv, CommSend, PeerInfo};
use crate::compression::Compression;
use crate::error::{CommError, ErrorKind};
use crate::handshake::{Hello, negotiate};
use crate::message::Message;
use crate::transport::{CommConfig, Listener, RejectionLog};

/// Bytes requested from the stream per read when not reading a large frame directly.
pub const READ_CHUNK: usize = 256 * 1024;
/// IoSlices handed to one vectored write.
const MAX_IOV: usize = 64;
/// Handshakes a listener runs at once; further peers wait in the OS backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;

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

/// Runs the handshake over a connected stream and returns the comm, within
/// `config.handshake_timeout` (else `HandshakeTimeout`).
pub async fn handshake_stream<R, W>(parts: StreamParts<R, W>, config: &CommConfig) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let timeout = config.handshake_timeout;
    let peer = parts.peer.clone();
    match tokio::time::timeout(timeout, handshake_inner(parts, config)).await {
        Ok(result) => result,
        Err(_) => {
            Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no handshake from {peer} within {timeout:?}")))
        }
    }
}

async fn handshake_inner<R, W>(parts: StreamParts<R, W>, config: &CommConfig) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let StreamParts { mut read, mut write, local, peer, default_compression } = parts;
    let compression = config.compression.unwrap_or(default_compression);
    let hello = Hello::new(config.limits, compression, config.name.clone());
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
    let session = negotiate(config.limits, compression, theirs);
    let info = PeerInfo { name: session.peer.name.clone(), version: session.peer.version };
    let close = CloseSignal::new();
    let send = StreamSend {
        write,
        encoder: Encoder::new(session.send_limits, session.send_compression),
        chunks: Vec::new(),
        close: close.clone(),
        state: SendState::Open,
        peer: peer.clone(),
    };
    let recv =
        StreamRecv { read, rbuf, decoder: Decoder::new(session.recv_limits), close, failed: false, peer: peer.clone() };
    Ok(Comm::new(Box::new(send), Box::new(recv), local, peer, info))
}

#[derive(Debug, PartialEq)]
enum SendState {
    Open,
    /// A send future was dropped mid-write: the stream may hold half a message.
    Poisoned,
    Closed,
}

struct StreamSend<W> {
    write: W,
    encoder: Encoder,
    chunks: Vec<Bytes>,
    close: CloseSignal,
    state: SendState,
    peer: Address,
}

impl<W> std::fmt::Debug for StreamSend<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSend").field("peer", &self.peer).field("state", &self.state).finish_non_exhaustive()
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> CommSend for StreamSend<W> {
    async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        if self.state != SendState::Open || self.close.is_closed() {
            return Err(CommError::closed(format!("comm to {} is closed", self.peer)));
        }
        self.chunks.clear();
        self.encoder.encode(&msg, &mut self.chunks)?;
        self.state = SendState::Poisoned;
        let result = write_all_vectored(&mut self.write, &mut self.chunks).await;
        let result = match result {
            Ok(()) => self.write.flush().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
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

    async fn close(&mut self) -> Result<(), CommError> {
        self.close.close();
        if self.state != SendState::Closed {
            self.state = SendState::Closed;
            // The peer may be gone already: a failed shutdown still leaves us closed.
            let _ = self.write.shutdown().await;
        }
        Ok(())
    }
}

/// Writes every chunk with vectored writes, straight from the chunks' buffers.
async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = {
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

struct StreamRecv<R> {
    read: R,
    rbuf: BytesMut,
    decoder: Decoder,
    close: CloseSignal,
    failed: bool,
    peer: Address,
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
        loop {
            if self.failed || self.close.is_closed() {
                return Err(CommError::closed(format!("comm with {} is closed", self.peer)));
            }
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
            let Self { read, rbuf, decoder, close, .. } = self;
            let read_result = tokio::select! {
                biased;
                () = close.closed() => continue,
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
}

impl HandshakingListener {
    /// Starts accepting with `acceptor`.
    pub fn spawn<A: StreamAcceptor>(acceptor: A, listen: Address, contact: Address, config: CommConfig) -> Self {
        let (tx, ready) = mpsc::channel(config.queue_capacity.max(1));
        let rejections = RejectionLog::default();
        let log = rejections.clone();
        let acceptor = Arc::new(acceptor);
        let config = Arc::new(config);
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let conn = match acceptor.accept_raw().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let (acceptor, config, tx, log) = (acceptor.clone(), config.clone(), tx.clone(), log.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let timeout = config.handshake_timeout;
                    let attempt = async {
                        let parts = acceptor.upgrade(conn).await?;
                        handshake_stream(parts, &config).await
                    };
                    let result = match tokio::time::timeout(timeout, attempt).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no handshake within {timeout:?}")))
                        }
                    };
                    match result {
                        Ok(comm) => {
                            // The listener was dropped: the comm is dropped, closing it.
                            let _ = tx.send(comm).await;
                        }
                        Err(e) => log.record(&e),
                    }
                });
            }
        });
        HandshakingListener { listen, contact, ready, rejections, task: Some(task) }
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
    }
}
