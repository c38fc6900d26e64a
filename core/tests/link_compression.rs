//! `auto` compression chooses per link: a comm measures how fast its messages leave and
//! compresses what shrinks only when that gets it to the peer sooner. The link is a byte
//! stream whose reader is throttled to a rate in tokio's paused (simulated) time, so the
//! test is deterministic about time; the codecs' speeds are this machine's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use courier_core::stream::{StreamParts, handshake_stream};
use courier_core::{Address, CommConfig, Compression, Message};
use tokio::io::{AsyncRead, ReadBuf};

/// A read half that delivers at most `rate` bytes per second (simulated time) and counts them.
struct Shaped<R> {
    inner: R,
    rate: f64,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    bytes: Arc<AtomicU64>,
    scratch: Vec<u8>,
    /// Seconds of delivery owed but not yet slept (tokio's timer counts whole milliseconds).
    owed: f64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Shaped<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(d) = self.delay.as_mut() {
            ready!(d.as_mut().poll(cx));
            self.delay = None;
        }
        let want = buf.remaining().min(64 << 10);
        let this = &mut *self;
        let mut chunk = ReadBuf::new(&mut this.scratch[..want]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
        let n = chunk.filled().len();
        buf.put_slice(chunk.filled());
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.owed += n as f64 / self.rate;
        if self.owed >= 1e-3 {
            self.delay = Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(self.owed))));
            self.owed = 0.0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Sparse float64 data: runs of 64 values either zero or noise, half each (shrinks to ~half).
fn sparse(len: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut v = Vec::with_capacity(len + 512);
    while v.len() < len {
        let zero = rng.bool();
        for _ in 0..64 {
            v.extend_from_slice(&(if zero { 0.0 } else { rng.f64() }).to_le_bytes());
        }
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Sends `n` messages of 32 MiB of sparse data over a link of `rate` bytes/s with `auto` and
/// returns the bytes each one took on the wire.
async fn wire_bytes_per_message(rate: f64, n: usize) -> Vec<u64> {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let counted = Arc::new(AtomicU64::new(0));
    let addr = |p: &str| Address::parse(&format!("tcp://10.0.0.{p}:1")).unwrap();
    let config = CommConfig { compression: Some(Compression::AUTO), ..CommConfig::default() };
    let sender =
        StreamParts { read: ar, write: aw, local: addr("1"), peer: addr("2"), default_compression: Compression::AUTO };
    let shaped = Shaped { inner: br, rate, delay: None, bytes: counted.clone(), scratch: vec![0; 64 << 10], owed: 0.0 };
    let receiver = StreamParts {
        read: shaped,
        write: bw,
        local: addr("2"),
        peer: addr("1"),
        default_compression: Compression::AUTO,
    };
    let (sender, receiver) = tokio::join!(handshake_stream(sender, &config), handshake_stream(receiver, &config));
    let (mut sender, mut receiver) = (sender.unwrap(), receiver.unwrap());
    let data = sparse(32 << 20);
    let mut sizes = Vec::new();
    for _ in 0..n {
        let before = counted.load(Ordering::Relaxed);
        let (sent, got) = tokio::join!(sender.send(Message::new(Bytes::new(), vec![data.clone()])), receiver.recv());
        sent.unwrap();
        assert_eq!(got.unwrap().frames[0], data, "delivered intact, compressed or not");
        sizes.push(counted.load(Ordering::Relaxed) - before);
    }
    sizes
}

#[tokio::test(start_paused = true)]
async fn a_slow_link_learns_to_compress_what_shrinks() {
    // 10 MB/s. The first message goes as the 1 Gbit/s assumed before any measurement says
    // (raw or compressed: that depends on this machine's speed); it measures the link, and
    // from then on the data travels compressed to about half.
    let sizes = wire_bytes_per_message(10e6, 3).await;
    assert!(sizes[1] < 20 << 20 && sizes[2] < 20 << 20, "{sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fast_link_sends_the_same_data_raw() {
    // 5 GB/s (measured from the first message, raw or compressed: at least 14 MiB take 3 ms
    // of simulated time): sending half the bytes saves 0.1 ns a byte, and no codec
    // compresses this data at 10 GB/s, which it would need. So the rest goes raw.
    let sizes = wire_bytes_per_message(5e9, 3).await;
    assert!(sizes[1] >= 32 << 20 && sizes[2] >= 32 << 20, "{sizes:?}");
}
