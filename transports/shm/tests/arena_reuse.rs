//! Slots a receiver released come back to the sender's arena even when the comm carries no
//! further large frame, or ends: a long-lived transport whose comms come and go must not fill
//! its arena with slots nobody holds (every later frame would then go through a fresh sealed
//! memfd, several times slower). Alone in its test binary: `shared_memory` is the process's.

use std::sync::Arc;

use courier_core::testkit::pattern;
use courier_core::{Message, Registry};
use courier_shm::{ShmTransport, shared_memory};

#[tokio::test]
async fn released_slots_return_to_the_arena_when_only_small_messages_follow_or_the_comm_ends() {
    // An arena of one 4 MiB segment; 1 MiB frames.
    let t = ShmTransport::new().with_threshold(4096).with_arena_cap(4 << 20);
    let r = Registry::new().with(Arc::new(t.clone()));
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let frame = pattern(1 << 20, 3);
    for round in 0..12 {
        let (c, s) = tokio::join!(r.connect(&url), l.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(Message::new(b"big".to_vec(), vec![frame.clone()])).await.unwrap();
        let m = s.recv().await.unwrap();
        assert!(m.frames[0] == frame);
        // The frame arrived through the arena, not a sealed memfd of its own.
        assert_eq!(shared_memory().sealed_frame_bytes, 0, "round {round}: the arena had no room");
        // Small messages only from here on; the receiver drops the frame after the sender has
        // heard it arrived, then the comm ends.
        for i in 0..3u8 {
            c.send(Message::new(vec![i], vec![])).await.unwrap();
            assert_eq!(&s.recv().await.unwrap().header[..], &[i]);
        }
        drop(m);
        for i in 3..6u8 {
            c.send(Message::new(vec![i], vec![])).await.unwrap();
            assert_eq!(&s.recv().await.unwrap().header[..], &[i]);
        }
        c.close().await.unwrap();
        drop((c, s));
    }
    assert_eq!(t.trim_arena(), 4 << 20, "nothing is held: every slot is free to give back");

    // Frames held past the comm's end: each returns when the receiver drops it, and the
    // channel the pool listened on for it closes with the next comm's end.
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    for round in 0..12 {
        let (c, s) = tokio::join!(r.connect(&url), l.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(Message::new(b"big".to_vec(), vec![frame.clone()])).await.unwrap();
        let m = s.recv().await.unwrap();
        assert_eq!(shared_memory().sealed_frame_bytes, 0, "round {round}: the arena had no room");
        c.close().await.unwrap();
        drop((c, s));
        assert!(m.frames[0] == frame, "intact after the comm ended");
        drop(m);
    }
    let left = std::fs::read_dir("/proc/self/fd").unwrap().count() - fds;
    assert!(left <= 1, "{left} descriptors left: one channel at most (the last comm's)");
    l.close().await;
}
