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
use crate::compression::{self, Codec, Compression};
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

fn too_large(what: &str, len: u64, limit: u64) -> CommError {
    CommError::new(ErrorKind::FrameTooLarge, format!("{what} of {len} bytes exceeds the limit of {limit} bytes"))
}

/// Checks `msg` against a receiver's `limits` (uncompressed sizes), so a sender can refuse
/// with `FrameTooLarge` before writing anything.
pub fn check_limits(msg: &Message, limits: &Limits) -> Result<(), CommError> {
    if msg.frames.len() as u64 > u64::from(limits.max_frames) {
        return Err(too_large("frame count", msg.frames.len() as u64, u64::from(limits.max_frames)));
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
/// (already restricted to codecs the peer accepts).
#[derive(Debug, Clone)]
pub struct Encoder {
    limits: Limits,
    compression: Compression,
}

impl Encoder {
    /// An encoder honouring the peer's limits.
    pub fn new(limits: Limits, compression: Compression) -> Self {
        Encoder { limits, compression }
    }

    /// The compression in force.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Appends the chunks for `msg` to `out`. Fails with `FrameTooLarge`, writing nothing,
    /// if the peer's limits would reject the message.
    pub fn encode(&self, msg: &Message, out: &mut Vec<Bytes>) -> Result<(), CommError> {
        check_limits(msg, &self.limits)?;
        let wire: Vec<(Codec, Bytes)> =
            msg.frames.iter().map(|f| compression::compress_frame(f, self.compression)).collect();

        let mut head =
            BytesMut::with_capacity(HEAD_LEN + FRAME_ENTRY_LEN * wire.len() + msg.header.len().min(COALESCE_MAX));
        head.put_u32_le(wire.len() as u32);
        head.put_u32_le(0);
        head.put_u64_le(msg.header.len() as u64);
        for (codec, bytes) in &wire {
            head.put_u64_le(bytes.len() as u64);
            head.put_u8(*codec as u8);
            head.put_bytes(0, 7);
        }
        let mut pending = head;
        let push = |pending: &mut BytesMut, part: &Bytes, out: &mut Vec<Bytes>| {
            if part.len() < COALESCE_MAX {
                pending.extend_from_slice(part);
            } else {
                if !pending.is_empty() {
                    out.push(pending.split().freeze());
                }
                out.push(part.clone());
            }
        };
        push(&mut pending, &msg.header, out);
        for (_, bytes) in &wire {
            push(&mut pending, bytes, out);
        }
        if !pending.is_empty() {
            out.push(pending.freeze());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameDesc {
    wire_len: usize,
    codec: Codec,
}

#[derive(Debug)]
enum State {
    Head,
    Table { nframes: usize, header_len: usize },
    Header { header_len: usize, descs: Vec<FrameDesc> },
    Frames { header: Bytes, descs: Vec<FrameDesc>, frames: Vec<Bytes>, current: Option<AlignedBuf> },
    Failed,
}

/// Decodes messages from a byte stream split anywhere. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

impl Decoder {
    /// A decoder enforcing `limits` (this side's receive limits).
    pub fn new(limits: Limits) -> Self {
        Decoder { limits, state: State::Head }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True between messages (no partial message buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// The buffer of the frame being received, when enough of it is missing that the I/O
    /// layer should read into it directly (after `src` was drained by [`Decoder::decode`]).
    pub fn read_target(&mut self) -> Option<&mut AlignedBuf> {
        match &mut self.state {
            State::Frames { current: Some(buf), .. } if buf.remaining() >= DIRECT_READ_MIN => Some(buf),
            _ => None,
        }
    }

    /// Consumes what it can from `src`. Returns a message when one is complete, `None` when
    /// more bytes are needed. After an error the decoder stays failed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CommError> {
        let result = self.step(src);
        if result.is_err() {
            self.state = State::Failed;
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
                    let mut head = src.split_to(HEAD_LEN);
                    let nframes = head.get_u32_le();
                    let flags = head.get_u32_le();
                    let header_len = head.get_u64_le();
                    if flags != 0 {
                        return Err(CommError::protocol(format!(
                            "message flags {flags:#x} are reserved and must be 0"
                        )));
                    }
                    if nframes > self.limits.max_frames {
                        return Err(too_large("frame count", nframes.into(), self.limits.max_frames.into()));
                    }
                    if header_len > self.limits.max_header_size || header_len > self.limits.max_message_size {
                        let limit = self.limits.max_header_size.min(self.limits.max_message_size);
                        return Err(too_large("header", header_len, limit));
                    }
                    let header_len = to_usize(header_len)?;
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
                    let mut table = src.split_to(need);
                    let mut total = header_len as u64;
                    let mut descs = Vec::with_capacity(nframes);
                    for i in 0..nframes {
                        let wire_len = table.get_u64_le();
                        let codec_id = table.get_u8();
                        let mut reserved = [0u8; 7];
                        table.copy_to_slice(&mut reserved);
                        let codec = Codec::from_id(codec_id)
                            .ok_or_else(|| CommError::protocol(format!("frame {i}: unknown codec {codec_id}")))?;
                        if reserved != [0; 7] {
                            return Err(CommError::protocol(format!("frame {i}: reserved bytes must be 0")));
                        }
                        let max_wire = match codec {
                            Codec::None => self.limits.max_frame_size,
                            // Snappy's worst-case expansion of a frame of the largest size.
                            Codec::Snappy => {
                                let m = self.limits.max_frame_size;
                                m.saturating_add(m / 6).saturating_add(32)
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
                            *current = Some(AlignedBuf::try_new(desc.wire_len)?);
                        }
                        let buf = current.as_mut().expect("current frame buffer was just set");
                        let n = buf.remaining().min(src.len());
                        buf.put_slice(&src[..n]);
                        src.advance(n);
                        if !buf.is_full() {
                            return Ok(None);
                        }
                        let buf = current.take().expect("current frame was just filled");
                        frames.push(self_finish(buf, desc.codec, &self.limits, frames.len())?);
                    }
                    let msg = Message { header: std::mem::take(header), frames: std::mem::take(frames) };
                    self.state = State::Head;
                    return Ok(Some(msg));
                }
            }
        }
    }
}

fn self_finish(buf: AlignedBuf, codec: Codec, limits: &Limits, index: usize) -> Result<Bytes, CommError> {
    match codec {
        Codec::None => Ok(buf.freeze()),
        Codec::Snappy => {
            let len = compression::snappy_decompressed_len(buf.filled())?;
            if len as u64 > limits.max_frame_size {
                return Err(too_large(&format!("frame {index} (decompressed)"), len as u64, limits.max_frame_size));
            }
            let mut out = AlignedBuf::try_new(len)?;
            // Zero-initialise once so the decompressor can write into a plain slice.
            out.put_bytes(0, len);
            let mut raw = out.freeze();
            let slice = bytes_mut_slice(&mut raw);
            compression::snappy_decompress_into(buf.filled(), slice)?;
            Ok(raw)
        }
    }
}

/// A mutable view of freshly frozen, uniquely owned bytes.
fn bytes_mut_slice(b: &mut Bytes) -> &mut [u8] {
    // SAFETY: `b` was created by `AlignedBuf::freeze` just now and has not been cloned, so
    // this is the only reference to its memory; the allocation is writable.
    unsafe { std::slice::from_raw_parts_mut(b.as_ptr() as *mut u8, b.len()) }
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
