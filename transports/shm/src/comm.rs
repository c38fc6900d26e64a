//! The shm:// comm: a stream comm (Courier's codec over the Unix socket) whose large frames
//! are replaced by sealed memfds passed on the descriptor channel, and a descriptor frame,
//! always last, that says which frames those are.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use courier_core::{
    Address, CloseSignal, CommError, CommReceiver, CommRecv, CommSend, CommSender, ErrorKind, Limits, Message, codec, stream,
};

use crate::channel::{Channel, MAX_FDS_PER_MESSAGE};
use crate::frame;

/// Magic of the descriptor frame.
pub const DESCRIPTOR_MAGIC: [u8; 4] = *b"CRSH";
/// Length of the descriptor frame's head; each shared frame adds [`ENTRY_LEN`].
pub const DESCRIPTOR_HEAD_LEN: usize = 16;
/// Length of one descriptor entry.
pub const ENTRY_LEN: usize = 16;

/// Which frames of a message travel as shared memory, and the sequence number of their
/// descriptor record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Sequence number of the message's descriptor record (1, 2, … per direction); 0 when no
    /// frame is shared.
    pub seq: u64,
    /// (frame index, length in bytes) of each shared frame, indices strictly increasing.
    pub shared: Vec<(u32, u64)>,
}

impl Descriptor {
    /// The descriptor frame's bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(DESCRIPTOR_HEAD_LEN + ENTRY_LEN * self.shared.len());
        b.put_slice(&DESCRIPTOR_MAGIC);
        b.put_u32_le(self.shared.len() as u32);
        b.put_u64_le(self.seq);
        for &(index, len) in &self.shared {
            b.put_u32_le(index);
            b.put_u32_le(0);
            b.put_u64_le(len);
        }
        b.freeze()
    }

    /// Parses and checks a descriptor frame for a message of `nframes` other frames: the magic,
    /// an exact length, at most [`MAX_FDS_PER_MESSAGE`] entries with strictly increasing
    /// indices below `nframes`, non-zero lengths, zero reserved bytes, and a sequence number
    /// present exactly when frames are shared.
    pub fn decode(bytes: &[u8], nframes: usize) -> Result<Descriptor, CommError> {
        let bad = |why: &str| CommError::protocol(format!("malformed shm descriptor: {why}"));
        if bytes.len() < DESCRIPTOR_HEAD_LEN || bytes[..4] != DESCRIPTOR_MAGIC {
            return Err(bad("no descriptor frame"));
        }
        let count = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if count > MAX_FDS_PER_MESSAGE {
            return Err(bad(&format!("{count} shared frames exceed {MAX_FDS_PER_MESSAGE}")));
        }
        if bytes.len() != DESCRIPTOR_HEAD_LEN + ENTRY_LEN * count {
            return Err(bad("its length does not match its entry count"));
        }
        if (count == 0) != (seq == 0) {
            return Err(bad("a sequence number without shared frames, or shared frames without one"));
        }
        let mut shared = Vec::with_capacity(count);
        let mut next = 0u64;
        for e in bytes[DESCRIPTOR_HEAD_LEN..].chunks_exact(ENTRY_LEN) {
            let index = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
            let reserved = u32::from_le_bytes(e[4..8].try_into().expect("4 bytes"));
            let len = u64::from_le_bytes(e[8..].try_into().expect("8 bytes"));
            if u64::from(index) < next || index as usize >= nframes {
                return Err(bad(&format!("frame index {index} out of order or out of range")));
            }
            if reserved != 0 || len == 0 {
                return Err(bad("non-zero reserved bytes or an empty shared frame"));
            }
            next = u64::from(index) + 1;
            shared.push((index, len));
        }
        Ok(Descriptor { seq, shared })
    }
}

/// The send half: copies each frame of at least `threshold` bytes into a sealed memfd.
#[derive(Debug)]
pub(crate) struct ShmSend {
    pub(crate) inner: CommSender,
    pub(crate) channel: Arc<Channel>,
    pub(crate) peer_limits: Option<Limits>,
    pub(crate) threshold: usize,
    /// Sequence number of the last record sent.
    pub(crate) seq: u64,
    /// Closed when the receive half finds a violation.
    pub(crate) close: CloseSignal,
}

