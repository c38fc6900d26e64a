//! docs/PROTOCOL.md is a public contract: these tests fail when the code and the document
//! disagree.

use bytes::{Bytes, BytesMut};
use courier_core::codec::{Decoder, Encoder};
use courier_core::compression::Codec;
use courier_core::handshake::{Hello, MAGIC, WIRE_VERSION};
use courier_core::{Compression, Limits, Message};

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).expect("docs/PROTOCOL.md")
}

/// The hex bytes of the example in section 4 (text before any run of 3+ spaces per line).
fn example_bytes(doc: &str) -> Vec<u8> {
    let section = doc.split("## 4. Example").nth(1).expect("section 4");
    let block = section.split("```").nth(1).expect("example block");
    let mut out = Vec::new();
    for line in block.lines() {
        let hex =
            line.split("   ").filter(|p| !p.trim().is_empty()).take_while(|p| is_hex_group(p)).collect::<Vec<_>>();
        for group in hex {
            for b in group.split_whitespace() {
                out.push(u8::from_str_radix(b, 16).expect("hex byte"));
            }
        }
    }
    out
}

fn is_hex_group(p: &str) -> bool {
    p.split_whitespace().all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn the_documented_example_is_what_the_encoder_writes() {
    let doc = protocol_md();
    let expected = example_bytes(&doc);
    let msg = Message::new(Bytes::from_static(b"hi"), vec![Bytes::from_static(b"abc")]);
    let mut chunks = Vec::new();
    Encoder::new(Limits::default(), Compression::None).encode(&msg, &mut chunks).unwrap();
    assert_eq!(chunks.concat(), expected);
    let mut src = BytesMut::from(&expected[..]);
    assert_eq!(Decoder::new(Limits::default()).decode(&mut src).unwrap(), Some(msg));
}

#[test]
fn hello_matches_the_documented_offsets() {
    let doc = protocol_md();
    assert!(doc.contains("`43 52 57 52` (ASCII `CRWR`)") && MAGIC == *b"CRWR");
    assert!(doc.contains(&format!("| 4 | 2 | version | `{WIRE_VERSION}` |")));
    let limits = Limits { max_frame_size: 1, max_frames: 2, max_header_size: 3, max_message_size: 4 };
    let h = Hello::new(limits, Compression::AUTO, "ab").encode();
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().unwrap());
    assert_eq!(&h[0..4], b"CRWR");
    assert_eq!(u16_at(4), WIRE_VERSION);
    assert_eq!(u16_at(6) as usize, h.len() - 8);
    assert_eq!(u64_at(8), 1, "max_frame_size at 8");
    assert_eq!(u32_at(16), 2, "max_frames at 16");
    assert_eq!(u32_at(20), 3, "compressions at 20");
    assert!(doc.contains("bit 0 = snappy, bit 1 = lz4") && Codec::Lz4.mask_bit() == 2 && Codec::Snappy.mask_bit() == 1);
    assert_eq!(u64_at(24), 3, "max_header_size at 24");
    assert_eq!(u64_at(32), 4, "max_message_size at 32");
    assert_eq!(u16_at(40), 2, "name_len at 40");
    assert_eq!(&h[42..44], b"ab");
    assert_eq!(u16_at(44), 0, "cred_len at 42 + name_len");
    assert_eq!(u32_at(46), 0, "flags at 44 + name_len + cred_len");
    assert_eq!(h.len(), 50);
    let c = courier_core::Credential::new("xyz").unwrap();
    let h = Hello::new(limits, Compression::AUTO, "ab")
        .with_credential(Some(&c))
        .with_flags(courier_core::handshake::FLAG_REQUIRES_CREDENTIAL)
        .encode();
    assert_eq!((u16_at_of(&h, 44), &h[46..49], u32_at_of(&h, 49)), (3, &b"xyz"[..], 1));
    assert!(doc.contains("`43 52 6f 6b`") && courier_core::handshake::VERDICT_OK == *b"CRok");
    for (name, value) in [
        ("max_frame_size 4 GiB", Limits::DEFAULT_MAX_FRAME_SIZE == 4 << 30),
        ("max_frames 65,536", Limits::DEFAULT_MAX_FRAMES == 65_536),
        ("max_header_size 64 MiB", Limits::DEFAULT_MAX_HEADER_SIZE == 64 << 20),
        ("max_message_size 64 GiB", Limits::DEFAULT_MAX_MESSAGE_SIZE == 64 << 30),
    ] {
        assert!(value && doc.contains(name), "documented default {name:?} differs from the code");
    }
}

fn u16_at_of(h: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(h[o..o + 2].try_into().unwrap())
}

fn u32_at_of(h: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(h[o..o + 4].try_into().unwrap())
}

#[test]
fn the_documented_array_example_is_what_serialization_writes() {
    use courier_core::ndarray::{ShapeBuilder, array};
    use courier_core::{WireArray, to_message};
    let doc = protocol_md();
    assert!(doc.contains(r#"`{"dtype": "<f8", "shape": [2, 2], "strides": [1, 2], "data": [0]}`"#));
    let mut f_order = courier_core::ndarray::Array2::<f64>::zeros((2, 2).f());
    f_order.assign(&array![[1.0, 2.0], [3.0, 4.0]]);
    let msg = to_message(&WireArray::from_array(f_order)).unwrap();
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Header {
        dtype: String,
        shape: Vec<u64>,
        strides: Vec<u64>,
        data: Vec<u32>,
    }
    let h: Header = rmp_serde::from_slice(&msg.header).unwrap();
    assert_eq!(h, Header { dtype: "<f8".into(), shape: vec![2, 2], strides: vec![1, 2], data: vec![0] });
    let doubles: Vec<f64> = msg.frames[0].chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(doubles, [1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn codec_ids_and_the_lz4_layout_are_as_documented() {
    let doc = protocol_md();
    assert!(doc.contains("codec: 0 = raw, 1 = snappy (raw snappy format, not the framing format), 2 = lz4"));
    assert_eq!(
        (Codec::from_id(0), Codec::from_id(1), Codec::from_id(2)),
        (Some(Codec::None), Some(Codec::Snappy), Some(Codec::Lz4))
    );
    assert_eq!(Codec::from_id(3), None);
    assert!(doc.contains("decompressed length as a 4-byte little-endian integer followed\nby one LZ4 *block*"));
    let data = vec![9u8; 100_000];
    let wire = Codec::Lz4.compress(&data).unwrap();
    assert_eq!(u32::from_le_bytes(wire[..4].try_into().unwrap()), 100_000);
    assert_eq!(lz4_block_decompress(&wire[4..], 100_000), data, "the rest is a plain LZ4 block");
    assert!(doc.contains("E = 22 for snappy and 255 for lz4") && doc.contains("max_frame_size/255 + 20"));
}

/// A reference LZ4 block decoder written from the format description, independent of the
/// crate Courier uses: proves the bytes after the prefix are a standard block.
fn lz4_block_decompress(mut src: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let length = |src: &mut &[u8], mut n: usize| {
        if n == 15 {
            loop {
                let b = src[0];
                *src = &src[1..];
                n += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        n
    };
    while !src.is_empty() {
        let token = src[0];
        src = &src[1..];
        let lits = length(&mut src, (token >> 4) as usize);
        out.extend_from_slice(&src[..lits]);
        src = &src[lits..];
        if src.is_empty() {
            break;
        }
        let offset = u16::from_le_bytes([src[0], src[1]]) as usize;
        src = &src[2..];
        let m = length(&mut src, (token & 15) as usize) + 4;
        for _ in 0..m {
            out.push(out[out.len() - offset]);
        }
    }
    out
}
