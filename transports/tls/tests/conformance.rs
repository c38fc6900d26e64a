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

/// The kit again with both ends updating their keys (TLS 1.3 KeyUpdate) every 2 records:
/// key updates interleave with every pattern the kit sends, both ways.
mod key_updates {
    use super::*;

    fn registry() -> Registry {
        Registry::new().with(Arc::new(TlsTransport::from_pem(&PKI.node()).unwrap().with_key_update_after(2)))
    }

    courier_core::conformance_tests!(registry(), "tls://127.0.0.1:0");
}
