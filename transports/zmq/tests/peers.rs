//! zmq:// peers that die, go silent, or speak another language.

use std::sync::Arc;

use futures::FutureExt;

use bytes::Bytes;
use courier_core::handshake::Hello;
use courier_core::{Comm, CommConfig, Compression, ErrorKind, Limits, Listener, Message, Registry};
use courier_zmq::ZmqTransport;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn registry() -> Registry {
    Registry::new().with(Arc::new(ZmqTransport::new()))
}

async fn listener() -> Box<dyn Listener> {
    registry().listen("zmq://127.0.0.1:0").await.unwrap()
}

fn tcp_endpoint(l: &dyn Listener) -> String {
    format!("tcp://{}", l.contact_address().location())
}

/// A raw DEALER that performs the Courier handshake by hand and can then vanish.
async fn raw_peer(l: &dyn Listener) -> DealerSocket {
    let mut s = DealerSocket::new();
    s.connect(&tcp_endpoint(l)).await.unwrap();
    let hello = Hello::new(Limits::default(), Compression::None, "raw").encode();
    let window = Bytes::copy_from_slice(&16u32.to_le_bytes());
    s.send(ZmqMessage::try_from(vec![Bytes::from_static(b"H"), hello, window]).unwrap()).await.unwrap();
    let reply = s.recv().await.unwrap().into_vec();
    assert_eq!(&reply[0][..], b"H");
    s
}

/// A client comm connected to `l` with `config`, and the listener's end: `(client, server)`.
async fn pair_with(l: &mut Box<dyn Listener>, config: &CommConfig) -> (Comm, Comm) {
    let url = l.contact_address().to_string();
    let r = registry();
    let (c, s) = tokio::join!(r.connect_with(&url, config), l.accept());
    (c.unwrap(), s.unwrap())
}

async fn pair(l: &mut Box<dyn Listener>) -> (Comm, Comm) {
    pair_with(l, &CommConfig::default()).await
}

