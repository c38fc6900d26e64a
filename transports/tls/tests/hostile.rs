//! Hostile bytes after a good TLS and Courier handshake on tls://: the shared kit's cases.

use std::sync::Arc;

use courier_core::{CommConfig, Registry};
use courier_tls::TlsTransport;
use courier_tls::test_certs::TestPki;

#[tokio::test]
async fn hostile_frames_after_the_handshake() {
    let pki = TestPki::generate();
    let transport = Arc::new(TlsTransport::from_pem(&pki.node()).unwrap());
    let registry = Registry::new().with(transport.clone());
    courier_core::testkit::hostile_stream_peers(&registry, "tls://127.0.0.1:0", |addr| {
        let transport = transport.clone();
        async move { transport.connect_stream(&addr, &CommConfig::default()).await.unwrap() }
    })
    .await;
}
