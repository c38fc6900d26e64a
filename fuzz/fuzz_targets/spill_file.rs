//! A worker's spill-file decoder (`courier_runtime::worker::spill::decode_spill`) fed hostile
//! bytes. Spill files are the worker's own, but a disk can corrupt them: any input is an error
//! or a value, never a panic. A decoded value re-encodes to the same bytes (the format has one
//! encoding of each value), and its frames start 64-byte aligned within the file.
#![no_main]

use bytes::Bytes;
use courier_runtime::worker::spill::{decode_spill, write_spill};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = Bytes::copy_from_slice(data);
    if let Ok(value) = decode_spill(&file) {
        let mut out = std::io::Cursor::new(Vec::new());
        write_spill(&value, &mut out).expect("a decoded value encodes");
        assert_eq!(out.into_inner(), data, "re-encodes to itself");
        for f in &value.frames {
            if !f.is_empty() {
                assert_eq!((f.as_ptr() as usize - file.as_ptr() as usize) % 64, 0, "frames are aligned in the file");
            }
        }
    }
});
