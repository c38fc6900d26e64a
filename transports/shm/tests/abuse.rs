//! Each way a peer can abuse shared frames or the descriptor channel: a typed error on that
//! comm alone, every descriptor it passed closed, no mapping left, and the listener serves on.
//! The tests take turns (a lock), so the process's descriptor count is one test's.

mod support;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use courier_core::codec::Encoder;
use courier_core::handshake::{Hello, PREFIX_LEN};
use courier_core::testkit::pattern;
use courier_core::{Comm, Compression, ErrorKind, Limits, Listener, Message, Registry};
use courier_shm::{Descriptor, Placement, Shared, ShmTransport, raw};
use rustix::fs::SealFlags;
use support::{SEALED, memfd, open, registry, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The tests of this binary run one at a time, so the descriptor count is one test's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the hello exchange by hand.
async fn hello(raw: &mut UnixStream) {
    raw.write_all(&Hello::new(Limits::default(), Compression::None, "hostile").encode()).await.unwrap();
    let mut prefix = [0u8; PREFIX_LEN];
    raw.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u16::from_le_bytes([prefix[6], prefix[7]]) as usize];
    raw.read_exact(&mut body).await.unwrap();
}

/// A raw peer connected to `listener` through the preamble and the hello, and the comm the
/// listener made of it.
async fn hostile_peer(path: &Path, listener: &mut Box<dyn Listener>) -> (UnixStream, (OwnedFd, OwnedFd), Comm) {
    let (mut raw, chan) = open(path);
    let (_, server) = tokio::join!(hello(&mut raw), listener.accept());
    (raw, chan, server.unwrap())
}

