//! The conformance kit for tls://, through the registry (dyn) path.

use std::sync::{Arc, LazyLock};

use courier_core::Registry;
use courier_tls::TlsTransport;
use courier_tls::test_certs::TestPki;

static PKI: LazyLock<TestPki> = LazyLock::new(TestPki::generate);

fn registry() -> Registry {
    Registry::new().with(Arc::new(TlsTransport::from_pem(&PKI.node()).unwrap()))
}

courier_core::conformance_tests!(registry(), "tls://127.0.0.1:0");
