//! The end-to-end scenarios, run over every transport.

#![allow(dead_code, reason = "each test file uses part of the support module")]

use std::sync::{Arc, Condvar, Mutex};

use courier_core::ndarray::ArrayD;
use courier_core::{Registry, WireArray};
use courier_runtime::protocol::Failure;
use courier_runtime::{Client, ClusterError, Functions, Graph, LocalCluster, Status, TaskError, TaskFuture, arg};
use futures::StreamExt;

pub(crate) fn registry() -> Registry {
    Registry::new()
        .with(Arc::new(courier_tcp::TcpTransport::new()))
        .with(Arc::new(courier_inproc::InprocTransport::new()))
        .with(Arc::new(courier_zmq::ZmqTransport::new()))
        .with(Arc::new(courier_unix::UnixTransport::new()))
}

/// A gate blocking functions until the test opens it, counting who waits at it: tests wait
/// for the state they want (N tasks started) as an event, never for time to pass.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
    arrivals: tokio::sync::Notify,
}

impl Gate {
    pub(crate) fn new() -> Arc<Gate> {
        Arc::default()
    }

    /// Blocks the calling thread until the gate opens.
    pub(crate) fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.arrivals.notify_waiters();
        while !s.0 {
            s = self.changed.wait(s).unwrap();
        }
    }

    /// Waits until at least `n` callers have arrived.
    pub(crate) async fn arrived(&self, n: usize) {
        loop {
            let notified = self.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().unwrap().1 >= n {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }
}

/// The built-ins, plus `gated` (returns its argument once `gate` opens) and `flaky` (fails
/// the first `failures` calls of a given tag, then returns the value), for in-process tests.
pub(crate) fn functions(gate: Arc<Gate>) -> Functions {
    let mut f = Functions::with_builtins();
    f.register_blocking("gated", move |(x,): (f64,)| {
        gate.pass();
        Ok(x)
    });
    let calls: Arc<Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
    f.register("flaky", move |(tag, failures, value): (String, u32, i64)| {
        let mut c = calls.lock().unwrap();
        let n = c.entry(tag).or_insert(0);
        *n += 1;
        if *n <= failures { Err(format!("flaky failure {n} of {failures}")) } else { Ok(value) }
    });
    f
}

pub(crate) async fn cluster(registry: Registry, listen: &str) -> LocalCluster {
    LocalCluster::in_process(registry, listen, 2, 2, functions(Gate::new())).await.expect("cluster")
}

pub(crate) async fn map_gather_1000(c: &Client) {
    let futures = c.map::<i64>("inc", (0..1000i64).map(|i| vec![arg(&i)])).await.unwrap();
    let results = c.gather(&futures).await.unwrap();
    assert_eq!(results, (1..=1000).collect::<Vec<i64>>());
}

pub(crate) async fn dependency_chain(c: &Client) {
    let mut x = c.submit::<i64>("inc", vec![arg(&0i64)]).await.unwrap();
    for _ in 0..50 {
        x = c.submit::<i64>("inc", vec![x.arg()]).await.unwrap();
    }
    assert_eq!(x.result().await.unwrap(), 51);
}

/// A tree reduction of arrays whose inputs live on different workers.
pub(crate) async fn tree_reduction(c: &Client, cluster: &LocalCluster) {
    let before = cluster.scheduler_bytes_received().expect("in-process scheduler");
    let leaves: Vec<TaskFuture<WireArray>> =
        c.map("random_array", (0..16u64).map(|seed| vec![arg(&vec![64usize, 32]), arg(&seed)])).await.unwrap();
    c.wait(&leaves).await;
    let holders: std::collections::HashSet<String> = leaves.iter().flat_map(|f| f.who_has()).collect();
    assert!(holders.len() >= 2, "inputs should be spread over both workers: {holders:?}");
    // The expected value, computed here from the same leaves.
    let arrays = c.gather(&leaves).await.unwrap();
    let expected: f64 = arrays.iter().map(|a| a.cow::<f64>().unwrap().sum()).sum();
    let mut level = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit::<WireArray>("array_add", pair.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    let total = c.submit::<f64>("array_sum", vec![level[0].arg()]).await.unwrap();
    let got = total.result().await.unwrap();
    assert!((got - expected).abs() < 1e-9 * expected.abs(), "{got} vs {expected}");
    // 31 array tasks of 16 KiB results moved between workers; the scheduler saw only
    // control messages (keys and sizes), a small fraction of one array per task.
    let through_scheduler = cluster.scheduler_bytes_received().unwrap() - before;
    let array_bytes = 31 * 64 * 32 * 8;
    assert!(through_scheduler < array_bytes / 10, "{through_scheduler} bytes went through the scheduler");
}

/// as_completed that adds a new task per result until 100 tasks are done.
pub(crate) async fn as_completed_adding(c: &Client) {
    let first = c.map::<i64>("inc", (0..10i64).map(|i| vec![arg(&(i * 1000))])).await.unwrap();
    let mut stream = c.as_completed(first);
    let (mut done, mut submitted) = (0, 10);
    while let Some(f) = stream.next().await {
        let v = f.result().await.unwrap();
        done += 1;
        if submitted < 100 {
            stream.add(c.submit::<i64>("inc", vec![arg(&v)]).await.unwrap());
            submitted += 1;
        }
    }
    assert_eq!((done, submitted), (100, 100));
}

pub(crate) async fn persist_then_compute(c: &Client) {
    let mut g = Graph::new();
    let a = g.task("random_array", vec![arg(&vec![100usize, 100]), arg(&1u64)]);
    let b = g.task("random_array", vec![arg(&vec![100usize, 100]), arg(&2u64)]);
    let s = g.task("array_add", vec![courier_runtime::ArgSpec::Key(a), courier_runtime::ArgSpec::Key(b)]);
    let persisted = c.persist::<WireArray>(&g, std::slice::from_ref(&s)).await.unwrap();
    persisted[0].wait().await.unwrap();
    assert_eq!(persisted[0].status(), Status::Finished);
    // Compute on the persisted result: it is used in place on the workers.
    let mean = c.submit::<f64>("array_mean", vec![persisted[0].arg()]).await.unwrap().result().await.unwrap();
    let local: ArrayD<f64> = persisted[0].result().await.unwrap().to_array().unwrap();
    assert!((mean - local.mean().unwrap()).abs() < 1e-12);
    // compute() brings results back.
    let mut g = Graph::new();
    let x = g.task("inc", vec![arg(&1i64)]);
    let y = g.task("add", vec![courier_runtime::ArgSpec::Key(x), arg(&10i64)]);
    assert_eq!(c.compute::<i64>(&g, &[y]).await.unwrap(), vec![12]);
}

pub(crate) async fn failures_reach_the_client(c: &Client) {
    let f = c.submit::<()>("fail", vec![arg("boom: disk on fire")]).await.unwrap();
    match f.result().await {
        Err(TaskError::Failed { failure: Failure::Error { message }, .. }) => {
            assert!(message.contains("boom: disk on fire"), "{message}")
        }
        other => panic!("expected the remote error, got {other:?}"),
    }
    let dependent = c.submit::<i64>("inc", vec![f.arg()]).await.unwrap();
    let err = dependent.result().await.unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::Dependency { root, .. }) if &**root == f.key()), "{err:?}");
    assert!(err.to_string().contains("boom: disk on fire"), "{err}");
}

