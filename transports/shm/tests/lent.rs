//! Buffers lent from the arena (`ShmTransport::lend_buffers`): an array built in one is sent
//! to a peer in place, with no copy, stays valid for the receiver after the sender drops it,
//! and goes to a peer that refuses arenas as a sealed copy. Its own test binary: the buffer
//! source is process-wide.

use std::sync::Arc;

use courier_core::{Registry, WireArray, from_message, to_message};
use courier_shm::ShmTransport;

/// The mapping of this process that holds `addr`: its /proc/self/maps line.
fn mapping_of(addr: usize) -> String {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
            a <= addr && addr < b
        })
        .unwrap_or_else(|| panic!("{addr:#x} is not mapped"))
        .to_owned()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains("/memfd:")).count()
}

fn ramp(rows: usize) -> WireArray {
    WireArray::from_c_order_chunks::<f64>(&[rows, 1024], |r, out| out.extend(r.map(|i| i as f64))).unwrap()
}

#[tokio::test]
async fn lent_buffers_are_sent_in_place_and_outlive_their_sender_and_go_sealed_to_a_refusing_peer() {
    let t = ShmTransport::new();
    t.lend_buffers();
    let r = Registry::new().with(Arc::new(t.clone()));
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());

    let a = ramp(1024);
    let line = mapping_of(a.data().as_ptr() as usize);
    assert!(line.contains("/memfd:courier-shm-arena"), "built in the arena: {line}");
    assert!(line.split_whitespace().nth(1).unwrap().contains('w'), "the sender's own, writable mapping: {line}");
    assert_eq!(t.frames_sent_in_place(), 0);
    c.send(to_message(&a).unwrap()).await.unwrap();
    c.send(to_message(&a).unwrap()).await.unwrap();
    assert_eq!(t.frames_sent_in_place(), 2, "both sends went in place");
    let at = a.data().as_ptr();
    drop(a);
    // Had dropping the array freed its slot, this one would be built over it.
    let other = WireArray::from_c_order_chunks::<f64>(&[1024, 1024], |r, out| out.extend(r.map(|_| 9.0))).unwrap();
    assert_ne!(other.data().as_ptr(), at, "the receiver's views keep the slot taken");
    let (m1, m2) = (s.recv().await.unwrap(), s.recv().await.unwrap());
    for m in [&m1, &m2] {
        let got: WireArray = from_message(m).unwrap();
        let line = mapping_of(got.data().as_ptr() as usize);
        assert!(!line.split_whitespace().nth(1).unwrap().contains('w'), "the receiver's read-only view: {line}");
        assert_eq!(got, ramp(1024), "valid after the sender dropped its array");
    }
    // A frame that does not live in the arena is copied into it, as before.
    let heap = WireArray::from_array(courier_core::ndarray::Array2::<f64>::ones((512, 1024)));
    c.send(to_message(&heap).unwrap()).await.unwrap();
    assert_eq!(from_message::<WireArray>(&s.recv().await.unwrap()).unwrap(), heap);
    assert_eq!(t.frames_sent_in_place(), 2);

    // 5,000 arrays built, sent in place and dropped on both sides: no descriptor, mapping or
    // slot left behind (a leaked slot would grow the arena by a segment now and then).
    let (fds, maps) = (open_fds(), memfd_mappings());
    let before = t.frames_sent_in_place();
    for i in 0..5_000u64 {
        let a =
            WireArray::from_c_order_chunks::<f64>(&[128, 1024], |r, out| out.extend(r.map(|j| (i + j as u64) as f64)))
                .unwrap();
        c.send(to_message(&a).unwrap()).await.unwrap();
        let got: WireArray = from_message(&s.recv().await.unwrap()).unwrap();
        assert_eq!(got.view::<f64>().unwrap()[[1, 0]], (i + 1024) as f64);
    }
    assert_eq!(t.frames_sent_in_place() - before, 5_000);
    assert_eq!((open_fds(), memfd_mappings()), (fds, maps), "nothing leaked");

    // A peer that refuses arenas gets a lent buffer as a sealed copy (one test: the buffer
    // source is process-wide, so a second test could not count this transport's sends).
    let sender = r;
    let receiver = Registry::new().with(Arc::new(ShmTransport::new().sealed_only()));
    let mut l = receiver.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(sender.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let a = ramp(512);
    c.send(to_message(&a).unwrap()).await.unwrap();
    let got: WireArray = from_message(&s.recv().await.unwrap()).unwrap();
    assert_eq!(got, a);
    let line = mapping_of(got.data().as_ptr() as usize);
    assert!(line.contains("/memfd:courier-shm") && !line.contains("arena"), "a sealed memfd of its own: {line}");
    assert_eq!(t.frames_sent_in_place(), 5_002, "not in place");
}
