//! Hostile bytes on zmq://, before and after the handshake, written by hand from
//! `docs/PROTOCOL.md` section 6: every case ends with a typed error on that connection and a
//! listener that still serves a good client.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use courier_core::handshake::Hello;
use courier_core::{CommConfig, Compression, ErrorKind, Limits, Listener, Message, Registry};
use courier_zmq::ZmqTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn registry() -> Registry {
    Registry::new().with(Arc::new(ZmqTransport::new()))
}

async fn listener(config: CommConfig) -> Box<dyn Listener> {
    registry().listen_with("zmq://127.0.0.1:0", &config).await.unwrap()
}

async fn raw(l: &dyn Listener) -> TcpStream {
    TcpStream::connect(l.contact_address().location()).await.unwrap()
}

fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    if body.len() > 255 {
        b.put_u8(flags | 2);
        b.put_u64(body.len() as u64);
    } else {
        b.put_u8(flags);
        b.put_u8(body.len() as u8);
    }
    b.put_slice(body);
    b.to_vec()
}

fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        out.extend(frame(if i + 1 < parts.len() { 1 } else { 0 }, p));
    }
    out
}

/// A ZMTP READY command announcing `socket_type`.
fn ready(socket_type: &[u8]) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type);
    frame(4, &body)
}

fn ready_dealer() -> Vec<u8> {
    ready(b"DEALER")
}

/// A hand-made DEALER past the ZMTP and Courier handshakes.
async fn session(l: &dyn Listener) -> TcpStream {
    session_with_window(l, 16).await
}

/// A hand-made DEALER past the handshakes, announcing an inbox of `window` messages.
async fn session_with_window(l: &dyn Listener, window: u32) -> TcpStream {
    let mut s = raw(l).await;
    let hello = Hello::new(Limits::default(), Compression::None, "hostile").encode();
    let mut out = greeting();
    out.extend(ready_dealer());
    out.extend(message(&[b"H", &hello, &window.to_le_bytes()]));
    s.write_all(&out).await.unwrap();
    let mut theirs = [0u8; 64];
    s.read_exact(&mut theirs).await.unwrap();
    assert_eq!((theirs[0], theirs[9], theirs[10]), (0xff, 0x7f, 3), "a ZMTP 3 greeting");
    let (flags, ready) = read_frame(&mut s).await;
    assert_eq!(flags & 4, 4, "READY is a command");
    assert!(ready.windows(6).any(|w| w == b"ROUTER"), "the listener is a ROUTER");
    let mut parts = Vec::new();
    loop {
        let (flags, body) = read_frame(&mut s).await;
        parts.push(body);
        if flags & 1 == 0 {
            break;
        }
    }
    assert_eq!(parts[0], b"H", "the listener answers with its hello");
    s
}

async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let flags = s.read_u8().await.unwrap();
    let len = if flags & 2 != 0 { s.read_u64().await.unwrap() as usize } else { s.read_u8().await.unwrap() as usize };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (flags, body)
}

async fn assert_serves_good_client(l: &mut Box<dyn Listener>) {
    let url = l.contact_address().to_string();
    let r = registry();
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    c.send(Message::new(Bytes::from_static(b"good"), vec![Bytes::from(vec![3u8; 100_000])])).await.unwrap();
    let m = s.recv().await.unwrap();
    assert_eq!(&m.header[..], b"good");
    assert_eq!(m.frames[0].len(), 100_000);
}

/// Sends `bytes` before any handshake; the listener must refuse with `expect` and serve on.
async fn before_handshake(bytes: &[u8], expect: ErrorKind, mentions: &str) {
    let mut l = listener(CommConfig::default()).await;
    let log = l.rejections().unwrap();
    let mut s = raw(&*l).await;
    s.write_all(bytes).await.unwrap();
    log.wait_for(1).await;
    let (kind, msg) = log.recent().pop().unwrap();
    assert_eq!(kind, expect, "{msg}");
    assert!(msg.contains(mentions), "{msg:?} should mention {mentions:?}");
    // The connection is closed: reading ends (after the listener's own greeting and READY).
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink).await;
    assert_serves_good_client(&mut l).await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_before_the_handshake_is_refused_on_its_length() {
    // The 74 bytes that aborted a process on the `zeromq` crate: greeting, then 2^40 announced.
    let mut bytes = greeting();
    bytes.push(2);
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(bytes.len(), 73);
    bytes.push(0);
    before_handshake(&bytes, ErrorKind::FrameTooLarge, "exceeds").await;
    // The same inside a READY command.
    let mut bytes = greeting();
    bytes.push(4 | 2);
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    before_handshake(&bytes, ErrorKind::FrameTooLarge, "command").await;
}

