//! Throwaway certificates for tests and benchmarks, generated in memory (rcgen): a CA, a
//! server certificate for `localhost`/`127.0.0.1`/`::1` and a client certificate, both signed
//! by the CA. Never use them for anything real.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::TlsPem;

/// A CA and certificates it signed, as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate.
    pub ca: String,
    /// The server certificate.
    pub server_cert: String,
    /// The server key.
    pub server_key: String,
    /// The client certificate.
    pub client_cert: String,
    /// The client key.
    pub client_key: String,
}

impl TestPki {
    /// A fresh CA with server and client certificates.
    pub fn generate() -> TestPki {
        Self::generate_for(&[])
    }

    /// Like [`TestPki::generate`], with `extra` names (host names or IP addresses, e.g. test
    /// hosts' addresses) in the server certificate beside localhost's.
    pub fn generate_for(extra: &[&str]) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names).expect("params").signed_by(&key, &ca).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra.iter().map(|n| (*n).to_owned()));
        let (server_cert, server_key) = leaf(names);
        let (client_cert, client_key) = leaf(vec!["courier-client".into()]);
        TestPki { ca: ca.pem(), server_cert, server_key, client_cert, client_key }
    }

    /// A node that trusts the CA and presents the server certificate (listens and connects).
    pub fn node(&self) -> TlsPem {
        TlsPem {
            ca: Some(self.ca.clone().into_bytes()),
            cert: Some(self.server_cert.clone().into_bytes()),
            key: Some(self.server_key.clone().into_bytes()),
            require_client_cert: false,
        }
    }
}
