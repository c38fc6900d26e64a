//! The conformance kit for zmq://, through the registry (dyn) path.

use std::sync::Arc;

use courier_core::Registry;
use courier_zmq::ZmqTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(ZmqTransport::new()))
}

courier_core::conformance_tests!(registry(), "zmq://127.0.0.1:0");
