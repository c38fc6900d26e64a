//! The conformance kit for shm://, through the registry (dyn) path: once with the default
//! threshold (the kit's large frames go through shared memory, small ones on the socket) and
//! once sharing every frame of 1 byte or more.

use std::sync::Arc;

use courier_core::Registry;
use courier_shm::ShmTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(ShmTransport::new()))
}

courier_core::conformance_tests!(registry(), "shm://");

mod every_frame_shared {
    use super::*;

    fn registry() -> Registry {
        Registry::new().with(Arc::new(ShmTransport::new().with_threshold(1)))
    }

    courier_core::conformance_tests!(registry(), "shm://");
}

mod sealed_only {
    use super::*;

    fn registry() -> Registry {
        Registry::new().with(Arc::new(ShmTransport::new().sealed_only().with_threshold(1)))
    }

    courier_core::conformance_tests!(registry(), "shm://");
}
