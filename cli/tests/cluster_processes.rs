//! Clusters of `courier scheduler` and worker processes: the runtime across processes, what
//! happens when worker processes die, and custom worker binaries.

mod support;

use std::time::Duration;

use courier::courier_core::WireArray;
use courier::courier_runtime::protocol::Failure;
use courier::courier_runtime::{Client, LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use support::{courier_bin, example};

const SIDE: usize = 16;

async fn tree(c: &Client, leaves: u64, delay: f64) -> (Vec<TaskFuture<WireArray>>, TaskFuture<f64>) {
    support::tree(c, leaves, SIDE, delay).await
}

async fn reference_result(leaves: u64) -> f64 {
    support::tree_reference(leaves, SIDE).await
}

async fn survives_a_sigkilled_worker(listen: &str) {
    const LEAVES: u64 = 128; // 128 leaves + 127 adds + 1 sum = 256 tasks
    let expected = reference_result(LEAVES).await;
    let mut cluster =
        LocalCluster::processes(Registry::with_default_transports(), courier_bin(), listen, 3).await.unwrap();
    let c = cluster.client().await.unwrap();
    let (leaves, total) = tree(&c, LEAVES, 0.01).await;
    // Mid-run: once a fifth of the leaves are done, SIGKILL a worker process.
    let mut completed = c.as_completed(leaves.iter().cloned());
    for _ in 0..LEAVES / 5 {
        futures::StreamExt::next(&mut completed).await.expect("a leaf completes");
    }
    drop(completed);
    assert!(total.status() == courier::courier_runtime::Status::Pending, "the kill must land mid-run");
    cluster.kill_process(1).await.unwrap(); // child 0 is the scheduler
    let got = tokio::time::timeout(Duration::from_secs(60), total.result()).await.expect("no hang").unwrap();
    assert!((got - expected).abs() < 1e-9 * expected.abs(), "after a worker died: {got}, without failure: {expected}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_reduction_survives_a_sigkilled_worker_over_tcp() {
    survives_a_sigkilled_worker("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_reduction_survives_a_sigkilled_worker_over_zmq() {
    survives_a_sigkilled_worker("zmq://127.0.0.1:0").await;
}

/// Failure injection comes from the test-only chaos worker, never from `courier worker`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_every_worker_fails_as_killed_worker() {
    let chaos = example("chaos_worker");
    let registry = Registry::with_default_transports();
    let mut cluster =
        LocalCluster::processes_with(registry, courier_bin(), "tcp://127.0.0.1:0", 1, &chaos, &[]).await.unwrap();
    let c = cluster.client().await.unwrap();
    let bomb = c.submit::<()>("crash", vec![]).await.unwrap();
    // Each death needs a fresh worker to run the task again; default allowed failures is 3.
    let mut child = 1; // child 0 is the scheduler
    let err = loop {
        let status = tokio::time::timeout(Duration::from_secs(30), cluster.wait_process(child)).await.unwrap().unwrap();
        assert!(!status.success(), "the worker process was killed by the task");
        if child == 4 {
            break tokio::time::timeout(Duration::from_secs(30), bomb.wait()).await.expect("no hang").unwrap_err();
        }
        cluster.spawn_worker_program(&chaos, &[], &format!("worker-{child}")).await.unwrap();
        child += 1;
    };
    match err.failure() {
        Some(Failure::KilledWorker { workers }) => assert_eq!(workers.len(), 4, "{err}"),
        other => panic!("expected KilledWorker, got {other:?}"),
    }
    // The cluster still runs other work.
    cluster.spawn_worker_process(courier_bin(), "survivor").await.unwrap();
    cluster.wait_for_workers(1).await.unwrap();
    let x = c.submit::<i64>("inc", vec![arg(&1i64)]).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), x.result()).await.unwrap().unwrap(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_gather_over_worker_processes() {
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
        .await
        .unwrap();
    let c = cluster.client().await.unwrap();
    let futures = c.map::<i64>("inc", (0..1000i64).map(|i| vec![arg(&i)])).await.unwrap();
    assert_eq!(c.gather(&futures).await.unwrap(), (1..=1000).collect::<Vec<_>>());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_worker_process_exits_cleanly_and_its_data_stays() {
    let mut cluster =
        LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
            .await
            .unwrap();
    let c = cluster.client().await.unwrap();
    let data = c.map::<i64>("inc", (0..100i64).map(|i| vec![arg(&i)])).await.unwrap();
    c.wait(&data).await;
    let leaving = c.workers()[0].clone();
    c.retire_workers(std::slice::from_ref(&leaving)).await.unwrap();
    let (_, status) =
        tokio::time::timeout(Duration::from_secs(30), cluster.wait_any_process(&[1, 2])).await.unwrap().unwrap();
    assert!(status.success(), "clean exit, got {status}");
    assert_eq!(c.gather(&data).await.unwrap(), (1..=100).collect::<Vec<_>>());
    cluster.shutdown().await;
}

/// examples/custom_worker.rs against a `courier scheduler` process: its functions, the
/// built-ins, and `courier submit` reaching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_worker_binary_serves_its_functions() {
    let custom = example("custom_worker");
    let registry = Registry::with_default_transports();
    let cluster =
        LocalCluster::processes_with(registry, courier_bin(), "tcp://127.0.0.1:0", 1, &custom, &[]).await.unwrap();
    let url = cluster.scheduler_address().to_owned();
    let c = cluster.client().await.unwrap();
    let sq = c.submit::<f64>("square", vec![arg(&3.0f64)]).await.unwrap();
    assert_eq!(sq.result().await.unwrap(), 9.0);
    let out = support::courier().args(["submit", &url, "word_count", "\"to be or not to be\""]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    let inc = c.submit::<i64>("inc", vec![arg(&41i64)]).await.unwrap();
    assert_eq!(inc.result().await.unwrap(), 42);
    cluster.shutdown().await;
}

/// Kubernetes and SLURM scale down with SIGTERM: the worker process retires (its results move
/// to the other worker first) and exits cleanly, so even scattered values, which nothing can
/// recompute, survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_process_retires_and_even_scattered_data_survives() {
    let mut cluster =
        LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
            .await
            .unwrap();
    let c = cluster.client().await.unwrap();
    let values: Vec<i64> = (0..40).collect();
    let data = c.scatter(&values).await.unwrap();
    c.wait(&data).await;
    let leaving = cluster.process_id(1).expect("worker-0 runs");
    let workers = c.workers();
    let held = |w: &str| data.iter().filter(|f| f.who_has().iter().any(|h| h == w)).count();
    assert!(workers.iter().all(|w| held(w) > 0), "both workers hold scattered values: {workers:?}");
    let pid = rustix::process::Pid::from_raw(leaving as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("signal delivered");
    let status = tokio::time::timeout(Duration::from_secs(60), cluster.wait_process(1)).await.unwrap().unwrap();
    assert!(status.success(), "a SIGTERMed worker retires and exits cleanly, got {status}");
    assert_eq!(c.gather(&data).await.unwrap(), values, "nothing it held was lost");
    assert_eq!(c.workers().len(), 1);
    cluster.shutdown().await;
}

fn signal(child: &tokio::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, sig).expect("signal delivered");
}

/// A worker process frozen with SIGSTOP mid-graph: the scheduler drops it after its
/// heartbeat timeout, the graph finishes with the failure-free answer from what the other
/// worker holds and recomputes, and the frozen worker, once resumed, finds itself dropped and
/// exits with an error instead of serving stale state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_worker_is_dropped_and_the_graph_finishes_without_it() {
    use courier::courier_runtime::{SchedulerConfig, start_scheduler};
    const LEAVES: u64 = 64;
    let expected = reference_result(LEAVES).await;
    let config = SchedulerConfig { worker_timeout: Duration::from_secs(3), ..SchedulerConfig::default() };
    let (sched, _task) =
        start_scheduler(Registry::with_default_transports(), "tcp://127.0.0.1:0", config).await.unwrap();
    let spawn = |name: &str| {
        tokio::process::Command::new(courier_bin())
            .args(["worker", &sched.address, "--name", name])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (mut frozen, _other) = (spawn("frozen"), spawn("other"));
    sched.wait_for_stats(|s| s.workers == 2).await.unwrap();
    let c = Client::connect(Registry::with_default_transports(), &sched.address).await.unwrap();
    let (leaves, total) = tree(&c, LEAVES, 0.01).await;
    let mut completed = c.as_completed(leaves.iter().cloned());
    for _ in 0..LEAVES / 4 {
        futures::StreamExt::next(&mut completed).await.expect("a leaf completes");
    }
    drop(completed);
    assert!(total.status() == courier::courier_runtime::Status::Pending, "the freeze must land mid-run");
    signal(&frozen, rustix::process::Signal::STOP);
    let got = tokio::time::timeout(Duration::from_secs(90), total.result()).await.expect("no hang").unwrap();
    assert!((got - expected).abs() < 1e-9 * expected.abs(), "with a frozen worker: {got}, without: {expected}");
    sched.wait_for_stats(|s| s.workers == 1).await.unwrap();
    signal(&frozen, rustix::process::Signal::CONT);
    let status = tokio::time::timeout(Duration::from_secs(10), frozen.wait()).await.expect("exits").unwrap();
    assert!(!status.success(), "a resumed worker the scheduler dropped exits with an error");
    c.close().await;
}

/// The scheduler process dies while workers and clients are connected: every worker exits
/// with an error, a waiting client's futures fail with "lost the scheduler", and a waiting
/// `courier submit` exits non-zero, all within 10 s; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_scheduler_ends_its_workers_and_clients_with_clear_errors() {
    let mut cluster =
        LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
            .await
            .unwrap();
    let c = cluster.client().await.unwrap();
    let long = c.submit::<f64>("sleep", vec![arg(&30.0f64)]).await.unwrap();
    let quick = c.submit::<i64>("inc", vec![arg(&1i64)]).await.unwrap();
    assert_eq!(quick.result().await.unwrap(), 2, "the cluster works before the kill");
    let mut submit = tokio::process::Command::new(courier_bin())
        .args(["submit", cluster.scheduler_address(), "sleep", "30"])
        .env("COURIER_LOG", "courier_runtime=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until it is connected (a client still connecting would retry for its connect timeout).
    let mut stderr = tokio::io::BufReader::new(submit.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("client connected") {
        let mut line = String::new();
        let n = tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line).await.unwrap();
        assert!(n > 0, "courier submit ended before connecting: {seen}");
        seen.push_str(&line);
    }
    cluster.kill_process(0).await.unwrap(); // the scheduler
    let err = tokio::time::timeout(Duration::from_secs(10), long.result()).await.expect("no hang").unwrap_err();
    assert!(err.to_string().contains("lost the scheduler"), "{err}");
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await.unwrap();
        (submit.wait().await.unwrap(), text)
    })
    .await
    .expect("courier submit exits");
    assert!(!out.0.success(), "courier submit fails");
    assert!(out.1.contains("scheduler") || out.1.contains("closed") || out.1.contains("refused"), "{}", out.1);
    for i in [1, 2] {
        let status = tokio::time::timeout(Duration::from_secs(10), cluster.wait_process(i))
            .await
            .expect("workers exit")
            .unwrap();
        assert!(!status.success(), "a worker that lost its scheduler exits with an error");
    }
}
