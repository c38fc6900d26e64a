//! 10,000 messages with shared frames leave no descriptor and no mapping behind, through the
//! arena (its segments reused, not one per frame) and through sealed memfds. Alone in its
//! test binary, so the process's descriptor count is this test's.

use std::sync::Arc;

use courier_core::testkit::pattern;
use courier_core::{Message, Registry};
use courier_shm::ShmTransport;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains("/memfd:")).count()
}

/// Streams 10,000 messages (two shared frames and one inline each), holding every 1,000th;
/// returns the memfd mappings seen while ten were held.
async fn stream(t: ShmTransport) -> usize {
    let (fds, maps) = (open_fds(), memfd_mappings());
    let r = Registry::new().with(Arc::new(t.with_threshold(4096)));
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let (a, b) = (pattern(8192, 1), pattern(5000, 2));
    let mut held = Vec::new();
    let sender = tokio::spawn(async move {
        for i in 0..10_000u32 {
            let m = Message::new(i.to_le_bytes().to_vec(), vec![a.clone(), b"small".to_vec().into(), b.clone()]);
            c.send(m).await.unwrap();
        }
        c
    });
    for i in 0..10_000u32 {
        let m = s.recv().await.unwrap();
        assert_eq!(&m.header[..], &i.to_le_bytes());
        assert_eq!(m.frames[0], pattern(8192, 1));
        assert_eq!(&m.frames[1][..], b"small");
        assert_eq!(m.frames[2], pattern(5000, 2));
        if i % 1000 == 0 {
            held.push(m); // some frames are still held while the rest come and go
        }
    }
    let c = sender.await.unwrap();
    let while_held = memfd_mappings() - maps;
    for m in &held {
        assert_eq!(m.frames[0], pattern(8192, 1), "held frames are intact after 10,000 more");
    }
    drop(held);
    drop((c, s));
    l.close().await;
    drop((l, r)); // the transport's arena pool goes with its last comm and the registry
    assert_eq!(memfd_mappings(), maps, "no mapping left");
    assert_eq!(open_fds(), fds, "no descriptor left open");
    while_held
}

#[tokio::test]
async fn ten_thousand_messages_leak_no_descriptor_or_mapping() {
    // The arena: ~130 MB passed through its first 4 MiB segment, mapped once on each side.
    assert_eq!(stream(ShmTransport::new()).await, 2, "one segment, reused");
    // Sealed memfds: each held frame is its own mapping, the others are gone.
    assert_eq!(stream(ShmTransport::new().with_arena_cap(0)).await, 20);
}
