//! unix:// with filesystem paths, and bad addresses.

use std::sync::Arc;

use courier_core::{ErrorKind, Message, Registry};
use courier_unix::UnixTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(UnixTransport::new()))
}

#[tokio::test]
async fn path_sockets_work_and_are_removed_on_close() {
    let path = std::env::temp_dir().join(format!("courier-test-{}.sock", std::process::id()));
    let url = format!("unix://{}", path.display());
    let r = registry();
    let mut l = r.listen(&url).await.unwrap();
    assert_eq!(l.contact_address().to_string(), url);
    assert!(path.exists());
    let (c, s) = tokio::join!(r.connect(&url), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(c.local_address(), s.peer_address());
    c.send(Message::from_header(&b"over a path"[..])).await.unwrap();
    assert_eq!(&s.recv().await.unwrap().header[..], b"over a path");
    l.close().await;
    assert!(!path.exists(), "the socket file is removed on close");
    let e = r
        .connect_with(
            &url,
            &courier_core::CommConfig { connect_timeout: std::time::Duration::from_millis(100), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ConnectTimeout | ErrorKind::ConnectionRefused), "{e}");
}

#[tokio::test]
async fn malformed_addresses_are_typed_errors() {
    for bad in ["unix://relative/path", "unix://@", &format!("unix:///{}", "x".repeat(200))] {
        let e = registry().listen(bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}: {e}");
        let e = registry().connect(bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}: {e}");
    }
}
