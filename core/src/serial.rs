//! Typed messages: serde values as MessagePack headers, with large binary values out of band.
//!
//! [`to_message`] encodes a value's header with `rmp-serde` (structs as maps, so fields can be
//! added compatibly). Values that hold large buffers — [`Blob`], [`WireArray`](crate::WireArray),
//! [`Payload`] — do not go into the header: their buffers become frames of the message, split
//! into shards of at most [`SerializeOptions::split_size`] bytes (zero-copy slices), and the
//! header refers to them by index. [`from_message`] reverses this, taking frames by reference
//! (a single-shard value is the received buffer itself; shards are joined once).
//!
//! A [`Payload`] is an already-serialized value kept opaque: a relay (the scheduler) can
//! receive one inside a larger message and forward it byte-identical without decoding it.
//!
//! Decoding never panics: malformed MessagePack, frame references out of range, unreferenced
//! or doubly referenced frames are [`ErrorKind::Serialization`] errors.

use std::cell::{Cell, RefCell};

use bytes::{BufMut, Bytes};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::aligned::AlignedBuf;
use crate::error::{CommError, ErrorKind};
use crate::message::Message;

/// Default shard size for out-of-band buffers: 64 MiB.
pub const DEFAULT_SPLIT_SIZE: usize = 64 << 20;

/// How values are turned into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerializeOptions {
    /// Largest frame an out-of-band buffer is cut into (default 64 MiB, at least 1).
    pub split_size: usize,
}

impl Default for SerializeOptions {
    fn default() -> Self {
        SerializeOptions { split_size: DEFAULT_SPLIT_SIZE }
    }
}

struct EncodeCtx {
    frames: Vec<Bytes>,
    split: usize,
}

struct DecodeCtx {
    frames: Vec<Bytes>,
    used: Vec<bool>,
}

thread_local! {
    static ENCODE: RefCell<Option<EncodeCtx>> = const { RefCell::new(None) };
    static DECODE: RefCell<Option<DecodeCtx>> = const { RefCell::new(None) };
}

fn ser_error(e: impl std::fmt::Display) -> CommError {
    CommError::new(ErrorKind::Serialization, e.to_string())
}

/// Serializes `value` into a message with default options.
pub fn to_message<T: Serialize + ?Sized>(value: &T) -> Result<Message, CommError> {
    to_message_with(value, &SerializeOptions::default())
}

/// Serializes `value` into a message.
pub fn to_message_with<T: Serialize + ?Sized>(value: &T, options: &SerializeOptions) -> Result<Message, CommError> {
    let ctx = EncodeCtx { frames: Vec::new(), split: options.split_size.max(1) };
    let previous = ENCODE.with(|c| c.borrow_mut().replace(ctx));
    let mut buf = HEADER_BUF.with(Cell::take);
    buf.clear();
    let encoded = value.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map());
    let ctx = ENCODE.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous)).expect("encode context");
    encoded.map_err(|e| ser_error(format!("cannot serialize: {e}")))?;
    Ok(Message { header: header_bytes(buf), frames: ctx.frames, local: None })
}

/// Headers up to this size are encoded into a per-thread buffer and copied out at their exact
/// size; larger ones keep the buffer they were encoded into.
const SMALL_HEADER: usize = 4096;

thread_local! {
    /// The buffer small headers are encoded into (empty while in use, so a nested encoding
    /// gets a fresh one).
    static HEADER_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The header's bytes. A small header (most are: task arguments, results, protocol batches)
/// costs one exact allocation this way, instead of the two or three of growing a fresh `Vec`
/// and wrapping its spare capacity (1,000 instructions per trivial task under callgrind).
fn header_bytes(buf: Vec<u8>) -> Bytes {
    if buf.len() <= SMALL_HEADER {
        let header = Bytes::copy_from_slice(&buf);
        HEADER_BUF.with(|b| b.set(buf));
        header
    } else {
        Bytes::from(buf)
    }
}

/// The value a message carries: the typed value itself when a peer in this process sent it
/// with [`Message::from_local`] (no decoding), otherwise [`from_message`]'s decoding of its
/// bytes. A receiver that calls this accepts both, so whether a sender serializes is the
/// sender's choice (see [`CommSend::carries_local_values`](crate::CommSend::carries_local_values)).
/// A local value of another type than `T` is a `Serialization` error, as malformed bytes are.
pub fn into_value<T: DeserializeOwned + std::any::Any + Send + Sync + Clone>(msg: Message) -> Result<T, CommError> {
    match msg.local {
        Some(local) => local.take::<T>().map_err(|_| {
            ser_error(format!("malformed message: a local value that is not a {}", std::any::type_name::<T>()))
        }),
        None => from_message(&msg),
    }
}

/// Deserializes a value from a message made by [`to_message`]. Every frame must be referenced
/// exactly once by the header.
pub fn from_message<T: DeserializeOwned>(msg: &Message) -> Result<T, CommError> {
    decode_parts(&msg.header, &msg.frames)
}

/// [`from_message`] of a header and its frames.
fn decode_parts<T: DeserializeOwned>(header: &[u8], frames: &[Bytes]) -> Result<T, CommError> {
    let ctx = DecodeCtx { frames: frames.to_vec(), used: vec![false; frames.len()] };
    let previous = DECODE.with(|c| c.borrow_mut().replace(ctx));
    let value = rmp_serde::from_slice::<T>(header);
    let ctx = DECODE.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous)).expect("decode context");
    let value = value.map_err(|e| ser_error(format!("malformed message: {e}")))?;
    if let Some(i) = ctx.used.iter().position(|u| !u) {
        return Err(ser_error(format!(
            "malformed message: frame {i} of {} is not referenced by the header",
            ctx.used.len()
        )));
    }
    Ok(value)
}

