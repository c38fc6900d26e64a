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

/// A gather waits for all its keys at once: it fails as soon as one of them has failed, while
/// another is still running (it used to wait for the keys one by one, in order, and hung here
/// until the first finished); and it returns repeated keys and keys already done in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_fails_fast_and_keeps_order() {
    use courier_runtime::{LocalCluster, TaskError, arg};
    let gate = support::Gate::new();
    let cluster = LocalCluster::in_process(support::registry(), "inproc://", 2, 2, support::functions(gate.clone()))
        .await
        .unwrap();
    let c = cluster.client().await.unwrap();
    let done = c.submit::<f64>("sleep", vec![arg(&0.0f64)]).await.unwrap();
    done.wait().await.unwrap();
    let held = c.submit::<f64>("gated", vec![arg(&2.5f64)]).await.unwrap();
    gate.arrived(1).await;
    let bad = c.submit::<f64>("fail", vec![arg("boom")]).await.unwrap();
    // A hang (the regression) becomes a failure rather than a stuck CI run.
    let failed = tokio::time::timeout(std::time::Duration::from_secs(120), c.gather(&[held.clone(), bad.clone()]))
        .await
        .expect("the gather waited for the running task instead of failing");
    match failed {
        Err(TaskError::Failed { key, .. }) => assert_eq!(&*key, bad.key()),
        other => panic!("expected the failure of {}, got {other:?}", bad.key()),
    }
    // Subscribed while `held` is pending (the gate is shut), then completed by opening it.
    let three = [held.clone(), done.clone(), held.clone()];
    {
        let gather = c.gather(&three);
        tokio::pin!(gather);
        assert!(futures::poll!(gather.as_mut()).is_pending(), "held cannot have finished: the gate is shut");
        gate.open();
        assert_eq!(gather.await.unwrap(), vec![2.5, 0.0, 2.5]);
    }
    drop((three, held, bad, done));
    c.close().await;
    let stats = cluster.wait_for_scheduler(|s| s.tasks == 0 && s.clients == 0).await;
    assert_eq!(stats.outstanding, 0);
    cluster.shutdown().await;
}
