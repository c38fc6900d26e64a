//! The sans-IO wire codec for stream transports (tcp://, unix://, tls://, any byte stream).
//!
//! [`Encoder`] turns a [`Message`] into a list of byte chunks to write with vectored I/O:
//! the fixed head, frame table, header and small frames are coalesced into one chunk; large
//! frames are passed through as the caller's own `Bytes`, never concatenated.
//!
//! [`Decoder`] consumes bytes from any split of the stream and yields whole messages. While it
//! is inside a frame it offers that frame's buffer ([`Decoder::read_target`]) so the I/O layer
//! can read the rest of a large frame straight into its final, exact-size, 64-byte-aligned
//! buffer. Every length read from the wire is checked against [`Limits`] with checked
//! arithmetic before anything is allocated; a violation is an error and the connection must
//! be closed.
//!
//! The byte layout is specified in `docs/PROTOCOL.md` ("Messages").

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::aligned::AlignedBuf;
use crate::budget::{RecvBudget, SPECULATIVE_MAX};
use crate::compression::{self, ALL_CODECS, Codec, Compression, Link};
use crate::error::{CommError, ErrorKind};
use crate::limits::Limits;
use crate::message::Message;

/// Size of the fixed message head.
pub const HEAD_LEN: usize = 16;
/// Size of one frame-table entry.
pub const FRAME_ENTRY_LEN: usize = 16;
/// Frames at least this large are written from the caller's buffer, not coalesced.
pub const COALESCE_MAX: usize = 64 * 1024;
/// A frame with at least this much left is read directly into its buffer.
pub const DIRECT_READ_MIN: usize = 32 * 1024;

/// Most the decoder reserves ahead in the read buffer for a partial table or header.
const RESERVE_MAX: usize = 1 << 20;

fn to_usize(n: u64) -> Result<usize, CommError> {
    usize::try_from(n)
        .map_err(|_| CommError::new(ErrorKind::FrameTooLarge, format!("length {n} does not fit this platform")))
}

/// A size over its limit (for lengths in bytes; counts have their own wording).
fn too_large(what: &str, len: u64, limit: u64) -> CommError {
    CommError::new(ErrorKind::FrameTooLarge, format!("{what} of {len} bytes exceeds the limit of {limit} bytes"))
}

/// Checks `msg` against a receiver's `limits` (uncompressed sizes), so a sender can refuse
/// with `FrameTooLarge` before writing anything.
pub fn check_limits(msg: &Message, limits: &Limits) -> Result<(), CommError> {
    if msg.frames.len() as u64 > u64::from(limits.max_frames) {
        return Err(CommError::new(
            ErrorKind::FrameTooLarge,
            format!("{} frames exceed the limit of {} frames", msg.frames.len(), limits.max_frames),
        ));
    }
    if msg.header.len() as u64 > limits.max_header_size {
        return Err(too_large("header", msg.header.len() as u64, limits.max_header_size));
    }
    if let Some(f) = msg.frames.iter().find(|f| f.len() as u64 > limits.max_frame_size) {
        return Err(too_large("frame", f.len() as u64, limits.max_frame_size));
    }
    if msg.byte_len() > limits.max_message_size {
        return Err(too_large("message", msg.byte_len(), limits.max_message_size));
    }
    Ok(())
}

/// Encodes messages for a peer with the given receive `limits`, compressing per `compression`
/// with the codecs the peer accepts, and planning `auto` with the link's measured bandwidth.
#[derive(Debug, Clone)]
pub struct Encoder {
    limits: Limits,
    compression: Compression,
    codecs: u32,
    link: Link,
}

impl Encoder {
    /// An encoder honouring the peer's limits, for a peer that accepts every codec.
    pub fn new(limits: Limits, compression: Compression) -> Self {
        Encoder { limits, compression, codecs: ALL_CODECS, link: Link::unmeasured() }
    }

    /// Restricts the codecs to `mask` (the peer's handshake `compressions`).
    pub fn with_codecs(mut self, mask: u32) -> Self {
        self.codecs = mask;
        self
    }

    /// Plans `auto` with `link` (tests and benches; comms measure their own).
    pub fn with_link(mut self, link: Link) -> Self {
        self.link = link;
        self
    }

