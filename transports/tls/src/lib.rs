//! # courier-tls
//!
//! The `tls://host:port` transport: exactly the tcp:// wire protocol (docs/PROTOCOL.md),
//! inside TLS 1.3. rustls (ring provider; no OpenSSL) runs the handshake and keeps the key
//! schedule; the records of the established session are sealed and opened by [`record`],
//! which decrypts straight into the receiver's buffers (its docs say why, and how).
//!
//! - Servers present a certificate chain and key from PEM; clients trust a configurable CA.
//! - Mutual TLS is optional: a server can require client certificates signed by its CA.
//! - The TLS handshake runs in the accepted peer's own task under the handshake timeout, so a
//!   plaintext or hostile peer is refused (and logged) while the listener keeps serving.
//! - A TLS failure (untrusted certificate, missing client certificate) is a `Protocol` error
//!   naming the TLS reason; it is not retried.
//! - The sockets are tcp://'s: connected, bound and configured (nodelay, keepalive, kernel
//!   buffer sizes, backlog, advertised host) by `courier_tcp` with the same [`TcpOptions`];
//!   TLS is an upgrade of them.
//!
//! ```no_run
//! # use courier_tls::{TlsFiles, TlsTransport};
//! let tls = TlsTransport::from_files(&TlsFiles {
//!     ca: Some("ca.pem".into()),
//!     cert: Some("node.pem".into()),
//!     key: Some("node.key".into()),
//!     require_client_cert: true,
//! })?;
//! let registry = courier_core::Registry::new().with(std::sync::Arc::new(tls));
//! # Ok::<(), courier_core::CommError>(())
//! ```

pub mod record;
mod session;
#[cfg(feature = "test-certs")]
pub mod test_certs;

pub use record::{Cipher, TlsRead, TlsWrite};
pub use session::TlsStream;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use courier_core::stream::{HandshakingListener, StreamAcceptor, StreamParts, handshake_stream};
use courier_core::{Address, Comm, CommConfig, CommError, Compression, ErrorKind, Host, Listener, Transport};
pub use courier_tcp::TcpOptions;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// The scheme this crate serves.
pub const SCHEME: &str = "tls";

/// PEM files for a node.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificate(s) to trust: servers' for clients, clients' for servers requiring them.
    pub ca: Option<PathBuf>,
    /// This node's certificate chain (needed to listen, and for mutual TLS as a client).
    pub cert: Option<PathBuf>,
    /// This node's private key.
    pub key: Option<PathBuf>,
    /// Listeners refuse clients without a certificate signed by `ca`.
    pub require_client_cert: bool,
}

/// PEM contents for a node (see [`TlsFiles`]).
#[derive(Debug, Clone, Default)]
pub struct TlsPem {
    /// CA certificates to trust.
    pub ca: Option<Vec<u8>>,
    /// Certificate chain.
    pub cert: Option<Vec<u8>>,
    /// Private key.
    pub key: Option<Vec<u8>>,
    /// Require client certificates when listening.
    pub require_client_cert: bool,
}

fn config_error(what: impl std::fmt::Display) -> CommError {
    CommError::new(ErrorKind::InvalidAddress, format!("tls configuration: {what}"))
}

fn tls_error(doing: &str, e: io::Error) -> CommError {
    // rustls reports protocol failures (bad certificates, alerts) as InvalidData.
    if e.kind() == io::ErrorKind::InvalidData {
        return CommError::new(ErrorKind::Protocol, format!("TLS {doing}: {e}")).with_source(e);
    }
    CommError::from_io(format!("TLS {doing}"), e)
}

/// The tls:// transport.
#[derive(Clone)]
pub struct TlsTransport {
    connector: Option<Arc<ClientConfig>>,
    acceptor: Option<Arc<ServerConfig>>,
    tcp: TcpOptions,
    key_update_after: u64,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("can_connect", &self.connector.is_some())
            .field("can_listen", &self.acceptor.is_some())
            .field("tcp", &self.tcp)
            .finish()
    }
}