#[async_trait]
impl CommSend for ShmSend {
    async fn send(&mut self, mut msg: Message) -> Result<(), CommError> {
        if self.close.is_closed() {
            return Err(CommError::closed(format!("comm to {} is closed", self.inner.peer_address())));
        }
        // Shared frames bypass the stream codec's check: refuse here what the peer would.
        if let Some(limits) = &self.peer_limits {
            let mut with_descriptor = limits.to_owned();
            with_descriptor.max_frames = with_descriptor.max_frames.saturating_sub(1);
            codec::check_limits(&msg, &with_descriptor)?;
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut shared = Vec::new();
        for (i, f) in msg.frames.iter_mut().enumerate() {
            if f.len() >= self.threshold && fds.len() < MAX_FDS_PER_MESSAGE {
                let fd = frame::seal_copy(f).map_err(|e| CommError::from_io("copying a frame into shared memory", e))?;
                fds.push(fd);
                shared.push((i as u32, f.len() as u64));
                *f = Bytes::new();
            }
        }
        let seq = if fds.is_empty() { 0 } else { self.seq + 1 };
        if !fds.is_empty() {
            // A dropped send before this completes sent nothing and used no number.
            self.channel
                .send(seq, &fds)
                .await
                .map_err(|e| CommError::from_io(format!("passing shared frames to {}", self.inner.peer_address()), e))?;
            self.seq = seq;
        }
        drop(fds);
        msg.frames.push(Descriptor { seq, shared }.encode());
        self.inner.send(msg).await
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.inner.close().await
    }
}

/// The receive half: maps each shared frame in place.
#[derive(Debug)]
pub(crate) struct ShmRecv {
    pub(crate) inner: CommReceiver,
    pub(crate) channel: Arc<Channel>,
    pub(crate) limits: Limits,
    /// Sequence number of the last record received.
    pub(crate) seq: u64,
    /// Why the comm failed, once a message broke the rules (a stream cannot resynchronise).
    pub(crate) failed: Option<String>,
    pub(crate) close: CloseSignal,
    pub(crate) peer: Address,
}

#[async_trait]
impl CommRecv for ShmRecv {
    /// Cancel-safe: after the inner (cancel-safe) receive, nothing awaits.
    async fn recv(&mut self) -> Result<Message, CommError> {
        if let Some(e) = &self.failed {
            return Err(CommError::closed(format!("comm with {} is closed after: {e}", self.peer)));
        }
        let msg = self.inner.recv().await?;
        match self.restore(msg) {
            Ok(m) => Ok(m),
            Err(e) => {
                stream::log_violation(&self.peer, &e);
                self.failed = Some(e.to_string());
                self.close.close();
                Err(e)
            }
        }
    }
}

impl ShmRecv {
    /// Puts the shared frames back in their places.
    fn restore(&mut self, mut msg: Message) -> Result<Message, CommError> {
        let descriptor = msg.frames.pop().ok_or_else(|| CommError::protocol("a message without its shm descriptor"))?;
        let d = Descriptor::decode(&descriptor, msg.frames.len())?;
        if d.shared.is_empty() {
            return Ok(msg);
        }
        if d.seq != self.seq + 1 {
            return Err(CommError::protocol(format!("shm descriptor number {} where {} was due", d.seq, self.seq + 1)));
        }
        let record = self.channel.try_recv()?.ok_or_else(|| {
            CommError::protocol(format!("a message announced {} shared frames and no descriptors came", d.shared.len()))
        })?;
        if record.seq != d.seq {
            return Err(CommError::protocol(format!(
                "descriptors numbered {} came for message {} (descriptors sent with no shared frame?)",
                record.seq, d.seq
            )));
        }
        if record.fds.len() != d.shared.len() {
            return Err(CommError::protocol(format!(
                "{} descriptors came for {} shared frames",
                record.fds.len(),
                d.shared.len()
            )));
        }
        self.seq = d.seq;
        let mut total = msg.byte_len();
        for (&(index, len), fd) in d.shared.iter().zip(record.fds) {
            if len > self.limits.max_frame_size {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!("a shared frame of {len} bytes exceeds the limit of {} bytes", self.limits.max_frame_size),
                ));
            }
            total = total.saturating_add(len);
            if total > self.limits.max_message_size {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!("a message exceeds the limit of {} bytes", self.limits.max_message_size),
                ));
            }
            let slot = &mut msg.frames[index as usize];
            if !slot.is_empty() {
                return Err(CommError::protocol(format!("shared frame {index} also has bytes on the stream")));
            }
            *slot = frame::map(fd, len)?;
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn descriptors_round_trip(
            entries in proptest::collection::btree_map(0u32..1000, 1u64..u64::MAX, 0..40),
            seq in 1u64..u64::MAX,
        ) {
            let shared: Vec<(u32, u64)> = entries.into_iter().collect();
            let d = Descriptor { seq: if shared.is_empty() { 0 } else { seq }, shared };
            prop_assert_eq!(Descriptor::decode(&d.encode(), 1000).unwrap(), d);
        }

        /// Any bytes: a descriptor or a typed error, never a panic; whatever decodes re-encodes
        /// to the same bytes and fits the frame count.
        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..20) {
            let mut b = bytes.clone();
            if b.len() >= 4 && n % 2 == 0 {
                b[..4].copy_from_slice(&DESCRIPTOR_MAGIC);
            }
            match Descriptor::decode(&b, n) {
                Ok(d) => {
                    prop_assert_eq!(&d.encode()[..], &b[..]);
                    prop_assert!(d.shared.iter().all(|&(i, len)| (i as usize) < n && len > 0));
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Protocol),
            }
        }
    }
}
