//! Small round trips over zmq://, for counting instructions (the zmq counterpart of
//! courier-shm's `small_ops`): `N` round trips of a 100-byte message, both ends on one
//! current-thread runtime.
//!
//!   zmq_small_ops [N] [PAYLOAD_BYTES]
use bytes::Bytes;
use courier_core::{Address, CommConfig, Message, Transport};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(20_000, |s| s.parse().expect("a count"));
    let len: usize = args.next().map_or(100, |s| s.parse().expect("a size"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = CommConfig::default();
        let t = courier_zmq::ZmqTransport::new();
        let mut l = t.listen(&Address::parse("zmq://127.0.0.1:0").unwrap(), &config).await.unwrap();
        let contact = l.contact_address().clone();
        let (a, b) = tokio::join!(t.connect(&contact, &config), l.accept());
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let echo = tokio::spawn(async move {
            while let Ok(m) = b.recv().await {
                if b.send(m).await.is_err() {
                    break;
                }
            }
        });
        let msg = Message::new(Bytes::from_static(b"payload"), vec![Bytes::from(vec![7u8; len])]);
        let t = std::time::Instant::now();
        for _ in 0..n {
            a.send(msg.clone()).await.unwrap();
            let back = a.recv().await.unwrap();
            assert_eq!(back.byte_len(), msg.byte_len());
        }
        let dt = t.elapsed();
        println!("zmq: {n} round trips of {len} B, {:.2} µs each", dt.as_secs_f64() * 1e6 / n as f64);
        drop(a);
        let _ = echo.await;
    });
}
