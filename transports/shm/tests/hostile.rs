//! Hostile peers on shm://: the shared kit's bad bytes after the handshake, and bad
//! preambles (the descriptor channel). Abused shared frames are in abuse.rs.

mod support;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;

use courier_core::handshake::Hello;
use courier_core::{Compression, Limits, Message};
use courier_shm::{preamble, raw};
use support::{SEALED, memfd, open, registry, temp_dir};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[tokio::test]
async fn the_kits_hostile_frames_after_the_handshake() {
    let dir = temp_dir("kit");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    courier_core::testkit::hostile_stream_peers(&registry(), &url, |addr| async move {
        let (stream, chan) = open(Path::new(addr.location()));
        // The channel end lives as long as the test's process; the kit owns only the stream.
        std::mem::forget(chan);
        stream
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_preambles_are_refused_and_the_listener_serves_on() {
    let dir = temp_dir("preamble");
    let path = dir.join("l.sock");
    let url = format!("shm://{}", path.display());
    let r = registry();
    let mut listener = r.listen(&url).await.unwrap();
    let log = listener.rejections().unwrap();
    // A unix:// client: its hello's first byte comes without a channel.
    let mut plain = UnixStream::connect(&path).await.unwrap();
    plain.write_all(&Hello::new(Limits::default(), Compression::None, "unix").encode()).await.unwrap();
    log.wait_for(1).await;
    // The right byte with a memfd instead of the second socket.
    let s = StdStream::connect(&path).unwrap();
    let (ok, _far) = raw::channel_pair().unwrap();
    raw::send_with_fds(&s, &preamble(true), &[ok, memfd(b"x", SEALED)]).unwrap();
    log.wait_for(2).await;
    // The right byte with a stream socket instead of a seqpacket one.
    let s2 = StdStream::connect(&path).unwrap();
    let (a, _b) = StdStream::pair().unwrap();
    raw::send_with_fds(&s2, &preamble(true), &[OwnedFd::from(a), memfd(b"x", SEALED)]).unwrap();
    log.wait_for(3).await;
    let recent = log.recent();
    assert!(recent.iter().any(|(_, m)| m.contains("malformed shm preamble")), "{recent:?}");
    assert!(recent.iter().filter(|(_, m)| m.contains("not a unix seqpacket")).count() == 2, "{recent:?}");
    let (c, s) = tokio::join!(r.connect(&url), listener.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    c.send(Message::from_header(&b"fine"[..])).await.unwrap();
    assert_eq!(&s.recv().await.unwrap().header[..], b"fine");
    drop((plain, s, s2));
    let _ = std::fs::remove_dir_all(&dir);
}
