//! Memory-limited workers in one process, driven by a memory probe the test controls: a
//! worker above its pause threshold starts nothing and its queued runs go elsewhere; below it
//! again, it works.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_runtime::protocol::WorkerSummary;
use courier_runtime::{
    Client, Functions, MemoryLimits, MemoryProbe, ServerConfig, WorkerConfig, arg, start_scheduler, start_worker,
};

const GIB: u64 = 1 << 30;

/// Asks the scheduler until its view satisfies `ok`: each ask is a round trip (an event), no
/// sleep between them; the timeout only turns a hang into a failure.
async fn until(c: &Client, what: &str, ok: impl Fn(&[WorkerSummary]) -> bool) -> Vec<WorkerSummary> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let info = c.worker_info().await.unwrap();
            if ok(&info) {
                return info;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never held"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_starts_nothing_until_below_pause_and_its_queue_runs_elsewhere() {
    let registry = support::registry();
    let (sched, _) = start_scheduler(registry.clone(), "tcp://127.0.0.1:0", ServerConfig::default()).await.unwrap();
    let rss = Arc::new(AtomicU64::new(GIB / 10));
    let probe = {
        let rss = rss.clone();
        MemoryProbe(Arc::new(move || rss.load(Ordering::SeqCst)))
    };
    let limited = WorkerConfig {
        name: Some("limited".into()),
        memory: Some(MemoryLimits::new(GIB)),
        memory_probe: Some(probe),
        ..WorkerConfig::new(sched.address.clone())
    };
    let functions = Arc::new(Functions::with_builtins());
    start_worker(registry.clone(), functions.clone(), limited).await.unwrap();
    let other = WorkerConfig { name: Some("other".into()), ..WorkerConfig::new(sched.address.clone()) };
    start_worker(registry.clone(), functions, other).await.unwrap();
    let c = Client::connect(registry, &sched.address).await.unwrap();
    until(&c, "two workers", |w| w.len() == 2).await;
    let ran = |w: &[WorkerSummary], name: &str| w.iter().find(|x| x.name == name).map_or(0, |x| x.ran);

    // Both busy with slow tasks, then the limited worker goes above pause (0.8 GiB).
    let slow = c.map::<f64>("sleep", (0..12).map(|_| vec![arg(&0.05f64)])).await.unwrap();
    until(&c, "the limited worker runs", |w| ran(w, "limited") > 0).await;
    rss.store(GIB * 9 / 10, Ordering::SeqCst);
    let at_pause =
        until(&c, "the pause reaches the scheduler", |w| w.iter().any(|x| x.name == "limited" && x.memory.paused))
            .await;
    for f in &slow {
        f.result().await.unwrap();
    }
    let after = c.worker_info().await.unwrap();
    assert!(
        ran(&after, "limited") <= ran(&at_pause, "limited") + 1,
        "a paused worker finishes what it runs and starts nothing more: {at_pause:?} then {after:?}"
    );
    assert_eq!(ran(&after, "limited") + ran(&after, "other"), 12, "every task ran once, the queue elsewhere");

    // New work while paused goes to the other worker only.
    let more = c.map::<i64>("inc", (0..20i64).map(|i| vec![arg(&i)])).await.unwrap();
    for f in &more {
        f.result().await.unwrap();
    }
    assert_eq!(ran(&c.worker_info().await.unwrap(), "limited"), ran(&after, "limited"));

    // Below pause again: it takes work.
    rss.store(GIB / 10, Ordering::SeqCst);
    until(&c, "the resume reaches the scheduler", |w| w.iter().any(|x| x.name == "limited" && !x.memory.paused)).await;
    let last = c.map::<f64>("sleep", (0..8).map(|_| vec![arg(&0.02f64)])).await.unwrap();
    for f in &last {
        f.result().await.unwrap();
    }
    assert!(ran(&c.worker_info().await.unwrap(), "limited") > ran(&after, "limited"), "resumed work reaches it");
}
