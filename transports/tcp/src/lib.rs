//! # courier-tcp
//!
//! The `tcp://` transport: Courier's wire protocol (see `docs/PROTOCOL.md`) over tokio TCP
//! sockets.
//!
//! - Sockets get `TCP_NODELAY`, keepalive and optionally sized kernel buffers ([`TcpOptions`]).
//! - Sending is vectored: the message head, header and small frames go in one chunk; large
//!   frames are written straight from the caller's `Bytes`, never concatenated.
//! - Receiving reads each large frame straight into its own exact-size, 64-byte-aligned
//!   buffer, so arrays can be viewed in place.
//! - The listener handshakes each peer in its own task under the handshake timeout; garbage,
//!   wrong versions and silent peers are refused (and logged in
//!   [`Listener::rejections`](courier_core::Listener::rejections)) without disturbing others.
//! - Compression defaults to none for loopback peers and `auto` otherwise.
//!
//! Addresses: `tcp://host:port` with IPv4, bracketed IPv6 or a DNS name. Listening on a
//! wildcard host (`0.0.0.0`, `[::]`) gives a loopback contact address unless
//! [`TcpOptions::advertise_host`] names the host peers should use.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::stream::{HandshakingListener, StreamAcceptor, StreamParts, handshake_stream};
use courier_core::{Address, Comm, CommConfig, CommError, Compression, ErrorKind, Host, HostPort, Listener, Transport};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// The scheme this crate serves.
pub const SCHEME: &str = "tcp";

/// Socket settings for tcp://.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// Disable Nagle's algorithm (default true: messages are written whole).
    pub nodelay: bool,
    /// TCP keepalive idle time (default 30 s); `None` disables keepalive.
    pub keepalive: Option<Duration>,
    /// Kernel send buffer size (default: the OS's, which autotunes).
    pub send_buffer_size: Option<usize>,
    /// Kernel receive buffer size (default: the OS's, which autotunes).
    pub recv_buffer_size: Option<usize>,
    /// Listen backlog (default 1024).
    pub backlog: u32,
    /// Host to put in the contact address when listening on a wildcard host.
    pub advertise_host: Option<String>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(30)),
            send_buffer_size: None,
            recv_buffer_size: None,
            backlog: 1024,
            advertise_host: None,
        }
    }
}

/// The tcp:// transport.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    options: TcpOptions,
}

impl TcpTransport {
    /// A transport with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport with `options`.
    pub fn with_options(options: TcpOptions) -> Self {
        TcpTransport { options }
    }
}

fn check_scheme(addr: &Address) -> Result<HostPort, CommError> {
    if addr.scheme() != SCHEME {
        return Err(CommError::invalid_address(&addr.to_string(), "not a tcp:// address"));
    }
    addr.host_port()
}

/// The socket addresses `hp` names (a DNS lookup for a host name).
pub async fn resolve(addr: &Address, hp: &HostPort) -> Result<Vec<SocketAddr>, CommError> {
    match &hp.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, hp.port)]),
        Host::Name(name) => {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), hp.port))
                .await
                .map_err(|e| {
                    CommError::new(ErrorKind::InvalidAddress, format!("cannot resolve {addr}")).with_source(e)
                })?
                .collect();
            if found.is_empty() {
                return Err(CommError::new(ErrorKind::InvalidAddress, format!("{addr} resolves to no address")));
            }
            Ok(found)
        }
    }
}

/// Applies `o` (nodelay, keepalive, buffer sizes) to a connected socket.
pub fn configure(stream: &TcpStream, o: &TcpOptions) -> io::Result<()> {
    stream.set_nodelay(o.nodelay)?;
    let sock = socket2::SockRef::from(stream);
    if let Some(idle) = o.keepalive {
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
    }
    if let Some(n) = o.send_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    if let Some(n) = o.recv_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    Ok(())
}

fn parts(stream: TcpStream) -> Result<StreamParts<OwnedReadHalf, OwnedWriteHalf>, CommError> {
    let local = stream.local_addr().map_err(|e| CommError::from_io("reading the local address", e))?;
    let peer = stream.peer_addr().map_err(|e| CommError::from_io("reading the peer address", e))?;
    let default_compression = if peer.ip().is_loopback() { Compression::None } else { Compression::AUTO };
    let (read, write) = stream.into_split();
    Ok(StreamParts {
        read,
        write,
        local: Address::from_socket_addr(SCHEME, local),
        peer: Address::from_socket_addr(SCHEME, peer),
        default_compression,
    })
}

#[async_trait]
impl Transport for TcpTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let hp = check_scheme(addr)?;
        let stream = connect_socket(addr, &hp, config.connect_timeout, &self.options).await?;
        handshake_stream(parts(stream)?, config).await
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let hp = check_scheme(addr)?;
        let (listener, contact) = bind_socket(addr, &hp, &self.options).await?;
        tracing::debug!(listen = %addr, contact = %contact, "tcp listener started");
        let acceptor = TcpAcceptor { listener, options: self.options.clone() };
        Ok(Box::new(HandshakingListener::spawn(acceptor, addr.clone(), contact, config.clone())))
    }
}

