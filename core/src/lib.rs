//! # courier-core
//!
//! The comm layer of Courier: everything a transport plugin and a user of comms share.
//!
//! - [`Address`]: parsed `scheme://location` URLs; listen vs contact addresses.
//! - [`Message`]: a header plus ordered, reference-counted frames (`bytes::Bytes`), so arrays
//!   travel without copies.
//! - [`Transport`], [`Listener`], [`CommSend`], [`CommRecv`]: the object-safe plugin traits
//!   (`async-trait`), and [`Comm`], a full-duplex comm that [splits](Comm::split) into owned
//!   halves. Receiving is cancel-safe; every queue is bounded.
//! - [`Registry`]: an explicit scheme → transport table with connect timeouts and jittered
//!   retries. There is no global registry.
//! - [`CommError`] with [`ErrorKind`]: one error type for the whole layer. A closed or dead
//!   peer is always [`ErrorKind::Closed`].
//! - [`codec`] and [`handshake`]: the sans-IO wire protocol for stream transports, specified
//!   byte by byte in `docs/PROTOCOL.md`; [`stream`] runs them over any tokio byte stream so a
//!   new stream transport only opens sockets.
//! - [`serial`]: serde values as MessagePack headers with large buffers out of band
//!   ([`Blob`], [`Payload`]), sharded above 64 MiB; [`WireArray`]: n-d arrays (ndarray) sent
//!   and received without copies.
//! - [`compression`]: per-frame snappy with a sampled `auto` decision that costs at most 50 kB
//!   of compression whatever the payload's shape.
//! - `testkit` (feature `testkit`): the conformance kit every transport runs from its tests.
//!
//! ## Why this shape
//! Protocol logic is sans-IO so it can be tested from every split of a byte stream without
//! sockets; transports are plugins registered at run time as `Arc<dyn Transport>`, with one
//! boxed future per send or receive on the hot path.
//!
//! ## Example
//! ```
//! # use courier_core::{Message, Address};
//! let addr: Address = "tcp://[::1]:8786".parse()?;
//! assert_eq!(addr.host_port()?.port, 8786);
//! let msg = Message::new(&b"header"[..], vec![bytes::Bytes::from(vec![0u8; 1024])]);
//! assert_eq!(msg.byte_len(), 1030);
//! # Ok::<(), courier_core::CommError>(())
//! ```

mod address;
pub mod aligned;
mod array;
pub mod auth;
pub mod budget;
pub mod codec;
mod comm;
pub mod compression;
mod error;
pub mod handshake;
mod limits;
mod message;
pub mod ratelimit;
mod registry;
pub mod serial;
pub mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transport;

pub use address::{Address, Host, HostPort};
pub use array::{BUILD_CHUNK, DType, Element, WireArray};
pub use auth::{AccessList, Credential};
pub use budget::{BudgetConfig, RecvBudget, SharedBudget};
pub use comm::{CloseSignal, CloseWatch, Comm, CommReceiver, CommRecv, CommSend, CommSender, PeerInfo};
pub use compression::{Codec, Compression};
pub use error::{CommError, ErrorKind};
pub use limits::Limits;
pub use message::{LocalValue, Message};
pub use registry::Registry;
pub use serial::{Blob, Payload, SerializeOptions, from_message, into_value, to_message, to_message_with};
pub use transport::{CommConfig, Listener, RejectionLog, Transport};

#[doc(hidden)]
pub use tokio as __tokio;
pub use {ndarray, num_complex};