#[tokio::test]
async fn garbage_and_wrong_peers_are_refused_before_the_handshake() {
    before_handshake(b"GET / HTTP/1.1\r\n\r\n", ErrorKind::Protocol, "not a ZMTP 3 peer").await;
    let mut tls = vec![0x16, 0x03, 0x01];
    tls.extend_from_slice(&[0; 61]);
    before_handshake(&tls, ErrorKind::Protocol, "0x16").await;
    let mut v2 = greeting();
    v2[10] = 2;
    before_handshake(&v2, ErrorKind::Protocol, "version 2").await;
    let mut curve = greeting();
    curve[12..17].copy_from_slice(b"CURVE");
    before_handshake(&curve, ErrorKind::Protocol, "CURVE").await;
    let mut pub_socket = greeting();
    pub_socket.extend(ready(b"PUB"));
    before_handshake(&pub_socket, ErrorKind::Protocol, "PUB").await;
    let mut truncated_ready = greeting();
    truncated_ready.extend(frame(4, &[5, b'R', b'E', b'A', b'D', b'Y', 11, b'S']));
    before_handshake(&truncated_ready, ErrorKind::Protocol, "READY").await;
    let mut big_hello = greeting();
    big_hello.extend(ready_dealer());
    big_hello.extend(message(&[b"H", &vec![0u8; 9000], b"\x10\0\0\0"]));
    before_handshake(&big_hello, ErrorKind::FrameTooLarge, "8192").await;
    let mut many_parts = greeting();
    many_parts.extend(ready_dealer());
    many_parts.extend(message(&[b"H", b"", b"", b""]));
    before_handshake(&many_parts, ErrorKind::Protocol, "more than 3 parts").await;
}

/// After the handshake, sends `bytes`; the accepted comm must fail with `expect`.
async fn after_handshake(config: CommConfig, bytes: Vec<u8>, expect: ErrorKind, mentions: &str) {
    let mut l = listener(config).await;
    let mut s = session(&*l).await;
    let mut server = l.accept().await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let err = loop {
        match server.recv().await {
            Ok(_) => continue, // messages before the violation are delivered
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), expect, "{err}");
    assert!(err.to_string().contains(mentions), "{err:?} should mention {mentions:?}");
    assert_serves_good_client(&mut l).await;
}

#[tokio::test]
async fn hostile_frames_after_the_handshake_are_typed_errors() {
    let small = CommConfig { limits: Limits { max_frame_size: 1 << 20, ..Limits::default() }, ..Default::default() };
    let mut oversized = frame(1, b"M");
    oversized.extend(frame(1, b""));
    oversized.push(2);
    oversized.extend_from_slice(&(2u64 << 20).to_be_bytes());
    after_handshake(small, oversized, ErrorKind::FrameTooLarge, "frame 0").await;

    let few = CommConfig { limits: Limits { max_frames: 2, ..Limits::default() }, ..Default::default() };
    after_handshake(few, message(&[b"M", b"", b"a", b"b", b"c"]), ErrorKind::FrameTooLarge, "frames").await;

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (message(&[b"C", b"\x01\x00\x00"]), "'C' message with 2 parts"),
        (message(&[b"Z"]), "unknown message kind"),
        (message(&[b"MM", b""]), "kind part of 2 bytes"),
        (message(&[b"P", b"extra"]), "'P' message"),
        (message(&[b"X", b"", b""]), "'X' message"),
        (message(&[b"H", b"again", b"\x10\0\0\0"]), "second hello"),
        (message(&[b"P", &[0u8; 9000]]), "8192"),
        ([frame(1, b"M"), frame(4, b"\x04PING\0\0")].concat(), "command inside"),
        (frame(4 | 1, b"\x04PING\0\0"), "MORE"),
        (vec![0x80, 0], "reserved bits"),
        (greeting(), "reserved bits"),
        (frame(4, b"\x05READY"), "repeated its ZMTP handshake"),
        (frame(4, b"\x04PING"), "PING length"),
        (frame(4, b""), "empty"),
    ];
    for (bytes, mentions) in cases {
        let kind = if mentions == "8192" { ErrorKind::FrameTooLarge } else { ErrorKind::Protocol };
        after_handshake(CommConfig::default(), bytes, kind, mentions).await;
    }
}

/// Seventeen messages into a window of sixteen, none consumed: the comm fails with a protocol
/// error. Nobody receives here, so the violation is found by a send that waits for credit
/// (the hostile peer never returns any) and reads meanwhile.
#[tokio::test]
async fn a_peer_sending_beyond_its_credit_is_a_protocol_error() {
    let mut l = listener(CommConfig::default()).await;
    let mut s = session(&*l).await;
    let mut server = l.accept().await.unwrap();
    let mut overrun = Vec::new();
    for _ in 0..17 {
        overrun.extend(message(&[b"M", b"x"]));
    }
    s.write_all(&overrun).await.unwrap();
    let mut sent = 0;
    let err = loop {
        match server.send(Message::default()).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(sent, 16, "the hostile peer's window");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("beyond its credit"), "{err}");
    // The messages within the credit are delivered, then the error.
    for _ in 0..16 {
        assert_eq!(&server.recv().await.unwrap().header[..], b"x");
    }
    assert_eq!(server.recv().await.unwrap_err().kind(), ErrorKind::Protocol);
    assert_serves_good_client(&mut l).await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_error_closes() {
    let mut l = listener(CommConfig::default()).await;
    let mut s = session(&*l).await;
    let mut server = l.accept().await.unwrap();
    s.write_all(&frame(4, b"\x04PING\x00\x0aCTX")).await.unwrap();
    // Heartbeats (`P` messages) may come first.
    loop {
        let (flags, body) = read_frame(&mut s).await;
        if flags & 4 != 0 {
            assert_eq!(body, b"\x04PONGCTX", "PONG echoes the context");
            break;
        }
    }
    let mut err = vec![5];
    err.extend_from_slice(b"ERROR");
    err.push(4);
    err.extend_from_slice(b"gone");
    s.write_all(&frame(4, &err)).await.unwrap();
    let e = server.recv().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.to_string().contains("gone"), "{e}");
}

