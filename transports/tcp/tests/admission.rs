//! Who a tcp:// listener lets in, and for how long: credentials, idle and stalled peers, the
//! connection cap, per-address limits, and silent peers that must not hold handshake slots.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::handshake::Hello;
use courier_core::{AccessList, CommConfig, Compression, Credential, ErrorKind, Limits, Listener, Message, Registry};
use courier_tcp::TcpTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn registry(config: CommConfig) -> Registry {
    let mut r = Registry::new().with(Arc::new(TcpTransport::new()));
    r.set_config(config);
    r
}

async fn listener(config: CommConfig) -> Box<dyn Listener> {
    registry(config.clone()).listen_with("tcp://127.0.0.1:0", &config).await.expect("listen")
}

fn cred(s: &str) -> Credential {
    Credential::new(s).unwrap()
}

/// Connects from a chosen local address (127.0.0.x), so tests can play several hosts.
async fn raw_from(source: [u8; 4], port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

fn port(l: &dyn Listener) -> u16 {
    l.contact_address().host_port().unwrap().port
}

async fn echo_once(url: &str, client_config: CommConfig, l: &mut Box<dyn Listener>) -> courier_core::Comm {
    let r = registry(client_config);
    let (client, server) = tokio::join!(r.connect(url), l.accept());
    let (mut client, mut server) = (client.expect("client connects"), server.expect("accepted"));
    let m = Message::new(&b"hi"[..], vec![Bytes::from_static(b"abc")]);
    client.send(m.clone()).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), m);
    server
}

#[tokio::test]
async fn credentials_are_checked_and_grant_roles() {
    let access = AccessList::new().allow(cred("worker-secret"), "worker").allow(cred("client-secret"), "client");
    let mut l = listener(CommConfig { access: Some(access), ..CommConfig::default() }).await;
    let url = l.contact_address().to_string();
    let log = l.rejections().unwrap();
    // No credential: refused with a clear error on the connecting side.
    let e = registry(CommConfig::default()).connect(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("requires a credential"), "{e}");
    // A wrong one: refused by the listener, which says nothing but closes.
    let wrong = CommConfig { credential: Some(cred("guess")), ..CommConfig::default() };
    let e = registry(wrong).connect(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("refused this side's credential"), "{e}");
    log.wait_for(1).await;
    assert!(log.recent().iter().any(|(k, m)| *k == ErrorKind::Unauthorized && !m.contains("guess")));
    // The right ones: accepted, with their roles.
    for (secret, role) in [("worker-secret", "worker"), ("client-secret", "client")] {
        let ok = CommConfig { credential: Some(cred(secret)), ..CommConfig::default() };
        let server = echo_once(&url, ok, &mut l).await;
        assert_eq!(server.peer_info().role.as_deref(), Some(role));
    }
    // A listener without credentials sends no verdict; a client with one is fine.
    let mut open = listener(CommConfig::default()).await;
    let url = open.contact_address().to_string();
    let with = CommConfig { credential: Some(cred("x")), ..CommConfig::default() };
    assert_eq!(echo_once(&url, with, &mut open).await.peer_info().role, None);
}

#[tokio::test]
async fn an_accepted_peer_that_never_sends_is_closed() {
    let config = CommConfig { first_message_timeout: Some(Duration::from_millis(200)), ..CommConfig::default() };
    let mut l = listener(config).await;
    let url = l.contact_address().to_string();
    let r = registry(CommConfig::default());
    let (_idle, server) = tokio::join!(r.connect(&url), l.accept());
    let e = server.unwrap().recv().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("sent no message"), "{e}");
}

#[tokio::test]
async fn a_peer_stalling_inside_a_message_is_closed() {
    let config = CommConfig { message_timeout: Duration::from_millis(200), ..CommConfig::default() };
    let mut l = listener(config).await;
    let mut raw = TcpStream::connect(("127.0.0.1", port(&*l))).await.unwrap();
    raw.write_all(&Hello::new(Limits::default(), Compression::None, "staller").encode()).await.unwrap();
    let mut theirs = [0u8; 8];
    raw.read_exact(&mut theirs).await.unwrap();
    let mut server = l.accept().await.unwrap();
    // Half a message head, then nothing.
    raw.write_all(&[1, 0, 0, 0, 0, 0]).await.unwrap();
    let e = server.recv().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("stalled in the middle of a message"), "{e}");
}