/// Puts `data` into the message being serialized, as shards; returns their frame indices.
pub(crate) fn push_out_of_band(data: Bytes) -> Result<Vec<u32>, String> {
    ENCODE.with(|c| {
        let mut c = c.borrow_mut();
        let ctx = c.as_mut().ok_or("out-of-band values can only be serialized with courier's to_message")?;
        let mut indices = Vec::new();
        let mut offset = 0;
        loop {
            let end = (offset + ctx.split).min(data.len());
            indices.push(u32::try_from(ctx.frames.len()).map_err(|_| "too many frames")?);
            ctx.frames.push(data.slice(offset..end));
            offset = end;
            if offset >= data.len() {
                return Ok(indices);
            }
        }
    })
}

/// Takes the frames `indices` of the message being deserialized, joined into one buffer.
pub(crate) fn take_out_of_band(indices: &[u32]) -> Result<Bytes, String> {
    DECODE.with(|c| {
        let mut c = c.borrow_mut();
        let ctx = c.as_mut().ok_or("out-of-band values can only be deserialized with courier's from_message")?;
        let n = ctx.frames.len();
        for &i in indices {
            let i = i as usize;
            if i >= n {
                return Err(format!("frame index {i} out of range (the message has {n} frames)"));
            }
            if std::mem::replace(&mut ctx.used[i], true) {
                return Err(format!("frame {i} is referenced twice"));
            }
        }
        match indices {
            [] => Err("an out-of-band value references no frame".into()),
            [one] => Ok(ctx.frames[*one as usize].clone()),
            shards => {
                let total = shards.iter().try_fold(0usize, |acc, &i| acc.checked_add(ctx.frames[i as usize].len()));
                let total = total.ok_or("shard lengths overflow")?;
                let mut joined = AlignedBuf::try_new(total).map_err(|e| e.to_string())?;
                for &i in shards {
                    joined.put_slice(&ctx.frames[i as usize]);
                }
                Ok(joined.freeze())
            }
        }
    })
}

/// Bytes that travel out of band: as frames of the message, not inside the header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Bytes);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        push_out_of_band(self.0.clone()).map_err(S::Error::custom)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let indices = Vec::<u32>::deserialize(d)?;
        take_out_of_band(&indices).map(Blob).map_err(D::Error::custom)
    }
}

/// A serialized value kept opaque: its MessagePack header and its frames. Embedding a payload
/// in another message and decoding that message gives back the identical bytes, without the
/// payload's own content being decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    /// The value's MessagePack header.
    pub header: Bytes,
    /// The value's frames.
    pub frames: Vec<Bytes>,
}

impl Payload {
    /// Serializes `value` into a payload.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, CommError> {
        Ok(Payload::from(to_message(value)?))
    }

    /// Decodes the value inside.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CommError> {
        decode_parts(&self.header, &self.frames)
    }

    /// Total bytes (header and frames).
    pub fn byte_len(&self) -> u64 {
        self.header.len() as u64 + self.frames.iter().map(|f| f.len() as u64).sum::<u64>()
    }
}

impl From<Message> for Payload {
    fn from(m: Message) -> Self {
        Payload { header: m.header, frames: m.frames }
    }
}

impl From<Payload> for Message {
    fn from(p: Payload) -> Self {
        Message { header: p.header, frames: p.frames, local: None }
    }
}