#[tokio::test]
async fn a_peer_stalling_mid_message_is_closed_by_the_progress_timeout() {
    let config = CommConfig { message_timeout: std::time::Duration::from_millis(200), ..Default::default() };
    let mut l = listener(config).await;
    let mut s = session(&*l).await;
    let mut server = l.accept().await.unwrap();
    let mut partial = frame(1, b"M");
    partial.extend(frame(1, b""));
    partial.push(2);
    partial.extend_from_slice(&(1u64 << 30).to_be_bytes());
    partial.extend_from_slice(&[0u8; 1000]);
    s.write_all(&partial).await.unwrap();
    let e = server.recv().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("stalled in the middle of a message"), "{e}");
    drop(s);
    assert_serves_good_client(&mut l).await;
}

/// Nobody receives on the accepted comm, yet its peer's heartbeats must be read: the control
/// task reads what is there once per heartbeat interval. The hand-made peer answers each of
/// the listener's heartbeats with its own and counts them: a listener that presumed it dead
/// would stop sending them and close the connection instead.
#[tokio::test]
async fn a_live_peer_is_not_presumed_dead_while_nobody_receives() {
    let options = courier_zmq::ZmqOptions {
        heartbeat_interval: std::time::Duration::from_millis(25),
        // Generous, so that a slow machine cannot stall the hand-made peer that long.
        peer_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let transport = ZmqTransport::with_options(options);
    let mut l = Registry::new()
        .with(Arc::new(transport))
        .listen_with("zmq://127.0.0.1:0", &CommConfig::default())
        .await
        .unwrap();
    let mut s = session(&*l).await;
    let mut server = l.accept().await.unwrap();
    s.write_all(&message(&[b"M", b"unread"])).await.unwrap();
    // Forty heartbeats are twice the peer timeout.
    let mut heartbeats = 0;
    while heartbeats < 40 {
        let mut parts = Vec::new();
        loop {
            let (flags, body) = read_frame(&mut s).await;
            assert_eq!(flags & 4, 0, "no command is expected");
            parts.push(body);
            if flags & 1 == 0 {
                break;
            }
        }
        assert_eq!(parts, [b"P".to_vec()], "only heartbeats while the peer is alive");
        heartbeats += 1;
        s.write_all(&message(&[b"P"])).await.unwrap();
    }
    assert_eq!(&server.recv().await.unwrap().header[..], b"unread");
    server.send(Message::from_header(&b"still here"[..])).await.unwrap();
}

/// Counts as woken once its task's waker is called.
struct Woken(tokio::sync::Notify);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

/// Regression: a send waiting for credit reads the peer's bytes (credit arrives there) and
/// keeps the messages it decodes for the receive; then it waits for more bytes, holding the read
/// side. The receive waited for that lock, its message already decoded, until the peer sent
/// anything else: up to a heartbeat interval. That was the 0.5–2.8 s stalls of the as_completed
/// benchmark over zmq://. Here the peer sends nothing else (heartbeats an hour apart), and the
/// receive must get the message all the same.
#[tokio::test]
async fn a_message_a_send_decoded_while_waiting_for_credit_reaches_the_receive() {
    use std::future::Future;
    use std::time::Duration;
    let options = courier_zmq::ZmqOptions {
        heartbeat_interval: Duration::from_secs(3600),
        peer_timeout: Duration::from_secs(7200),
        ..Default::default()
    };
    let mut l = Registry::new()
        .with(Arc::new(ZmqTransport::with_options(options)))
        .listen_with("zmq://127.0.0.1:0", &CommConfig::default())
        .await
        .unwrap();
    let mut s = session_with_window(&*l, 2).await;
    let (mut tx, mut rx) = l.accept().await.unwrap().split();
    // The peer's inbox holds 2: a third send waits for credit, reading the peer's bytes.
    for _ in 0..2 {
        tx.send(Message::from_header(&b"x"[..])).await.unwrap();
    }
    let mut third = Box::pin(tx.send(Message::from_header(&b"third"[..])));
    let woken = Arc::new(Woken(tokio::sync::Notify::new()));
    let waker = std::task::Waker::from(woken.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(third.as_mut().poll(&mut cx).is_pending(), "no credit yet");
    s.write_all(&message(&[b"M", b"hello"])).await.unwrap();
    // The bytes wake the send's read; polled again, it decodes the message and waits on.
    woken.0.notified().await;
    assert!(third.as_mut().poll(&mut cx).is_pending(), "still no credit");
    let m = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the receive waited behind the send's read")
        .unwrap();
    assert_eq!(&m.header[..], b"hello");
}
