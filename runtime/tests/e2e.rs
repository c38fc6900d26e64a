//! End-to-end: scheduler, two workers and a client, over each transport.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc() {
    support::all_scenarios("inproc://").await;
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
