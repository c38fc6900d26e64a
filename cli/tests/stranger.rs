//! A client written from docs/PROTOCOL.md alone runs against a cluster of `courier` processes:
//! the document is enough to implement the protocol. `stranger_client.py` uses Python's
//! standard library and the `msgpack` package, none of Courier's code. It is refused once for
//! speaking another version, registers, submits tasks (an array among their arguments, and
//! failures of each kind), fetches the results from the workers' data listeners and releases
//! them. CI provides msgpack in a virtualenv (COURIER_PYTHON); there the test is never skipped.

mod support;

use courier::courier_runtime::protocol::Key;
use courier::courier_runtime::{LocalCluster, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_written_from_the_protocol_document_alone_computes_and_fetches() {
    let python = std::env::var("COURIER_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_msgpack =
        std::process::Command::new(&python).args(["-c", "import msgpack"]).status().is_ok_and(|s| s.success());
    if !has_msgpack {
        assert!(std::env::var_os("CI").is_none(), "CI must provide msgpack (set COURIER_PYTHON)");
        eprintln!("skipping: {python} has no msgpack; set COURIER_PYTHON to a python with msgpack");
        return;
    }
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
        .await
        .unwrap();
    cluster.wait_for_workers(2).await.unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stranger_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(cluster.scheduler_address())
        .arg("2")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the stranger's client failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // The stranger waited for the scheduler to close its comm, so its Release was handled:
    // no worker holds its results. And the scheduler serves on.
    let c = cluster.client().await.unwrap();
    let keys: Vec<Key> =
        ["stranger-a", "stranger-b", "stranger-c", "stranger-sum"].into_iter().map(Key::from).collect();
    let holders = c.who_has(&keys).await.unwrap();
    assert!(holders.iter().all(Vec::is_empty), "released keys still held: {holders:?}");
    let f = c.submit::<i64>("inc", vec![arg(&1i64)]).await.unwrap();
    assert_eq!(f.result().await.unwrap(), 2);
    cluster.shutdown().await;
}
