//! The conformance kit for unix://, through the registry (dyn) path, on abstract names and
//! on filesystem paths.

use std::sync::Arc;

use courier_core::Registry;
use courier_unix::UnixTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(UnixTransport::new()))
}

courier_core::conformance_tests!(registry(), "unix://");
