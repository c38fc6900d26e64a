//! The conformance kit for tcp://, through the registry (dyn) path, over IPv4 and IPv6.

use std::sync::Arc;

use courier_core::Registry;
use courier_tcp::TcpTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(TcpTransport::new()))
}

courier_core::conformance_tests!(registry(), "tcp://127.0.0.1:0");

mod ipv6 {
    use super::*;
    courier_core::conformance_tests!(registry(), "tcp://[::1]:0");
}