/// A cancelled future fails as cancelled at once, whether or not its task has started; so do
/// its dependents, and the cluster keeps working.
pub(crate) async fn cancel(c: &Client) {
    let slow = c.submit::<f64>("sleep", vec![arg(&0.5f64)]).await.unwrap();
    let dependent = c.submit::<f64>("sleep", vec![slow.arg()]).await.unwrap();
    c.cancel(&[&slow]).await.unwrap();
    assert_eq!(slow.status(), Status::Failed(Failure::Cancelled), "failed at once, not when the task ends");
    assert!(slow.result().await.unwrap_err().is_cancelled());
    assert!(dependent.result().await.unwrap_err().is_cancelled());
    map_gather_1000(c).await;
}

pub(crate) async fn retries(c: &Client) {
    let tag = format!("retry-{}", fastrand::u64(..));
    let ok = c.submit_with_retries::<i64>("flaky", vec![arg(&tag), arg(&2u32), arg(&7i64)], 2).await.unwrap();
    assert_eq!(ok.result().await.unwrap(), 7, "fails twice, then succeeds");
    let tag = format!("retry-{}", fastrand::u64(..));
    let not_enough = c.submit_with_retries::<i64>("flaky", vec![arg(&tag), arg(&2u32), arg(&7i64)], 1).await.unwrap();
    let err = not_enough.result().await.unwrap_err().to_string();
    assert!(err.contains("flaky failure 2 of 2"), "{err}");
}

