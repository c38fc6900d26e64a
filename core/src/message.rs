//! The unit every comm moves: a header plus ordered binary frames, or, between two ends in
//! one process, a typed value handed over whole.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A message: header bytes plus an ordered list of frames.
///
/// Frames are reference-counted [`Bytes`]: a transport may hand them to the peer as they are
/// (inproc://) or write them straight from these buffers (tcp://), so sending a 64 MiB array
/// copies nothing. Cloning a message clones reference counts, not data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Small metadata, typically MessagePack.
    pub header: Bytes,
    /// Payload frames, in order.
    pub frames: Vec<Bytes>,
    /// A typed value for a peer in this process, instead of bytes (see
    /// [`Message::from_local`]): `None` for every message that crosses a wire.
    pub local: Option<LocalValue>,
}

/// A value handed whole to a peer in the same process: what a comm that
/// [carries local values](crate::CommSend::carries_local_values) (inproc://) moves instead of
/// serialized bytes. Other transports refuse it; it never reaches a wire.
#[derive(Clone)]
pub struct LocalValue(Arc<dyn Any + Send + Sync>);

impl LocalValue {
    /// Wraps `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        LocalValue(Arc::new(value))
    }

    /// The value, if it is a `T`: moved out when this is its only handle, cloned otherwise.
    /// `Err` gives the value back when it is of another type.
    pub fn take<T: Any + Send + Sync + Clone>(self) -> Result<T, LocalValue> {
        match self.0.downcast::<T>() {
            Ok(value) => Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone())),
            Err(other) => Err(LocalValue(other)),
        }
    }
}

impl fmt::Debug for LocalValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalValue(..)")
    }
}

impl PartialEq for LocalValue {
    /// The same value (not equal contents: a `dyn Any` cannot be compared).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LocalValue {}

impl Message {
    /// A message with a header and frames.
    pub fn new(header: impl Into<Bytes>, frames: Vec<Bytes>) -> Self {
        Message { header: header.into(), frames, local: None }
    }

    /// A message with only a header.
    pub fn from_header(header: impl Into<Bytes>) -> Self {
        Message { header: header.into(), frames: Vec::new(), local: None }
    }

    /// A message carrying `value` itself, for a comm that
    /// [carries local values](crate::CommSend::carries_local_values); no header, no frames.
    /// [`into_value`](crate::into_value) takes it out at the other end.
    pub fn from_local<T: Any + Send + Sync>(value: T) -> Self {
        Message { header: Bytes::new(), frames: Vec::new(), local: Some(LocalValue::new(value)) }
    }

    /// Total payload bytes: header plus all frames (0 for a local value).
    pub fn byte_len(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum::<u64>() + self.header.len() as u64
    }
}
