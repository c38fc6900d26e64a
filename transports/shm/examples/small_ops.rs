//! Small round trips, for counting instructions: `N` round trips of a 100-byte message over
//! shm:// and over the plain stream comms it is built on (a Unix socket pair, and a tcp://
//! loopback connection), both ends on one current-thread runtime so that nothing but the
//! comms' own work (and the kernel's) is measured. `scripts/callgrind_small.sh` runs it under
//! valgrind's callgrind and reports instructions per round trip.
//!
//!   small_ops shm|unix|tcp [N] [PAYLOAD_BYTES]
use bytes::Bytes;
use courier_core::stream::{StreamParts, handshake_stream};
use courier_core::{Address, Comm, CommConfig, Compression, Message, Transport};
use tokio::io::{AsyncRead, AsyncWrite};

/// Courier's stream comm on both ends of a connected pair of halves.
async fn stream_pair<R, W>(a: (R, W), b: (R, W), scheme: &str) -> (Comm, Comm)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = CommConfig::default();
    let addr = Address::new(scheme, "@pair").unwrap();
    let parts = |(read, write)| StreamParts {
        read,
        write,
        local: addr.clone(),
        peer: addr.clone(),
        default_compression: Compression::None,
    };
    let (x, y) = tokio::join!(handshake_stream(parts(a), &config), handshake_stream(parts(b), &config));
    (x.unwrap(), y.unwrap())
}

async fn pair(kind: &str) -> (Comm, Comm) {
    // As every transport's connect does: a blocking-pool thread makes the process threaded,
    // which changes glibc's system call wrappers.
    tokio::task::spawn_blocking(|| ()).await.unwrap();
    match kind {
        "shm" => {
            let config = CommConfig::default();
            let t = courier_shm::ShmTransport::new();
            let mut l = t.listen(&Address::new("shm", "").unwrap(), &config).await.unwrap();
            let contact = l.contact_address().clone();
            let (a, b) = tokio::join!(t.connect(&contact, &config), l.accept());
            (a.unwrap(), b.unwrap())
        }
        "unix" => {
            let (x, y) = tokio::net::UnixStream::pair().unwrap();
            stream_pair(x.into_split(), y.into_split(), "unix").await
        }
        "tcp" => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (x, y) = tokio::join!(tokio::net::TcpStream::connect(l.local_addr().unwrap()), l.accept());
            let (x, (y, _)) = (x.unwrap(), y.unwrap());
            x.set_nodelay(true).unwrap();
            y.set_nodelay(true).unwrap();
            stream_pair(x.into_split(), y.into_split(), "tcp").await
        }
        other => panic!("unknown kind {other}: shm, unix or tcp"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "shm".into());
    let n: usize = args.next().map_or(20_000, |s| s.parse().expect("a count"));
    let len: usize = args.next().map_or(100, |s| s.parse().expect("a size"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut a, mut b) = pair(&kind).await;
        let echo = tokio::spawn(async move {
            while let Ok(m) = b.recv().await {
                if b.send(m).await.is_err() {
                    break;
                }
            }
        });
        // The shape of `courier compare`'s echo: a small header and one 100-byte frame.
        let msg = Message::new(Bytes::from_static(b"payload"), vec![Bytes::from(vec![7u8; len])]);
        let t = std::time::Instant::now();
        for _ in 0..n {
            a.send(msg.clone()).await.unwrap();
            let back = a.recv().await.unwrap();
            assert_eq!(back, msg);
        }
        let dt = t.elapsed();
        println!("{kind}: {n} round trips of {len} B, {:.2} µs each", dt.as_secs_f64() * 1e6 / n as f64);
        drop(a);
        let _ = echo.await;
    });
}