#[tokio::test]
async fn the_connection_cap_refuses_new_peers_cleanly_until_one_leaves() {
    let mut l = listener(CommConfig { max_connections: Some(3), ..CommConfig::default() }).await;
    let url = l.contact_address().to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(echo_once(&url, CommConfig::default(), &mut l).await);
    }
    // The fourth is closed at once: its handshake fails (no retries: 1 ms connect budget).
    let quick = CommConfig { connect_timeout: Duration::from_millis(1), ..CommConfig::default() };
    let e = registry(quick).connect(&url).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ConnectTimeout | ErrorKind::Closed | ErrorKind::Io), "{e}");
    let log = l.rejections().unwrap();
    log.wait_for(1).await;
    assert!(log.recent().iter().any(|(_, m)| m.contains("cap")), "{:?}", log.recent());
    // One leaves (both halves of its comm are dropped): there is room again.
    held.pop();
    let mut server = None;
    for _ in 0..100 {
        let r = registry(CommConfig::default());
        let (c, s) =
            tokio::join!(r.connect(&url), async { tokio::time::timeout(Duration::from_secs(2), l.accept()).await });
        if let (Ok(_c), Ok(Ok(s))) = (c, s) {
            server = Some(s);
            break;
        }
    }
    assert!(server.is_some(), "a slot freed by a departed peer is reused");
}

#[tokio::test]
async fn one_address_cannot_fill_the_handshake_slots_and_silent_peers_hold_none() {
    let config = CommConfig { max_pending_per_address: 8, ..CommConfig::default() };
    let mut l = listener(config).await;
    let p = port(&*l);
    let url = l.contact_address().to_string();
    // 300 silent connections from 127.0.0.2: the first 8 wait (holding no handshake slot),
    // the rest are closed at once.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(raw_from([127, 0, 0, 2], p).await);
    }
    let mut closed = 0;
    for s in silent.iter_mut().skip(8) {
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b).await, Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 292);
    // A good client from 127.0.0.1 is served while they sit there.
    echo_once(&url, CommConfig::default(), &mut l).await;
    drop(silent);
}

/// A raw connection from `source` that completes the handshake and then says nothing.
async fn handshaken_from(source: [u8; 4], port: u16) -> TcpStream {
    let mut s = raw_from(source, port).await;
    s.write_all(&Hello::new(Limits::default(), Compression::None, "idle").encode()).await.unwrap();
    let mut prefix = [0u8; courier_core::handshake::PREFIX_LEN];
    s.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u16::from_le_bytes([prefix[6], prefix[7]]) as usize];
    s.read_exact(&mut body).await.unwrap();
    s
}

/// Regression: ~1,000 idle comms (handshaken, never sending) from one source filled the
/// listener's connection cap and kept every other client out until they timed out. Comms
/// that have not sent a first message count against their address's limit, so the source is
/// refused beyond it while other addresses are served; a comm that becomes active frees its
/// place.
#[tokio::test]
async fn idle_comms_from_one_address_cannot_fill_the_listener() {
    let config = CommConfig { max_pending_per_address: 8, max_connections: Some(20), ..CommConfig::default() };
    let mut l = listener(config).await;
    let (p, url) = (port(&*l), l.contact_address().to_string());
    let (mut idle, mut accepted) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        idle.push(handshaken_from([127, 0, 0, 2], p).await);
        accepted.push(l.accept().await.expect("admitted"));
    }
    // More from the same address are closed at once, whatever they send.
    for _ in 0..30 {
        let mut s = raw_from([127, 0, 0, 2], p).await;
        let _ = s.write_all(&Hello::new(Limits::default(), Compression::None, "more").encode()).await;
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)), "refused");
    }
    let log = l.rejections().unwrap();
    log.wait_for(1).await;
    assert!(log.recent().iter().any(|(_, m)| m.contains("not yet active")), "{:?}", log.recent());
    // Another address is served meanwhile.
    echo_once(&url, CommConfig::default(), &mut l).await;
    // One idle comm sends its first message: the address has room for one more.
    let mut active = idle.remove(0);
    let mut first = Vec::new();
    first.extend_from_slice(&0u32.to_le_bytes());
    first.extend_from_slice(&0u32.to_le_bytes());
    first.extend_from_slice(&2u64.to_le_bytes());
    first.extend_from_slice(b"hi");
    active.write_all(&first).await.unwrap();
    let mut server = accepted.remove(0);
    assert_eq!(&server.recv().await.unwrap().header[..], b"hi");
    let _again = handshaken_from([127, 0, 0, 2], p).await;
    l.accept().await.expect("a place freed by a comm that became active is reused");
}
