//! A graph of a map of `n` `inc` tasks plus a tree reduction with fan-in 32, persisted and
//! gathered on a LocalCluster (in process) and on a tcp:// scheduler with 2 worker processes:
//! the right answer, submission in bounded batches (the client chunks every submit), the
//! scheduler's table empty once the client lets go, and every process's peak resident memory
//! printed. 10^5 tasks in CI; 10^6 in the ignored long runs
//! (`cargo test --release -p courier-cli --test million_tasks -- --ignored --nocapture`).

mod support;

use courier::courier_runtime::{ArgSpec, Functions, Graph, Key, LocalCluster, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

/// The graph and its root: `inc(i)` for `i < n`, summed 32 at a time up to one key.
fn graph(n: usize) -> (Graph, Key) {
    let mut g = Graph::new();
    let mut level: Vec<Key> = (0..n).map(|i| g.task("inc", vec![arg(&(i as i64))])).collect();
    while level.len() > 1 {
        level = level.chunks(32).map(|c| g.task("add", c.iter().cloned().map(ArgSpec::Key).collect())).collect();
    }
    (g, level.pop().expect("a root"))
}

/// Peak resident memory of process `pid` (`self` for this one), from /proc, in MiB.
fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs the graph on `cluster`, checks the answer, prints the peak memory of every process.
async fn run(cluster: &LocalCluster, n: usize, label: &str) {
    // Peaks from here on: reset this process's high-water mark (tests share the process).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let c = cluster.client().await.unwrap();
    let (g, root) = graph(n);
    let tasks = g.len();
    let started = std::time::Instant::now();
    let futures = c.persist::<i64>(&g, std::slice::from_ref(&root)).await.unwrap();
    drop(g);
    let total = c.gather(&futures).await.unwrap()[0];
    let n = n as i64;
    assert_eq!(total, n * (n + 1) / 2, "sum of inc(i) for i < {n}");
    let took = started.elapsed().as_secs_f64();
    let children: Vec<String> =
        cluster.process_ids().iter().map(|pid| format!("{pid}: {:.0} MiB", peak_rss_mib(&pid.to_string()))).collect();
    println!(
        "{label}: {tasks} tasks in {took:.1} s ({:.0} tasks/s); peak RSS of this process {:.0} MiB; children {children:?}",
        tasks as f64 / took,
        peak_rss_mib("self"),
    );
    drop(futures);
    if let Some(s) = cluster.scheduler() {
        // Once the client's last future is gone its keys are released and forgotten.
        s.wait_for_stats(|st| st.tasks == 0).await.expect("the scheduler runs");
    }
    c.close().await;
}

async fn in_process(n: usize) {
    let cluster =
        LocalCluster::inproc(Registry::with_default_transports(), 2, Functions::with_builtins()).await.unwrap();
    run(&cluster, n, "LocalCluster inproc://, 2 workers").await;
    cluster.shutdown().await;
}

async fn processes(n: usize) {
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
        .await
        .unwrap();
    run(&cluster, n, "tcp:// scheduler + 2 worker processes").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_task_graph_in_process() {
    in_process(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_task_graph_over_worker_processes() {
    processes(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 10^6 tasks"]
async fn a_million_task_graph_in_process() {
    in_process(1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 10^6 tasks"]
async fn a_million_task_graph_over_worker_processes() {
    processes(1_000_000).await;
}
