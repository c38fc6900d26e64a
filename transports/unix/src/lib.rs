//! # courier-unix
//!
//! The `unix://` transport: Courier's stream wire protocol over Unix domain sockets, the fast
//! path between processes on one machine. It is written as any outside plugin would be: it
//! uses only courier-core's public API — the [`stream`](courier_core::stream) helpers run the
//! handshake and codec, so this crate only opens and accepts sockets.
//!
//! Addresses:
//! - `unix:///run/courier.sock` — a filesystem path (the socket file is removed on close);
//! - `unix://@name` — a Linux abstract-namespace name (no file at all);
//! - `unix://` — listen on a fresh abstract name, given by the contact address.
//!
//! Connecting sides bind to a fresh abstract name first, so both ends of a comm have a real
//! address (`peer_address()` on one side is `local_address()` on the other).

use std::io;
use std::os::unix::net::UnixStream as StdStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use courier_core::stream::{HandshakingListener, StreamAcceptor, StreamParts, handshake_stream};
use courier_core::{Address, Comm, CommConfig, CommError, Compression, ErrorKind, Listener, Transport};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

/// The scheme this crate serves.
pub const SCHEME: &str = "unix";

static NAMES: AtomicU64 = AtomicU64::new(0);

fn fresh_abstract(prefix: &str) -> String {
    format!("@courier-{prefix}-{}-{}", std::process::id(), NAMES.fetch_add(1, Ordering::Relaxed))
}

/// Where a unix:// address points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(String),
}

impl Target {
    fn parse(addr: &Address) -> Result<Target, CommError> {
        if addr.scheme() != SCHEME {
            return Err(CommError::invalid_address(&addr.to_string(), "not a unix:// address"));
        }
        let loc = addr.location();
        if let Some(name) = loc.strip_prefix('@') {
            if name.is_empty() || name.len() > 100 {
                return Err(CommError::invalid_address(&addr.to_string(), "abstract names are 1 to 100 bytes"));
            }
            Ok(Target::Abstract(name.to_owned()))
        } else if loc.starts_with('/') {
            if loc.len() > 100 {
                return Err(CommError::invalid_address(&addr.to_string(), "socket paths are at most 100 bytes"));
            }
            Ok(Target::Path(PathBuf::from(loc)))
        } else {
            Err(CommError::invalid_address(
                &addr.to_string(),
                "expected unix:///absolute/path or unix://@abstract-name",
            ))
        }
    }

    fn sock_addr(&self) -> io::Result<SockAddr> {
        match self {
            Target::Path(p) => SockAddr::unix(p),
            Target::Abstract(name) => {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(name.as_bytes());
                SockAddr::unix(std::ffi::OsStr::from_bytes_compat(&bytes))
            }
        }
    }

    fn address(&self) -> Address {
        let loc = match self {
            Target::Path(p) => p.to_string_lossy().into_owned(),
            Target::Abstract(n) => format!("@{n}"),
        };
        Address::new(SCHEME, &loc).unwrap_or_else(|_| Address::new(SCHEME, "@unnamed").expect("valid"))
    }

    fn from_sock_addr(a: &SockAddr) -> Option<Target> {
        if let Some(p) = a.as_pathname() {
            return Some(Target::Path(p.to_owned()));
        }
        a.as_abstract_namespace().map(|n| Target::Abstract(String::from_utf8_lossy(n).into_owned()))
    }
}

/// `OsStr` from bytes (abstract names start with a NUL byte).
trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

fn address_of(sock: socket2::SockRef<'_>, peer: bool) -> Address {
    let a = if peer { sock.peer_addr() } else { sock.local_addr() };
    a.ok()
        .and_then(|a| Target::from_sock_addr(&a))
        .map_or_else(|| Address::new(SCHEME, "@unnamed").expect("valid"), |t| t.address())
}

fn parts(stream: UnixStream) -> StreamParts<OwnedReadHalf, OwnedWriteHalf> {
    let local = address_of(socket2::SockRef::from(&stream), false);
    let peer = address_of(socket2::SockRef::from(&stream), true);
    let (read, write) = stream.into_split();
    // Same machine: compressing only costs CPU.
    StreamParts { read, write, local, peer, default_compression: Compression::None }
}

/// The unix:// transport.
#[derive(Debug, Clone, Default)]
pub struct UnixTransport;

impl UnixTransport {
    /// The transport.
    pub fn new() -> Self {
        UnixTransport
    }
}

#[async_trait]
impl Transport for UnixTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let target = Target::parse(addr)?;
        let remote = target.sock_addr().map_err(|e| CommError::invalid_address(&addr.to_string(), e))?;
        let me = Target::Abstract(fresh_abstract("client")[1..].to_owned());
        let local = me.sock_addr().map_err(|e| CommError::from_io("naming the client socket", e))?;
        let connecting = tokio::task::spawn_blocking(move || -> io::Result<StdStream> {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&local)?;
            s.connect(&remote)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        });
        let std = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(e))) => {
                // A missing socket file means nothing listens there.
                let e = if e.kind() == io::ErrorKind::NotFound {
                    io::Error::from(io::ErrorKind::ConnectionRefused)
                } else {
                    e
                };
                return Err(CommError::from_io(format!("connecting to {addr}"), e));
            }
            Ok(Err(join)) => return Err(CommError::new(ErrorKind::Io, format!("connect task failed: {join}"))),
            Err(_) => return Err(CommError::new(ErrorKind::ConnectTimeout, format!("connecting to {addr} timed out"))),
        };
        let stream = UnixStream::from_std(std).map_err(|e| CommError::from_io("registering a unix socket", e))?;
        handshake_stream(parts(stream), config).await
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let target = if addr.location().is_empty() {
            if addr.scheme() != SCHEME {
                return Err(CommError::invalid_address(&addr.to_string(), "not a unix:// address"));
            }
            Target::Abstract(fresh_abstract("listener")[1..].to_owned())
        } else {
            Target::parse(addr)?
        };
        let sa = target.sock_addr().map_err(|e| CommError::invalid_address(&addr.to_string(), e))?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(|e| CommError::from_io("creating a unix socket", e))?;
        socket.bind(&sa).map_err(|e| CommError::from_io(format!("binding {addr}"), e))?;
        socket.listen(1024).map_err(|e| CommError::from_io(format!("listening on {addr}"), e))?;
        socket.set_nonblocking(true).map_err(|e| CommError::from_io("configuring a unix socket", e))?;
        let std: std::os::unix::net::UnixListener = socket.into();
        let listener = UnixListener::from_std(std).map_err(|e| CommError::from_io("registering a unix listener", e))?;
        let contact = target.address();
        let path = match &target {
            Target::Path(p) => Some(p.clone()),
            Target::Abstract(_) => None,
        };
        let inner = HandshakingListener::spawn(UnixAcceptor { listener }, addr.clone(), contact, config.clone());
        Ok(Box::new(inner.removing_on_close(path)))
    }
}

struct UnixAcceptor {
    listener: UnixListener,
}

#[async_trait]
impl StreamAcceptor for UnixAcceptor {
    type Conn = UnixStream;
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    async fn accept_raw(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    async fn upgrade(&self, conn: UnixStream) -> Result<StreamParts<OwnedReadHalf, OwnedWriteHalf>, CommError> {
        Ok(parts(conn))
    }

    async fn readable(&self, conn: &UnixStream) -> io::Result<()> {
        conn.readable().await
    }
}
