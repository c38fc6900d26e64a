//! The stream codec's decoder (tcp://, unix://, tls://) fed hostile bytes split anywhere, with
//! small limits and budgets so every check is reachable, with and without Snappy announced,
//! and with large frames read straight into the decoder's buffer as the stream driver does.
//!
//! Checks: no panic; every message returned is within the limits, its frames 64-byte aligned;
//! the budget is never exceeded; a returned message re-encodes and decodes to itself, and its
//! last frame sent as a trailer encodes to the same bytes.
#![no_main]

use bytes::{BufMut, BytesMut};
use courier_core::codec::{Decoder, Encoder};
use courier_core::{Compression, Limits, RecvBudget};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits =
    Limits { max_frame_size: 1 << 20, max_frames: 64, max_header_size: 1 << 16, max_message_size: 2 << 20 };

fuzz_target!(|data: &[u8]| {
    let Some((ctl, bytes)) = data.split_first_chunk::<4>() else { return };
    let codecs = u32::from(ctl[0] & 3); // bit 0 snappy, bit 1 lz4, as in a hello
    let budget_limit = (u64::from(ctl[1]) + 1) << 13; // 8 KiB .. 2 MiB
    let mut decoder = Decoder::with(LIMITS, codecs, RecvBudget::new(budget_limit, None))
        .with_speculative_max(64 * (usize::from(ctl[2]) + 1));
    let step = usize::from(ctl[3]) + 1;
    let mut src = BytesMut::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (mut chunk, after) = rest.split_at(step.min(rest.len()));
        rest = after;
        // What the stream driver does when a large frame is missing: read into its buffer.
        if let Some(target) = decoder.read_target() {
            let n = target.remaining_mut().min(chunk.len());
            target.put_slice(&chunk[..n]);
            chunk = &chunk[n..];
        }
        src.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(msg)) => check(&msg),
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(decoder.committed(), 0, "a failed decoder holds nothing");
                    return;
                }
            }
            assert!(decoder.committed() <= budget_limit, "over the budget");
        }
        assert!(decoder.committed() <= budget_limit, "over the budget");
    }
});

fn check(msg: &courier_core::Message) {
    assert!(msg.frames.len() <= LIMITS.max_frames as usize);
    assert!(msg.header.len() as u64 <= LIMITS.max_header_size);
    assert!(msg.frames.iter().all(|f| f.len() as u64 <= LIMITS.max_frame_size));
    assert!(msg.frames.iter().all(|f| f.is_empty() || (f.as_ptr() as usize).is_multiple_of(64)), "aligned frames");
    let mut chunks = Vec::new();
    Encoder::new(Limits::default(), Compression::None).encode(msg, &mut chunks).expect("a decoded message re-encodes");
    if let Some((last, rest)) = msg.frames.split_last() {
        let mut with = Vec::new();
        let head = courier_core::Message::new(msg.header.clone(), rest.to_vec());
        Encoder::new(Limits::default(), Compression::None)
            .encode_with_trailer(&head, last, &mut with)
            .expect("encodes");
        assert_eq!(with.concat(), chunks.concat(), "a trailer is the last frame");
    }
    let mut again = BytesMut::from(&chunks.concat()[..]);
    let back = Decoder::new(Limits::default()).decode(&mut again).expect("re-decodes").expect("whole");
    assert_eq!(&back, msg);
}
