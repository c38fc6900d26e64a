//! inproc://-specific behaviour: zero-copy hand-over, names, and runtimes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::{CommConfig, ErrorKind, Message, Registry};
use courier_inproc::InprocTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(InprocTransport::new()))
}

#[tokio::test]
async fn frames_are_handed_over_without_copy() {
    let r = registry();
    let mut l = r.listen("inproc://zero-copy").await.unwrap();
    let (client, server) = tokio::join!(r.connect("inproc://zero-copy"), l.accept());
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    let big = Bytes::from(vec![5u8; 64 << 20]);
    let header = Bytes::from_static(b"h");
    client.send(Message::new(header.clone(), vec![big.clone(), Bytes::from_static(b"small")])).await.unwrap();
    let got = server.recv().await.unwrap();
    assert_eq!(got.frames[0].as_ptr(), big.as_ptr(), "the receiver's frame must be the sender's memory");
    assert_eq!(got.header.as_ptr(), header.as_ptr());
}

#[test]
fn works_across_runtimes_and_threads() {
    let r = registry();
    let rt_a = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut l = rt_a.block_on(r.listen("inproc://")).unwrap();
    let url = l.contact_address().to_string();
    let client_thread = std::thread::spawn(move || {
        let rt_b = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt_b.block_on(async move {
            let mut c = registry().connect(&url).await.unwrap();
            for i in 0..100u32 {
                c.send(Message::from_header(i.to_le_bytes().to_vec())).await.unwrap();
                assert_eq!(&c.recv().await.unwrap().header[..], &(i + 1).to_le_bytes());
            }
        });
    });
    rt_a.block_on(async {
        let mut s = l.accept().await.unwrap();
        for _ in 0..100 {
            let m = s.recv().await.unwrap();
            let i = u32::from_le_bytes(m.header[..].try_into().unwrap());
            s.send(Message::from_header((i + 1).to_le_bytes().to_vec())).await.unwrap();
        }
    });
    client_thread.join().unwrap();
}

#[tokio::test]
async fn names_are_exclusive_and_freed_on_close() {
    let r = registry();
    let mut l = r.listen("inproc://exclusive").await.unwrap();
    assert_eq!(l.contact_address().to_string(), "inproc://exclusive");
    let e = r.listen("inproc://exclusive").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddressInUse);
    l.close().await;
    assert_eq!(l.accept().await.unwrap_err().kind(), ErrorKind::Closed);
    let _again = r.listen("inproc://exclusive").await.expect("name is free after close");
}

#[tokio::test]
async fn auto_names_are_unique() {
    let r = registry();
    let a = r.listen("inproc://").await.unwrap();
    let b = r.listen("inproc://").await.unwrap();
    assert_ne!(a.contact_address(), b.contact_address());
    assert!(!a.contact_address().location().is_empty());
}

#[tokio::test]
async fn unknown_name_is_refused_then_times_out() {
    let config = CommConfig { connect_timeout: Duration::from_millis(50), ..CommConfig::default() };
    let e = registry().connect_with("inproc://nobody-here", &config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectTimeout, "{e}");
    let source = std::error::Error::source(&e).expect("the last refusal is the source").to_string();
    assert!(source.contains("no inproc listener"), "{source}");
}

#[tokio::test]
async fn bounded_queue_applies_back_pressure() {
    let config = CommConfig { queue_capacity: 2, ..CommConfig::default() };
    let r = registry();
    let mut l = r.listen_with("inproc://", &config).await.unwrap();
    let url = l.contact_address().to_string();
    let (client, server) = tokio::join!(r.connect_with(&url, &config), l.accept());
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    client.send(Message::from_header(&b"1"[..])).await.unwrap();
    client.send(Message::from_header(&b"2"[..])).await.unwrap();
    // The queue is full: a third send waits until the receiver takes one.
    let third = tokio::time::timeout(Duration::from_millis(50), client.send(Message::from_header(&b"3"[..]))).await;
    assert!(third.is_err(), "a full queue must make the sender wait");
    assert_eq!(&server.recv().await.unwrap().header[..], b"1");
    client.send(Message::from_header(&b"3"[..])).await.unwrap();
    assert_eq!(&server.recv().await.unwrap().header[..], b"2");
    assert_eq!(&server.recv().await.unwrap().header[..], b"3");
}