/// The stream bytes of an shm message whose frames are `frames` followed by `descriptor`.
fn encode(frames: Vec<Bytes>, descriptor: Option<Descriptor>) -> Vec<u8> {
    let mut frames = frames;
    if let Some(d) = descriptor {
        frames.push(d.encode());
    }
    let mut chunks = Vec::new();
    Encoder::new(Limits::default(), Compression::None)
        .encode(&Message::new(&b"hostile"[..], frames), &mut chunks)
        .unwrap();
    chunks.concat()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Read-only memfd mappings: what receivers map (the transport's own arena is mapped
/// writable and lives with its registry).
fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:") && !l.split_whitespace().nth(1).is_some_and(|p| p.contains('w')))
        .count()
}

/// One descriptor record to put on the channel before the message: (count announced, seq, fds).
type Record = (u32, u64, Vec<OwnedFd>);

fn one(len: u64) -> Option<Descriptor> {
    Some(Descriptor { seq: 1, segments: vec![], frames: vec![Shared { index: 0, len, placement: Placement::Sealed }] })
}

/// A frame in the arena: segments passed with the message, the frame at `offset`.
fn in_arena(segments: Vec<(u32, u64)>, segment: u32, offset: u64, len: u64) -> Option<Descriptor> {
    let seq = u64::from(!segments.is_empty());
    Some(Descriptor {
        seq,
        segments,
        frames: vec![Shared { index: 0, len, placement: Placement::Arena { segment, offset } }],
    })
}

/// An arena segment as a sender makes it: sealed against shrinking and growing only.
fn segment(size: usize, seals: SealFlags) -> OwnedFd {
    let fd = memfd(&[], SealFlags::empty());
    rustix::fs::ftruncate(&fd, size as u64).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

const SEGMENT: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

#[tokio::test]
async fn abused_shared_frames_fail_their_comm_only() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("abuse");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    let r = registry();
    let mut listener = r.listen(&url).await.unwrap();
    let data = pattern(300_000, 5);
    let plain_file = {
        let p = dir.join("plain");
        std::fs::write(&p, &data[..]).unwrap();
        OwnedFd::from(std::fs::File::open(&p).unwrap())
    };
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    // (what, records, stream bytes, text the error mentions)
    let cases: Vec<(&str, Vec<Record>, Vec<u8>, &str)> = vec![
        (
            "an unsealed memfd (truncatable: SIGBUS)",
            vec![(1, 1, vec![memfd(&data, SealFlags::empty())])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "not sealed",
        ),
        (
            "a memfd still writable",
            vec![(1, 1, vec![memfd(&data, SealFlags::SHRINK | SealFlags::GROW)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "not sealed",
        ),
        (
            "a memfd that can grow",
            vec![(1, 1, vec![memfd(&data, SealFlags::SHRINK | SealFlags::WRITE)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "not sealed",
        ),
        (
            "a pipe instead of a memfd",
            vec![(1, 1, vec![OwnedFd::from(pipe_r)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "not a memory file",
        ),
        (
            "a plain file instead of a memfd",
            vec![(1, 1, vec![plain_file])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "sealable",
        ),
        (
            "a size that does not match",
            vec![(1, 1, vec![memfd(&data, SEALED)])],
            encode(vec![Bytes::new()], one(2 * data.len() as u64)),
            "has 300000 bytes",
        ),
        (
            "more descriptors than shared frames",
            vec![(2, 1, vec![memfd(&data, SEALED), memfd(&data, SEALED)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "2 descriptors came for 1 shared frames and segments",
        ),
        (
            "a record that miscounts its descriptors",
            vec![(1, 1, vec![memfd(&data, SEALED), memfd(&data, SEALED)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "announced 1 descriptors and carried 2",
        ),
        ("a shared frame with no descriptor", vec![], encode(vec![Bytes::new()], one(data.len() as u64)), "none came"),
        (
            "a record out of sequence",
            vec![(1, 7, vec![memfd(&data, SEALED)])],
            encode(vec![Bytes::new()], one(data.len() as u64)),
            "numbered 7 came for message 1",
        ),
        (
            "a shared frame that also has bytes",
            vec![(1, 1, vec![memfd(&data, SEALED)])],
            encode(vec![Bytes::from_static(b"x")], one(data.len() as u64)),
            "also has bytes",
        ),
        ("no descriptor frame", vec![], encode(vec![Bytes::from_static(b"frame")], None), "descriptor"),
        (
            "a segment that can shrink (SIGBUS)",
            vec![(1, 1, vec![segment(1 << 20, SealFlags::GROW)])],
            encode(vec![Bytes::new()], in_arena(vec![(0, 1 << 20)], 0, 0, 4096)),
            "not sealed against shrinking",
        ),
        (
            "a segment of another size",
            vec![(1, 1, vec![segment(1 << 20, SEGMENT)])],
            encode(vec![Bytes::new()], in_arena(vec![(0, 2 << 20)], 0, 0, 4096)),
            "has 1048576",
        ),
        (
            "a frame past the end of its segment",
            vec![(1, 1, vec![segment(1 << 20, SEGMENT)])],
            encode(vec![Bytes::new()], in_arena(vec![(0, 1 << 20)], 0, 1 << 20, 4096)),
            "does not fit segment 0",
        ),
        (
            "a frame length that overflows",
            vec![(1, 1, vec![segment(1 << 20, SEGMENT)])],
            encode(vec![Bytes::new()], in_arena(vec![(0, 1 << 20)], 0, 4096, u64::MAX - 100)),
            "",
        ),
        (
            "a frame in a segment never passed",
            vec![],
            encode(vec![Bytes::new()], in_arena(vec![], 3, 0, 4096)),
            "never passed",
        ),
        (
            "a segment passed twice",
            vec![(2, 1, vec![segment(1 << 20, SEGMENT), segment(1 << 20, SEGMENT)])],
            encode(vec![Bytes::new()], in_arena(vec![(0, 1 << 20), (0, 1 << 20)], 0, 0, 4096)),
            "segment 0 was passed already",
        ),
        (
            "a segment id beyond the limit",
            vec![(1, 1, vec![segment(1 << 20, SEGMENT)])],
            encode(vec![Bytes::new()], in_arena(vec![(64, 1 << 20)], 64, 0, 4096)),
            "",
        ),
    ];
    let fds_before = open_fds();
    for (what, records, bytes, mentions) in cases {
        let (mut raw, chan) = open(&path);
        let (_, server) = tokio::join!(hello(&mut raw), listener.accept());
        let mut server = server.unwrap_or_else(|e| panic!("{what}: handshake: {e}"));
        for (count, seq, fds) in records {
            raw::send_with_fds(&chan.0, &raw::record(count, seq), &fds).unwrap();
        }
        raw.write_all(&bytes).await.unwrap();
        let err = server.recv().await.expect_err(what);
        assert!(matches!(err.kind(), ErrorKind::Protocol | ErrorKind::FrameTooLarge), "{what}: {err}");
        assert!(err.to_string().contains(mentions), "{what}: {err} should mention {mentions:?}");
        assert_eq!(server.recv().await.unwrap_err().kind(), ErrorKind::Closed, "{what}: stays closed");
        assert_eq!(
            server.send(Message::from_header(&b"x"[..])).await.unwrap_err().kind(),
            ErrorKind::Closed,
            "{what}: a broken comm sends nothing"
        );
        drop((server, raw, chan));
        // The listener serves a good client, large frames and all.
        let (c, s) = tokio::join!(r.connect(&url), listener.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let m = Message::new(&b"still serving"[..], vec![pattern(1 << 20, 8)]);
        c.send(m.clone()).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), m, "{what}");
        drop((c, s));
    }
    assert_eq!(memfd_mappings(), 0, "no mapping of a refused frame is left");
    // Every descriptor a hostile peer passed was closed (the test's own were dropped too).
    let after = open_fds();
    assert!(after <= fds_before, "{after} descriptors open after the cases, {fds_before} before: {:?}", fd_targets());
    listener.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[tokio::test]
async fn a_sealed_only_receiver_refuses_arena_frames_and_a_sender_refuses_bogus_releases() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("policy");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    let r = Registry::new().with(Arc::new(ShmTransport::new().sealed_only()));
    let mut listener = r.listen(&url).await.unwrap();
    // A peer that ignores the listener's policy and sends a frame from its arena.
    let (mut raw, chan, mut server) = hostile_peer(&path, &mut listener).await;
    raw::send_with_fds(&chan.0, &raw::record(1, 1), &[segment(1 << 20, SEGMENT)]).unwrap();
    raw.write_all(&encode(vec![Bytes::new()], in_arena(vec![(0, 1 << 20)], 0, 0, 4096))).await.unwrap();
    let err = server.recv().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("accepted only from"), "{err}");
    drop((server, raw, chan));
    listener.close().await;

    // A receiver that releases a frame it was never sent: the sender's comm fails.
    let r = registry();
    let mut listener = r.listen(&url).await.unwrap();
    let (raw, chan, mut server) = hostile_peer(&path, &mut listener).await;
    let big = Message::new(&b"big"[..], vec![pattern(1 << 20, 4)]);
    server.send(big.clone()).await.unwrap();
    let mut release = Vec::new();
    release.extend_from_slice(courier_shm::RELEASE_MAGIC.as_slice());
    release.extend_from_slice(&1u32.to_le_bytes());
    release.extend_from_slice(&[0; 8]);
    release.extend_from_slice(&0u32.to_le_bytes());
    release.extend_from_slice(&[0; 4]);
    release.extend_from_slice(&(64u64 << 20).to_le_bytes());
    raw::send_with_fds(&chan.1, &release, &[]).unwrap();
    let err = server.send(big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("does not hold"), "{err}");
    drop((server, raw, chan));
    listener.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sender_keeps_at_most_its_window_in_flight() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("window");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    let r = registry();
    let mut listener = r.listen(&url).await.unwrap();
    let (raw, chan, mut server) = hostile_peer(&path, &mut listener).await;
    // A receiver that reads nothing and reports nothing: frames of 8 MiB fill the window
    // (two of them in 16 MiB); the next waits.
    let frame = Message::new(&b"8 MiB"[..], vec![pattern(8 << 20, 5)]);
    let fit = courier_shm::DEFAULT_WINDOW / (8 << 20);
    assert!(fit >= 1);
    for _ in 0..fit {
        server.send(frame.clone()).await.unwrap();
    }
    let mut next = Box::pin(server.send(frame.clone()));
    assert!(futures_poll_once(next.as_mut()).is_none(), "the frame past the window waits");
    // The receiver reports 8 MiB received: it goes.
    let mut ack = Vec::new();
    ack.extend_from_slice(courier_shm::RELEASE_MAGIC.as_slice());
    ack.extend_from_slice(&0u32.to_le_bytes());
    ack.extend_from_slice(&(8u64 << 20).to_le_bytes());
    raw::send_with_fds(&chan.1, &ack, &[]).unwrap();
    next.await.unwrap();
    // Reporting more than was sent is a protocol error.
    let mut lie = ack.clone();
    lie[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    raw::send_with_fds(&chan.1, &lie, &[]).unwrap();
    let err = server.send(frame).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("bytes received"), "{err}");
    drop((server, raw, chan));
    listener.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls a future once: its output if it is ready at once.
fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    match f.poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// A message without shared frames ends with an empty descriptor frame (what Courier sends),
/// or with the descriptor's bare 24-byte head (what it sent before); a message without any
/// descriptor frame fails its comm.
#[tokio::test]
async fn a_message_without_shared_frames_ends_with_an_empty_or_a_bare_descriptor() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("plain");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    let r = registry();
    let mut listener = r.listen(&url).await.unwrap();
    let (mut raw, chan, mut server) = hostile_peer(&path, &mut listener).await;

    let small = Message::new(&b"small"[..], vec![Bytes::from_static(b"abc"), Bytes::new()]);
    server.send(small.clone()).await.unwrap();
    let mut decoder = courier_core::codec::Decoder::new(Limits::default());
    let mut buf = bytes::BytesMut::new();
    let on_the_wire = loop {
        if let Some(m) = decoder.decode(&mut buf).unwrap() {
            break m;
        }
        assert!(raw.read_buf(&mut buf).await.unwrap() > 0);
    };
    let mut expected = small.frames.clone();
    expected.push(Bytes::new());
    assert_eq!(on_the_wire.frames, expected, "the frames, then an empty descriptor frame");

    let bare = Descriptor::default().encode();
    assert_eq!(&bare[..], b"CRSH\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    for last in [Bytes::new(), bare] {
        let mut frames = small.frames.clone();
        frames.push(last);
        let mut chunks = Vec::new();
        Encoder::new(Limits::default(), Compression::None)
            .encode(&Message::new(&b"small"[..], frames), &mut chunks)
            .unwrap();
        raw.write_all(&chunks.concat()).await.unwrap();
        assert_eq!(server.recv().await.unwrap(), small);
    }

    raw.write_all(&encode(vec![], None)).await.unwrap();
    let err = server.recv().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("without its shm descriptor"), "{err}");
    drop((server, raw, chan));
    listener.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
