//! Many worker processes on this machine: 64 `courier worker` processes started at once
//! register with one scheduler (a registration storm), share a map and a tree reduction whose
//! dependencies move between them, and all of them get work; over tcp:// and unix://. The
//! in-process version (256 workers) is `runtime/tests/many_workers.rs`; throughput is
//! measured by `courier bench-tasks --many-inproc 256 --many-processes 64`.

mod support;

use std::time::Duration;

use courier::courier_runtime::{LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

const WORKERS: usize = 64;

async fn many_worker_processes(listen: &str) {
    // `processes` starts every worker at once and waits until all registered.
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), listen, WORKERS)
        .await
        .expect("64 worker processes register");
    let c = cluster.client().await.unwrap();
    assert_eq!(c.worker_info().await.unwrap().len(), WORKERS);

    let n = 20 * WORKERS as i64;
    let futures = c.map::<i64>("inc", (0..n).map(|i| vec![arg(&i)])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(120), c.gather(&futures)).await.expect("no hang").unwrap();
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    let info = c.worker_info().await.unwrap();
    let idle: Vec<&str> = info.iter().filter(|w| w.ran == 0).map(|w| w.name.as_str()).collect();
    assert!(idle.is_empty(), "{} of {WORKERS} worker processes ran nothing: {idle:?}", idle.len());
    drop(futures);

    // Fan-in 8 over results spread across the processes: inputs are fetched worker to worker.
    let mut level: Vec<TaskFuture<i64>> = c.map("inc", (0..512i64).map(|i| vec![arg(&i)])).await.unwrap();
    while level.len() > 1 {
        let mut next = Vec::new();
        for group in level.chunks(8) {
            next.push(c.submit::<i64>("add", group.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    let total = tokio::time::timeout(Duration::from_secs(120), level[0].result()).await.expect("no hang").unwrap();
    assert_eq!(total, (1..=512).sum::<i64>());
    c.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_worker_processes_over_tcp() {
    many_worker_processes("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_worker_processes_over_unix() {
    many_worker_processes("unix://").await;
}
