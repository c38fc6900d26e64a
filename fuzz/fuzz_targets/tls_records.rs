//! tls://'s record layer (`courier_tls::TlsRead`) fed hostile bytes after the handshake: the
//! input's first byte picks the reader's destination size, the second the socket's piece
//! size, the rest is what the peer sent (records under a fixed AES-128-GCM key, so seeds
//! made by `TlsWrite` open). Checks: no panic; the reader never returns more plaintext than
//! the peer sent bytes; it ends in an error or a clean close_notify.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use courier_tls::{Cipher, TlsRead};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.piece.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [dst, piece, wire @ ..] = data else { return };
    let dst = [1, 100, 16_389, 40_000, 300_000][usize::from(*dst) % 5];
    let piece = [1, 5, 4096, 70_000][usize::from(*piece) % 4];
    let mut r = TlsRead::with_key(Pieces { data: wire, piece }, Cipher::Aes128Gcm, &[0x11; 16], &[0x22; 12]).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = vec![0u8; dst];
    let mut total = 0;
    loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut r).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
            Poll::Ready(Ok(())) => total += rb.filled().len(),
            Poll::Ready(Err(_)) => break,
            Poll::Pending => unreachable!("the pieces are always ready"),
        }
        assert!(total <= wire.len(), "more plaintext than bytes sent");
    }
});
