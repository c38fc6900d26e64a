//! # courier-zmq
//!
//! The `zmq://host:port` transport, on the pure-Rust [`zeromq`] crate (ZMTP 3, no C library),
//! interoperable with libzmq peers that follow `docs/PROTOCOL.md` ("zmq://").
//!
//! A listener binds one ROUTER socket and demultiplexes peers by identity into one comm per
//! peer; connecting opens a DEALER socket. One Courier message is one multipart ZeroMQ message
//! (a kind part, the header, one part per frame), and frames are handed to the socket as the
//! caller's `Bytes`, without copying.
//!
//! ZeroMQ is a poor point-to-point transport out of the box: it hides disconnects and queues
//! without bound. Courier adds what is missing:
//! - **Handshake**: the same hello as tcp:// (version, limits, compressions, name).
//! - **Back-pressure**: credit-based flow control. A sender may have at most
//!   `CommConfig::queue_capacity` messages unconsumed at the receiver; the receiver returns
//!   credit in batches as the application consumes. So the ROUTER's demultiplexer never blocks
//!   on one slow peer, and memory stays bounded.
//! - **Liveness**: heartbeats every [`ZmqOptions::heartbeat_interval`]; a peer silent for
//!   [`ZmqOptions::peer_timeout`] (default 4 s), or disconnected, is `Closed`.
//! - **Close**: an explicit close message, so the peer's receives end with `Closed`.
//!
//! Deviations from tcp:// (see PROTOCOL.md): ZeroMQ does not reveal a connecting peer's TCP
//! endpoint, so the connecting side of a comm is addressed by its identity
//! (`zmq://courier-<pid>-<n>`); dropping either half of a comm closes it; received frames are
//! not guaranteed to be 64-byte aligned (arrays fall back to a copy when misaligned);
//! compression is not used.

mod comm;
mod protocol;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use courier_core::handshake::Hello;
use courier_core::{
    Address, CloseSignal, Comm, CommConfig, CommError, Compression, ErrorKind, Listener, PeerInfo, RejectionLog,
    Transport,
};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, RouterSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, ZmqError, ZmqMessage,
};

use crate::comm::{Entry, Liveness, Outbox, new_comm};
use crate::protocol::{HELLO, Incoming};

/// The scheme this crate serves.
pub const SCHEME: &str = "zmq";

/// Settings for zmq://.
#[derive(Debug, Clone)]
pub struct ZmqOptions {
    /// How often each side sends a heartbeat (default 1 s).
    pub heartbeat_interval: Duration,
    /// How long a silent peer is tolerated before its comm is `Closed` (default 4 s).
    pub peer_timeout: Duration,
}

