//! 10,000 messages with shared frames leave no descriptor and no mapping behind. Alone in its
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

#[tokio::test]
async fn ten_thousand_messages_leak_no_descriptor_or_mapping() {
    // Every frame of 4 KiB or more is shared: two shared frames and one inline per message.
    let r = Registry::new().with(Arc::new(ShmTransport::with_threshold(4096)));
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let (a, b) = (pattern(8192, 1), pattern(5000, 2));
    // Warm up (the runtime's own descriptors), then count.
    c.send(Message::new(&b"warm"[..], vec![a.clone()])).await.unwrap();
    s.recv().await.unwrap();
    let (fds, maps) = (open_fds(), memfd_mappings());
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
        assert_eq!((m.frames[0].len(), &m.frames[1][..], m.frames[2].len()), (8192, &b"small"[..], 5000));
        if i % 1000 == 0 {
            held.push(m); // some frames are still held while the rest come and go
        }
    }
    let c = sender.await.unwrap();
    assert_eq!(memfd_mappings(), maps + 2 * held.len(), "only held frames stay mapped");
    drop(held);
    assert_eq!(memfd_mappings(), maps);
    assert_eq!(open_fds(), fds, "no descriptor left open");
    drop((c, s, l));
}
