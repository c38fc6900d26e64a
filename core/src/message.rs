//! The unit every comm moves: a header plus ordered binary frames.

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
}

impl Message {
    /// A message with a header and frames.
    pub fn new(header: impl Into<Bytes>, frames: Vec<Bytes>) -> Self {
        Message { header: header.into(), frames }
    }

    /// A message with only a header.
    pub fn from_header(header: impl Into<Bytes>) -> Self {
        Message { header: header.into(), frames: Vec::new() }
    }

    /// Total payload bytes: header plus all frames.
    pub fn byte_len(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum::<u64>() + self.header.len() as u64
    }
}
