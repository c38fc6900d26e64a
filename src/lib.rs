//! # Courier
//!
//! Messages of n-dimensional arrays between processes and machines, over pluggable
//! transports chosen by URL scheme alone, and a task runtime on top.
//!
//! This facade re-exports the comm layer ([`courier_core`]), the built-in transports and the
//! runtime ([`courier_runtime`]); builds a [`Registry`] holding every built-in transport; and
//! runs nodes ([`node`]: `courier scheduler`, `courier worker`, and your own worker binary
//! with [`worker_main`]). The `courier` command line lives in the `courier-cli` package.
//!
//! | scheme | crate | what |
//! | --- | --- | --- |
//! | `tcp://host:port` | [`courier_tcp`] | tokio sockets, vectored zero-copy writes |
//! | `inproc://name` | [`courier_inproc`] | in-process bounded channels, no copy at all |
//! | `zmq://host:port` | [`courier_zmq`] | ZeroMQ ROUTER/DEALER (pure Rust), with credits and heartbeats |
//! | `unix:///path`, `unix://@name` | [`courier_unix`] | Unix domain sockets, a plugin built on courier-core alone |
//! | `tls://host:port` | [`courier_tls`] | the tcp:// protocol inside rustls TLS; register it with your certificates |
//! | `shm:///path`, `shm://@name` | [`courier_shm`] | same host: large frames as sealed shared memory, mapped in place |
//!
//! ```
//! use courier::{Message, Registry, RegistryExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier::CommError> {
//! let registry = Registry::with_default_transports();
//! let mut listener = registry.listen("inproc://").await?;
//! let url = listener.contact_address().to_string();
//! let (client, server) = tokio::join!(registry.connect(&url), listener.accept());
//! let (mut client, mut server) = (client?, server?);
//!
//! let array = bytes::Bytes::from(vec![0u8; 1 << 20]);
//! client.send(Message::new(&b"an array"[..], vec![array.clone()])).await?;
//! let got = server.recv().await?;
//! assert_eq!(got.frames[0].as_ptr(), array.as_ptr()); // handed over, not copied
//! # Ok(())
//! # }
//! ```

pub mod node;

use std::sync::Arc;

pub use courier_core::{
    Address, CloseSignal, Codec, Comm, CommConfig, CommError, CommReceiver, CommRecv, CommSend, CommSender,
    Compression, ErrorKind, Limits, Listener, Message, PeerInfo, Registry, Transport,
};
pub use courier_inproc::InprocTransport;
pub use courier_shm::ShmTransport;
pub use courier_tcp::{TcpOptions, TcpTransport};
pub use courier_unix::UnixTransport;
pub use courier_zmq::{ZmqOptions, ZmqTransport};
pub use node::worker_main;
pub use {
    courier_core, courier_inproc, courier_runtime, courier_shm, courier_tcp, courier_tls, courier_unix, courier_zmq,
};

/// Constructors for a [`Registry`] holding Courier's built-in transports.
pub trait RegistryExt {
    /// A registry with tcp://, inproc://, zmq://, unix:// and shm://.
    fn with_default_transports() -> Registry;
}

impl RegistryExt for Registry {
    fn with_default_transports() -> Registry {
        Registry::new()
            .with(Arc::new(TcpTransport::new()))
            .with(Arc::new(InprocTransport::new()))
            .with(Arc::new(ZmqTransport::new()))
            .with(Arc::new(UnixTransport::new()))
            .with(Arc::new(ShmTransport::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_registry_knows_every_builtin_scheme() {
        assert_eq!(Registry::with_default_transports().schemes(), vec!["inproc", "shm", "tcp", "unix", "zmq"]);
    }
}