    /// The compression in force.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The link estimate `auto` plans with.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Records that a message of `wire_bytes` took `elapsed` to write (see [`Link::observe`]).
    pub fn observe(&mut self, wire_bytes: u64, elapsed: std::time::Duration) {
        self.link.observe(wire_bytes, elapsed);
    }

    /// Appends the chunks for `msg` to `out`. Fails with `FrameTooLarge`, writing nothing,
    /// if the peer's limits would reject the message.
    pub fn encode(&self, msg: &Message, out: &mut Vec<Bytes>) -> Result<(), CommError> {
        check_limits(msg, &self.limits)?;
        self.encode_checked(msg, None, out);
        Ok(())
    }

    /// Like [`Encoder::encode`] for `msg` with `trailer` appended as its last frame (sent
    /// raw), without touching `msg`'s frame list: a transport's own frame (shm://'s
    /// descriptor) costs no reallocation of the caller's `Vec`.
    pub fn encode_with_trailer(&self, msg: &Message, trailer: &Bytes, out: &mut Vec<Bytes>) -> Result<(), CommError> {
        let mut limits = self.limits;
        limits.max_frames = limits.max_frames.saturating_sub(1);
        limits.max_message_size = limits.max_message_size.saturating_sub(trailer.len() as u64);
        check_limits(msg, &limits)?;
        if trailer.len() as u64 > self.limits.max_frame_size {
            return Err(too_large("frame", trailer.len() as u64, self.limits.max_frame_size));
        }
        self.encode_checked(msg, Some(trailer), out);
        Ok(())
    }

    /// Appends the chunks of `msg` (and `trailer`, raw), its limits already checked.
    fn encode_checked(&self, msg: &Message, trailer: Option<&Bytes>, out: &mut Vec<Bytes>) {
        let nframes = msg.frames.len() + usize::from(trailer.is_some());
        let trailer = trailer.map(|t| (Codec::None, t));
        if matches!(self.compression, Compression::None) {
            // The frames go as they are: no list of compressed frames to build.
            assemble(&msg.header, nframes, msg.frames.iter().map(|f| (Codec::None, f)).chain(trailer), out);
            return;
        }
        let wire: Vec<(Codec, Bytes)> = msg
            .frames
            .iter()
            .map(|f| compression::compress_frame(f, self.compression, self.codecs, &self.link))
            .collect();
        assemble(&msg.header, nframes, wire.iter().map(|(c, b)| (*c, b)).chain(trailer), out);
    }
}

