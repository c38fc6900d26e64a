//! shm://'s own decoders fed hostile bytes: the descriptor frame (for a message of 0–255
//! frames, the first byte), the frame record and the release record. Checks: no panic; a
//! decoded descriptor re-encodes to the same bytes, lists frames in range with non-zero
//! lengths and strictly increasing indices, and passes at most 253 descriptors; a parsed
//! release record has the count its length says.
#![no_main]

use courier_shm::{Descriptor, MAX_FDS_PER_MESSAGE, raw};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&nframes, bytes)) = data.split_first() else { return };
    let nframes = usize::from(nframes);
    if let Ok(d) = Descriptor::decode(bytes, nframes) {
        assert_eq!(&d.encode()[..], bytes, "re-encodes to itself");
        assert!(d.frames.iter().all(|f| (f.index as usize) < nframes && f.len > 0));
        assert!(d.frames.windows(2).all(|w| w[0].index < w[1].index));
        assert!(d.fds() <= MAX_FDS_PER_MESSAGE);
        assert_eq!(d.seq == 0, d.fds() == 0);
    }
    if let Ok((_, releases)) = raw::parse_release_record(bytes) {
        assert_eq!(bytes.len(), 16 + 16 * releases.len());
    }
    let _ = raw::parse_frame_record(bytes, nframes);
});