impl TlsTransport {
    /// The same transport with `options` for its TCP sockets (as tcp:// takes them).
    pub fn with_tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp = options;
        self
    }

    /// The same transport, its sessions updating their sending keys (TLS 1.3 KeyUpdate)
    /// after `records` records instead of [`record::KEY_UPDATE_RECORDS`]: for tests of key
    /// updates, which otherwise take 256 GiB.
    pub fn with_key_update_after(mut self, records: u64) -> Self {
        self.key_update_after = records;
        self
    }

    /// From PEM files.
    pub fn from_files(files: &TlsFiles) -> Result<Self, CommError> {
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, CommError> {
            p.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| config_error(format!("reading {}: {e}", p.display()))))
                .transpose()
        };
        Self::from_pem(&TlsPem {
            ca: read(&files.ca)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            require_client_cert: files.require_client_cert,
        })
    }

    /// A TLS session to a tls:// listener, before Courier's handshake: for tests and tools
    /// that speak the wire protocol by hand. Applications use [`Transport::connect`].
    pub async fn connect_stream(&self, addr: &Address, config: &CommConfig) -> Result<TlsStream, CommError> {
        match tokio::time::timeout(config.handshake_timeout, self.open(addr, config)).await {
            Ok(r) => r.map(|(tls, _, _)| tls),
            Err(_) => Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no TLS handshake from {addr}"))),
        }
    }

    async fn open(
        &self,
        addr: &Address,
        config: &CommConfig,
    ) -> Result<(TlsStream, SocketAddr, SocketAddr), CommError> {
        let hp = check(addr)?;
        let connector =
            self.connector.clone().ok_or_else(|| config_error("connecting needs a CA to trust (TlsFiles::ca)"))?;
        let server_name = ServerName::try_from(hp.host_string())
            .map_err(|e| CommError::invalid_address(&addr.to_string(), format!("not a TLS server name: {e}")))?;
        let tcp = courier_tcp::connect_socket(addr, &hp, config.connect_timeout, &self.tcp).await?;
        let (local, peer) = (
            tcp.local_addr().map_err(|e| CommError::from_io("local address", e))?,
            tcp.peer_addr().map_err(|e| CommError::from_io("peer address", e))?,
        );
        let tls = TlsStream::client(connector, server_name.to_owned(), tcp, self.key_update_after)
            .await
            .map_err(|e| tls_error(&format!("handshake with {addr}"), e))?;
        Ok((tls, local, peer))
    }

    /// From PEM contents. Without `ca` the transport cannot connect; without `cert` and
    /// `key` it cannot listen.
    pub fn from_pem(pem: &TlsPem) -> Result<Self, CommError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &pem.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots.add(cert.map_err(|e| config_error(format!("CA PEM: {e}")))?).map_err(config_error)?;
                }
                if roots.is_empty() {
                    return Err(config_error("the CA file holds no certificate"));
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let identity = match (&pem.cert, &pem.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| config_error(format!("certificate PEM: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| config_error(format!("key PEM: {e}")))?;
                Some((chain, key))
            }
            (None, None) => None,
            _ => return Err(config_error("a certificate needs its key, and a key its certificate")),
        };
        let connector = match &roots {
            Some(roots) => {
                let builder = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(config_error)?
                    .with_root_certificates(roots.clone());
                let config = match &identity {
                    Some((chain, key)) => {
                        builder.with_client_auth_cert(chain.clone(), key.clone_key()).map_err(config_error)?
                    }
                    None => builder.with_no_client_auth(),
                };
                let mut config = config;
                // The session's records are protected by `record` with the extracted keys.
                config.enable_secret_extraction = true;
                Some(Arc::new(config))
            }
            None => None,
        };
        let acceptor = match identity {
            Some((chain, key)) => {
                let builder = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(config_error)?;
                let builder = if pem.require_client_cert {
                    let roots =
                        roots.clone().ok_or_else(|| config_error("requiring client certificates needs a CA"))?;
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                        .build()
                        .map_err(config_error)?;
                    builder.with_client_cert_verifier(verifier)
                } else {
                    builder.with_no_client_auth()
                };
                let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
                config.enable_secret_extraction = true;
                // Courier's peers do not resume sessions: no tickets after the handshake.
                config.send_tls13_tickets = 0;
                Some(Arc::new(config))
            }
            None => None,
        };
        Ok(TlsTransport {
            connector,
            acceptor,
            tcp: TcpOptions::default(),
            key_update_after: record::KEY_UPDATE_RECORDS,
        })
    }
}