async fn assert_still_serves(l: &mut Box<dyn Listener>) {
    let (mut c, mut s) = pair(l).await;
    c.send(Message::from_header(&b"next"[..])).await.unwrap();
    let m = s.recv().await.unwrap();
    s.send(m).await.unwrap();
    assert_eq!(&c.recv().await.unwrap().header[..], b"next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abruptly_dropped_peer_is_closed_and_the_listener_serves_on() {
    let mut l = listener().await;
    let peer = raw_peer(&*l).await;
    let mut server = l.accept().await.unwrap();
    drop(peer); // no close message: the socket just goes away
    let err = server.recv().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    // A FIN ("closed") or, when the dropped socket had unread data, an RST ("reset").
    let text = err.to_string();
    assert!(
        text.contains("closed the connection") || text.contains("reset the connection"),
        "seen as a disconnect, not a timeout: {err}"
    );
    assert_eq!(server.send(Message::default()).await.unwrap_err().kind(), ErrorKind::Closed);
    assert_still_serves(&mut l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_presumed_dead() {
    let mut l = listener().await;
    // Connected but frozen: never heartbeats, never closes (a hung process).
    let _frozen = raw_peer(&*l).await;
    let mut server = l.accept().await.unwrap();
    let err = server.recv().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(err.to_string().contains("presumed dead"), "{err}");
    assert_still_serves(&mut l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sees_a_dead_server() {
    let mut l = listener().await;
    let (mut client, server) = pair(&mut l).await;
    // The whole server side goes away: comm and listener (its ROUTER socket).
    drop(server);
    l.close().await;
    drop(l);
    let err = client.recv().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_version_mismatch_are_refused_with_typed_errors() {
    let mut l = listener().await;
    let log = l.rejections().unwrap();
    for (parts, expect) in [
        (vec![Bytes::from_static(b"garbage!")], "kind"),
        (vec![Bytes::from_static(b"M"), Bytes::from_static(b"h")], "before its hello"),
        (
            vec![Bytes::from_static(b"H"), Bytes::from_static(b"GET / HTTP/1.1"), Bytes::from_static(b"\x10\0\0\0")],
            "magic",
        ),
        (
            {
                let mut h = Hello::new(Limits::default(), Compression::None, "").encode().to_vec();
                h[4] = 2;
                vec![Bytes::from_static(b"H"), Bytes::from(h), Bytes::from_static(b"\x10\0\0\0")]
            },
            "peer speaks version 2, this side speaks version 1",
        ),
    ] {
        let before = log.total();
        let mut s = DealerSocket::new();
        s.connect(&tcp_endpoint(&*l)).await.unwrap();
        s.send(ZmqMessage::try_from(parts).unwrap()).await.unwrap();
        let reply = s.recv().await.unwrap().into_vec();
        assert_eq!(&reply[0][..], b"X", "the peer is told why");
        log.wait_for(before + 1).await;
        let (kind, msg) = log.recent().pop().unwrap();
        assert_eq!(kind, ErrorKind::Protocol, "{msg}");
        assert!(msg.contains(expect), "{msg:?} should mention {expect:?}");
    }
    assert_still_serves(&mut l).await;
}

/// Sends `frame` 16 times (the listener's default window) and checks that the next send is
/// pending at once: nothing was consumed, so no credit can come.
async fn use_up_the_listeners_window(client: &mut Comm, frame: &Bytes) {
    for _ in 0..16 {
        client.send(Message::new(Bytes::new(), vec![frame.clone()])).await.unwrap();
    }
    let blocked = client.send(Message::new(Bytes::new(), vec![frame.clone()])).now_or_never();
    assert!(blocked.is_none(), "the sender must wait for credit, not queue without bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_slows_its_sender() {
    let mut l = listener().await;
    let config = CommConfig { queue_capacity: 4, ..Default::default() };
    let (mut client, mut server) = pair_with(&mut l, &config).await;
    // The listener's inbox holds 16 (its default config): the 17th send waits for credit,
    // whatever the client's own window.
    let frame = Bytes::from(vec![1u8; 1 << 20]);
    use_up_the_listeners_window(&mut client, &frame).await;
    for _ in 0..16 {
        server.recv().await.unwrap();
    }
    client.send(Message::new(Bytes::new(), vec![frame])).await.expect("credit returned");
    assert_eq!(server.recv().await.unwrap().frames[0].len(), 1 << 20);
}

/// Large messages return credit before half the window is consumed: after 4 MiB here, so a
/// sender of 1 MiB messages gets credit back after four of its sixteen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_return_credit_early() {
    let mut l = listener().await;
    let (mut client, mut server) = pair(&mut l).await;
    let frame = Bytes::from(vec![2u8; 1 << 20]);
    use_up_the_listeners_window(&mut client, &frame).await;
    for _ in 0..4 {
        server.recv().await.unwrap();
    }
    // Only a hang guard: without early credit this send would wait for ever.
    let sent =
        tokio::time::timeout(std::time::Duration::from_secs(60), client.send(Message::new(Bytes::new(), vec![frame])));
    sent.await.expect("credit after 4 MiB consumed").unwrap();
}

/// A libzmq client (pyzmq) speaks the protocol from PROTOCOL.md to a Courier listener. CI
/// provides pyzmq in a virtualenv (COURIER_PYTHON); there the test is never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_client_interoperates() {
    let python = std::env::var("COURIER_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pyzmq = std::process::Command::new(&python).args(["-c", "import zmq"]).status().is_ok_and(|s| s.success());
    if !has_pyzmq {
        assert!(std::env::var_os("CI").is_none(), "CI must provide pyzmq (set COURIER_PYTHON)");
        eprintln!("skipping: {python} has no pyzmq; set COURIER_PYTHON to a python with pyzmq");
        return;
    }
    let mut l = listener().await;
    let endpoint = tcp_endpoint(&*l);
    let server = tokio::spawn(async move {
        let mut comm = l.accept().await.unwrap();
        let name = comm.peer_info().name.clone();
        let m = comm.recv().await.unwrap();
        comm.send(m.clone()).await.unwrap();
        let end = comm.recv().await.unwrap_err();
        (name, m, end)
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop_pyzmq.py");
    let out = tokio::process::Command::new(&python).arg(script).arg(&endpoint).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pyzmq client failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let (name, m, end) = server.await.unwrap();
    assert_eq!(name, "pyzmq-interop");
    assert_eq!(&m.header[..], b"from python");
    assert_eq!(m.frames.len(), 1);
    assert_eq!(m.frames[0].len(), 1 << 20);
    assert_eq!(end.kind(), ErrorKind::Closed, "python's close message ends the comm: {end}");
}

/// Deviations from tcp:// documented in PROTOCOL.md, section 6, each pinned by a test.
mod deviations {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_ends_are_addressed_by_their_tcp_endpoints() {
        let mut l = listener().await;
        let (c, s) = pair(&mut l).await;
        assert_eq!(c.local_address(), s.peer_address());
        assert_eq!(c.peer_address(), s.local_address());
        assert!(c.local_address().host_port().is_ok(), "{}", c.local_address());
        assert_eq!(c.peer_address(), l.contact_address());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_either_half_closes_the_comm() {
        let mut l = listener().await;
        let (client, mut server) = pair(&mut l).await;
        let (_tx, rx) = client.split();
        drop(rx); // nobody would return the server's credit: the comm closes
        assert_eq!(server.recv().await.unwrap_err().kind(), ErrorKind::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_compression_is_announced() {
        let l = listener().await;
        let mut s = DealerSocket::new();
        s.connect(&tcp_endpoint(&*l)).await.unwrap();
        let hello = Hello::new(Limits::default(), Compression::AUTO, "raw").encode();
        let window = Bytes::copy_from_slice(&16u32.to_le_bytes());
        s.send(ZmqMessage::try_from(vec![Bytes::from_static(b"H"), hello, window]).unwrap()).await.unwrap();
        let reply = s.recv().await.unwrap().into_vec();
        let theirs = Hello::decode(&mut bytes::BytesMut::from(&reply[1][..])).unwrap().unwrap();
        assert_eq!(theirs.compressions, 0, "zmq:// frames are always raw");
    }
}

/// Regression (found by 20 repeated runs with the `zeromq` crate): sends racing a vanished
/// peer must fail with `Closed`, whatever the socket layer calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_racing_a_vanished_peer_fail_with_closed() {
    for _ in 0..20 {
        let mut l = listener().await;
        let peer = raw_peer(&*l).await;
        let mut server = l.accept().await.unwrap();
        drop(peer);
        loop {
            match server.send(Message::from_header(&b"x"[..])).await {
                Ok(()) => tokio::task::yield_now().await,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
                    break;
                }
            }
        }
        assert_eq!(server.recv().await.unwrap_err().kind(), ErrorKind::Closed);
    }
}

/// A send out of credit reads the connection meanwhile and keeps what it decodes for the
/// application. When those messages fill the receive budget, it must let go of the read side:
/// the application's receive is what frees the budget (it used to wait for the budget holding
/// the read side, and the receive waited for the read side for ever). Current-thread runtime
/// with the clock paused once connected: the send runs until it can go no further before the
/// receive starts, and a receive that cannot proceed lets the clock run out its guard at once.
#[tokio::test(flavor = "current_thread")]
async fn a_send_waiting_for_credit_leaves_the_read_side_to_a_receive_when_the_budget_is_full() {
    // The listener's end (`a`) may hold 300 KiB of messages; the client's end (`b`) has a
    // window of 2 messages, so `a`'s third send waits for credit.
    let budget = courier_core::BudgetConfig { per_connection: Some(300 << 10), per_listener: None };
    let config = CommConfig { budget, ..Default::default() };
    let mut l = registry().listen_with("zmq://127.0.0.1:0", &config).await.unwrap();
    let small_window = CommConfig { queue_capacity: 2, ..Default::default() };
    let (mut b, mut a) = pair_with(&mut l, &small_window).await;
    // Three 120 KiB messages for `a`: the third does not fit its budget beside the first two.
    for i in 0..3u8 {
        b.send(Message::new(Bytes::from(vec![i]), vec![Bytes::from(vec![i; 120 << 10])])).await.unwrap();
    }
    for _ in 0..2 {
        a.send(Message::from_header(&b"up"[..])).await.unwrap();
    }
    let (mut a_send, mut a_recv) = a.split();
    let blocked = tokio::spawn(async move {
        a_send.send(Message::from_header(&b"third"[..])).await.unwrap();
        a_send
    });
    tokio::time::pause();
    // Returns once every task waits: the send has read what it could and found the budget full.
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let first = tokio::time::timeout(std::time::Duration::from_millis(500), a_recv.recv()).await;
    let first = first.expect("the receive got the read side").unwrap();
    assert_eq!(&first.header[..], &[0]);
    tokio::time::resume();
    // `b` takes what `a` sent and returns credit: the waiting send goes out.
    for want in [&b"up"[..], b"up", b"third"] {
        assert_eq!(&b.recv().await.unwrap().header[..], want);
    }
    let _a_send = blocked.await.unwrap(); // dropping a half would close the comm
    for i in 1..3u8 {
        let m = a_recv.recv().await.unwrap();
        assert_eq!((&m.header[..], m.frames[0].len()), (&[i][..], 120 << 10));
    }
}
