//! The transport conformance kit: generic checks every transport must pass.
//!
//! Each check is an `async fn(&Harness)` that panics with a clear message on failure. A
//! transport runs them all from its own `tests/` through a [`Registry`] (the dyn path users
//! take) with one line:
//!
//! ```text
//! courier_core::conformance_tests!(my_registry(), "myscheme://127.0.0.1:0");
//! ```
//!
//! which expands to one `#[test]` per check (each on its own two-thread runtime, with a
//! timeout so that a hang is a failure). The listen URL is used as is for every listener, so
//! it must ask for a fresh address each time (port 0, an empty inproc name, a unique path).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Address, Comm, CommConfig, ErrorKind, Listener, Message, Registry};

/// How long any single check may take before it counts as a hang.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// What the checks run against: a registry and a listen URL.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The registry holding the transport under test.
    pub registry: Registry,
    /// A URL that listens on a fresh address each time it is used.
    pub listen_url: String,
}

impl Harness {
    /// A harness for `registry` and `listen_url`.
    pub fn new(registry: Registry, listen_url: impl Into<String>) -> Self {
        Harness { registry, listen_url: listen_url.into() }
    }

    /// A fresh listener.
    pub async fn listen(&self) -> Box<dyn Listener> {
        self.registry.listen(&self.listen_url).await.unwrap_or_else(|e| panic!("listen on {}: {e}", self.listen_url))
    }

    /// A connected pair `(client, server)` and the listener that accepted it.
    pub async fn pair(&self) -> (Comm, Comm, Box<dyn Listener>) {
        let mut listener = self.listen().await;
        let url = listener.contact_address().to_string();
        let (client, server) = tokio::join!(self.registry.connect(&url), listener.accept());
        let client = client.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let server = server.unwrap_or_else(|e| panic!("accept on {url}: {e}"));
        (client, server, listener)
    }
}

/// Runs a check on a fresh two-thread runtime with [`CHECK_TIMEOUT`]. Used by
/// [`conformance_tests!`](crate::conformance_tests).
pub fn run<F, Fut>(harness: Harness, check: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance check");
    rt.block_on(async {
        tokio::time::timeout(CHECK_TIMEOUT, check(harness)).await.expect("conformance check hung (timed out)");
    });
}

/// Expands to one `#[test]` per conformance check. `$registry` is an expression building
/// the [`Registry`]; `$url` the listen URL. The caller needs no tokio dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($registry:expr, $url:expr) => {
        $crate::conformance_tests!(@each $registry, $url;
            ping_pong, ordered_writes, frame_shapes, huge_frame, many_clients, full_duplex,
            implicit_close, explicit_close, cancelled_recv_loses_nothing, connect_to_nothing,
            distinct_contact_addresses, addresses_agree, send_after_close_fails, oversized_send_is_refused_locally,
            local_values_are_carried_or_refused);
    };
    (@each $registry:expr, $url:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testkit::run($crate::testkit::Harness::new($registry, $url), |h| async move {
                    $crate::testkit::$check(&h).await
                });
            }
        )*
    };
}

/// Deterministic, position-dependent bytes: corruption or reordering anywhere shows.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn msg(header: &str, frames: Vec<Bytes>) -> Message {
    Message::new(Bytes::copy_from_slice(header.as_bytes()), frames)
}

/// A message goes there and back, 100 times, intact.
pub async fn ping_pong(h: &Harness) {
    let (mut client, mut server, _l) = h.pair().await;
    let echo = tokio::spawn(async move {
        while let Ok(m) = server.recv().await {
            if server.send(m).await.is_err() {
                break;
            }
        }
    });
    for i in 0..100 {
        let m = msg(&format!("ping {i}"), vec![pattern(i * 37, i as u64)]);
        client.send(m.clone()).await.expect("send ping");
        assert_eq!(client.recv().await.expect("receive pong"), m, "round trip {i}");
    }
    client.close().await.expect("close");
    echo.await.expect("echo task");
}

