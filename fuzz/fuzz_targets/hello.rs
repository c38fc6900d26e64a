//! The stream handshake's hello (and the negotiation that follows) fed hostile bytes split
//! anywhere. Checks: no panic; nothing is consumed before a whole hello; a decoded hello
//! re-encodes and decodes to itself; negotiation sends within the peer's limits and receives
//! within this side's, and compresses only if the peer announced a codec this side knows.
#![no_main]

use bytes::BytesMut;
use courier_core::compression::ALL_CODECS;
use courier_core::handshake::{Hello, negotiate};
use courier_core::{Compression, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else { return };
    let step = usize::from(step) + 1;
    let mut src = BytesMut::new();
    for chunk in bytes.chunks(step) {
        src.extend_from_slice(chunk);
        let before = src.clone();
        match Hello::decode(&mut src) {
            Ok(Some(hello)) => {
                let mut again = BytesMut::from(&hello.encode()[..]);
                assert_eq!(Hello::decode(&mut again).unwrap().unwrap(), hello, "re-encodes to itself");
                assert!(again.is_empty());
                let ours = Limits { max_frame_size: 1 << 20, ..Limits::default() };
                let s = negotiate(ours, Compression::AUTO, hello.clone());
                assert_eq!((s.send_limits, s.recv_limits), (hello.limits, ours));
                // Only codecs this side knows (snappy, lz4) count; bits of newer codecs are
                // ignored, so a peer announcing only those gets raw frames.
                assert_eq!(s.send_codecs, hello.compressions & ALL_CODECS);
                if hello.compressions & ALL_CODECS == 0 {
                    assert_eq!(s.send_compression, Compression::None);
                } else {
                    assert_eq!(s.send_compression, Compression::AUTO);
                }
                return;
            }
            Ok(None) => assert_eq!(src.len(), before.len(), "nothing consumed before a whole hello"),
            Err(_) => return,
        }
    }
});
