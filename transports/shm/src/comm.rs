//! The shm:// comm: a stream comm (Courier's codec over the Unix socket) whose large frames
//! are replaced by sealed memfds passed on the descriptor channel, and a descriptor frame,
//! always last, that says which frames those are.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use courier_core::stream::{self, StreamRecv, StreamSend};
use courier_core::{Address, CloseSignal, CommError, CommRecv, CommSend, ErrorKind, Limits, Message, codec};
use tokio::net::unix::OwnedWriteHalf;

use crate::arena::{Arena, Mapped, Releaser};
use crate::channel::{Channel, MAX_FDS_PER_MESSAGE};
use crate::frame;

/// Magic of the descriptor frame.
pub const DESCRIPTOR_MAGIC: [u8; 4] = *b"CRSH";
/// Length of the descriptor frame's head.
pub const DESCRIPTOR_HEAD_LEN: usize = 24;
/// Length of one new-segment entry.
pub const SEGMENT_ENTRY_LEN: usize = 16;
/// Length of one shared-frame entry.
pub const ENTRY_LEN: usize = 32;
/// Most shared frames one message lists.
pub const MAX_SHARED_FRAMES: usize = 65_536;

/// Where a shared frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In a sealed memfd of its own, passed with the message's record.
    Sealed,
    /// In the sender's arena: `offset` bytes into segment `segment`.
    Arena {
        /// Segment id (0, 1, … per comm direction, in the order the segments were passed).
        segment: u32,
        /// Byte offset of the frame, a multiple of 4096.
        offset: u64,
    },
}

/// One frame of a message that travels outside the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Index of the frame in the message (its place on the stream holds an empty frame).
    pub index: u32,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// Where it is.
    pub placement: Placement,
}

/// The descriptor frame: the segments passed with this message, which frames travel outside
/// the stream and where, and the number of the record carrying the message's descriptors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Sequence number of the message's descriptor record (1, 2, … per direction); 0 when the
    /// message has no record (no new segment and no sealed frame).
    pub seq: u64,
    /// New segments (id, size in bytes), whose descriptors come first in the record.
    pub segments: Vec<(u32, u64)>,
    /// Shared frames, indices strictly increasing; sealed ones' descriptors follow the new
    /// segments' in the record, in this order.
    pub frames: Vec<Shared>,
}

impl Descriptor {
    /// Descriptors the message's record carries.
    pub fn fds(&self) -> usize {
        self.segments.len() + self.frames.iter().filter(|f| f.placement == Placement::Sealed).count()
    }

