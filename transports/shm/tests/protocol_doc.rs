//! docs/PROTOCOL.md section 9 is a public contract: these tests fail when the code and the
//! document disagree.

use courier_shm::{
    DESCRIPTOR_HEAD_LEN, DESCRIPTOR_MAGIC, Descriptor, ENTRY_LEN, FLAG_ACCEPTS_ARENA, MAX_FDS_PER_MESSAGE,
    MAX_RELEASES_PER_RECORD, MAX_SEGMENTS, MAX_SHARED_FRAMES, POLICY_MAGIC, PREAMBLE, Placement, RECORD_LEN,
    RECORD_MAGIC, RELEASE_MAGIC, SEGMENT_ENTRY_LEN, Shared, preamble, raw,
};

fn section() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md")).unwrap();
    doc.split("## 9. shm://").nth(1).expect("section 9").to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The hex bytes of the example block (text before any run of 3+ spaces per line).
fn example_bytes(section: &str) -> Vec<u8> {
    let block = section.split("### 9.4 Example").nth(1).unwrap().split("```").nth(1).unwrap();
    let mut out = Vec::new();
    for line in block.lines() {
        for group in line
            .split("   ")
            .filter(|p| !p.trim().is_empty())
            .take_while(|p| p.split_whitespace().all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())))
        {
            out.extend(group.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()));
        }
    }
    out
}

#[test]
fn the_documented_descriptor_is_what_the_code_writes_and_reads() {
    let s = section();
    let d = Descriptor {
        seq: 1,
        segments: vec![(0, 4 << 20)],
        frames: vec![Shared { index: 1, len: 1 << 20, placement: Placement::Arena { segment: 0, offset: 0 } }],
    };
    let bytes = example_bytes(&s);
    assert_eq!(bytes.len(), 72);
    assert_eq!(&d.encode()[..], &bytes[..]);
    assert_eq!(Descriptor::decode(&bytes, 2).unwrap(), d);
    assert!(s.contains(&format!("the record `{}`", hex(&raw::record(1, 1)))));
}

#[test]
fn the_documented_constants_are_the_codes() {
    // Prose wraps: compare with every run of whitespace as one space.
    let s = section().split_whitespace().collect::<Vec<_>>().join(" ");
    let magic = |m: [u8; 4]| format!("`{}` (ASCII `{}`)", hex(&m).to_uppercase(), std::str::from_utf8(&m).unwrap());
    for m in [DESCRIPTOR_MAGIC, RECORD_MAGIC, RELEASE_MAGIC, POLICY_MAGIC] {
        assert!(s.contains(&magic(m)), "{} missing", magic(m));
    }
    assert!(s.contains(&format!("`{:02x}` (ASCII `S`)", PREAMBLE)));
    assert_eq!(preamble(true), [PREAMBLE, FLAG_ACCEPTS_ARENA]);
    assert!(s.contains(&format!("(`FLAG_ACCEPTS_ARENA`, `{FLAG_ACCEPTS_ARENA:02}`)")));
    assert!(s.contains(&format!("{DESCRIPTOR_HEAD_LEN}-byte head")));
    assert!(s.contains(&format!("entries of {SEGMENT_ENTRY_LEN} bytes")));
    assert!(s.contains(&format!("entries of {ENTRY_LEN} bytes")));
    assert!(s.contains(&format!("{RECORD_LEN} bytes, `43 52 46 44`")));
    assert!(s.contains(&format!("at most {MAX_FDS_PER_MESSAGE})")));
    assert!(s.contains(&format!("(at most {MAX_SEGMENTS})")));
    assert!(s.contains("(at most 65,536)") && MAX_SHARED_FRAMES == 65_536);
    assert!(s.contains("at most 1,024") && MAX_RELEASES_PER_RECORD == 1024);
    assert!(s.contains("(`CRSH` and 20 zero bytes)") && DESCRIPTOR_HEAD_LEN == 24);
    // What a sender puts last when nothing is shared (abuse.rs checks the bytes on the wire).
    assert!(s.contains("A message without shared frames ends with an **empty** descriptor frame (length 0"));
}