/// Connects a TCP socket to `hp` (the host and port of `addr`, any scheme) within `timeout`
/// and applies `o`. Transports that run their own protocol over TCP (zmq://) build on this.
pub async fn connect_socket(
    addr: &Address,
    hp: &HostPort,
    timeout: Duration,
    o: &TcpOptions,
) -> Result<TcpStream, CommError> {
    if hp.is_wildcard() || hp.port == 0 {
        return Err(CommError::invalid_address(&addr.to_string(), "cannot connect to a wildcard host or port 0"));
    }
    let targets = resolve(addr, hp).await?;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&targets[..])).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(CommError::from_io(format!("connecting to {addr}"), e)),
        Err(_) => {
            return Err(CommError::new(
                ErrorKind::ConnectTimeout,
                format!("connecting to {addr} took longer than {timeout:?}"),
            ));
        }
    };
    configure(&stream, o).map_err(|e| CommError::from_io("configuring a tcp socket", e))?;
    Ok(stream)
}

/// Binds and listens on `hp` (the host and port of `addr`, any scheme) with `SO_REUSEADDR`
/// and `o`'s backlog; returns the listener and the contact address peers should use (in
/// `addr`'s scheme).
pub async fn bind_socket(
    addr: &Address,
    hp: &HostPort,
    o: &TcpOptions,
) -> Result<(tokio::net::TcpListener, Address), CommError> {
    let bind_to = resolve(addr, hp).await?[0];
    let socket = if bind_to.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| CommError::from_io("creating a tcp socket", e))?;
    socket.set_reuseaddr(true).map_err(|e| CommError::from_io("setting SO_REUSEADDR", e))?;
    socket.bind(bind_to).map_err(|e| CommError::from_io(format!("binding {addr}"), e))?;
    let listener = socket.listen(o.backlog).map_err(|e| CommError::from_io(format!("listening on {addr}"), e))?;
    let bound = listener.local_addr().map_err(|e| CommError::from_io("reading the bound address", e))?;
    let contact = contact_address(addr.scheme(), bound, o)?;
    Ok((listener, contact))
}

/// The address peers should use to reach a listener bound to `bound`: the bound address,
/// or for a wildcard bind [`TcpOptions::advertise_host`] (else loopback).
pub fn contact_address(scheme: &str, bound: SocketAddr, o: &TcpOptions) -> Result<Address, CommError> {
    if !bound.ip().is_unspecified() {
        return Ok(Address::from_socket_addr(scheme, bound));
    }
    match &o.advertise_host {
        Some(host) => Address::new(scheme, &HostPort { host: parse_host(host), port: bound.port() }.to_string()),
        None => {
            let ip = if bound.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
            Ok(Address::from_socket_addr(scheme, SocketAddr::new(ip, bound.port())))
        }
    }
}

fn parse_host(host: &str) -> Host {
    host.trim_matches(['[', ']']).parse().map(Host::Ip).unwrap_or_else(|_| Host::Name(host.to_owned()))
}

struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    options: TcpOptions,
}

#[async_trait]
impl StreamAcceptor for TcpAcceptor {
    type Conn = TcpStream;
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    async fn accept_raw(&self) -> io::Result<TcpStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    async fn upgrade(&self, conn: TcpStream) -> Result<StreamParts<OwnedReadHalf, OwnedWriteHalf>, CommError> {
        configure(&conn, &self.options).map_err(|e| CommError::from_io("configuring a tcp socket", e))?;
        parts(conn)
    }

    async fn readable(&self, conn: &TcpStream) -> io::Result<()> {
        conn.readable().await
    }

    fn peer_ip(&self, conn: &TcpStream) -> Option<std::net::IpAddr> {
        conn.peer_addr().ok().map(|a| a.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_contact_addresses_are_reachable() {
        let o = TcpOptions::default();
        let v4 = contact_address(SCHEME, "0.0.0.0:9000".parse().unwrap(), &o).unwrap();
        assert_eq!(v4.to_string(), "tcp://127.0.0.1:9000");
        let v6 = contact_address(SCHEME, "[::]:9000".parse().unwrap(), &o).unwrap();
        assert_eq!(v6.to_string(), "tcp://[::1]:9000");
        let o = TcpOptions { advertise_host: Some("node7.cluster".into()), ..o };
        assert_eq!(
            contact_address(SCHEME, "0.0.0.0:1".parse().unwrap(), &o).unwrap().to_string(),
            "tcp://node7.cluster:1"
        );
        let o = TcpOptions { advertise_host: Some("[fe80::1]".into()), ..o };
        assert_eq!(contact_address(SCHEME, "[::]:1".parse().unwrap(), &o).unwrap().to_string(), "tcp://[fe80::1]:1");
    }
}