    /// The descriptor frame's bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(
            DESCRIPTOR_HEAD_LEN + SEGMENT_ENTRY_LEN * self.segments.len() + ENTRY_LEN * self.frames.len(),
        );
        b.put_slice(&DESCRIPTOR_MAGIC);
        b.put_u32_le(self.frames.len() as u32);
        b.put_u64_le(self.seq);
        b.put_u32_le(self.segments.len() as u32);
        b.put_u32_le(0);
        for &(id, size) in &self.segments {
            b.put_u32_le(id);
            b.put_u32_le(0);
            b.put_u64_le(size);
        }
        for f in &self.frames {
            let (kind, segment, offset) = match f.placement {
                Placement::Sealed => (0, 0, 0),
                Placement::Arena { segment, offset } => (1, segment, offset),
            };
            b.put_u32_le(f.index);
            b.put_u32_le(kind);
            b.put_u32_le(segment);
            b.put_u32_le(0);
            b.put_u64_le(offset);
            b.put_u64_le(f.len);
        }
        b.freeze()
    }

    /// Parses and checks a descriptor frame for a message of `nframes` other frames: the
    /// magic, an exact length, bounded counts, strictly increasing frame indices below
    /// `nframes`, non-zero lengths, known kinds, zero reserved bytes, at most
    /// [`MAX_FDS_PER_MESSAGE`] descriptors, and a sequence number present exactly when the
    /// message has descriptors.
    pub fn decode(bytes: &[u8], nframes: usize) -> Result<Descriptor, CommError> {
        let bad = |why: &str| CommError::protocol(format!("malformed shm descriptor: {why}"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if bytes.len() < DESCRIPTOR_HEAD_LEN || bytes[..4] != DESCRIPTOR_MAGIC {
            return Err(bad("no descriptor frame"));
        }
        let (count, seq, nseg) = (u32_at(4) as usize, u64_at(8), u32_at(16) as usize);
        if count > MAX_SHARED_FRAMES || nseg > crate::arena::MAX_SEGMENTS {
            return Err(bad(&format!("{count} shared frames or {nseg} new segments are too many")));
        }
        if u32_at(20) != 0 {
            return Err(bad("non-zero reserved bytes"));
        }
        if bytes.len() != DESCRIPTOR_HEAD_LEN + SEGMENT_ENTRY_LEN * nseg + ENTRY_LEN * count {
            return Err(bad("its length does not match its entry counts"));
        }
        let mut segments = Vec::with_capacity(nseg);
        for k in 0..nseg {
            let at = DESCRIPTOR_HEAD_LEN + SEGMENT_ENTRY_LEN * k;
            if u32_at(at + 4) != 0 || u64_at(at + 8) == 0 {
                return Err(bad("non-zero reserved bytes or an empty segment"));
            }
            segments.push((u32_at(at), u64_at(at + 8)));
        }
        let mut frames = Vec::with_capacity(count);
        let mut next = 0u64;
        for k in 0..count {
            let at = DESCRIPTOR_HEAD_LEN + SEGMENT_ENTRY_LEN * nseg + ENTRY_LEN * k;
            let (index, kind, segment, offset, len) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8), u64_at(at + 16), u64_at(at + 24));
            if u64::from(index) < next || index as usize >= nframes {
                return Err(bad(&format!("frame index {index} out of order or out of range")));
            }
            if u32_at(at + 12) != 0 || len == 0 {
                return Err(bad("non-zero reserved bytes or an empty shared frame"));
            }
            let placement = match (kind, segment, offset) {
                (0, 0, 0) => Placement::Sealed,
                (1, segment, offset) => Placement::Arena { segment, offset },
                _ => return Err(bad(&format!("frame kind {kind} with segment {segment}, offset {offset}"))),
            };
            next = u64::from(index) + 1;
            frames.push(Shared { index, len, placement });
        }
        let d = Descriptor { seq, segments, frames };
        if d.fds() > MAX_FDS_PER_MESSAGE {
            return Err(bad(&format!("{} descriptors exceed {MAX_FDS_PER_MESSAGE}", d.fds())));
        }
        if (d.fds() == 0) != (seq == 0) {
            return Err(bad("a sequence number without descriptors, or descriptors without one"));
        }
        Ok(d)
    }
}

/// The send half: puts each frame of at least `threshold` bytes in the arena (or, without
/// one or when it is full, in a sealed memfd of its own).
#[derive(Debug)]
pub(crate) struct ShmSend {
    pub(crate) inner: StreamSend<OwnedWriteHalf>,
    /// This direction's channel: frame records out, release records in.
    pub(crate) channel: Arc<Channel>,
    pub(crate) arena: Option<Arena>,
    pub(crate) peer_limits: Option<Limits>,
    pub(crate) threshold: usize,
    /// Sequence number of the last record sent.
    pub(crate) seq: u64,
    /// Closed when the receive half finds a violation.
    pub(crate) close: CloseSignal,
    /// Bytes of shared frames sent and not yet reported received.
    pub(crate) in_flight: u64,
    /// Most bytes of shared frames in flight (a larger frame goes alone).
    pub(crate) window: u64,
}

impl ShmSend {
    /// Applies the receiver's release records: frames received (the window reopens) and
    /// frames dropped (their slots are free again). Without waiting, and without a system call
    /// while nothing is in flight or held.
    fn reclaim(&mut self) -> Result<(), CommError> {
        if self.in_flight == 0 && self.arena.as_ref().is_none_or(|a| !a.holds_frames()) {
            return Ok(());
        }
        while let Some(record) = self.channel.try_recv()? {
            self.apply(record)?;
        }
        Ok(())
    }

    /// Applies the release records the reactor has seen arrive, with no system call when it
    /// has seen none: slots the receiver dropped return while only small messages flow.
    fn reclaim_cached(&mut self) -> Result<(), CommError> {
        while let crate::channel::Polled::Record(record) = self.channel.poll(true)? {
            self.apply(record)?;
        }
        Ok(())
    }

