//! The conformance kit for inproc://, through the registry (dyn) path.

use std::sync::Arc;

use courier_core::Registry;
use courier_inproc::InprocTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(InprocTransport::new()))
}

courier_core::conformance_tests!(registry(), "inproc://");