impl Default for ZmqOptions {
    fn default() -> Self {
        ZmqOptions { heartbeat_interval: Duration::from_secs(1), peer_timeout: Duration::from_secs(4) }
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

fn zmq_error(doing: &str, e: ZmqError) -> CommError {
    let kind = match &e {
        ZmqError::Network(io) => return CommError::from_io(doing, std::io::Error::new(io.kind(), io.to_string())),
        ZmqError::NoMessage => ErrorKind::Closed,
        ZmqError::Endpoint(_) => ErrorKind::InvalidAddress,
        _ if e.to_string().to_lowercase().contains("timeout") => ErrorKind::ConnectTimeout,
        _ => ErrorKind::Io,
    };
    CommError::new(kind, format!("{doing}: {e}"))
}

/// `tcp://host:port` for the zeromq crate, from a zmq:// address.
fn endpoint(addr: &Address) -> Result<String, CommError> {
    if addr.scheme() != SCHEME {
        return Err(CommError::invalid_address(&addr.to_string(), "not a zmq:// address"));
    }
    Ok(format!("tcp://{}", addr.host_port()?))
}

/// This side's inbox capacity, announced as its window.
fn window(config: &CommConfig) -> u32 {
    u32::try_from(config.queue_capacity.max(2)).unwrap_or(u32::MAX)
}

fn hello_parts(config: &CommConfig) -> Vec<Bytes> {
    vec![
        protocol::kind(HELLO),
        Hello::new(config.limits, Compression::None, config.name.clone()).encode(),
        Bytes::copy_from_slice(&window(config).to_le_bytes()),
    ]
}

fn decode_hello(bytes: Bytes) -> Result<Hello, CommError> {
    let mut src = BytesMut::from(&bytes[..]);
    Hello::decode(&mut src)?.ok_or_else(|| CommError::protocol("truncated hello"))
}

fn to_zmq(parts: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(parts).expect("a Courier zmq message always has a kind part")
}

/// A comm's send can only fail because its peer (or the socket) is gone — e.g. the ROUTER
/// forgot a peer that just disconnected ("destination not found"): that is `Closed`, like a
/// reset on tcp://, whatever the crate calls it.
fn send_failed(e: ZmqError) -> CommError {
    CommError::closed(format!("zmq:// peer is gone: {e}"))
}

struct DealerOutbox(Mutex<zeromq::DealerSendHalf>);

#[async_trait]
impl Outbox for DealerOutbox {
    async fn send(&self, parts: Vec<Bytes>) -> Result<(), CommError> {
        self.0.lock().await.send(to_zmq(parts)).await.map_err(send_failed)
    }
}

struct RouterOutbox {
    socket: Arc<Mutex<zeromq::RouterSendHalf>>,
    peer: Bytes,
}

#[async_trait]
impl Outbox for RouterOutbox {
    async fn send(&self, mut parts: Vec<Bytes>) -> Result<(), CommError> {
        parts.insert(0, self.peer.clone());
        self.socket.lock().await.send(to_zmq(parts)).await.map_err(send_failed)
    }
}

#[async_trait]
impl Transport for ZmqTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let target = endpoint(addr)?;
        let hp = addr.host_port()?;
        if hp.is_wildcard() || hp.port == 0 {
            return Err(CommError::invalid_address(&addr.to_string(), "cannot connect to a wildcard host or port 0"));
        }
        let name = format!("courier-{}-{}", std::process::id(), IDENTITIES.fetch_add(1, Ordering::Relaxed));
        let identity = PeerIdentity::try_from(Bytes::from(name.clone())).map_err(|e| zmq_error("identity", e))?;
        let mut options = SocketOptions::default();
        options.peer_identity(identity).connect_timeout(config.connect_timeout.max(Duration::from_millis(1)));
        let mut socket = DealerSocket::with_options(options);
        let mut events = socket.monitor();
        socket.connect(&target).await.map_err(|e| zmq_error(&format!("connecting to {addr}"), e))?;
        let (tx, mut rx) = socket.split();
        let outbox: Arc<dyn Outbox> = Arc::new(DealerOutbox(Mutex::new(tx)));
        outbox.send(hello_parts(config)).await?;
        let timeout = config.handshake_timeout;
        let reply = tokio::time::timeout(timeout, rx.recv()).await.map_err(|_| {
            CommError::new(ErrorKind::HandshakeTimeout, format!("no handshake from {addr} within {timeout:?}"))
        })?;
        let parts = reply.map_err(|e| zmq_error("handshake", e))?.into_vec();
        let (hello, peer_window) = match protocol::parse(parts, &config.limits)? {
            Incoming::Hello(bytes, w) => (decode_hello(bytes)?, w),
            Incoming::Close(reason) => return Err(CommError::closed(format!("{addr} refused the comm: {reason}"))),
            other => return Err(CommError::protocol(format!("expected a hello from {addr}, got {other:?}"))),
        };
        let local = Address::new(SCHEME, &name)?;
        let info = PeerInfo { name: hello.name.clone(), version: hello.version, role: None };
        let done = CloseSignal::new();
        let exit = done.clone();
        let (comm, entry) = new_comm(
            outbox,
            hello.limits,
            window(config),
            peer_window,
            self.liveness(),
            local,
            addr.clone(),
            info,
            move || exit.close(),
        );
        let recv_limits = config.limits;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = done.closed() => break,
                    event = events.next() => match event {
                        Some(SocketEvent::Disconnected(_)) | None => {
                            entry.shared.peer_failed(ErrorKind::Closed, "zmq:// peer disconnected".into());
                            break;
                        }
                        Some(_) => {}
                    },
                    m = rx.recv() => {
                        let parsed = m.map_err(|e| zmq_error("receiving over zmq", e))
                            .and_then(|m| protocol::parse(m.into_vec(), &recv_limits));
                        match parsed {
                            Ok(incoming) => if !entry.deliver(incoming) { break },
                            Err(e) => {
                                entry.shared.peer_failed(e.kind(), e.message().to_owned());
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(comm)
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let target = endpoint(addr)?;
        let mut socket = RouterSocket::new();
        let events = socket.monitor();
        let bound = socket.bind(&target).await.map_err(|e| match e {
            ZmqError::Network(io) if io.kind() == std::io::ErrorKind::AddrInUse => {
                CommError::new(ErrorKind::AddressInUse, format!("{addr} is in use"))
            }
            e => zmq_error(&format!("binding {addr}"), e),
        })?;
        let bound = bound.to_string();
        let location = bound.strip_prefix("tcp://").unwrap_or(&bound);
        let contact = contact_address(location)?;
        let (tx, rx) = socket.split();
        let (accepted_tx, accepted) = mpsc::channel(config.queue_capacity.max(1));
        let closed = CloseSignal::new();
        let rejections = RejectionLog::default();
        let demux = Demux {
            socket: Arc::new(Mutex::new(tx)),
            table: HashMap::new(),
            accepted: accepted_tx,
            config: config.clone(),
            liveness: self.liveness(),
            contact: contact.clone(),
            rejections: rejections.clone(),
            closed: closed.clone(),
            backlog: Default::default(),
        };
        let task = tokio::spawn(demux.run(rx, events));
        Ok(Box::new(ZmqListener { listen: addr.clone(), contact, accepted, closed, rejections, task }))
    }
}

fn contact_address(location: &str) -> Result<Address, CommError> {
    let addr = Address::new(SCHEME, location)?;
    let mut hp = addr.host_port()?;
    if hp.is_wildcard() {
        hp.host = courier_core::Host::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        return Address::new(SCHEME, &hp.to_string());
    }
    Ok(addr)
}

/// Demultiplexes a ROUTER socket into comms, one per peer identity.
struct Demux {
    socket: Arc<Mutex<zeromq::RouterSendHalf>>,
    table: HashMap<Bytes, Entry>,
    accepted: mpsc::Sender<Comm>,
    config: CommConfig,
    liveness: Liveness,
    contact: Address,
    rejections: RejectionLog,
    closed: CloseSignal,
    backlog: std::collections::VecDeque<Comm>,
}

/// Handshaken comms waiting for `accept`, like a TCP listen backlog.
const BACKLOG: usize = 1024;

impl Demux {
    async fn run(mut self, mut rx: zeromq::RouterRecvHalf, mut events: futures::channel::mpsc::Receiver<SocketEvent>) {
        // Comms tell the demultiplexer when they end, so their entries are dropped.
        let (gone_tx, mut gone) = mpsc::channel::<Bytes>(1024);
        let (accepted, closed) = (self.accepted.clone(), self.closed.clone());
        loop {
            if self.closed.is_closed() && self.table.is_empty() {
                break;
            }
            tokio::select! {
                () = closed.closed(), if !closed.is_closed() => {
                    // Comms never accepted are closed with the listener.
                    for comm in self.backlog.drain(..) {
                        drop(comm);
                    }
                }
                permit = accepted.reserve(), if !self.backlog.is_empty() => match permit {
                    Ok(permit) => permit.send(self.backlog.pop_front().expect("backlog is not empty")),
                    Err(_) => self.backlog.clear(),
                },
                Some(id) = gone.recv() => { self.table.remove(&id); }
                event = events.next() => match event {
                    Some(SocketEvent::Disconnected(id)) => {
                        if let Some(entry) = self.table.remove(&Bytes::copy_from_slice(&id)) {
                            entry.shared.peer_failed(ErrorKind::Closed, "zmq:// peer disconnected".into());
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                m = rx.recv() => match m {
                    Ok(m) => {
                        let mut parts = m.into_vec();
                        if parts.len() < 2 {
                            continue;
                        }
                        let id = parts.remove(0);
                        self.handle(id, parts, &gone_tx).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "zmq router socket failed");
                        break;
                    }
                },
            }
        }
        for (_, entry) in self.table.drain() {
            entry.shared.peer_failed(ErrorKind::Closed, "zmq:// listener socket ended".into());
        }
    }

    async fn reply(&mut self, id: &Bytes, mut parts: Vec<Bytes>) {
        parts.insert(0, id.clone());
        let _ = self.socket.lock().await.send(to_zmq(parts)).await;
    }

    async fn reject(&mut self, id: &Bytes, err: CommError) {
        self.rejections.record(&err);
        self.reply(id, protocol::close_parts(&err.to_string())).await;
    }

    async fn handle(&mut self, id: Bytes, parts: Vec<Bytes>, gone: &mpsc::Sender<Bytes>) {
        let parsed = protocol::parse(parts, &self.config.limits);
        if let Some(entry) = self.table.get(&id) {
            let keep = match parsed {
                Ok(incoming) => entry.deliver(incoming),
                Err(e) => {
                    entry.shared.peer_failed(e.kind(), e.message().to_owned());
                    false
                }
            };
            if !keep {
                self.table.remove(&id);
            }
            return;
        }
        let (hello, peer_window) = match parsed {
            Ok(Incoming::Hello(bytes, w)) => (bytes, w),
            // A late credit or heartbeat from a comm that just ended: ignore it.
            Ok(Incoming::Credit(_) | Incoming::Heartbeat | Incoming::Close(_)) => return,
            Ok(Incoming::Message(_)) => {
                return self.reject(&id, CommError::protocol("zmq:// peer sent a message before its hello")).await;
            }
            Err(e) => return self.reject(&id, e).await,
        };
        if self.closed.is_closed() {
            return self.reject(&id, CommError::closed(format!("listener {} is closed", self.contact))).await;
        }
        let hello = match decode_hello(hello) {
            Ok(h) => h,
            Err(e) => return self.reject(&id, e).await,
        };
        let peer = match std::str::from_utf8(&id).ok().and_then(|s| Address::new(SCHEME, s).ok()) {
            Some(a) if !id.is_empty() => a,
            _ => Address::new(SCHEME, &format!("peer-{}", hex(&id))).expect("hex is a valid location"),
        };
        self.reply(&id, hello_parts(&self.config)).await;
        let outbox = Arc::new(RouterOutbox { socket: self.socket.clone(), peer: id.clone() });
        let info = PeerInfo { name: hello.name.clone(), version: hello.version, role: None };
        let (gone, exit_id) = (gone.clone(), id.clone());
        let (comm, entry) = new_comm(
            outbox,
            hello.limits,
            window(&self.config),
            peer_window,
            self.liveness,
            self.contact.clone(),
            peer,
            info,
            move || {
                let _ = gone.try_send(exit_id);
            },
        );
        if self.backlog.len() >= BACKLOG {
            // The application is not accepting: refuse rather than grow without bound.
            entry.shared.peer_failed(ErrorKind::Closed, "listener backlog full".into());
            self.rejections.record(&CommError::closed("zmq:// listener backlog full"));
            return;
        }
        // Registered at once so its first messages are delivered (credit bounds them).
        self.table.insert(id, entry);
        self.backlog.push_back(comm);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug)]
struct ZmqListener {
    listen: Address,
    contact: Address,
    accepted: mpsc::Receiver<Comm>,
    closed: CloseSignal,
    rejections: RejectionLog,
    task: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Listener for ZmqListener {
    async fn accept(&mut self) -> Result<Comm, CommError> {
        if self.closed.is_closed() {
            return Err(CommError::closed(format!("listener {} is closed", self.contact)));
        }
        self.accepted.recv().await.ok_or_else(|| CommError::closed(format!("listener {} is closed", self.contact)))
    }

    fn listen_address(&self) -> &Address {
        &self.listen
    }

    fn contact_address(&self) -> &Address {
        &self.contact
    }

    /// Stops accepting. The ROUTER socket (and its port) is released once the comms it
    /// accepted are closed too, since they share it.
    async fn close(&mut self) {
        self.closed.close();
        self.accepted.close();
        while self.accepted.try_recv().is_ok() {}
        if self.task.is_finished() {
            return;
        }
        // With no comms left the demultiplexer ends now and releases the port.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }

    fn rejections(&self) -> Option<RejectionLog> {
        Some(self.rejections.clone())
    }
}

impl Drop for ZmqListener {
    fn drop(&mut self) {
        self.closed.close();
    }
}