    /// Closes the comm after `e` (logged when the peer broke the protocol).
    fn fail(&self, e: CommError) -> CommError {
        if e.kind() == ErrorKind::Protocol {
            stream::log_violation(self.inner.peer_address(), &e);
        }
        self.close.close();
        e
    }

    fn apply(&mut self, (body, fds): crate::channel::RawRecord) -> Result<(), CommError> {
        if !fds.is_empty() {
            return Err(CommError::protocol("descriptors came with a release record"));
        }
        let (received, releases) = crate::arena::parse_releases(&body)?;
        if received > self.in_flight {
            return Err(CommError::protocol(format!(
                "the peer reported {received} bytes received with {} in flight",
                self.in_flight
            )));
        }
        self.in_flight -= received;
        if !releases.is_empty() {
            let arena = self.arena.as_mut().ok_or_else(|| CommError::protocol("a release record, and no arena"))?;
            for (segment, offset) in releases {
                arena.release(segment, offset)?;
            }
        }
        Ok(())
    }

    /// Moves each frame of at least the threshold into the arena or a sealed memfd, listing it
    /// in `d`, with the descriptors to pass.
    fn place(
        &mut self,
        msg: &mut Message,
        d: &mut Descriptor,
        segment_fds: &mut Vec<OwnedFd>,
        sealed_fds: &mut Vec<OwnedFd>,
    ) -> Result<(), CommError> {
        for (i, f) in msg.frames.iter_mut().enumerate() {
            if f.len() < self.threshold || d.frames.len() >= MAX_SHARED_FRAMES {
                continue;
            }
            let copying = |e| CommError::from_io("copying a frame into shared memory", e);
            let room = segment_fds.len() + sealed_fds.len() < MAX_FDS_PER_MESSAGE;
            let placed = match self.arena.as_mut() {
                Some(a) => a.put(f, room).map_err(copying)?,
                None => None,
            };
            let placement = match placed {
                Some((slot, pass)) => {
                    // A segment goes once per message, however many frames it holds.
                    if let Some((fd, size)) = pass
                        && !d.segments.iter().any(|&(id, _)| id == slot.segment)
                    {
                        d.segments.push((slot.segment, size));
                        segment_fds.push(fd);
                    }
                    Placement::Arena { segment: slot.segment, offset: slot.offset }
                }
                None if room => {
                    sealed_fds.push(frame::seal_copy(f).map_err(copying)?);
                    Placement::Sealed
                }
                None => continue,
            };
            d.frames.push(Shared { index: i as u32, len: f.len() as u64, placement });
            *f = Bytes::new();
        }
        Ok(())
    }

    /// Frees the arena slots of a message that was not sent.
    fn unplace(&mut self, d: &Descriptor) {
        if let Some(arena) = self.arena.as_mut() {
            for f in &d.frames {
                if let Placement::Arena { segment, offset } = f.placement {
                    arena.unput(crate::arena::Slot { segment, offset });
                }
            }
        }
    }

