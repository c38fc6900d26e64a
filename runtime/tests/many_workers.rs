//! Many workers in one process: 256 one-thread workers register at once (a registration
//! storm), share a map, a persisted tree reduction and an as_completed loop, and leave the
//! scheduler's tables empty. The many-process version (64 worker processes over tcp:// and
//! unix://) is `cli/tests/many_workers.rs`; the throughput is measured by `courier bench-tasks
//! --many-inproc 256 --many-processes 64` (results/SUMMARY.md).

mod support;

use courier_runtime::{LocalCluster, TaskFuture, arg};
use futures::StreamExt;

const WORKERS: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_workers_in_one_process() {
    // in_process waits until all of them registered.
    let cluster = LocalCluster::in_process(
        support::registry(),
        "inproc://",
        WORKERS,
        1,
        support::functions(support::Gate::new()),
    )
    .await
    .expect("256 workers register");
    let c = cluster.client().await.unwrap();
    assert_eq!(c.worker_info().await.unwrap().len(), WORKERS);

    // A map wide enough to give every worker something: each starts idle, and the scheduler
    // hands root tasks to idle workers first.
    let n = 20 * WORKERS as i64;
    let futures = c.map::<i64>("inc", (0..n).map(|i| vec![arg(&i)])).await.unwrap();
    assert_eq!(c.gather(&futures).await.unwrap(), (1..=n).collect::<Vec<_>>());
    let info = c.worker_info().await.unwrap();
    let idle: Vec<&str> = info.iter().filter(|w| w.ran == 0).map(|w| w.name.as_str()).collect();
    assert!(idle.is_empty(), "{} of {WORKERS} workers ran nothing: {idle:?}", idle.len());
    drop(futures);

    // A tree reduction over results spread across the workers (dependencies fetched between
    // them), persisted, then computed from the persisted level.
    let leaves: Vec<TaskFuture<i64>> = c.map("inc", (0..1024i64).map(|i| vec![arg(&i)])).await.unwrap();
    let mut level = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for group in level.chunks(8) {
            next.push(c.submit::<i64>("add", group.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    assert_eq!(level[0].result().await.unwrap(), (1..=1024).sum::<i64>());
    drop(level);

    // as_completed keeps 2 × WORKERS tasks in flight, adding one per result.
    let first = c.map::<i64>("inc", (0..2 * WORKERS as i64).map(|i| vec![arg(&i)])).await.unwrap();
    let mut stream = c.as_completed(first);
    let (mut done, mut submitted) = (0usize, 2 * WORKERS);
    while let Some(f) = stream.next().await {
        f.result().await.unwrap();
        done += 1;
        if submitted < 8 * WORKERS {
            stream.add(c.submit::<i64>("inc", vec![arg(&(submitted as i64))]).await.unwrap());
            submitted += 1;
        }
    }
    assert_eq!(done, 8 * WORKERS);
    drop(stream);

    c.close().await;
    let stats = cluster.wait_for_scheduler(|s| s.tasks == 0 && s.clients == 0).await;
    assert_eq!((stats.workers, stats.outstanding), (WORKERS, 0));
    cluster.shutdown().await;
}