/// Two sends before any receive arrive in order.
pub async fn ordered_writes(h: &Harness) {
    let (mut client, mut server, _l) = h.pair().await;
    client.send(msg("first", vec![pattern(10, 1)])).await.expect("send 1");
    client.send(msg("second", vec![pattern(20, 2)])).await.expect("send 2");
    assert_eq!(&server.recv().await.expect("recv 1").header[..], b"first");
    assert_eq!(&server.recv().await.expect("recv 2").header[..], b"second");
}

/// 0 frames, 1 empty frame, an empty header and 1,000 frames of mixed sizes arrive identical.
pub async fn frame_shapes(h: &Harness) {
    let (client, mut server, _l) = h.pair().await;
    let many: Vec<Bytes> = (0..1000).map(|i| pattern((i * 131) % 5000, i as u64)).collect();
    let messages = vec![
        msg("no frames", vec![]),
        msg("one empty frame", vec![Bytes::new()]),
        msg("", vec![pattern(100, 3)]),
        msg("", vec![]),
        msg("thousand", many),
        msg("mixed", vec![Bytes::new(), pattern(200_000, 4), Bytes::new(), pattern(3, 5)]),
    ];
    let (mut tx, _rx) = client.split();
    let sent = messages.clone();
    let sender = tokio::spawn(async move {
        for m in sent {
            tx.send(m).await.expect("send");
        }
        tx
    });
    for (i, m) in messages.iter().enumerate() {
        let got = server.recv().await.expect("recv");
        assert_eq!(got.frames.len(), m.frames.len(), "message {i}: frame count");
        assert_eq!(&got, m, "message {i} differs");
    }
    drop(sender.await.expect("sender"));
}

/// One 256 MiB frame arrives byte-identical.
pub async fn huge_frame(h: &Harness) {
    let (client, mut server, _l) = h.pair().await;
    let big = pattern(256 << 20, 256);
    let m = msg("huge", vec![big.clone()]);
    let (mut tx, _rx) = client.split();
    let sender = tokio::spawn(async move {
        tx.send(m).await.expect("send 256 MiB");
        tx
    });
    let got = server.recv().await.expect("receive 256 MiB");
    assert_eq!(got.frames.len(), 1);
    assert!(got.frames[0] == big, "256 MiB frame corrupted");
    drop(sender.await.expect("sender"));
}

/// 50 clients connect to one listener at once and each gets its own echo.
pub async fn many_clients(h: &Harness) {
    const N: usize = 50;
    let mut listener = h.listen().await;
    let url = listener.contact_address().to_string();
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..N {
            let mut comm = listener.accept().await.expect("accept");
            echoes.push(tokio::spawn(async move {
                let m = comm.recv().await.expect("server recv");
                comm.send(m).await.expect("server send");
                let _ = comm.recv().await;
            }));
        }
        for e in echoes {
            e.await.expect("echo task");
        }
    });
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let registry = h.registry.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = registry.connect(&url).await.expect("connect");
                let m = msg(&format!("client {i}"), vec![pattern(i * 1000, i as u64)]);
                c.send(m.clone()).await.expect("send");
                assert_eq!(c.recv().await.expect("recv"), m, "client {i} got another's message");
                c.close().await.expect("close");
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client task");
    }
    server.await.expect("server task");
}

/// Both sides send 64 MiB at the same time; neither deadlocks.
pub async fn full_duplex(h: &Harness) {
    let (client, server, _l) = h.pair().await;
    let (mut ctx, mut crx) = client.split();
    let (mut stx, mut srx) = server.split();
    let a = pattern(64 << 20, 1);
    let b = pattern(64 << 20, 2);
    let (ma, mb) = (msg("a", vec![a.clone()]), msg("b", vec![b.clone()]));
    let s1 = tokio::spawn(async move { ctx.send(ma).await.map(|()| ctx) });
    let s2 = tokio::spawn(async move { stx.send(mb).await.map(|()| stx) });
    let (got_b, got_a) = tokio::join!(crx.recv(), srx.recv());
    assert!(got_a.expect("server recv").frames[0] == a, "client→server data corrupted");
    assert!(got_b.expect("client recv").frames[0] == b, "server→client data corrupted");
    s1.await.expect("task").expect("client send");
    s2.await.expect("task").expect("server send");
}

