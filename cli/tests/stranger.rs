//! A client and a worker written from docs/PROTOCOL.md alone run in clusters of `courier`
//! processes: the document is enough to implement both roles of the protocol.
//! `stranger_client.py` and `stranger_worker.py` use Python's standard library and the
//! `msgpack` package, none of Courier's code. The client is refused once for speaking another
//! version, registers, submits tasks (an array among their arguments, and failures of each
//! kind), fetches the results from the workers' data listeners and releases them. The worker
//! registers beside a `courier worker`, runs its share of the tasks, serves and fetches
//! dependencies and scattered values, and dies. CI provides msgpack in a virtualenv
//! (COURIER_PYTHON); there these tests are never skipped.

mod support;

use courier::courier_runtime::protocol::Key;
use courier::courier_runtime::{LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_written_from_the_protocol_document_alone_computes_and_fetches() {
    let Some(python) = python_with_msgpack() else { return };
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

/// A worker written from the document alone (`stranger_worker.py`) joins a scheduler beside a
/// `courier worker`: tasks run on both, dependencies and scattered values cross between them
/// through each other's data listeners, and when the stranger is killed the scheduler
/// recomputes what only it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_written_from_the_protocol_document_alone_computes_beside_a_courier_worker() {
    let Some(python) = python_with_msgpack() else { return };
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 1)
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stranger_worker.py");
    let mut stranger = tokio::process::Command::new(&python)
        .arg(script)
        .arg(cluster.scheduler_address())
        .arg("stranger-worker")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    cluster.wait_for_workers(2).await.unwrap();
    let c = cluster.client().await.unwrap();

    // Independent tasks spread over both workers; a chain whose links land on either; a sum
    // that fetches from both.
    let xs: Vec<TaskFuture<i64>> = c.map("inc", (0..200i64).map(|i| vec![arg(&i)])).await.unwrap();
    let mut chain = c.submit::<i64>("inc", vec![arg(&0i64)]).await.unwrap();
    for _ in 0..30 {
        chain = c.submit::<i64>("inc", vec![chain.arg()]).await.unwrap();
    }
    let total = c.submit::<i64>("add", xs.iter().map(|f| f.arg()).collect()).await.unwrap();
    assert_eq!(c.gather(&xs).await.unwrap(), (1..=200).collect::<Vec<i64>>());
    assert_eq!(chain.result().await.unwrap(), 31);
    assert_eq!(total.result().await.unwrap(), (1..=200).sum::<i64>());
    // Scattered values go to both workers too (ExpectScatter, Store, Stored).
    let scattered = c.scatter(&[5i64, 6, 7, 8]).await.unwrap();
    let incs: Vec<TaskFuture<i64>> = c.map("inc", scattered.iter().map(|f| vec![f.arg()])).await.unwrap();
    assert_eq!(c.gather(&incs).await.unwrap(), vec![6, 7, 8, 9]);

    let info = c.worker_info().await.unwrap();
    let ran = |name: &str| info.iter().find(|w| w.name == name).map(|w| w.ran);
    let stranger_ran = ran("stranger-worker").expect("the stranger is registered");
    assert!(stranger_ran > 0, "the stranger ran nothing: {info:?}");
    assert!(info.iter().any(|w| w.name != "stranger-worker" && w.ran > 0), "the courier worker ran nothing: {info:?}");
    let stranger_held = info.iter().find(|w| w.name == "stranger-worker").unwrap().held;
    assert!(stranger_held > 0, "the stranger holds none of the results: {info:?}");

    // The stranger dies: what only it held is computed again on the courier worker.
    stranger.kill().await.unwrap();
    assert_eq!(c.gather(&xs).await.unwrap(), (1..=200).collect::<Vec<i64>>());
    assert_eq!(chain.result().await.unwrap(), 31);
    cluster.shutdown().await;
}

/// A python with msgpack (COURIER_PYTHON, or python3); None, after saying so, when there is
/// none outside CI.
fn python_with_msgpack() -> Option<String> {
    let python = std::env::var("COURIER_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_msgpack =
        std::process::Command::new(&python).args(["-c", "import msgpack"]).status().is_ok_and(|s| s.success());
    if !has_msgpack {
        assert!(std::env::var_os("CI").is_none(), "CI must provide msgpack (set COURIER_PYTHON)");
        eprintln!("skipping: {python} has no msgpack; set COURIER_PYTHON to a python with msgpack");
        return None;
    }
    Some(python)
}