    /// Waits until `bytes` more fit the window (or nothing is in flight).
    async fn make_room(&mut self, bytes: u64) -> Result<(), CommError> {
        while self.in_flight > 0 && self.in_flight.saturating_add(bytes) > self.window {
            match self.channel.recv().await? {
                Some(record) => self.apply(record)?,
                None => {
                    return Err(CommError::closed(format!(
                        "{} closed its descriptor channel",
                        self.inner.peer_address()
                    )));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CommSend for ShmSend {
    // Not an `async fn`: a message with nothing to share gets the stream send's own future,
    // not one sized and initialised for the shared path's state.
    fn send<'a, 'b>(&'a mut self, msg: Message) -> Pin<Box<dyn Future<Output = Result<(), CommError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        if self.close.is_closed() {
            let e = CommError::closed(format!("comm to {} is closed", self.inner.peer_address()));
            return Box::pin(std::future::ready(Err(e)));
        }
        if self.in_flight == 0 && msg.frames.iter().all(|f| f.len() < self.threshold) {
            if self.arena.as_ref().is_some_and(Arena::holds_frames)
                && let Err(e) = self.reclaim_cached()
            {
                return Box::pin(std::future::ready(Err(self.fail(e))));
            }
            // Nothing to share: the stream carries it all (its encoder checks the peer's
            // limits), with an empty descriptor frame.
            return Box::pin(self.inner.send_message_with_trailer(msg, Bytes::new()));
        }
        Box::pin(self.send_shared(msg))
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.inner.close_stream().await
    }
}

impl Drop for ShmSend {
    /// Frees the slots the receiver has released; the pool waits on the channel for the
    /// rest, so they return when the receiver drops them (or exits).
    fn drop(&mut self) {
        if self.arena.as_ref().is_none_or(|a| !a.holds_frames()) {
            return;
        }
        while let Ok(Some(record)) = self.channel.try_recv() {
            if self.apply(record).is_err() {
                return; // a peer that breaks the protocol keeps its slots taken
            }
        }
        if let Some(arena) = self.arena.as_mut().filter(|a| a.holds_frames()) {
            let (pool, outstanding) = arena.take_outstanding();
            pool.adopt(self.channel.clone(), outstanding);
        }
    }
}

impl ShmSend {
    /// Sends a message with frames to share (or shared frames to reclaim first).
    async fn send_shared(&mut self, mut msg: Message) -> Result<(), CommError> {
        // Shared frames bypass the stream codec's check: refuse here what the peer would.
        if let Some(limits) = &self.peer_limits {
            let mut with_descriptor = limits.to_owned();
            with_descriptor.max_frames = with_descriptor.max_frames.saturating_sub(1);
            codec::check_limits(&msg, &with_descriptor)?;
        }
        let shared: u64 = msg.frames.iter().filter(|f| f.len() >= self.threshold).map(|f| f.len() as u64).sum();
        let ready = match self.reclaim() {
            Ok(()) => self.make_room(shared).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            return Err(self.fail(e));
        }
        let mut d = Descriptor::default();
        let (mut segment_fds, mut sealed_fds) = (Vec::new(), Vec::new());
        if let Err(e) = self.place(&mut msg, &mut d, &mut segment_fds, &mut sealed_fds) {
            // Nothing was sent: the slots placed so far are free again.
            self.unplace(&d);
            return Err(e);
        }
        segment_fds.append(&mut sealed_fds);
        if !segment_fds.is_empty() {
            d.seq = self.seq + 1;
            // A dropped send before this completes sent nothing and used no number; its slots
            // stay taken (a leak within the arena, not a fault) and unpassed segments go with
            // the next frame placed in them.
            let sent = self.channel.send(&crate::channel::record_body(segment_fds.len(), d.seq), &segment_fds).await;
            if let Err(e) = sent {
                self.unplace(&d);
                return Err(CommError::from_io(format!("passing shared frames to {}", self.inner.peer_address()), e));
            }
            self.seq = d.seq;
            if let Some(arena) = self.arena.as_mut() {
                for &(id, _) in &d.segments {
                    arena.passed(id);
                }
            }
        }
        drop(segment_fds);
        self.in_flight += d.frames.iter().map(|f| f.len).sum::<u64>();
        let descriptor = if d.frames.is_empty() { Bytes::new() } else { d.encode() };
        self.inner.send_message_with_trailer(msg, descriptor).await
    }
}

/// The receive half: maps each shared frame in place.
#[derive(Debug)]
pub(crate) struct ShmRecv {
    pub(crate) inner: StreamRecv<crate::PreambleRead>,
    /// This direction's channel: frame records in, release records out.
    pub(crate) channel: Arc<Channel>,
    pub(crate) releaser: Arc<Releaser>,
    /// The sender's segments, by id.
    pub(crate) segments: HashMap<u32, Arc<Mapped>>,
    pub(crate) segment_bytes: u64,
    /// Whether frames in the sender's arena are accepted (a process of the same user).
    pub(crate) arena_ok: bool,
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
        self.releaser.flush();
        let msg = self.inner.recv_message().await?;
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
        if descriptor.is_empty() {
            // No shared frame.
            return Ok(msg);
        }
        let d = Descriptor::decode(&descriptor, msg.frames.len())?;
        if d.frames.is_empty() && d.segments.is_empty() {
            return Ok(msg);
        }
        let uses_arena = !d.segments.is_empty() || d.frames.iter().any(|f| f.placement != Placement::Sealed);
        if uses_arena && !self.arena_ok {
            return Err(CommError::protocol("shared arenas are accepted only from processes of the same user"));
        }
        let mut fds = Vec::new().into_iter();
        if d.seq != 0 {
            if d.seq != self.seq + 1 {
                return Err(CommError::protocol(format!(
                    "shm descriptor number {} where {} was due",
                    d.seq,
                    self.seq + 1
                )));
            }
            let (body, got) = self.channel.try_recv()?.ok_or_else(|| {
                CommError::protocol(format!("a message announced {} descriptors and none came", d.fds()))
            })?;
            let seq = crate::channel::parse_record(&body, got.len())?;
            if seq != d.seq {
                return Err(CommError::protocol(format!(
                    "descriptors numbered {seq} came for message {} (descriptors sent with no shared frame?)",
                    d.seq
                )));
            }
            if got.len() != d.fds() {
                return Err(CommError::protocol(format!(
                    "{} descriptors came for {} shared frames and segments",
                    got.len(),
                    d.fds()
                )));
            }
            self.seq = d.seq;
            fds = got.into_iter();
        }
        for &(id, size) in &d.segments {
            let fd = fds.next().expect("counted");
            if id as usize >= crate::arena::MAX_SEGMENTS || self.segments.contains_key(&id) {
                return Err(CommError::protocol(format!(
                    "segment {id} was passed already, or is not below {}",
                    crate::arena::MAX_SEGMENTS
                )));
            }
            self.segment_bytes = self.segment_bytes.saturating_add(size);
            if self.segment_bytes > self.limits.max_message_size {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!(
                        "shared segments of {} bytes exceed the limit of {}",
                        self.segment_bytes, self.limits.max_message_size
                    ),
                ));
            }
            self.segments.insert(id, crate::arena::map_segment(fd, size)?);
        }
        let mut total = msg.byte_len();
        for f in &d.frames {
            if f.len > self.limits.max_frame_size {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!(
                        "a shared frame of {} bytes exceeds the limit of {} bytes",
                        f.len, self.limits.max_frame_size
                    ),
                ));
            }
            total = total.saturating_add(f.len);
            if total > self.limits.max_message_size {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!("a message exceeds the limit of {} bytes", self.limits.max_message_size),
                ));
            }
            if !msg.frames[f.index as usize].is_empty() {
                return Err(CommError::protocol(format!("shared frame {} also has bytes on the stream", f.index)));
            }
            let bytes = match f.placement {
                Placement::Sealed => frame::map(fds.next().expect("counted"), f.len)?,
                Placement::Arena { segment, offset } => {
                    let seg = self.segments.get(&segment).ok_or_else(|| {
                        CommError::protocol(format!("a frame in segment {segment}, which was never passed"))
                    })?;
                    crate::arena::view(seg, segment, offset, f.len, &self.releaser)?
                }
            };
            msg.frames[f.index as usize] = bytes;
        }
        self.releaser.received(d.frames.iter().map(|f| f.len).sum());
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn placement() -> impl Strategy<Value = Placement> {
        prop_oneof![
            Just(Placement::Sealed),
            (0u32..64, 0u64..1 << 40).prop_map(|(segment, page)| Placement::Arena { segment, offset: page * 4096 }),
        ]
    }

    proptest! {
        #[test]
        fn descriptors_round_trip(
            entries in proptest::collection::btree_map(0u32..1000, (1u64..u64::MAX, placement()), 0..40),
            segments in proptest::collection::vec((0u32..64, 1u64..u64::MAX), 0..5),
            seq in 1u64..u64::MAX,
        ) {
            let frames = entries.into_iter().map(|(index, (len, placement))| Shared { index, len, placement }).collect();
            let mut d = Descriptor { seq: 0, segments, frames };
            if d.fds() > 0 {
                d.seq = seq;
            }
            prop_assert_eq!(Descriptor::decode(&d.encode(), 1000).unwrap(), d);
        }

        /// Any bytes: a descriptor or a typed error, never a panic; whatever decodes re-encodes
        /// to the same bytes and fits the frame count.
        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..20) {
            let mut b = bytes.clone();
            if b.len() >= 4 && n % 2 == 0 {
                b[..4].copy_from_slice(&DESCRIPTOR_MAGIC);
            }
            match Descriptor::decode(&b, n) {
                Ok(d) => {
                    prop_assert_eq!(&d.encode()[..], &b[..]);
                    prop_assert!(d.frames.iter().all(|f| (f.index as usize) < n && f.len > 0));
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Protocol),
            }
        }
    }
}