/// The server drops the comm at once: the client's receive is `Closed`.
pub async fn implicit_close(h: &Harness) {
    let (mut client, server, _l) = h.pair().await;
    drop(server);
    let err = client.recv().await.expect_err("receive from a dropped peer must fail");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    // Sending to a dropped peer fails with Closed too, possibly after a few buffered sends.
    let mut last = None;
    for _ in 0..1000 {
        if let Err(e) = client.send(msg("x", vec![pattern(64 << 10, 0)])).await {
            last = Some(e);
            break;
        }
        tokio::task::yield_now().await;
    }
    let err = last.expect("sends to a dropped peer never failed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// Explicit close with receives pending on both ends: both end with `Closed`; closing twice
/// is fine.
pub async fn explicit_close(h: &Harness) {
    let (client, server, _l) = h.pair().await;
    let (mut ctx, mut crx) = client.split();
    let (mut stx, mut srx) = server.split();
    let client_recv = tokio::spawn(async move { crx.recv().await });
    let server_recv = tokio::spawn(async move { srx.recv().await });
    tokio::task::yield_now().await;
    ctx.close().await.expect("close");
    ctx.close().await.expect("second close");
    let e = client_recv.await.expect("task").expect_err("pending local receive must end");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    let e = server_recv.await.expect("task").expect_err("pending remote receive must end");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    stx.close().await.expect("close the other side");
    stx.close().await.expect("close the other side twice");
}

/// Receives cancelled at arbitrary points (mid-frame included) lose and corrupt nothing.
pub async fn cancelled_recv_loses_nothing(h: &Harness) {
    let (client, mut server, _l) = h.pair().await;
    let messages: Vec<Message> = (0..6)
        .map(|i| msg(&format!("m{i}"), vec![pattern(if i % 2 == 0 { 8 << 20 } else { 100 }, i), pattern(1000, i + 10)]))
        .collect();
    let (mut tx, _rx) = client.split();
    let sent = messages.clone();
    let sender = tokio::spawn(async move {
        for m in sent {
            tx.send(m).await.expect("send");
        }
        tx
    });
    let mut cancelled = 0u32;
    for (i, m) in messages.iter().enumerate() {
        let got = loop {
            match tokio::time::timeout(Duration::from_micros(200), server.recv()).await {
                Ok(r) => break r.expect("recv"),
                Err(_) => cancelled += 1,
            }
        };
        assert_eq!(&got, m, "message {i} lost or corrupted after {cancelled} cancelled receives");
    }
    drop(sender.await.expect("sender"));
}

/// Connecting where nothing listens, with a 0.2 s budget, fails with `ConnectTimeout` or
/// `ConnectionRefused` within 1 s.
///
/// The address is one a listener just gave up. Another process (tests run in parallel) may
/// take that port in between and accept; that says nothing about the transport, so the check
/// is repeated with a fresh address, up to 5 times, before it counts as a failure.
pub async fn connect_to_nothing(h: &Harness) {
    for attempt in 1..=5 {
        let mut listener = h.listen().await;
        let url = listener.contact_address().to_string();
        listener.close().await;
        drop(listener);
        let config = CommConfig { connect_timeout: Duration::from_millis(200), ..h.registry.config().clone() };
        let start = Instant::now();
        let err = match h.registry.connect_with(&url, &config).await {
            Ok(comm) if attempt < 5 => {
                drop(comm); // someone else's listener took the freed address
                continue;
            }
            Ok(comm) => panic!("connected to a closed listener 5 times: {comm:?}"),
            Err(e) => e,
        };
        let took = start.elapsed();
        assert!(
            matches!(err.kind(), ErrorKind::ConnectTimeout | ErrorKind::ConnectionRefused),
            "wrong kind for connecting to nothing: {err}"
        );
        assert!(took < Duration::from_secs(1), "connect budget 0.2 s, took {took:?}");
        return;
    }
}

/// 100 listeners on the listen URL get 100 distinct, concrete contact addresses.
pub async fn distinct_contact_addresses(h: &Harness) {
    let requested = Address::parse(&h.listen_url).expect("listen url");
    let mut listeners = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let l = h.listen().await;
        assert_eq!(l.listen_address(), &requested, "listen address must be the one asked for");
        assert_concrete(l.contact_address());
        assert!(seen.insert(l.contact_address().clone()), "duplicate contact address {}", l.contact_address());
        listeners.push(l);
    }
    for mut l in listeners {
        l.close().await;
    }
}

fn assert_concrete(a: &Address) {
    if let Ok(hp) = a.host_port() {
        assert_ne!(hp.port, 0, "contact address {a} has port 0");
        assert!(!hp.is_wildcard(), "contact address {a} is a wildcard");
    } else {
        assert!(!a.location().is_empty(), "contact address {a} is empty");
    }
}

/// Each end's local address is the other's peer address; names cross in the handshake.
pub async fn addresses_agree(h: &Harness) {
    let mut listener = h.listen().await;
    let url = listener.contact_address().to_string();
    let config = CommConfig { name: "conformance-client".into(), ..h.registry.config().clone() };
    let (client, server) = tokio::join!(h.registry.connect_with(&url, &config), listener.accept());
    let (client, server) = (client.expect("connect"), server.expect("accept"));
    assert_eq!(client.local_address(), server.peer_address(), "client local vs server peer");
    assert_eq!(client.peer_address(), server.local_address(), "client peer vs server local");
    assert_eq!(client.peer_address().scheme(), listener.contact_address().scheme());
    assert_concrete(client.local_address());
    assert_concrete(server.local_address());
    assert_eq!(server.peer_info().name, "conformance-client");
}

/// After `close`, sending fails with `Closed`.
pub async fn send_after_close_fails(h: &Harness) {
    let (mut client, _server, _l) = h.pair().await;
    client.close().await.expect("close");
    let err = client.send(msg("late", vec![])).await.expect_err("send after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = client.recv().await.expect_err("recv after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// A message over the peer's limits is refused with `FrameTooLarge` before it is sent, and
/// the comm stays usable.
pub async fn oversized_send_is_refused_locally(h: &Harness) {
    let mut listener = h.listen().await;
    let url = listener.contact_address().to_string();
    let small = crate::Limits { max_frame_size: 1 << 20, ..crate::Limits::default() };
    let config = CommConfig { limits: small, ..h.registry.config().clone() };
    // The client accepts at most 1 MiB frames; the server must not send it 2 MiB.
    let (client, server) = tokio::join!(h.registry.connect_with(&url, &config), listener.accept());
    let (mut client, mut server) = (client.expect("connect"), server.expect("accept"));
    let err = server.send(msg("big", vec![pattern(2 << 20, 9)])).await.expect_err("oversized send");
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge, "{err}");
    let ok = msg("fits", vec![pattern(1 << 20, 9)]);
    // 1 MiB may exceed the socket buffer: send and receive at once.
    let (sent, got) = tokio::join!(server.send(ok.clone()), client.recv());
    sent.expect("a fitting message after a refused one");
    assert_eq!(got.expect("recv"), ok);
}

/// A [local value](Message::from_local) either arrives as the very value (a comm that says it
/// [carries them](Comm::carries_local_values)) or is refused with `Serialization` before
/// anything is sent, the comm staying usable: it never reaches a wire as an empty message.
pub async fn local_values_are_carried_or_refused(h: &Harness) {
    let (mut client, mut server, _l) = h.pair().await;
    let value = vec![String::from("a typed value"), String::from("not bytes")];
    let sent = client.send(Message::from_local(value.clone())).await;
    if client.carries_local_values() {
        sent.expect("a comm that carries local values sends one");
        let got = server.recv().await.expect("receive the local value");
        assert_eq!(crate::into_value::<Vec<String>>(got).expect("the same type"), value);
    } else {
        let err = sent.expect_err("a local value on a comm that does not carry them");
        assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    }
    let ok = crate::to_message(&value).expect("serialize");
    client.send(ok.clone()).await.expect("a serialized message after the local value");
    let got = server.recv().await.expect("receive");
    assert_eq!(crate::into_value::<Vec<String>>(got).expect("decode"), value);
}

/// Hostile bytes after a good handshake, for stream transports (tcp://, unix://, tls:// and
/// plugins that use [`crate::stream`]): each case opens a raw byte stream with `open_raw`,
/// performs the hello by hand, sends the case's bytes and asserts that the accepted comm
/// fails with the expected typed error, and that the listener still serves a good client.
///
/// The cases: a frame over the limit, too many frames, a header length of 2^64 − 1, a
/// truncated message then EOF, an unknown codec, reserved flag bits, a Snappy frame the
/// receiver did not announce, a corrupt Snappy frame it did announce, a message over the
/// connection's budget, 4 GiB announced then a stall (progress timeout), and random garbage.
pub async fn hostile_stream_peers<S, F, Fut>(registry: &Registry, listen_url: &str, open_raw: F)
where
    F: Fn(Address) -> Fut,
    Fut: Future<Output = S>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use crate::budget::BudgetConfig;
    use crate::compression::Compression;
    use crate::limits::Limits;

    fn head(nframes: u32, flags: u32, header_len: u64, frames: &[(u64, u8)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&nframes.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&header_len.to_le_bytes());
        for &(len, codec) in frames {
            b.extend_from_slice(&len.to_le_bytes());
            b.push(codec);
            b.extend_from_slice(&[0; 7]);
        }
        b
    }
    let with = |f: &dyn Fn(&mut CommConfig)| {
        let mut c = registry.config().clone();
        f(&mut c);
        c
    };
    let mut garbage = head(1, 0, 3, &[(5, 0)]);
    let mut rng = fastrand::Rng::with_seed(7);
    garbage.extend((0..4096).map(|_| rng.u8(..)));
    let mut truncated = head(1, 0, 5, &[(1000, 0)]);
    truncated.extend_from_slice(b"hello");
    truncated.extend_from_slice(&[1; 400]);
    let mut stall = head(1, 0, 0, &[(4 << 30, 0)]);
    stall.extend_from_slice(&[0; 1000]);
    let mut corrupt = head(1, 0, 0, &[(20, 1)]);
    corrupt.extend_from_slice(&[0xff; 20]);
    // An lz4 frame declaring 1,000 bytes whose block ends in a match past its start.
    let mut corrupt_lz4 = head(1, 0, 0, &[(12, 2)]);
    corrupt_lz4.extend_from_slice(&1000u32.to_le_bytes());
    corrupt_lz4.extend_from_slice(&[0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let mut over_budget = head(1, 0, 0, &[(2 << 20, 0)]);
    over_budget.extend(std::iter::repeat_n(0u8, 2 << 20));
    // (what, listener config, bytes, close after sending, expected error, text it mentions)
    type Case<'a> = (&'a str, CommConfig, Vec<u8>, bool, ErrorKind, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "frame over the limit",
            with(&|c| c.limits = Limits { max_frame_size: 1 << 20, ..Limits::default() }),
            head(1, 0, 0, &[(2 << 20, 0)]),
            true,
            ErrorKind::FrameTooLarge,
            "frame 0",
        ),
        ("too many frames", with(&|_| {}), head(1_000_000, 0, 0, &[]), true, ErrorKind::FrameTooLarge, "frames"),
        ("header of 2^64-1 bytes", with(&|_| {}), head(0, 0, u64::MAX, &[]), true, ErrorKind::FrameTooLarge, "header"),
        ("truncated, then EOF", with(&|_| {}), truncated, true, ErrorKind::Closed, "middle of a message"),
        ("unknown codec", with(&|_| {}), head(1, 0, 0, &[(10, 77)]), true, ErrorKind::Protocol, "codec"),
        ("reserved flags", with(&|_| {}), head(0, 1, 0, &[]), true, ErrorKind::Protocol, "reserved"),
        (
            "snappy not announced",
            with(&|c| c.compression = Some(Compression::None)),
            corrupt.clone(),
            true,
            ErrorKind::Protocol,
            "did not announce",
        ),
        (
            "corrupt snappy",
            with(&|c| c.compression = Some(Compression::Snappy)),
            corrupt,
            true,
            ErrorKind::Compression,
            "",
        ),
        (
            "corrupt lz4",
            with(&|c| c.compression = Some(Compression::Lz4)),
            corrupt_lz4,
            true,
            ErrorKind::Compression,
            "lz4",
        ),
        (
            "over the connection's budget",
            with(&|c| c.budget = BudgetConfig { per_connection: Some(1 << 20), per_listener: None }),
            over_budget,
            false,
            ErrorKind::FrameTooLarge,
            "budget",
        ),
        (
            "4 GiB announced, then a stall",
            with(&|c| c.message_timeout = Duration::from_millis(200)),
            stall,
            false,
            ErrorKind::Timeout,
            "stalled",
        ),
        ("garbage", with(&|_| {}), garbage, true, ErrorKind::Protocol, ""),
    ];
    for (what, config, bytes, close, expect, mentions) in cases {
        let mut listener = registry
            .listen_with(listen_url, &config)
            .await
            .unwrap_or_else(|e| panic!("{what}: listen on {listen_url}: {e}"));
        let mut raw = open_raw(listener.contact_address().clone()).await;
        let ours = crate::handshake::Hello::new(Limits::default(), Compression::None, "hostile").encode();
        let (wrote, server) = tokio::join!(raw.write_all(&ours), listener.accept());
        wrote.unwrap_or_else(|e| panic!("{what}: sending the hello: {e}"));
        let mut server = server.unwrap_or_else(|e| panic!("{what}: the hello was good: {e}"));
        let mut prefix = [0u8; crate::handshake::PREFIX_LEN];
        raw.read_exact(&mut prefix).await.unwrap_or_else(|e| panic!("{what}: the listener's hello: {e}"));
        let mut body = vec![0u8; u16::from_le_bytes([prefix[6], prefix[7]]) as usize];
        raw.read_exact(&mut body).await.unwrap_or_else(|e| panic!("{what}: the listener's hello: {e}"));
        // The server may fail before reading everything, so the hostile bytes are written
        // from their own task: on a stream with small buffers (unix://) the write blocks
        // until the failed comm is dropped and its socket closed.
        let writer = tokio::spawn(async move {
            if raw.write_all(&bytes).await.is_ok() && close {
                let _ = raw.shutdown().await;
            }
            raw
        });
        let err = loop {
            match server.recv().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), expect, "{what}: {err}");
        assert!(err.to_string().contains(mentions), "{what}: {err} should mention {mentions:?}");
        assert_eq!(server.recv().await.unwrap_err().kind(), ErrorKind::Closed, "{what}: a broken comm stays closed");
        drop(server);
        drop(writer.await.unwrap_or_else(|e| panic!("{what}: the hostile writer: {e}")));
        let url = listener.contact_address().to_string();
        let (client, accepted) = tokio::join!(registry.connect_with(&url, &config), listener.accept());
        let (mut client, mut accepted) = (client.expect("a good client connects"), accepted.expect("accepted"));
        let m = msg("still serving", vec![pattern(100_000, 3)]);
        client.send(m.clone()).await.unwrap_or_else(|e| panic!("{what}: good client: {e}"));
        assert_eq!(accepted.recv().await.unwrap_or_else(|e| panic!("{what}: good client: {e}")), m, "{what}");
    }
}
