//! The record layer (`courier_tls::record`): what it writes, rustls reads, and the reverse,
//! key updates both ways included; any split of the byte stream and any destination size
//! read back the same bytes; a changed byte is an error, never wrong data or a panic.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use courier_core::{Address, CommConfig};
use courier_tls::test_certs::TestPki;
use courier_tls::{Cipher, TlsRead, TlsTransport, TlsWrite};
use proptest::prelude::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

/// Serves `data` in pieces of the given sizes (cycled), like a socket would.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn cipher(i: u8) -> (Cipher, usize) {
    match i % 3 {
        0 => (Cipher::Aes128Gcm, 16),
        1 => (Cipher::Aes256Gcm, 32),
        _ => (Cipher::Chacha20Poly1305, 32),
    }
}

/// Seals `writes` (each split into the given slices) and a close_notify.
async fn seal(c: Cipher, key: &[u8], iv: &[u8], writes: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut w = TlsWrite::with_key(Vec::new(), c, key, iv).unwrap();
    for slices in writes {
        let mut io: Vec<std::io::IoSlice<'_>> = slices.iter().map(|s| std::io::IoSlice::new(s)).collect();
        let mut io = &mut io[..];
        while !io.is_empty() {
            let n = w.write_vectored(io).await.unwrap();
            std::io::IoSlice::advance_slices(&mut io, n);
        }
    }
    w.shutdown().await.unwrap();
    // The Vec under the writer holds the records.
    std::mem::take(w.get_mut())
}

/// Reads everything with destinations of the given sizes (cycled).
async fn open(
    c: Cipher,
    key: &[u8],
    iv: &[u8],
    wire: Vec<u8>,
    pieces: Vec<usize>,
    dsts: &[usize],
) -> (Vec<u8>, std::io::Result<()>) {
    let mut r = TlsRead::with_key(Chunked { data: wire, at: 0, sizes: pieces, next: 0 }, c, key, iv).unwrap();
    let mut got = Vec::new();
    for i in 0.. {
        let size = dsts[i % dsts.len()].max(1);
        // Destinations of three kinds: initialised, uninitialised (a Vec's spare capacity),
        // and partly filled already.
        let read = match i % 3 {
            0 => {
                let mut dst = vec![0u8; size];
                r.read(&mut dst).await.inspect(|&n| got.extend_from_slice(&dst[..n]))
            }
            1 => {
                got.reserve_exact(size);
                r.read_buf(&mut got).await
            }
            _ => {
                const PREFIX: usize = 17;
                let mut dst = vec![0u8; size + PREFIX];
                let mut rb = ReadBuf::new(&mut dst);
                rb.set_filled(PREFIX);
                let r = std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut rb)).await;
                let n = rb.filled().len() - PREFIX;
                got.extend_from_slice(&rb.filled()[PREFIX..]);
                r.map(|()| n)
            }
        };
        match read {
            Ok(0) => return (got, Ok(())),
            Ok(_) => {}
            Err(e) => return (got, Err(e)),
        }
    }
    unreachable!()
}

fn writes() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    // Slices from empty to several records, up to ~200 KiB per write.
    let slice = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..20_000),
        (1usize..70_000).prop_map(|n| (0..n).map(|i| (i * 7 + n) as u8).collect()),
    ];
    proptest::collection::vec(proptest::collection::vec(slice, 1..5), 1..5)
}

fn dst_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..100, 100usize..20_000, 60_000usize..400_000], 1..6)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the writes, the socket's pieces and the reader's destinations, the bytes
    /// read are the bytes written, and close_notify ends the stream cleanly.
    #[test]
    fn records_round_trip(
        c in any::<u8>(),
        key in proptest::collection::vec(any::<u8>(), 32),
        iv in proptest::collection::vec(any::<u8>(), 12),
        writes in writes(),
        pieces in proptest::collection::vec(1usize..300_000, 1..6),
        dsts in dst_sizes(),
    ) {
        let (c, klen) = cipher(c);
        let rt = runtime();
        let wire = rt.block_on(seal(c, &key[..klen], &iv, &writes));
        let expected: Vec<u8> = writes.iter().flatten().flatten().copied().collect();
        let (got, end) = rt.block_on(open(c, &key[..klen], &iv, wire, pieces, &dsts));
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert_eq!(got, expected);
    }

    /// One changed byte anywhere in the records is an error; the bytes read before it are a
    /// prefix of what was written.
    #[test]
    fn a_changed_byte_is_an_error(
        writes in writes(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        pieces in proptest::collection::vec(1usize..300_000, 1..4),
        dsts in dst_sizes(),
    ) {
        let (key, iv) = ([7u8; 16], [9u8; 12]);
        let rt = runtime();
        let mut wire = rt.block_on(seal(Cipher::Aes128Gcm, &key, &iv, &writes));
        let i = at.index(wire.len());
        wire[i] ^= flip;
        let expected: Vec<u8> = writes.iter().flatten().flatten().copied().collect();
        let (got, end) = rt.block_on(open(Cipher::Aes128Gcm, &key, &iv, wire, pieces, &dsts));
        prop_assert!(end.is_err(), "byte {i} changed, yet the stream read cleanly");
        prop_assert!(expected.starts_with(&got), "bytes before the change differ");
    }

    /// Arbitrary bytes are an error (or a clean end for none), never a panic.
    #[test]
    fn garbage_is_an_error(wire in proptest::collection::vec(any::<u8>(), 0..50_000), dsts in dst_sizes()) {
        let (got, end) = runtime().block_on(open(Cipher::Aes128Gcm, &[1; 16], &[2; 12], wire.clone(), vec![4096], &dsts));
        prop_assert!(got.is_empty());
        prop_assert!(end.is_err());
    }
}

