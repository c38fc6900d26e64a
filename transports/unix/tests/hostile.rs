//! Hostile bytes after a good handshake on unix://: the shared kit's cases.

use std::sync::Arc;

use courier_core::Registry;
use courier_unix::UnixTransport;
use tokio::net::UnixStream;

#[tokio::test]
async fn hostile_frames_after_the_handshake() {
    let dir = std::env::temp_dir().join(format!("courier-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("unix://{}/l.sock", dir.display());
    let registry = Registry::new().with(Arc::new(UnixTransport::new()));
    courier_core::testkit::hostile_stream_peers(&registry, &url, |addr| async move {
        UnixStream::connect(addr.location()).await.unwrap()
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
