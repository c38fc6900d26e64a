//! Property tests: arbitrary messages and arrays survive serialize → encode → any split of
//! the byte stream → decode → deserialize; arbitrary bytes never panic the decoders.

use bytes::{Bytes, BytesMut};
use courier_core::codec::{Decoder, Encoder};
use courier_core::handshake::Hello;
use courier_core::ndarray::{ArrayD, IxDyn};
use courier_core::{Compression, Limits, Message, SerializeOptions, WireArray, from_message, to_message_with};
use proptest::prelude::*;

fn encode(msgs: &[Message], compression: Compression) -> Vec<u8> {
    let enc = Encoder::new(Limits::default(), compression);
    let mut chunks = Vec::new();
    for m in msgs {
        enc.encode(m, &mut chunks).unwrap();
    }
    chunks.concat()
}

/// Feeds `bytes` to a decoder cut at the given points.
fn decode_split(bytes: &[u8], cuts: &[usize]) -> Vec<Message> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut d = Decoder::new(Limits::default());
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        src.extend_from_slice(&bytes[at..p]);
        at = p;
        while let Some(m) = d.decode(&mut src).unwrap() {
            out.push(m);
        }
    }
    out
}

fn frame() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
        (0usize..70_000, any::<u8>()).prop_map(|(n, b)| Bytes::from(vec![b; n])),
        prop::collection::vec(any::<u8>(), 20_000..40_000).prop_map(Bytes::from),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (prop::collection::vec(any::<u8>(), 0..200), prop::collection::vec(frame(), 0..6))
        .prop_map(|(h, frames)| Message::new(Bytes::from(h), frames))
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Snappy), Just(Compression::Lz4), Just(Compression::AUTO)]
}

/// An array of f64 or i16 with 0-4 dimensions, in C order, Fortran order, or a strided view.
fn array() -> impl Strategy<Value = (WireArray, ArrayD<f64>)> {
    (prop::collection::vec(0usize..6, 0..5), 0u8..3, any::<u64>()).prop_map(|(shape, layout, seed)| {
        let n: usize = shape.iter().product();
        let mut rng = fastrand_like(seed);
        let a = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| rng()).collect()).unwrap();
        let wire = match layout {
            0 => WireArray::from_array(a.clone()),
            1 => WireArray::from_array(a.clone().reversed_axes()),
            _ => WireArray::from_view(a.view()),
        };
        let expected = if layout == 1 { a.reversed_axes() } else { a };
        (wire, expected)
    })
}

fn fastrand_like(mut x: u64) -> impl FnMut() -> f64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1_000_000) as f64 / 7.0
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn messages_survive_any_split(msgs in prop::collection::vec(message(), 1..4), c in compression(),
                                  cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let bytes = encode(&msgs, c);
        let got = decode_split(&bytes, &cuts);
        // Every frame, small ones (from the allocator's fast path) included, is 64-byte aligned.
        prop_assert!(got.iter().flat_map(|m| &m.frames).all(|f| f.is_empty() || (f.as_ptr() as usize).is_multiple_of(64)));
        prop_assert_eq!(got, msgs);
    }

    /// A transport's trailing frame: the stream is the message with the trailer appended as a
    /// raw last frame (byte for byte without compression), and the caller's message is
    /// untouched.
    #[test]
    fn a_trailer_is_one_more_raw_frame(msg in message(), trailer in frame(), c in compression(),
                                       cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let enc = Encoder::new(Limits::default(), c);
        let mut chunks = Vec::new();
        enc.encode_with_trailer(&msg, &trailer, &mut chunks).unwrap();
        let bytes = chunks.concat();
        let mut with = msg.clone();
        with.frames.push(trailer.clone());
        if matches!(c, Compression::None) {
            prop_assert_eq!(&bytes, &encode(std::slice::from_ref(&with), c));
        }
        prop_assert_eq!(decode_split(&bytes, &cuts), vec![with]);
    }

    #[test]
    fn arrays_survive_serialize_encode_split_decode(arrays in prop::collection::vec(array(), 1..4),
                                                    split in 1usize..5000, c in compression(),
                                                    cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let wires: Vec<WireArray> = arrays.iter().map(|(w, _)| w.clone()).collect();
        let msg = to_message_with(&wires, &SerializeOptions { split_size: split }).unwrap();
        let decoded = decode_split(&encode(std::slice::from_ref(&msg), c), &cuts);
        prop_assert_eq!(decoded.len(), 1);
        let back: Vec<WireArray> = from_message(&decoded[0]).unwrap();
        for ((_, expected), got) in arrays.iter().zip(&back) {
            prop_assert_eq!(&got.to_array::<f64>().unwrap(), expected);
            prop_assert_eq!(&got.view::<f64>().unwrap(), expected);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut src = BytesMut::from(&bytes[..]);
        let mut d = Decoder::new(Limits::default());
        while let Ok(Some(_)) = d.decode(&mut src) {}
        let mut src = BytesMut::from(&bytes[..]);
        let _ = Hello::decode(&mut src);
        let _ = from_message::<Vec<WireArray>>(&Message::new(Bytes::from(bytes.clone()), vec![]));
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        msg in message(),
        lz4 in any::<bool>(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode(std::slice::from_ref(&msg), if lz4 { Compression::Lz4 } else { Compression::Snappy });
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] ^= v;
        }
        let mut src = BytesMut::from(&bytes[..]);
        let mut d = Decoder::new(Limits::default());
        while let Ok(Some(_)) = d.decode(&mut src) {}
    }
}
