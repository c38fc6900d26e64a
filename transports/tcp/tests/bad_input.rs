//! Hostile and broken peers against a tcp:// listener. Each case gets a typed error on its
//! own connection only; the listener keeps serving a good client afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_core::handshake::Hello;
use courier_core::{CommConfig, Compression, ErrorKind, Limits, Listener, Message, Registry};
use courier_tcp::TcpTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn registry() -> Registry {
    Registry::new().with(Arc::new(TcpTransport::new()))
}

async fn listener(config: CommConfig) -> Box<dyn Listener> {
    registry().listen_with("tcp://127.0.0.1:0", &config).await.expect("listen")
}

fn port(l: &dyn Listener) -> u16 {
    l.contact_address().host_port().unwrap().port
}

/// A good client still gets a full round trip.
async fn assert_serves_good_client(l: &mut Box<dyn Listener>) {
    let url = l.contact_address().to_string();
    let (client, server) = {
        let r = registry();
        tokio::join!(r.connect(&url), l.accept())
    };
    let (mut client, mut server) = (client.expect("good client connects"), server.expect("listener still accepts"));
    let m = Message::new(&b"still here"[..], vec![Bytes::from(vec![7u8; 100_000])]);
    client.send(m.clone()).await.unwrap();
    let got = server.recv().await.unwrap();
    server.send(got).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), m);
}

/// Connects raw, sends `bytes`, and reads until the server closes the connection.
async fn raw_session(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may close before reading everything: a reset here is fine.
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    got
}

async fn handshake_rejection(bytes: &[u8], expect: ErrorKind, text: &str) {
    let mut l = listener(CommConfig::default()).await;
    let log = l.rejections().expect("tcp listeners log rejections");
    let reply = raw_session(port(&*l), bytes).await;
    // The server spoke first and correctly, then hung up on us.
    assert_eq!(&reply[..4], b"CRWR");
    log.wait_for(1).await;
    let (kind, message) = log.recent().pop().unwrap();
    assert_eq!(kind, expect, "{message}");
    assert!(message.contains(text), "{message:?} should mention {text:?}");
    assert_serves_good_client(&mut l).await;
}

#[tokio::test]
async fn random_garbage() {
    let mut rng = fastrand::Rng::with_seed(42);
    let garbage: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
    handshake_rejection(&garbage, ErrorKind::Protocol, "magic").await;
}

#[tokio::test]
async fn http_request() {
    handshake_rejection(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorKind::Protocol, "magic").await;
}

#[tokio::test]
async fn wrong_magic() {
    let mut hello = BytesMut::from(&Hello::new(Limits::default(), Compression::None, "").encode()[..]);
    hello[0] = b'X';
    handshake_rejection(&hello, ErrorKind::Protocol, "magic").await;
}

#[tokio::test]
async fn wrong_version() {
    let mut hello = BytesMut::from(&Hello::new(Limits::default(), Compression::None, "").encode()[..]);
    hello[4] = 9;
    hello[5] = 0;
    handshake_rejection(&hello, ErrorKind::Protocol, "peer speaks version 9, this side speaks version 1").await;
}

#[tokio::test]
async fn peer_that_never_handshakes() {
    let config = CommConfig { handshake_timeout: Duration::from_millis(300), ..CommConfig::default() };
    let mut l = listener(config).await;
    let log = l.rejections().unwrap();
    // Silent peers hold connections open; they must neither reach accept nor block others.
    let silent = silent_peers(port(&*l)).await;
    assert_serves_good_client(&mut l).await;
    log.wait_for(silent.len() as u64).await;
    assert!(log.recent().iter().all(|(k, _)| *k == ErrorKind::HandshakeTimeout), "{:?}", log.recent());
    // The listener handed none of them to accept: the next accept is the next good client.
    assert_serves_good_client(&mut l).await;
}

async fn silent_peers(port: u16) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    v
}

/// Hostile bytes after a good handshake: the shared kit's cases (limits, codecs, budgets,
/// stalls, garbage), each a typed error on its own comm while the listener serves on.
#[tokio::test]
async fn hostile_frames_after_the_handshake() {
    courier_core::testkit::hostile_stream_peers(&registry(), "tcp://127.0.0.1:0", |addr| async move {
        TcpStream::connect(addr.location()).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn malformed_addresses_are_typed_errors() {
    let r = registry();
    for bad in ["tcp://", "tcp://localhost", "tcp://[::1", "tcp://1.2.3.4:70000", "tcp://a b:1", "nonsense"] {
        let e = r.connect(bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}: {e}");
        let e = r.listen(bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}: {e}");
    }
    let e = r.connect("udp://127.0.0.1:1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedScheme);
    assert!(e.to_string().contains("tcp"), "lists known schemes: {e}");
    let e = r.connect("tcp://0.0.0.0:0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidAddress);
}

#[tokio::test]
async fn binding_a_taken_port_is_address_in_use() {
    let l = listener(CommConfig::default()).await;
    let taken = l.contact_address().to_string();
    // SO_REUSEADDR does not allow two listeners on one port.
    let e = registry().listen(&taken).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddressInUse, "{e}");
}

#[tokio::test]
async fn wildcard_listener_gives_concrete_contact() {
    let mut l = registry().listen("tcp://0.0.0.0:0").await.unwrap();
    assert_eq!(l.listen_address().to_string(), "tcp://0.0.0.0:0");
    let hp = l.contact_address().host_port().unwrap();
    assert!(!hp.is_wildcard() && hp.port != 0, "{}", l.contact_address());
    assert_serves_good_client(&mut l).await;
}

#[tokio::test]
async fn compressed_messages_round_trip() {
    // Loopback defaults to no compression; asking for auto on both sides compresses zeros.
    let config = CommConfig { compression: Some(Compression::AUTO), ..CommConfig::default() };
    let mut l = listener(config.clone()).await;
    let url = l.contact_address().to_string();
    let (client, server) = {
        let r = registry();
        tokio::join!(r.connect_with(&url, &config), l.accept())
    };
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    let zeros = Message::new(Bytes::new(), vec![Bytes::from(vec![0u8; 8 << 20])]);
    client.send(zeros.clone()).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), zeros);
}
