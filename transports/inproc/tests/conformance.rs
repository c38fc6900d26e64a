//! The conformance kit for inproc://, through the registry (dyn) path.

use std::sync::Arc;

use courier_core::Registry;
use courier_inproc::InprocTransport;

fn registry() -> Registry {
    Registry::new().with(Arc::new(InprocTransport::new()))
}

courier_core::conformance_tests!(registry(), "inproc://");

/// The same checks on comms that do not carry local values (senders serialize, as over a
/// wire): that mode must be a conforming transport too.
mod serializing {
    use super::*;

    fn registry() -> Registry {
        Registry::new().with(Arc::new(InprocTransport::serializing()))
    }

    courier_core::conformance_tests!(registry(), "inproc://");
}

/// The kit's local-value check must see both answers: carried here, refused above.
#[test]
fn the_two_modes_differ() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (transport, carries) in [(InprocTransport::new(), true), (InprocTransport::serializing(), false)] {
            let registry = Registry::new().with(Arc::new(transport));
            let mut listener = registry.listen("inproc://").await.unwrap();
            let url = listener.contact_address().to_string();
            let (client, server) = tokio::join!(registry.connect(&url), listener.accept());
            assert_eq!(client.unwrap().carries_local_values(), carries);
            assert_eq!(server.unwrap().carries_local_values(), carries);
        }
    });
}