pub(crate) async fn bad_input(c: &Client) {
    let unknown = c.submit::<i64>("no_such_function", vec![]).await.unwrap();
    let err = unknown.result().await.unwrap_err().to_string();
    assert!(err.contains("unknown function \"no_such_function\""), "{err}");
    let wrong = c.submit::<i64>("inc", vec![arg("not a number")]).await.unwrap();
    let err = wrong.result().await.unwrap_err().to_string();
    assert!(err.contains("wrong type"), "{err}");
    let arity = c.submit::<i64>("inc", vec![arg(&1i64), arg(&2i64)]).await.unwrap();
    assert!(arity.result().await.unwrap_err().to_string().contains("expected 1 arguments"));
    // A dependency on a future the client already released.
    let gone = c.submit::<i64>("inc", vec![arg(&1i64)]).await.unwrap();
    gone.wait().await.unwrap();
    let stale = gone.arg();
    drop(gone);
    let orphan = c.submit::<i64>("inc", vec![stale]).await.unwrap();
    let err = orphan.result().await.unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::Rejected { reason }) if reason.contains("does not know")), "{err}");
    // The cluster keeps working.
    map_gather_1000(c).await;
}

pub(crate) async fn scatter_and_use(c: &Client) {
    let data = c.scatter(&[10i64, 20, 30]).await.unwrap();
    assert!(data.iter().all(|f| f.status() == Status::Finished), "in place when scatter returns");
    let sum = c.submit::<i64>("add", data.iter().map(|f| f.arg()).collect()).await.unwrap();
    assert_eq!(sum.result().await.unwrap(), 60);
    assert_eq!(c.gather(&data).await.unwrap(), vec![10, 20, 30]);
}

/// Regression: replies on a pooled comm were matched by order, so a `gather` or `result`
/// abandoned mid-flight left its reply to be read as the answer to the next request.
pub(crate) async fn abandoned_requests_never_answer_others(c: &Client) {
    let xs = c.map::<i64>("inc", (0..64i64).map(|i| vec![arg(&(i * 100))])).await.unwrap();
    c.wait(&xs).await;
    for round in 0..8 {
        // Start a gather and abandon it once its requests are out.
        {
            let gather = c.gather(&xs);
            tokio::pin!(gather);
            let _ = futures::poll!(gather.as_mut());
        }
        // A result() lost in a select! to a branch that is ready at once.
        tokio::select! {
            biased;
            () = std::future::ready(()) => {}
            _ = xs[round].result() => {}
        }
        // The next requests on the same comms get their own answers.
        for (i, x) in xs.iter().enumerate().skip(round).step_by(7) {
            assert_eq!(x.result().await.unwrap(), i as i64 * 100 + 1, "round {round}, key {i}");
        }
        assert_eq!(c.gather(&xs).await.unwrap(), (0..64i64).map(|i| i * 100 + 1).collect::<Vec<_>>());
    }
}

/// Retirement: data on the retiring worker is still gatherable afterwards; retiring the last
/// worker holding data is refused.
pub(crate) async fn retirement(listen: &str) {
    let cluster = cluster(registry(), listen).await;
    let c = cluster.client().await.unwrap();
    let data =
        c.map::<WireArray>("random_array", (0..8u64).map(|s| vec![arg(&vec![32usize, 32]), arg(&s)])).await.unwrap();
    let before = c.gather(&data).await.unwrap();
    let on: std::collections::HashSet<String> = data.iter().flat_map(|f| f.who_has()).collect();
    assert_eq!(on.len(), 2, "data on both workers: {on:?}");
    let leaving = c.workers()[0].clone();
    c.retire_workers(std::slice::from_ref(&leaving)).await.unwrap();
    c.wait_for_workers(|w| !w.contains(&leaving)).await.unwrap();
    let after = c.gather(&data).await.unwrap();
    assert_eq!(before, after, "every result survived the retirement");
    let last = c.workers()[0].clone();
    let err = c.retire_workers(std::slice::from_ref(&last)).await.unwrap_err();
    assert!(matches!(err, ClusterError::Retire(courier_runtime::protocol::RetireError::Refused { .. })), "{err}");
    assert_eq!(c.workers(), vec![last]);
    assert_eq!(c.gather(&data).await.unwrap(), before);
    cluster.shutdown().await;
}

