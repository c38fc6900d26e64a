//! # courier-zmq
//!
//! The `zmq://host:port` transport: Courier messages as ZeroMQ multipart messages over ZMTP 3
//! (NULL security), interoperable with libzmq DEALER peers that follow `docs/PROTOCOL.md`
//! ("zmq://").
//!
//! A listener plays a ZeroMQ ROUTER, a connecting side a DEALER; each comm is one TCP
//! connection. One Courier message is one multipart message (a kind part, the header, one
//! part per frame); large frames are written straight from the caller's `Bytes` and read
//! straight into 64-byte-aligned buffers.
//!
//! ZMTP itself is implemented here ([`zmtp`](crate::zmtp), sans-IO) rather than taken from the
//! `zeromq` crate, because a receiver must bound what a peer can make it hold before the bytes
//! arrive: the crate reserved whatever length a peer announced (one 74-byte packet aborted
//! the process), buffered whole messages, copied every part into its write buffer and served
//! all peers through one ROUTER socket. Here every part is checked against the phase's limits
//! as soon as its length is read, and memory comes from the same receive budgets, admission
//! control and timeouts as tcp:// (`courier_core::stream`).
//!
//! ZeroMQ is a poor point-to-point transport out of the box: it hides disconnects and queues
//! without bound. Courier adds what is missing:
//! - **Handshake**: the same hello as tcp:// (version, limits, name, credential).
//! - **Back-pressure**: credit-based flow control. A sender may have at most
//!   `CommConfig::queue_capacity` messages unconsumed at the receiver; the receiver returns
//!   credit in batches as the application consumes.
//! - **Liveness**: heartbeats every [`ZmqOptions::heartbeat_interval`]; a peer silent for
//!   [`ZmqOptions::peer_timeout`] (default 4 s), or disconnected, is `Closed`.
//!
//! No task owns the read direction: the application's receive reads and decodes inline, as on
//! tcp://, so a message reaches the caller without a queue or a second task (a third fewer
//! instructions per round trip than with a reader task), and large frames are read one at a
//! time into buffers the allocator recycles rather than ahead into a window of cold ones. A
//! send that waits for credit reads meanwhile, and a control task reads what is there once per
//! heartbeat interval, so credit, heartbeats and `PING`s are seen while nobody receives
//! (`PONG` then follows within one interval).
//! - **Close**: an explicit close message, so the peer's receives end with `Closed`.
//!
//! Compression is not used on zmq://.

mod comm;
mod handshake;
mod protocol;
pub mod zmtp;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::stream::{Admission, HandshakingListener, StreamAcceptor, StreamParts};
use courier_core::{Address, Comm, CommConfig, CommError, Compression, ErrorKind, Listener, Transport};
use courier_tcp::TcpOptions;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::comm::Liveness;
use crate::handshake::Ends;

/// The scheme this crate serves.
pub const SCHEME: &str = "zmq";

/// Settings for zmq://.
#[derive(Debug, Clone)]
pub struct ZmqOptions {
    /// How often each side sends a heartbeat (default 1 s).
    pub heartbeat_interval: Duration,
    /// How long a silent peer is tolerated before its comm is `Closed` (default 4 s).
    pub peer_timeout: Duration,
    /// Socket settings (nodelay, keepalive, buffers), as for tcp://.
    pub tcp: TcpOptions,
}

impl Default for ZmqOptions {
    fn default() -> Self {
        ZmqOptions {
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(4),
            tcp: TcpOptions::default(),
        }
    }
}

/// The zmq:// transport.
#[derive(Debug, Clone, Default)]
pub struct ZmqTransport {
    options: ZmqOptions,
}

impl ZmqTransport {
    /// A transport with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport with `options`.
    pub fn with_options(options: ZmqOptions) -> Self {
        ZmqTransport { options }
    }

    fn liveness(&self) -> Liveness {
        Liveness { heartbeat_interval: self.options.heartbeat_interval, peer_timeout: self.options.peer_timeout }
    }
}

static IDENTITIES: AtomicU64 = AtomicU64::new(0);

fn check_scheme(addr: &Address) -> Result<courier_core::HostPort, CommError> {
    if addr.scheme() != SCHEME {
        return Err(CommError::invalid_address(&addr.to_string(), "not a zmq:// address"));
    }
    addr.host_port()
}

fn ends(stream: &TcpStream, liveness: Liveness) -> Result<Ends, CommError> {
    let local = stream.local_addr().map_err(|e| CommError::from_io("reading the local address", e))?;
    let peer = stream.peer_addr().map_err(|e| CommError::from_io("reading the peer address", e))?;
    Ok(Ends {
        local: Address::from_socket_addr(SCHEME, local),
        peer: Address::from_socket_addr(SCHEME, peer),
        liveness,
    })
}

#[async_trait]
impl Transport for ZmqTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let hp = check_scheme(addr)?;
        let stream = courier_tcp::connect_socket(addr, &hp, config.connect_timeout, &self.options.tcp).await?;
        let ends = ends(&stream, self.liveness())?;
        let identity = format!("courier-{}-{}", std::process::id(), IDENTITIES.fetch_add(1, Ordering::Relaxed));
        let (read, write) = stream.into_split();
        let timeout = config.handshake_timeout;
        match tokio::time::timeout(timeout, handshake::connect(read, write, config, ends, identity.as_bytes())).await {
            Ok(r) => r,
            Err(_) => {
                Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no handshake from {addr} within {timeout:?}")))
            }
        }
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let hp = check_scheme(addr)?;
        let (listener, contact) = courier_tcp::bind_socket(addr, &hp, &self.options.tcp).await?;
        tracing::debug!(listen = %addr, contact = %contact, "zmq listener started");
        let acceptor = ZmqAcceptor { listener, options: self.options.tcp.clone(), liveness: self.liveness() };
        Ok(Box::new(HandshakingListener::spawn(acceptor, addr.clone(), contact, config.clone())))
    }
}

struct ZmqAcceptor {
    listener: tokio::net::TcpListener,
    options: TcpOptions,
    liveness: Liveness,
}

#[async_trait]
impl StreamAcceptor for ZmqAcceptor {
    type Conn = TcpStream;
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    async fn accept_raw(&self) -> io::Result<TcpStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    async fn upgrade(&self, conn: TcpStream) -> Result<StreamParts<OwnedReadHalf, OwnedWriteHalf>, CommError> {
        courier_tcp::configure(&conn, &self.options).map_err(|e| CommError::from_io("configuring a tcp socket", e))?;
        let Ends { local, peer, .. } = ends(&conn, self.liveness)?;
        let (read, write) = conn.into_split();
        Ok(StreamParts { read, write, local, peer, default_compression: Compression::None })
    }

    async fn readable(&self, conn: &TcpStream) -> io::Result<()> {
        conn.readable().await
    }

    fn peer_ip(&self, conn: &TcpStream) -> Option<std::net::IpAddr> {
        conn.peer_addr().ok().map(|a| a.ip())
    }

    async fn handshake(
        &self,
        parts: StreamParts<OwnedReadHalf, OwnedWriteHalf>,
        config: &CommConfig,
        admission: Admission,
    ) -> Result<Comm, CommError> {
        let ends = Ends { local: parts.local, peer: parts.peer, liveness: self.liveness };
        handshake::accept(parts.read, parts.write, config, ends, admission).await
    }
}