/// Appends the chunks of a message of `header` and `nframes` frames (`frames`: each one's
/// codec and bytes on the wire): head, table, header and frames under [`COALESCE_MAX`] in one
/// buffer, allocated once at its final size, and larger frames as they are.
fn assemble<'a>(
    header: &Bytes,
    nframes: usize,
    frames: impl Iterator<Item = (Codec, &'a Bytes)> + Clone,
    out: &mut Vec<Bytes>,
) {
    let small = |len: usize| if len < COALESCE_MAX { len } else { 0 };
    let coalesced = small(header.len()) + frames.clone().map(|(_, f)| small(f.len())).sum::<usize>();
    let mut pending = BytesMut::with_capacity(HEAD_LEN + FRAME_ENTRY_LEN * nframes + coalesced);
    pending.put_u32_le(nframes as u32);
    pending.put_u32_le(0);
    pending.put_u64_le(header.len() as u64);
    for (codec, bytes) in frames.clone() {
        pending.put_u64_le(bytes.len() as u64);
        pending.put_u8(codec as u8);
        pending.put_bytes(0, 7);
    }
    let mut push = |part: &Bytes| {
        if part.len() < COALESCE_MAX {
            pending.extend_from_slice(part);
        } else {
            if !pending.is_empty() {
                out.push(pending.split().freeze());
            }
            out.push(part.clone());
        }
    };
    push(header);
    for (_, bytes) in frames {
        push(bytes);
    }
    if !pending.is_empty() {
        out.push(pending.freeze());
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameDesc {
    wire_len: usize,
    codec: Codec,
}

/// The buffer of the frame being received: exact-size once the whole frame has been
/// committed, smaller (and grown by doubling) while a frame over [`SPECULATIVE_MAX`] is
/// still arriving.
#[derive(Debug)]
struct Incoming {
    buf: AlignedBuf,
    /// The frame's length on the wire.
    wire_len: usize,
}

#[derive(Debug)]
enum State {
    Head,
    Table { nframes: usize, header_len: usize },
    Header { header_len: usize, descs: Vec<FrameDesc> },
    Frames { header: Bytes, descs: Vec<FrameDesc>, frames: Vec<Bytes>, current: Option<Incoming> },
    Failed,
}

/// Decodes messages from a byte stream split anywhere. See the module docs.
///
/// Memory is committed as bytes arrive: a frame's buffer is allocated at most
/// [`SPECULATIVE_MAX`] ahead of its bytes, and every byte committed to a partial message
/// (header, frame buffers, decompressed output) is first reserved from the decoder's
/// [`RecvBudget`], released when the message is returned.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Codecs this side announced (a handshake mask); others are protocol errors.
    codecs: u32,
    budget: RecvBudget,
    /// Most bytes allocated for a frame ahead of its data.
    speculative: usize,
    state: State,
}

impl Decoder {
    /// A decoder enforcing `limits` (this side's receive limits), accepting every codec,
    /// without a budget.
    pub fn new(limits: Limits) -> Self {
        Self::with(limits, u32::MAX, RecvBudget::unlimited())
    }

    /// A decoder enforcing `limits`, accepting compressed frames only for the codecs in
    /// `codecs` (the mask this side announced in its hello), and committing memory from
    /// `budget`.
    pub fn with(limits: Limits, codecs: u32, budget: RecvBudget) -> Self {
        Decoder { limits, codecs, budget, speculative: SPECULATIVE_MAX, state: State::Head }
    }

    /// Sets how far ahead of a frame's bytes its buffer may be allocated (default
    /// [`SPECULATIVE_MAX`]); tests use small values to exercise growth.
    pub fn with_speculative_max(mut self, bytes: usize) -> Self {
        self.speculative = bytes.max(1);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes committed to the message being received.
    pub fn committed(&self) -> u64 {
        self.budget.used()
    }

    /// True between messages (no partial message buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// The buffer of the frame being received, when enough of it is missing that the I/O
    /// layer should read into it directly (after `src` was drained by [`Decoder::decode`]).
    pub fn read_target(&mut self) -> Option<&mut AlignedBuf> {
        match &mut self.state {
            State::Frames { current: Some(inc), .. } if inc.buf.remaining() >= DIRECT_READ_MIN => Some(&mut inc.buf),
            _ => None,
        }
    }

    /// Consumes what it can from `src`. Returns a message when one is complete, `None` when
    /// more bytes are needed. After an error the decoder stays failed (and holds nothing).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CommError> {
        let result = self.step(src);
        match &result {
            Err(_) => {
                let held = self.budget.used();
                self.state = State::Failed;
                self.budget.release_all();
                crate::aligned::abandoned(held);
            }
            Ok(Some(_)) => self.budget.release_all(),
            Ok(None) => {}
        }
        result
    }

    fn step(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CommError> {
        loop {
            match &mut self.state {
                State::Failed => return Err(CommError::protocol("decoder used after a protocol error")),
                State::Head => {
                    if src.len() < HEAD_LEN {
                        return Ok(None);
                    }
                    let nframes = u32::from_le_bytes(src[0..4].try_into().expect("4 bytes"));
                    let flags = u32::from_le_bytes(src[4..8].try_into().expect("4 bytes"));
                    let header_len = u64::from_le_bytes(src[8..16].try_into().expect("8 bytes"));
                    src.advance(HEAD_LEN);
                    if flags != 0 {
                        return Err(CommError::protocol(format!(
                            "message flags {flags:#x} are reserved and must be 0"
                        )));
                    }
                    if nframes > self.limits.max_frames {
                        return Err(CommError::new(
                            ErrorKind::FrameTooLarge,
                            format!("{nframes} frames exceed the limit of {} frames", self.limits.max_frames),
                        ));
                    }
                    if header_len > self.limits.max_header_size || header_len > self.limits.max_message_size {
                        let limit = self.limits.max_header_size.min(self.limits.max_message_size);
                        return Err(too_large("header", header_len, limit));
                    }
                    let header_len = to_usize(header_len)?;
                    // The table is at most max_frames * 16 bytes; the header is committed here.
                    self.budget
                        .reserve((header_len as u64).saturating_add(u64::from(nframes) * FRAME_ENTRY_LEN as u64))?;
                    self.state = State::Table { nframes: nframes as usize, header_len };
                }
                State::Table { nframes, header_len } => {
                    let (nframes, header_len) = (*nframes, *header_len);
                    let need = nframes
                        .checked_mul(FRAME_ENTRY_LEN)
                        .ok_or_else(|| CommError::protocol("frame table overflows"))?;
                    if src.len() < need {
                        src.reserve((need - src.len()).min(RESERVE_MAX));
                        return Ok(None);
                    }
                    // The whole table is validated before any byte of the header or frames.
                    let mut total = header_len as u64;
                    let mut descs = Vec::with_capacity(nframes);
                    for (i, entry) in src[..need].chunks_exact(FRAME_ENTRY_LEN).enumerate() {
                        let wire_len = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
                        let codec_id = entry[8];
                        let reserved = &entry[9..];
                        let codec = Codec::from_id(codec_id)
                            .ok_or_else(|| CommError::protocol(format!("frame {i}: unknown codec {codec_id}")))?;
                        if reserved != [0; 7] {
                            return Err(CommError::protocol(format!("frame {i}: reserved bytes must be 0")));
                        }
                        if codec != Codec::None && self.codecs & codec.mask_bit() == 0 {
                            return Err(CommError::protocol(format!(
                                "frame {i}: compressed with {codec:?}, which this side did not announce"
                            )));
                        }
                        let max_wire = match codec {
                            Codec::None => self.limits.max_frame_size,
                            // Snappy's and lz4's worst-case expansion of a frame of the largest
                            // size (lz4: 4-byte length prefix, then at most len / 255 + 16 more).
                            Codec::Snappy => {
                                let m = self.limits.max_frame_size;
                                m.saturating_add(m / 6).saturating_add(32)
                            }
                            Codec::Lz4 => {
                                let m = self.limits.max_frame_size;
                                m.saturating_add(m / 255).saturating_add(20)
                            }
                        };
                        if wire_len > max_wire {
                            return Err(too_large(&format!("frame {i}"), wire_len, self.limits.max_frame_size));
                        }
                        total = total
                            .checked_add(wire_len)
                            .ok_or_else(|| CommError::protocol("message length overflows"))?;
                        if total > self.limits.max_message_size {
                            return Err(too_large("message", total, self.limits.max_message_size));
                        }
                        descs.push(FrameDesc { wire_len: to_usize(wire_len)?, codec });
                    }
                    src.advance(need);
                    self.state = State::Header { header_len, descs };
                }
                State::Header { header_len, descs } => {
                    if src.len() < *header_len {
                        src.reserve((*header_len - src.len()).min(RESERVE_MAX));
                        return Ok(None);
                    }
                    let header = src.split_to(*header_len).freeze();
                    let descs = std::mem::take(descs);
                    let frames = Vec::with_capacity(descs.len());
                    self.state = State::Frames { header, descs, frames, current: None };
                }
                State::Frames { header, descs, frames, current } => {
                    while frames.len() < descs.len() {
                        let desc = descs[frames.len()];
                        if desc.wire_len == 0 {
                            if desc.codec != Codec::None {
                                return Err(CommError::protocol(format!(
                                    "frame {}: empty compressed frame",
                                    frames.len()
                                )));
                            }
                            frames.push(Bytes::new());
                            continue;
                        }
                        if current.is_none() {
                            let first = desc.wire_len.min(self.speculative);
                            self.budget.reserve(first as u64)?;
                            *current = Some(Incoming { buf: AlignedBuf::try_new(first)?, wire_len: desc.wire_len });
                        }
                        let inc = current.as_mut().expect("current frame buffer was just set");
                        let n = inc.buf.remaining().min(src.len());
                        inc.buf.put_slice(&src[..n]);
                        src.advance(n);
                        if !inc.buf.is_full() {
                            return Ok(None);
                        }
                        if inc.buf.len() < inc.wire_len {
                            // A large frame: its buffer doubles as bytes arrive.
                            let grown = inc.wire_len.min(inc.buf.len().saturating_mul(2));
                            self.budget.reserve((grown - inc.buf.len()) as u64)?;
                            let mut bigger = AlignedBuf::try_new(grown)?;
                            bigger.put_slice(inc.buf.filled());
                            inc.buf = bigger;
                            continue;
                        }
                        let inc = current.take().expect("current frame was just filled");
                        let index = frames.len();
                        frames.push(finish_frame(inc.buf, desc.codec, &self.limits, &mut self.budget, index)?);
                    }
                    let msg = Message { header: std::mem::take(header), frames: std::mem::take(frames), local: None };
                    self.state = State::Head;
                    return Ok(Some(msg));
                }
            }
        }
    }
}

impl Drop for Decoder {
    /// A comm closed in the middle of a message: free its buffers, then tell the allocator.
    fn drop(&mut self) {
        let held = self.budget.used();
        self.state = State::Failed;
        self.budget.release_all();
        crate::aligned::abandoned(held);
    }
}

/// Snappy never expands data more than this many times (a 3-byte copy element yields at
/// most 64 bytes), so a declared length beyond it is a lie told to make the receiver allocate.
const SNAPPY_MAX_EXPANSION: u64 = 22;
/// LZ4 never expands data more than this many times (each extra length byte of a match adds
/// at most 255 bytes).
const LZ4_MAX_EXPANSION: u64 = 255;

fn finish_frame(
    buf: AlignedBuf,
    codec: Codec,
    limits: &Limits,
    budget: &mut RecvBudget,
    index: usize,
) -> Result<Bytes, CommError> {
    let expansion = match codec {
        Codec::None => return Ok(buf.freeze()),
        Codec::Snappy => SNAPPY_MAX_EXPANSION,
        Codec::Lz4 => LZ4_MAX_EXPANSION,
    };
    let compressed = buf.filled();
    let len = compression::decompressed_len(codec, compressed)? as u64;
    if len > limits.max_frame_size {
        return Err(too_large(&format!("frame {index} (decompressed)"), len, limits.max_frame_size));
    }
    let plausible = (compressed.len() as u64).saturating_mul(expansion).saturating_add(64);
    if len > plausible {
        return Err(CommError::new(
            ErrorKind::Compression,
            format!(
                "frame {index}: {} compressed bytes cannot decompress to the {len} bytes declared",
                compressed.len()
            ),
        ));
    }
    budget.reserve(len)?;
    let len = to_usize(len)?;
    let mut out = AlignedBuf::try_new(len)?;
    // Zero-initialised once so the decompressor writes into an ordinary slice of an
    // allocation this code owns exclusively; frozen only when complete.
    out.put_bytes(0, len);
    compression::decompress_into(codec, compressed, out.filled_mut())?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::FRAME_ALIGN;

    fn msg(header: &[u8], frames: &[usize]) -> Message {
        let mut rng = fastrand::Rng::with_seed(frames.len() as u64);
        Message::new(
            Bytes::copy_from_slice(header),
            frames.iter().map(|&n| Bytes::from((0..n).map(|_| rng.u8(..)).collect::<Vec<_>>())).collect(),
        )
    }

    fn wire(m: &Message, c: Compression) -> Vec<u8> {
        let mut chunks = Vec::new();
        Encoder::new(Limits::default(), c).encode(m, &mut chunks).unwrap();
        chunks.concat()
    }

    fn decode_all(bytes: &[u8], split: usize, limits: Limits) -> Result<Vec<Message>, CommError> {
        let mut d = Decoder::new(limits);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(split.max(1)) {
            src.extend_from_slice(chunk);
            while let Some(m) = d.decode(&mut src)? {
                out.push(m);
            }
        }
        assert!(src.is_empty());
        Ok(out)
    }

    #[test]
    fn round_trip_from_every_split() {
        let m = msg(b"hdr", &[0, 1, 100, 70_000, 3]);
        let bytes = wire(&m, Compression::None);
        for split in [1, 2, 3, 7, 15, 16, 17, 31, 100, 4096, 65_536, bytes.len()] {
            let got = decode_all(&bytes, split, Limits::default()).unwrap();
            assert_eq!(got, vec![m.clone()], "split {split}");
        }
    }

    #[test]
    fn every_split_point_of_a_small_stream() {
        let a = msg(b"a", &[5, 0, 9]);
        let b = msg(b"", &[]);
        let bytes = [wire(&a, Compression::None), wire(&b, Compression::None)].concat();
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new(Limits::default());
            let mut src = BytesMut::from(&bytes[..cut]);
            let mut out = Vec::new();
            while let Some(m) = d.decode(&mut src).unwrap() {
                out.push(m);
            }
            src.extend_from_slice(&bytes[cut..]);
            while let Some(m) = d.decode(&mut src).unwrap() {
                out.push(m);
            }
            assert_eq!(out, vec![a.clone(), b.clone()], "cut {cut}");
        }
    }

    #[test]
    fn large_frames_are_not_copied_by_the_encoder_and_arrive_aligned() {
        let big = Bytes::from(vec![1u8; 1 << 20]);
        let m = Message::new(Bytes::from_static(b"h"), vec![Bytes::from_static(b"x"), big.clone()]);
        let mut chunks = Vec::new();
        Encoder::new(Limits::default(), Compression::None).encode(&m, &mut chunks).unwrap();
        assert!(chunks.iter().any(|c| c.as_ptr() == big.as_ptr()), "large frame must be passed through");
        let got = decode_all(&chunks.concat(), 1000, Limits::default()).unwrap();
        for f in &got[0].frames {
            assert_eq!(f.as_ptr() as usize % FRAME_ALIGN, 0);
        }
        assert_eq!(got[0], m);
    }

    #[test]
    fn compressed_frames_round_trip() {
        let zeros = Message::new(Bytes::new(), vec![Bytes::from(vec![0u8; 1 << 20]), Bytes::from_static(b"tiny")]);
        let bytes = wire(&zeros, Compression::AUTO);
        assert!(bytes.len() < 100_000);
        assert_eq!(decode_all(&bytes, 777, Limits::default()).unwrap(), vec![zeros]);
    }

    #[test]
    fn encoder_refuses_what_the_peer_would_reject() {
        let limits = Limits { max_frame_size: 10, max_frames: 2, max_header_size: 4, max_message_size: 15 };
        let enc = Encoder::new(limits, Compression::None);
        let mut out = Vec::new();
        for m in [msg(b"", &[11]), msg(b"", &[1, 1, 1]), msg(b"12345", &[]), msg(b"1234", &[10, 10])] {
            assert_eq!(enc.encode(&m, &mut out).unwrap_err().kind(), ErrorKind::FrameTooLarge);
        }
        assert!(out.is_empty());
        // A trailer counts as one more frame of the message.
        let trailer = Bytes::from_static(b"t");
        for (m, t) in [(msg(b"", &[1, 1]), &b"t"[..]), (msg(b"1234", &[10]), &b"tt"[..])] {
            let t = Bytes::copy_from_slice(t);
            assert_eq!(enc.encode_with_trailer(&m, &t, &mut out).unwrap_err().kind(), ErrorKind::FrameTooLarge);
        }
        enc.encode_with_trailer(&msg(b"1234", &[10]), &trailer, &mut out).unwrap();
        out.clear();
        let long = Bytes::from(vec![0u8; 11]);
        assert_eq!(
            enc.encode_with_trailer(&msg(b"", &[]), &long, &mut out).unwrap_err().kind(),
            ErrorKind::FrameTooLarge
        );
        assert!(out.is_empty());
        enc.encode_with_trailer(&msg(b"12", &[3]), &trailer, &mut out).unwrap();
        assert!(!out.is_empty());
    }

    #[test]
    fn decoder_rejects_limit_violations_and_garbage() {
        let small = Limits { max_frame_size: 1000, max_frames: 4, max_header_size: 100, max_message_size: 1500 };
        let cases: Vec<(Vec<u8>, ErrorKind)> = vec![
            (wire(&msg(b"", &[1001]), Compression::None), ErrorKind::FrameTooLarge),
            (wire(&msg(b"", &[1, 1, 1, 1, 1]), Compression::None), ErrorKind::FrameTooLarge),
            (wire(&msg(&[0; 101], &[]), Compression::None), ErrorKind::FrameTooLarge),
            (wire(&msg(b"", &[900, 900]), Compression::None), ErrorKind::FrameTooLarge),
            ([&[1, 0, 0, 0, 1, 0, 0, 0][..], &[0; 8]].concat(), ErrorKind::Protocol),
            (
                [&[1, 0, 0, 0, 0, 0, 0, 0][..], &[0; 8], &[1, 0, 0, 0, 0, 0, 0, 0, 9], &[0; 7]].concat(),
                ErrorKind::Protocol,
            ),
            (
                [&[1, 0, 0, 0, 0, 0, 0, 0][..], &[0; 8], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 1], &[0; 6]].concat(),
                ErrorKind::Protocol,
            ),
            ([&[1, 0, 0, 0, 0, 0, 0, 0][..], &[0; 8], &[0; 8], &[1], &[0; 7]].concat(), ErrorKind::Protocol),
        ];
        for (i, (bytes, kind)) in cases.into_iter().enumerate() {
            let err = decode_all(&bytes, 3, small).unwrap_err();
            assert_eq!(err.kind(), kind, "case {i}: {err}");
        }
    }

    #[test]
    fn large_frames_grow_as_their_bytes_arrive_from_every_split() {
        let m = msg(b"h", &[10_000, 3, 70_001]);
        let bytes = wire(&m, Compression::None);
        for split in [1, 7, 999, 1000, 1001, 4096, 65_536, bytes.len()] {
            let mut d = Decoder::new(Limits::default()).with_speculative_max(1000);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut most = 0;
            for chunk in bytes.chunks(split) {
                src.extend_from_slice(chunk);
                while let Some(m) = d.decode(&mut src).unwrap() {
                    got.push(m);
                }
                most = most.max(d.committed());
            }
            assert_eq!(got, vec![m.clone()], "split {split}");
            assert!(got[0].frames.iter().all(|f| (f.as_ptr() as usize).is_multiple_of(FRAME_ALIGN)));
            assert_eq!(d.committed(), 0, "released once delivered");
            assert!(most < 2 * 70_001 + 20_000, "split {split}: committed {most}");
        }
    }

    #[test]
    fn an_announced_huge_frame_commits_memory_only_as_bytes_arrive() {
        // 4 GiB announced, 100 bytes sent.
        let mut bytes = vec![1, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&(4u64 << 30).to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&[7; 100]);
        let mut d = Decoder::with(Limits::default(), 0, RecvBudget::unlimited()).with_speculative_max(1 << 20);
        assert!(d.decode(&mut BytesMut::from(&bytes[..])).unwrap().is_none());
        assert!(d.committed() <= (1 << 20) + 1000, "{}", d.committed());
        // With a budget smaller than the first chunk, the message fails at once.
        let mut d = Decoder::with(Limits::default(), 0, RecvBudget::new(4096, None));
        let e = d.decode(&mut BytesMut::from(&bytes[..])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(e.to_string().contains("budget"), "{e}");
        assert_eq!(d.committed(), 0);
    }

    #[test]
    fn snappy_bombs_and_unannounced_codecs_are_refused_before_allocating() {
        // A 16-byte snappy frame declaring 4 GiB - 1 (the varint preamble), then garbage.
        let mut bomb = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        bomb.extend_from_slice(&[0; 11]);
        let frame = |codec: u8, payload: &[u8]| {
            let mut b = vec![1, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            b.push(codec);
            b.extend_from_slice(&[0; 7]);
            b.extend_from_slice(payload);
            b
        };
        let snappy = Codec::Snappy.mask_bit();
        let mut d = Decoder::with(Limits::default(), snappy, RecvBudget::unlimited());
        let e = d.decode(&mut BytesMut::from(&frame(1, &bomb)[..])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Compression, "{e}");
        assert!(e.to_string().contains("cannot decompress to the 4294967295 bytes declared"), "{e}");
        let small = Limits { max_frame_size: 1 << 20, ..Limits::default() };
        let mut d = Decoder::with(small, snappy, RecvBudget::unlimited());
        let e = d.decode(&mut BytesMut::from(&frame(1, &bomb)[..])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        // Compressed frames from a peer to whom this side announced no codecs.
        let good = wire(&Message::new(Bytes::new(), vec![Bytes::from(vec![0u8; 100_000])]), Compression::Snappy);
        let mut d = Decoder::with(Limits::default(), 0, RecvBudget::unlimited());
        let e = d.decode(&mut BytesMut::from(&good[..])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("did not announce"), "{e}");
        let mut d = Decoder::with(Limits::default(), snappy, RecvBudget::new(1 << 20, None));
        assert_eq!(d.decode(&mut BytesMut::from(&good[..])).unwrap().unwrap().frames[0].len(), 100_000);
    }

    #[test]
    fn lz4_bombs_lies_and_unannounced_lz4_are_refused_before_allocating() {
        let frame = |payload: &[u8]| {
            let mut b = vec![1, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            b.push(Codec::Lz4 as u8);
            b.extend_from_slice(&[0; 7]);
            b.extend_from_slice(payload);
            b
        };
        let lz4 = Codec::Lz4.mask_bit();
        // 16 bytes declaring 4 GiB - 1.
        let mut bomb = u32::MAX.to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0; 12]);
        let mut d = Decoder::with(Limits::default(), lz4, RecvBudget::unlimited());
        let e = d.decode(&mut BytesMut::from(&frame(&bomb)[..])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Compression, "{e}");
        assert!(e.to_string().contains("cannot decompress to the 4294967295 bytes declared"), "{e}");
        assert_eq!(d.committed(), 0);
        // Shorter than its length prefix.
        let mut d = Decoder::with(Limits::default(), lz4, RecvBudget::unlimited());
        assert_eq!(d.decode(&mut BytesMut::from(&frame(&[1, 2])[..])).unwrap_err().kind(), ErrorKind::Compression);
        // A valid frame that declares twice what it holds.
        let mut lie = Codec::Lz4.compress(&[5u8; 50_000]).unwrap();
        lie[..4].copy_from_slice(&100_000u32.to_le_bytes());
        let mut d = Decoder::with(Limits::default(), lz4, RecvBudget::unlimited());
        assert_eq!(d.decode(&mut BytesMut::from(&frame(&lie)[..])).unwrap_err().kind(), ErrorKind::Compression);
        // Unannounced: a side that offered only snappy refuses lz4.
        let good = frame(&Codec::Lz4.compress(&[5u8; 50_000]).unwrap());
        let mut d = Decoder::with(Limits::default(), Codec::Snappy.mask_bit(), RecvBudget::unlimited());
        let e = d.decode(&mut BytesMut::from(&good[..])).unwrap_err();
        assert!(e.to_string().contains("did not announce"), "{e}");
        let mut d = Decoder::with(Limits::default(), lz4, RecvBudget::unlimited());
        assert_eq!(d.decode(&mut BytesMut::from(&good[..])).unwrap().unwrap().frames[0], vec![5u8; 50_000]);
    }

    #[test]
    fn error_texts_name_counts_and_bytes_correctly() {
        let small = Limits { max_frames: 4, ..Limits::default() };
        let e = decode_all(&wire(&msg(b"", &[1, 1, 1, 1, 1]), Compression::None), 3, small).unwrap_err();
        assert_eq!(e.to_string(), "frame too large: 5 frames exceed the limit of 4 frames");
    }

    #[test]
    fn huge_lengths_use_checked_arithmetic() {
        let limits = Limits {
            max_frame_size: u64::MAX,
            max_frames: u32::MAX,
            max_header_size: u64::MAX,
            max_message_size: u64::MAX,
        };
        let mut bytes = vec![2, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&(u64::MAX - 5).to_le_bytes());
        for _ in 0..2 {
            bytes.extend_from_slice(&u64::MAX.to_le_bytes());
            bytes.extend_from_slice(&[0; 8]);
        }
        assert_eq!(decode_all(&bytes, 5, limits).unwrap_err().kind(), ErrorKind::Protocol);
    }
}
