//! Who tls:// trusts, and what happens to those it does not.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{CommConfig, ErrorKind, Listener, Message, Registry};
use courier_tls::test_certs::TestPki;
use courier_tls::{TlsPem, TlsTransport};

fn registry(pem: &TlsPem) -> Registry {
    Registry::new().with(Arc::new(TlsTransport::from_pem(pem).unwrap()))
}

fn quick() -> CommConfig {
    CommConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn assert_serves(l: &mut Box<dyn Listener>, client: &Registry) {
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(client.connect(&url), l.accept());
    let (mut c, mut s) = (c.expect("a trusted client connects"), s.expect("accepted"));
    c.send(Message::from_header(&b"secret"[..])).await.unwrap();
    assert_eq!(&s.recv().await.unwrap().header[..], b"secret");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_servers_ca_is_refused() {
    let (server_pki, other_pki) = (TestPki::generate(), TestPki::generate());
    let mut l = registry(&server_pki.node()).listen("tls://127.0.0.1:0").await.unwrap();
    let url = l.contact_address().to_string();
    let stranger = registry(&TlsPem { ca: Some(other_pki.ca.clone().into_bytes()), ..Default::default() });
    let err = stranger.connect_with(&url, &quick()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"), "{err}");
    assert_serves(&mut l, &registry(&server_pki.node())).await;
}

#[tokio::test]
async fn a_server_requiring_client_certificates_refuses_a_client_without_one() {
    let pki = TestPki::generate();
    let strict = TlsPem { require_client_cert: true, ..pki.node() };
    let mut l = registry(&strict).listen("tls://127.0.0.1:0").await.unwrap();
    let log = l.rejections().unwrap();
    let url = l.contact_address().to_string();
    let anonymous = registry(&TlsPem { ca: Some(pki.ca.clone().into_bytes()), ..Default::default() });
    let err = anonymous.connect_with(&url, &quick()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    log.wait_for(1).await;
    let (kind, msg) = log.recent().pop().unwrap();
    assert_eq!(kind, ErrorKind::Protocol, "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    // A client presenting a certificate from the CA gets in.
    let with_cert = TlsPem {
        ca: Some(pki.ca.clone().into_bytes()),
        cert: Some(pki.client_cert.clone().into_bytes()),
        key: Some(pki.client_key.clone().into_bytes()),
        require_client_cert: false,
    };
    assert_serves(&mut l, &registry(&with_cert)).await;
}

#[tokio::test]
async fn a_plaintext_tcp_client_gets_a_clear_error_and_the_listener_serves_on() {
    let pki = TestPki::generate();
    let mut l = registry(&pki.node()).listen("tls://127.0.0.1:0").await.unwrap();
    let log = l.rejections().unwrap();
    let port = l.contact_address().host_port().unwrap().port;
    let plain = Registry::new().with(Arc::new(courier_tcp::TcpTransport::new()));
    let err = plain.connect_with(&format!("tcp://127.0.0.1:{port}"), &quick()).await.unwrap_err();
    let text = format!("{err} / {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
    assert!(text.contains("TLS"), "the plaintext client should be told the peer speaks TLS: {text}");
    log.wait_for(1).await;
    assert_eq!(log.recent().pop().unwrap().0, ErrorKind::Protocol);
    assert_serves(&mut l, &registry(&pki.node())).await;
}

#[tokio::test]
async fn misconfiguration_is_a_clear_error() {
    let no_ca = TlsTransport::from_pem(&TlsPem::default()).unwrap();
    let r = Registry::new().with(Arc::new(no_ca));
    assert!(r.connect("tls://127.0.0.1:1").await.unwrap_err().to_string().contains("CA"));
    assert!(r.listen("tls://127.0.0.1:0").await.unwrap_err().to_string().contains("certificate"));
    let bad = TlsTransport::from_pem(&TlsPem { ca: Some(b"not pem".to_vec()), ..Default::default() });
    assert!(bad.is_err());
}

/// tls:// sockets are tcp://'s sockets: connected, bound and configured by courier-tcp with
/// the same options (keepalive, nodelay, advertised host).
#[tokio::test]
async fn tls_sockets_take_the_tcp_options() {
    let pki = TestPki::generate();
    let options = courier_tls::TcpOptions {
        keepalive: Some(Duration::from_secs(17)),
        advertise_host: Some("localhost".into()),
        ..Default::default()
    };
    let tls = TlsTransport::from_pem(&pki.node()).unwrap().with_tcp_options(options);
    let registry = Registry::new().with(Arc::new(tls.clone()));
    let mut l = registry.listen("tls://0.0.0.0:0").await.unwrap();
    let contact = l.contact_address().clone();
    assert_eq!(contact.host_port().unwrap().host_string(), "localhost", "{contact}");
    // The listener runs the TLS handshake in its own task; this test stops before Courier's.
    let accept = tokio::spawn(async move { l.accept().await.map(|_| ()) });
    let stream = tls.connect_stream(&contact, &quick()).await.unwrap();
    let tcp = stream.tcp();
    assert!(tcp.nodelay().unwrap());
    assert_eq!(socket2::SockRef::from(tcp).tcp_keepalive_time().unwrap(), Duration::from_secs(17));
    drop(stream);
    accept.abort();
}