#[test]
fn a_stream_cut_without_close_notify_is_an_error() {
    let rt = runtime();
    let writes = vec![vec![vec![5u8; 100_000]]];
    let mut wire = rt.block_on(seal(Cipher::Aes128Gcm, &[1; 16], &[2; 12], &writes));
    // Drop the close_notify record (5 + 2 + 1 + 16 bytes).
    wire.truncate(wire.len() - 24);
    let (got, end) = rt.block_on(open(Cipher::Aes128Gcm, &[1; 16], &[2; 12], wire, vec![8192], &[100_000]));
    assert_eq!(got, vec![5u8; 100_000]);
    let e = end.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

#[test]
fn hostile_records_get_clear_errors() {
    let rt = runtime();
    let cases: [(&[u8], &str); 4] = [
        (&[22, 3, 3, 0, 40], "outer type 22"),
        (&[23, 3, 3, 0xff, 0xff], "record_overflow"),
        (&[23, 3, 3, 0, 3, 1, 2, 3], "shorter than its tag"),
        (&[23, 3, 3, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "authentication"),
    ];
    for (wire, expect) in cases {
        let (_, end) = rt.block_on(open(Cipher::Aes128Gcm, &[1; 16], &[2; 12], wire.to_vec(), vec![3], &[100_000]));
        let e = end.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(expect), "{e} should say {expect}");
    }
}

fn rustls_server_config(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    let pem = pki.node();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem.cert.as_ref().unwrap()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_ref().unwrap()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// Against rustls's own record layer (a buffered `ServerConnection`, which also sends session
/// tickets): this side updates its keys every 3 records, the server asks it to update once,
/// and both close with close_notify.
#[tokio::test]
async fn rustls_reads_what_the_record_layer_writes_and_the_reverse() {
    const LEN: usize = 1 << 20;
    let pki = TestPki::generate();
    let config = rustls_server_config(&pki);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
        let mut got = vec![0u8; LEN];
        tls.read_exact(&mut got[..LEN / 2]).unwrap();
        // Ask the client for a KeyUpdate (and update this side's keys).
        tls.conn.refresh_traffic_keys().unwrap();
        tls.read_exact(&mut got[LEN / 2..]).unwrap();
        for piece in got.chunks(100_003) {
            tls.write_all(piece).unwrap();
        }
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        // The client's close_notify: a clean end, not an error.
        let mut rest = Vec::new();
        let n = tls.read_to_end(&mut rest).unwrap();
        (got, n)
    });
    let tls = TlsTransport::from_pem(&pki.node()).unwrap().with_key_update_after(3);
    let addr = Address::parse(&format!("tls://localhost:{port}")).unwrap();
    let stream = tls.connect_stream(&addr, &CommConfig::default()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sent: Vec<u8> = (0..LEN).map(|i| (i * 31 + i / 977) as u8).collect();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for (i, piece) in sent.chunks(65_537).enumerate() {
                // Mixed slices: a tiny header-like slice and the rest.
                let (a, b) = piece.split_at((i * 13) % 40);
                let mut io = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
                let mut io = &mut io[..];
                while !io.is_empty() {
                    let n = w.write_vectored(io).await.unwrap();
                    std::io::IoSlice::advance_slices(&mut io, n);
                }
            }
            w.flush().await.unwrap();
            w
        })
    };
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    let (got, rest) = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
    assert!(got == sent, "the server read what this side wrote");
    assert!(back == sent, "this side read what the server echoed");
    assert_eq!(rest, 0);
}