fn parts(stream: TlsStream, local: SocketAddr, peer: SocketAddr) -> StreamParts<TlsRead, TlsWrite> {
    let (read, write) = stream.into_split();
    let default_compression = if peer.ip().is_loopback() { Compression::None } else { Compression::AUTO };
    StreamParts {
        read,
        write,
        local: Address::from_socket_addr(SCHEME, local),
        peer: Address::from_socket_addr(SCHEME, peer),
        default_compression,
    }
}

fn check(addr: &Address) -> Result<courier_core::HostPort, CommError> {
    if addr.scheme() != SCHEME {
        return Err(CommError::invalid_address(&addr.to_string(), "not a tls:// address"));
    }
    addr.host_port()
}

#[async_trait]
impl Transport for TlsTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let handshake = async {
            let (tls, local, peer) = self.open(addr, config).await?;
            handshake_stream(parts(tls, local, peer), config).await.map_err(|e| {
                // An alert after the TLS handshake (e.g. a missing client certificate under
                // TLS 1.3) surfaces on the first read: report it as the TLS failure it is.
                let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
                match io {
                    Some(io) if io.kind() == io::ErrorKind::InvalidData => {
                        CommError::new(ErrorKind::Protocol, format!("TLS: {addr} refused the session: {io}"))
                    }
                    _ => e,
                }
            })
        };
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(CommError::new(ErrorKind::HandshakeTimeout, format!("no TLS handshake from {addr}"))),
        }
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let hp = check(addr)?;
        let acceptor = self
            .acceptor
            .clone()
            .ok_or_else(|| config_error("listening needs a certificate and key (TlsFiles::cert, key)"))?;
        let (listener, contact) = courier_tcp::bind_socket(addr, &hp, &self.tcp).await?;
        let contact = match &hp.host {
            // Keep the name: certificates usually name hosts, not addresses.
            Host::Name(name) if !hp.is_wildcard() => {
                Address::new(SCHEME, &format!("{name}:{}", contact.host_port()?.port))?
            }
            _ => contact,
        };
        Ok(Box::new(HandshakingListener::spawn(
            TlsAccept { listener, acceptor, tcp: self.tcp.clone(), key_update_after: self.key_update_after },
            addr.clone(),
            contact,
            config.clone(),
        )))
    }
}

struct TlsAccept {
    listener: TcpListener,
    acceptor: Arc<ServerConfig>,
    tcp: TcpOptions,
    key_update_after: u64,
}

#[async_trait]
impl StreamAcceptor for TlsAccept {
    type Conn = TcpStream;
    type Read = TlsRead;
    type Write = TlsWrite;

    async fn accept_raw(&self) -> io::Result<TcpStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    async fn upgrade(&self, tcp: TcpStream) -> Result<StreamParts<Self::Read, Self::Write>, CommError> {
        courier_tcp::configure(&tcp, &self.tcp).map_err(|e| CommError::from_io("configuring a tcp socket", e))?;
        let local = tcp.local_addr().map_err(|e| CommError::from_io("local address", e))?;
        let peer = tcp.peer_addr().map_err(|e| CommError::from_io("peer address", e))?;
        let tls = TlsStream::server(self.acceptor.clone(), tcp, self.key_update_after)
            .await
            .map_err(|e| tls_error(&format!("handshake with {peer}"), e))?;
        Ok(parts(tls, local, peer))
    }

    async fn readable(&self, conn: &TcpStream) -> io::Result<()> {
        conn.readable().await
    }

    fn peer_ip(&self, conn: &TcpStream) -> Option<std::net::IpAddr> {
        conn.peer_addr().ok().map(|a| a.ip())
    }
}
