//! A shared page counts once on the machine: `resident_memory` charges a sender's arena to the
//! sender and a sealed frame to the receiver holding it, where `VmRSS` charges every process
//! that touched the page; and trimming gives a free slot's pages back. Alone in its test
//! binary: the counters are the process's.

use std::sync::Arc;

use courier_core::testkit::pattern;
use courier_core::{Comm, Message, Registry};
use courier_shm::{ShmTransport, resident_memory, shared_memory};

const MIB: u64 = 1 << 20;

fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

async fn pair(t: ShmTransport) -> (Comm, Comm, Box<dyn courier_core::Listener>) {
    let r = Registry::new().with(Arc::new(t));
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    (c.unwrap(), s.unwrap(), l)
}

/// Sends `frame` `n` times from `c` to `s`; the receiver reads every byte of each.
async fn stream(c: &mut Comm, s: &mut Comm, frame: &bytes::Bytes, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..n {
        c.send(Message::new(b"m".to_vec(), vec![frame.clone()])).await.unwrap();
        let m = s.recv().await.unwrap();
        assert!(m.frames[0] == *frame, "intact");
        got.push(m);
    }
    got
}

#[tokio::test]
async fn shared_pages_count_once_in_the_process_answerable_for_them() {
    assert_eq!(shared_memory(), Default::default());
    let frame = pattern(32 << 20, 7);
    let (vm0, res0) = (vm_rss(), resident_memory().unwrap());

    // The arena: the sender's segments are resident in it, and the receiver's mapping touches
    // the same pages again. Held frames and dropped ones alike.
    let c_transport = ShmTransport::new();
    let (mut c, mut s, mut l) = pair(c_transport.clone()).await;
    let held = stream(&mut c, &mut s, &frame, 3).await;
    let arena = shared_memory().arena_bytes;
    assert!(arena >= 96 * MIB, "three frames held: three slots ({arena})");
    let (vm, res) = (vm_rss() - vm0, resident_memory().unwrap().saturating_sub(res0));
    assert!(
        vm >= 2 * arena - 16 * MIB,
        "VmRSS counts the pages twice: {} MiB for {} MiB of arena",
        vm / MIB,
        arena / MIB
    );
    assert!(
        res.abs_diff(arena) <= 16 * MIB,
        "resident_memory counts them once: {} MiB for {} MiB",
        res / MIB,
        arena / MIB
    );

    // Trimming gives back the free slots' pages, not the held ones; the arena keeps working.
    // (The comm ends first: a live comm applies its receiver's releases as it sends.)
    let mut held = held;
    let kept = held.pop().unwrap();
    drop(held);
    drop((c, s));
    l.close().await;
    drop(l);
    let t = ShmTransport::new(); // another transport's pool: nothing to give back
    assert_eq!(t.trim_arena(), 0);
    let freed = c_transport.trim_arena();
    assert_eq!(freed, arena - 32 * MIB, "every slot but the held one");
    assert_eq!(shared_memory().arena_bytes, 32 * MIB);
    assert!(kept.frames[0] == frame, "the held frame is intact");
    let (mut c, mut s, mut l) = pair(c_transport.clone()).await;
    let again = stream(&mut c, &mut s, &frame, 2).await;
    assert_eq!(shared_memory().arena_bytes, arena, "placed again: resident again");
    drop((again, kept));
    drop((c, s));
    l.close().await;
    drop(l);
    drop(c_transport);
    assert_eq!(shared_memory().arena_bytes, 0, "the arena went with its transport");

    // Sealed frames: charged to the receiver while it holds them, and freed with them.
    let res0 = resident_memory().unwrap();
    let (mut c, mut s, l) = pair(ShmTransport::new().with_arena_cap(0)).await;
    let held = stream(&mut c, &mut s, &frame, 2).await;
    assert_eq!(shared_memory().sealed_frame_bytes, 64 * MIB);
    let res = resident_memory().unwrap().saturating_sub(res0);
    assert!(res.abs_diff(64 * MIB) <= 16 * MIB, "two sealed frames held: {} MiB", res / MIB);
    drop(held);
    assert_eq!(shared_memory().sealed_frame_bytes, 0);
    drop((c, s, l));
}