#[derive(Serialize, Deserialize)]
struct PayloadWire {
    #[serde(with = "serde_bytes")]
    h: Vec<u8>,
    f: Vec<Vec<u32>>,
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self
            .frames
            .iter()
            .map(|frame| push_out_of_band(frame.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(S::Error::custom)?;
        PayloadWire { h: self.header.to_vec(), f }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = PayloadWire::deserialize(d)?;
        let frames =
            w.f.iter().map(|ix| take_out_of_band(ix)).collect::<Result<Vec<_>, _>>().map_err(D::Error::custom)?;
        Ok(Payload { header: Bytes::from(w.h), frames })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Task {
        key: String,
        args: Vec<i64>,
        data: Blob,
        more: Option<Blob>,
    }

    /// Headers below and above the size that is copied out of the per-thread buffer, and an
    /// encoding nested inside another (which must not share that buffer), all come back.
    #[test]
    fn small_large_and_nested_headers_round_trip() {
        for n in [0usize, 1, 100, SMALL_HEADER, 10 * SMALL_HEADER] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let msg = to_message(&v).unwrap();
            assert_eq!(from_message::<Vec<u8>>(&msg).unwrap(), v, "{n} elements");
        }
        struct Nested(u64);
        impl Serialize for Nested {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = Payload::new(&(self.0, "inner")).map_err(S::Error::custom)?;
                (self.0 + 1, inner.header.to_vec()).serialize(s)
            }
        }
        let msg = to_message(&Nested(41)).unwrap();
        let (outer, inner): (u64, Vec<u8>) = from_message(&msg).unwrap();
        assert_eq!(outer, 42);
        let inner: (u64, String) = Payload { header: Bytes::from(inner), frames: Vec::new() }.decode().unwrap();
        assert_eq!(inner, (41, String::from("inner")));
    }

    /// A local value comes out whole (moved when unshared, cloned when the message was
    /// cloned); one of another type is a `Serialization` error, as malformed bytes are.
    #[test]
    fn local_values_come_out_whole_or_as_a_typed_error() {
        let v = vec![String::from("k1"), String::from("k2")];
        let msg = Message::from_local(v.clone());
        assert_eq!(msg.byte_len(), 0);
        let copy = msg.clone();
        assert_eq!(into_value::<Vec<String>>(msg).unwrap(), v);
        assert_eq!(into_value::<Vec<String>>(copy).unwrap(), v);
        let err = into_value::<Vec<i64>>(Message::from_local(v.clone())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization);
        assert!(err.to_string().contains("local value"), "{err}");
        assert_eq!(into_value::<Vec<String>>(to_message(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn blobs_travel_out_of_band() {
        let big = Bytes::from(vec![3u8; 100_000]);
        let t = Task { key: "inc-1".into(), args: vec![1, -2], data: Blob(big.clone()), more: Some(Blob::default()) };
        let m = to_message(&t).unwrap();
        assert!(m.header.len() < 100, "the header stays small: {}", m.header.len());
        assert_eq!(m.frames.len(), 2);
        assert_eq!(m.frames[0].as_ptr(), big.as_ptr(), "no copy when serializing");
        let back: Task = from_message(&m).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.data.0.as_ptr(), big.as_ptr(), "no copy when deserializing one shard");
    }

    #[test]
    fn large_buffers_are_sharded_and_joined() {
        let big = Bytes::from((0..1_000_003u32).map(|i| i as u8).collect::<Vec<_>>());
        let m = to_message_with(&Blob(big.clone()), &SerializeOptions { split_size: 100_000 }).unwrap();
        assert_eq!(m.frames.len(), 11);
        assert!(m.frames.iter().all(|f| f.len() <= 100_000));
        assert_eq!(from_message::<Blob>(&m).unwrap().0, big);
    }

    #[test]
    fn payloads_relay_byte_identical_without_decoding() {
        #[derive(Serialize, Deserialize)]
        struct Relay {
            to: String,
            payload: Payload,
        }
        let inner = Payload::new(&(7u32, Blob(Bytes::from(vec![1u8; 5000])), "text")).unwrap();
        let outer = to_message(&Relay { to: "worker-2".into(), payload: inner.clone() }).unwrap();
        let relayed: Relay = from_message(&outer).unwrap();
        assert_eq!(relayed.payload, inner);
        let (n, blob, s): (u32, Blob, String) = relayed.payload.decode().unwrap();
        assert_eq!((n, blob.0.len(), s.as_str()), (7, 5000, "text"));
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let garbage = Message::new(Bytes::from_static(&[0xc1, 0xff, 0x00]), vec![]);
        assert_eq!(from_message::<Task>(&garbage).unwrap_err().kind(), ErrorKind::Serialization);
        let good = to_message(&Blob(Bytes::from_static(b"abc"))).unwrap();
        let missing = Message::new(good.header.clone(), vec![]);
        let e = from_message::<Blob>(&missing).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let extra = Message::new(good.header.clone(), vec![good.frames[0].clone(), Bytes::new()]);
        let e = from_message::<Blob>(&extra).unwrap_err();
        assert!(e.to_string().contains("not referenced"), "{e}");
        let twice = to_message(&vec![vec![0u32], vec![0u32]]).unwrap();
        let e = from_message::<(Blob, Blob)>(&Message::new(twice.header, good.frames.clone())).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let wrong_type = to_message(&"a string").unwrap();
        assert_eq!(from_message::<Task>(&wrong_type).unwrap_err().kind(), ErrorKind::Serialization);
    }

    #[test]
    fn blobs_outside_a_message_are_an_error_not_a_panic() {
        assert!(rmp_serde::to_vec(&Blob(Bytes::from_static(b"x"))).is_err());
        assert!(rmp_serde::from_slice::<Blob>(&rmp_serde::to_vec(&vec![0u32]).unwrap()).is_err());
    }
}