/// Work stealing: gated tasks all placed on the worker holding their input; the idle worker
/// steals queued ones (fetching the input from its peer), and each task runs exactly once.
pub(crate) async fn stealing(listen: &str) {
    let gate = Gate::new();
    let cluster = LocalCluster::in_process(registry(), listen, 2, 1, functions(gate.clone())).await.unwrap();
    let c = cluster.client().await.unwrap();
    let input = c.scatter(&[2.5f64]).await.unwrap();
    let home = input[0].who_has();
    let tasks: Vec<TaskFuture<f64>> = c.map("gated", (0..6).map(|_| vec![input[0].arg()])).await.unwrap();
    // One task runs at the gate on the home worker; a second arrives only when the idle
    // worker has stolen one.
    gate.arrived(2).await;
    gate.open();
    assert_eq!(c.gather(&tasks).await.unwrap(), vec![2.5; 6]);
    let ran_on: Vec<String> = tasks.iter().flat_map(|f| f.who_has()).collect();
    assert_eq!(ran_on.len(), 6, "each result on exactly one worker: {ran_on:?}");
    assert!(ran_on.iter().any(|w| !home.contains(w)), "the idle worker stole some: {ran_on:?}, input on {home:?}");
    cluster.shutdown().await;
}

/// Adaptive scaling: a burst of gated tasks scales the cluster up to the maximum; once they
/// finish, idleness scales it back to the minimum, and no result is lost on the way.
pub(crate) async fn adaptive(listen: &str) {
    let gate = Gate::new();
    let cluster = LocalCluster::in_process(registry(), listen, 1, 1, functions(gate.clone())).await.unwrap();
    let c = cluster.client().await.unwrap();
    let _adaptive = cluster.adapt(1, 4).await.unwrap();
    let burst: Vec<TaskFuture<f64>> = c.map("gated", (0..12).map(|i| vec![arg(&(i as f64))])).await.unwrap();
    let quick = c.map::<i64>("inc", (0..100i64).map(|i| vec![arg(&i)])).await.unwrap();
    // 12 unmeasured tasks call for 6 workers: it scales to the maximum, and no further.
    c.wait_for_workers(|w| w.len() == 4).await.unwrap();
    gate.arrived(4).await;
    gate.open();
    c.wait(&burst).await;
    c.wait_for_workers(|w| w.len() == 1).await.unwrap();
    assert_eq!(c.gather(&burst).await.unwrap(), (0..12).map(|i| i as f64).collect::<Vec<_>>(), "no result lost");
    assert_eq!(c.gather(&quick).await.unwrap(), (1..=100).collect::<Vec<_>>());
    cluster.shutdown().await;
}

/// Every scenario on one cluster.
pub(crate) async fn all_scenarios(listen: &str) {
    all_scenarios_with(registry(), listen).await;
}

/// Every scenario on one cluster built with `registry`.
pub(crate) async fn all_scenarios_with(registry: Registry, listen: &str) {
    let cluster = cluster(registry, listen).await;
    let c = cluster.client().await.unwrap();
    map_gather_1000(&c).await;
    dependency_chain(&c).await;
    tree_reduction(&c, &cluster).await;
    as_completed_adding(&c).await;
    persist_then_compute(&c).await;
    failures_reach_the_client(&c).await;
    cancel(&c).await;
    retries(&c).await;
    scatter_and_use(&c).await;
    bad_input(&c).await;
    abandoned_requests_never_answer_others(&c).await;
    c.close().await;
    // Everything this client held is released: the scheduler's tables empty.
    let stats = cluster.wait_for_scheduler(|s| s.tasks == 0 && s.clients == 0).await;
    assert_eq!(stats.outstanding, 0);
    cluster.shutdown().await;
}
