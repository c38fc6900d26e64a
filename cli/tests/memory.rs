//! Memory-safe execution across processes: worker memory limits, spilling to disk and back,
//! and a spill directory that cannot be written.

mod support;

use std::time::Duration;

use courier::courier_core::WireArray;
use courier::courier_runtime::protocol::WorkerSummary;
use courier::courier_runtime::{Client, LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use support::courier_bin;

/// Level-wise pairwise tree of `array_add` over `leaves` (pairs in order; an odd one out is
/// carried up through a one-input add, as the reference does).
async fn tree(c: &Client, leaves: Vec<TaskFuture<WireArray>>) -> TaskFuture<WireArray> {
    let mut level = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit::<WireArray>("array_add", pair.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    level.pop().unwrap()
}

/// The same tree computed here, element by element, from the same seeds (`random_array` is
/// fastrand's `f64()` stream from `seed`): bit-identical additions in the same order.
fn reference(seeds: &[u64], n: usize) -> Vec<f64> {
    let mut rngs: Vec<fastrand::Rng> = seeds.iter().map(|&s| fastrand::Rng::with_seed(s)).collect();
    let mut out = Vec::with_capacity(n);
    let mut level: Vec<f64> = Vec::with_capacity(seeds.len());
    for _ in 0..n {
        level.clear();
        level.extend(rngs.iter_mut().map(|r| r.f64()));
        while level.len() > 1 {
            let next: Vec<f64> = level.chunks(2).map(|p| p.iter().skip(1).fold(p[0], |a, b| a + b)).collect();
            level = next;
        }
        out.push(level[0]);
    }
    out
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A tcp:// process cluster of `n` `courier worker PREFIX…` processes.
async fn workers(n: usize, prefix: &[&str]) -> LocalCluster {
    let registry = Registry::with_default_transports();
    LocalCluster::processes_with(registry, courier_bin(), "tcp://127.0.0.1:0", n, courier_bin(), prefix).await.unwrap()
}

/// These tests measure processes' peak memory: they run one at a time, not against each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spill_parent(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("courier-memory-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Acceptance: 2 workers limited to 256 MiB each reduce 3 GiB of arrays (48 × 64 MiB) to the
/// exact failure-free result; neither process's peak RSS reaches its terminate threshold
/// (95%), and the spill counters show data went to disk and came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_256_mib_workers_reduce_3_gib_by_spilling_to_disk() {
    let _serial = SERIAL.lock().await;
    const LEAVES: u64 = 48;
    const N: usize = 8 << 20; // 8 Mi f64 = 64 MiB per array
    const LIMIT: u64 = 256 << 20;
    let dir = spill_parent("reduce");
    let prefix = ["worker", "--memory-limit", "256MiB", "--spill-dir", dir.to_str().unwrap()];
    let mut cluster = workers(2, &prefix).await;
    let c = cluster.client().await.unwrap();
    // A worker that restarted (at its terminate threshold) would rejoin at a new address.
    let mut started: Vec<String> = c.worker_info().await.unwrap().into_iter().map(|w| w.address).collect();
    started.sort();
    let seeds: Vec<u64> = (0..LEAVES).map(|i| 1000 + i).collect();
    let leaves = c.map("random_array", seeds.iter().map(|&s| vec![arg(&vec![N]), arg(&s)])).await.unwrap();
    let total = tree(&c, leaves).await;
    let expected = tokio::task::spawn_blocking({
        let seeds = seeds.clone();
        move || reference(&seeds, N)
    });
    let got = tokio::time::timeout(Duration::from_secs(600), total.result()).await.expect("no hang").unwrap();
    let got = got.to_array::<f64>().unwrap();
    let expected = expected.await.unwrap();
    assert_eq!(got.len(), N);
    let mismatches = got.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(mismatches, 0, "the reduction differs from the failure-free result in {mismatches} elements");

    let info: Vec<WorkerSummary> = c.worker_info().await.unwrap();
    let mut now: Vec<String> = info.iter().map(|w| w.address.clone()).collect();
    now.sort();
    assert_eq!(now, started, "no worker restarted (reached its terminate threshold)");
    let spilled: u64 = info.iter().map(|w| w.memory.spill.bytes).sum();
    let unspilled: u64 = info.iter().map(|w| w.memory.unspill.bytes).sum();
    for w in &info {
        println!(
            "{}: limit {} MiB, spilled {} values / {} MiB in {:.2} s, read back {} / {} MiB in {:.2} s, error {:?}",
            w.name,
            w.memory.limit >> 20,
            w.memory.spill.count,
            w.memory.spill.bytes >> 20,
            w.memory.spill.seconds,
            w.memory.unspill.count,
            w.memory.unspill.bytes >> 20,
            w.memory.unspill.seconds,
            w.memory.spill_error
        );
        assert_eq!(w.memory.limit, LIMIT);
        assert_eq!(w.memory.spill_error, None);
    }
    assert!(spilled >= 1 << 30, "at least 1 GiB went to disk: {spilled}");
    assert!(unspilled > 0, "spilled data came back");
    for i in 1..=2 {
        let pid = cluster.process_id(i).expect("worker process alive");
        let peak = peak_rss(pid);
        println!("worker process {i}: peak RSS {} MiB", peak >> 20);
        assert!(peak < LIMIT * 95 / 100, "worker {i} peaked at {peak} bytes, past its terminate threshold");
    }
    // Retired, the workers exit and remove their spill directories.
    drop((total, got));
    let addresses: Vec<String> = info.iter().map(|w| w.address.clone()).collect();
    c.retire_workers(&addresses).await.unwrap();
    let (first, _) = cluster.wait_any_process(&[1, 2]).await.unwrap();
    cluster.wait_any_process(&[3 - first]).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "spill directories are removed at exit: {left:?}");
    drop(c);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A spill directory that cannot be created (its parent is a regular file): spilling fails
/// with an error naming the directory, every value stays in memory, and the computation
/// completes with the failure-free result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_spill_directory_loses_nothing_and_names_the_directory() {
    let _serial = SERIAL.lock().await;
    const LEAVES: u64 = 8;
    const N: usize = 2 << 20; // 16 MiB per array
    let parent = spill_parent("unwritable");
    let not_a_dir = parent.join("a-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let spill_dir = not_a_dir.to_str().unwrap();
    // Target 0.2 of 256 MiB: spilling is attempted after a few arrays, far below pause.
    let prefix = ["worker", "--memory-limit", "256MiB", "--memory-target", "0.2", "--spill-dir", spill_dir];
    let cluster = workers(2, &prefix).await;
    let c = cluster.client().await.unwrap();
    let seeds: Vec<u64> = (0..LEAVES).map(|i| 7 + i).collect();
    let leaves = c.map("random_array", seeds.iter().map(|&s| vec![arg(&vec![N]), arg(&s)])).await.unwrap();
    // Keep the leaves (persisted): they cannot go to disk, so they stay in memory.
    let total = tree(&c, leaves.clone()).await;
    let got = tokio::time::timeout(Duration::from_secs(300), total.result()).await.expect("no hang").unwrap();
    let got = got.to_array::<f64>().unwrap();
    let expected = tokio::task::spawn_blocking(move || reference(&seeds, N)).await.unwrap();
    assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "the result is exact");
    for leaf in &leaves {
        leaf.result().await.expect("every leaf is still held");
    }
    let info = c.worker_info().await.unwrap();
    let errors: Vec<&String> = info.iter().filter_map(|w| w.memory.spill_error.as_ref()).collect();
    assert!(!errors.is_empty(), "spilling was attempted and failed: {info:?}");
    for e in &errors {
        assert!(e.contains(spill_dir), "the error names the directory: {e}");
    }
    assert!(info.iter().all(|w| w.memory.spilled == 0 && w.memory.spill.count == 0));
    // `courier info` shows the same: both workers, their limit, and the error.
    let out = support::courier().args(["info", cluster.scheduler_address()]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("worker-0") && text.contains("worker-1"), "{text}");
    assert!(text.contains(" 256 ") && text.contains("spill error: cannot create spill directory"), "{text}");
    drop(c);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(parent);
}

/// A task whose memory takes its worker past the terminate threshold: the worker restarts
/// itself (the same process, re-executed: a new worker to the scheduler) instead of being
/// killed by the kernel; after 4 such deaths the task fails as `KilledWorker`, and the
/// restarted worker goes on serving other tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_terminate_threshold_restarts_itself() {
    let _serial = SERIAL.lock().await;
    let prefix = ["worker", "--memory-limit", "128MiB", "--no-shm"];
    let mut cluster = workers(1, &prefix).await;
    let pid = cluster.process_id(1).unwrap();
    let c = cluster.client().await.unwrap();
    // 256 MiB made on a blocking thread, while the worker samples its memory.
    let bomb = c.submit::<WireArray>("slow_random_array", vec![arg(&vec![32usize << 20]), arg(&1u64), arg(&0.0f64)]);
    let err = tokio::time::timeout(Duration::from_secs(300), bomb.await.unwrap().result())
        .await
        .expect("no hang")
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("KilledWorker"), "{text}");
    assert_eq!(cluster.try_wait_process(1).unwrap(), None, "the worker process restarted, it did not exit");
    assert_eq!(cluster.process_id(1), Some(pid), "restarted in place (exec)");
    let after = c.submit::<i64>("inc", vec![arg(&41i64)]).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(60), after.result()).await.unwrap().unwrap(), 42);
    drop(c);
    cluster.shutdown().await;
}
