//! Workers on one host move dependency data over shm://, and clients gather over it, without
//! being told: each worker announces a same-host contact and the scheduler introduces workers
//! of one host to each other. With shm turned off (`courier worker --no-shm`) the same graph
//! moves its data over tcp://, with the same result. Transfer counters (per transport scheme,
//! from every worker and from the client) prove which transport carried the data.

mod support;

use courier::courier_core::{WireArray, ndarray::ArrayD};
use courier::courier_runtime::{ArgSpec, Graph, Key, LocalCluster, TransferCount, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

/// 12 arrays of 512 KiB (above shm's threshold), added 3 at a time to one root.
fn graph() -> (Graph, Vec<Key>, Key) {
    let mut g = Graph::new();
    let leaves: Vec<Key> =
        (0..12u64).map(|i| g.task("random_array", vec![arg(&vec![256usize, 256]), arg(&i)])).collect();
    let mut level = leaves.clone();
    while level.len() > 1 {
        level = level.chunks(3).map(|c| g.task("array_add", c.iter().cloned().map(ArgSpec::Key).collect())).collect();
    }
    let root = level.pop().expect("a root");
    (g, leaves, root)
}

fn count(stats: &[TransferCount], scheme: &str) -> u64 {
    stats.iter().filter(|c| c.scheme == scheme).map(|c| c.values).sum()
}

/// Runs the graph on 3 worker processes (with `worker_args` after `worker`); returns the root
/// array and the values fetched (workers from peers, the client from workers) per scheme.
async fn run(worker_args: &[&str]) -> (ArrayD<f64>, Vec<TransferCount>, Vec<TransferCount>) {
    let mut prefix = vec!["worker"];
    prefix.extend_from_slice(worker_args);
    let registry = Registry::with_default_transports();
    let cluster = LocalCluster::processes_with(registry, courier_bin(), "tcp://127.0.0.1:0", 3, courier_bin(), &prefix)
        .await
        .unwrap();
    let c = cluster.client().await.unwrap();
    let workers = c.wait_for_workers(|w| w.len() == 3).await.unwrap();
    let (g, leaves, root) = graph();
    let mut outputs = leaves.clone();
    outputs.push(root);
    let futures = c.persist::<WireArray>(&g, &outputs).await.unwrap();
    let values = c.gather(&futures).await.unwrap();
    let total = values.last().unwrap().to_array::<f64>().unwrap();
    let mut sum = values[0].to_array::<f64>().unwrap();
    for v in &values[1..12] {
        sum = sum + v.to_array::<f64>().unwrap();
    }
    assert_eq!(total.shape(), &[256, 256]);
    assert!((&total - &sum).iter().all(|d| d.abs() < 1e-9), "the root is the sum of the leaves");
    let mut fetched = Vec::new();
    for w in &workers {
        fetched.extend(c.worker_transfer_stats(w).await.unwrap());
    }
    let gathered = c.transfer_stats();
    c.close().await;
    cluster.shutdown().await;
    (total, fetched, gathered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_workers_move_data_over_shm_and_over_tcp_without_it() {
    let (with_shm, fetched, gathered) = run(&[]).await;
    println!("with shm: workers fetched {fetched:?}; the client gathered {gathered:?}");
    assert!(count(&fetched, "shm") > 0, "workers fetched dependencies over shm://: {fetched:?}");
    assert_eq!(count(&fetched, "tcp"), 0, "and none over tcp://: {fetched:?}");
    assert!(count(&gathered, "shm") >= 13, "the client gathered over shm://: {gathered:?}");
    assert_eq!(count(&gathered, "tcp"), 0, "{gathered:?}");

    let (without, fetched, gathered) = run(&["--no-shm"]).await;
    println!("without: workers fetched {fetched:?}; the client gathered {gathered:?}");
    assert!(count(&fetched, "tcp") > 0, "without shm, workers fetched over tcp://: {fetched:?}");
    assert_eq!(count(&fetched, "shm"), 0, "{fetched:?}");
    assert!(count(&gathered, "tcp") >= 13, "{gathered:?}");
    assert_eq!(count(&gathered, "shm"), 0, "{gathered:?}");
    assert_eq!(with_shm, without, "the same result either way");
}
