//! Received shared frames are views of the sender's sealed pages: no copy on receipt, an array
//! viewed in place, and the data still valid after the sending process has exited.

use std::sync::Arc;

use courier_core::ndarray::Array2;
use courier_core::testkit::pattern;
use courier_core::{Message, Registry, WireArray, from_message, to_message};
use courier_shm::ShmTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(ShmTransport::new()))
}

/// The mapping of this process that holds `addr`, if any: its /proc/self/maps line.
fn mapping_of(addr: usize) -> Option<String> {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().find_map(|l| {
        let range = l.split_whitespace().next()?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
        (a <= addr && addr < b).then(|| l.to_owned())
    })
}

#[tokio::test]
async fn received_arrays_view_the_shared_pages_in_place() {
    let r = registry();
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let a = Array2::<f64>::from_shape_fn((1024, 1024), |(i, j)| (i * 1024 + j) as f64);
    c.send(to_message(&WireArray::from_array(a.clone())).unwrap()).await.unwrap();
    let got = s.recv().await.unwrap();
    let frame = got.frames.iter().max_by_key(|f| f.len()).unwrap().clone();
    assert_eq!(frame.len(), 8 << 20);
    let line = mapping_of(frame.as_ptr() as usize).expect("the frame is mapped");
    assert!(line.contains("/memfd:courier-shm"), "the frame views a shared memfd, not a copy: {line}");
    assert!(!line.split_whitespace().nth(1).unwrap().contains('w'), "mapped read-only: {line}");
    assert_eq!(frame.as_ptr() as usize % 64, 0);
    let wire: WireArray = from_message(&got).unwrap();
    let view = wire.view::<f64>().unwrap();
    assert_eq!(view.as_ptr().cast::<u8>(), frame.as_ptr(), "the array is viewed in place");
    assert_eq!(view, a.into_dyn().view());
}

/// Run as a child process by `a_frame_outlives_its_sender_process`: connects, sends one
/// shared frame, waits for the receiver's word, and exits.
#[tokio::test]
async fn child_sender() {
    let Ok(url) = std::env::var("COURIER_SHM_CHILD_URL") else { return };
    let mut c = registry().connect(&url).await.unwrap();
    c.send(Message::new(&b"from a child"[..], vec![pattern(4 << 20, 11)])).await.unwrap();
    c.recv().await.unwrap();
    std::process::exit(0);
}

#[tokio::test]
async fn a_frame_outlives_its_sender_process() {
    let r = registry();
    let mut l = r.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sender", "--nocapture"])
        .env("COURIER_SHM_CHILD_URL", &url)
        .spawn()
        .unwrap();
    let mut s = l.accept().await.unwrap();
    let got = s.recv().await.unwrap();
    s.send(Message::from_header(&b"done"[..])).await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    drop((s, l));
    assert!(mapping_of(got.frames[0].as_ptr() as usize).unwrap().contains("/memfd:courier-shm"));
    assert_eq!(got.frames[0], pattern(4 << 20, 11), "valid after the sender exited");
}

#[tokio::test]
async fn a_sealed_only_side_gets_and_sends_only_sealed_frames() {
    let sealed = Registry::new().with(Arc::new(ShmTransport::new().sealed_only()));
    let default = registry();
    let mut l = sealed.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(default.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let m = Message::new(&b"both ways"[..], vec![pattern(1 << 20, 12)]);
    c.send(m.clone()).await.unwrap();
    let there = s.recv().await.unwrap();
    s.send(m.clone()).await.unwrap();
    let back = c.recv().await.unwrap();
    for got in [&there, &back] {
        assert_eq!(got, &m);
        let line = mapping_of(got.frames[0].as_ptr() as usize).unwrap();
        assert!(line.contains("/memfd:courier-shm ") || line.ends_with("/memfd:courier-shm (deleted)"), "{line}");
    }
    // Between default sides the frames come from the sender's arena.
    let mut l = default.listen("shm://").await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(default.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    c.send(m.clone()).await.unwrap();
    let got = s.recv().await.unwrap();
    assert!(mapping_of(got.frames[0].as_ptr() as usize).unwrap().contains("/memfd:courier-shm-arena"));
}

/// Frames may outlive the runtime that received them (a client gathers, shuts its runtime
/// down, keeps the arrays): dropping them later releases nothing and panics nowhere.
#[test]
fn frames_outlive_their_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (got, sent) = rt.block_on(async {
        let r = registry();
        let mut l = r.listen("shm://").await.unwrap();
        let url = l.contact_address().to_string();
        let (c, s) = tokio::join!(r.connect(&url), l.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let m = Message::new(&b"kept"[..], vec![pattern(1 << 20, 13)]);
        c.send(m.clone()).await.unwrap();
        (s.recv().await.unwrap(), m)
    });
    drop(rt);
    assert_eq!(got, sent);
    assert!(mapping_of(got.frames[0].as_ptr() as usize).unwrap().contains("/memfd:courier-shm-arena"));
    drop(got);
}
