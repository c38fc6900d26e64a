//! End-to-end: scheduler, two workers and a client, over each transport.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc() {
    support::all_scenarios("inproc://").await;
}

/// Every scenario again with inproc:// comms that serialize every message, as over a wire:
/// the in-process fast path (typed values, no MessagePack) must change nothing but speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc_serialized() {
    let registry = support::registry().with(std::sync::Arc::new(courier_inproc::InprocTransport::serializing()));
    support::all_scenarios_with(registry, "inproc://").await;
}

/// The fast path is taken: 1,000 tasks submitted, run and gathered over inproc:// reach the
/// scheduler as typed values (its byte counter sees the registrations' hellos only), while the
/// serializing comms deliver the same work as MessagePack bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc_messages_skip_messagepack() {
    let mut received = Vec::new();
    for transport in [courier_inproc::InprocTransport::new(), courier_inproc::InprocTransport::serializing()] {
        let registry = support::registry().with(std::sync::Arc::new(transport));
        let cluster = support::cluster(registry, "inproc://").await;
        let c = cluster.client().await.unwrap();
        let before = cluster.scheduler_bytes_received().unwrap();
        support::map_gather_1000(&c).await;
        received.push(cluster.scheduler_bytes_received().unwrap() - before);
    }
    let (typed, serialized) = (received[0], received[1]);
    // A hello (serialized: it is the registration) may land after `before`; no task does.
    assert!(typed <= 256, "typed messages carry no bytes; {typed} bytes were serialized");
    // Each of the 1,000 tasks is at least submitted and finished as bytes.
    assert!(serialized > 1000 * 16, "the serializing comms delivered only {serialized} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp() {
    support::all_scenarios("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq() {
    support::all_scenarios("zmq://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix() {
    support::all_scenarios("unix://").await;
}

/// Everything on shm:// (scheduler, workers' data listeners, client). The other transports'
/// registries have no shm://, so their data moves over the transport under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm() {
    let registry = support::registry().with(std::sync::Arc::new(courier_shm::ShmTransport::new()));
    support::all_scenarios_with(registry, "shm://").await;
}

/// Scheduler, two workers and a client, all over tls:// (workers' data listeners too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls() {
    let pki = courier_tls::test_certs::TestPki::generate();
    let tls = courier_tls::TlsTransport::from_pem(&pki.node()).unwrap();
    let registry = support::registry().with(std::sync::Arc::new(tls));
    support::all_scenarios_with(registry, "tls://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_over_tcp() {
    support::retirement("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_over_inproc() {
    support::retirement("inproc://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stealing_over_tcp() {
    support::stealing("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_scaling_over_inproc() {
    support::adaptive("inproc://").await;
}
