//! Unit tests of the scheduler alone, fed events at simulated instants. After every event the
//! harness checks every index against the tables.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_core::Payload;

use super::*;
use crate::protocol::{ArgSpec, Failure, RetireError, ScatterError, TaskSpec};

const CLIENT: ClientId = 100;
const OTHER: ClientId = 200;

/// A scheduler fed events at simulated instants; collects what it sends.
struct Harness {
    s: Scheduler,
    now: Instant,
}

impl Harness {
    fn with(config: SchedulerConfig, workers: &[(WorkerId, u32)]) -> Self {
        let mut h = Harness { s: Scheduler::with_seed(config, 7), now: Instant::now() };
        for &(id, nthreads) in workers {
            h.join(id, nthreads);
        }
        h.ev(Event::ClientJoined { id: CLIENT, name: "c".into() });
        h.ev(Event::ClientJoined { id: OTHER, name: "other".into() });
        h
    }

    fn new(workers: &[(WorkerId, u32)]) -> Self {
        Self::with(SchedulerConfig { tasks_per_thread: 2, allowed_failures: 2, ..SchedulerConfig::default() }, workers)
    }

    fn join(&mut self, id: WorkerId, nthreads: u32) -> Vec<Action> {
        self.ev(Event::WorkerJoined { id, name: format!("w{id}"), address: addr(id), nthreads, local: None })
    }

    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.now += Duration::from_millis(1);
        let out = self.s.handle(e, self.now);
        if let Err(e) = self.s.check_invariants() {
            panic!("invariant broken: {e}");
        }
        out
    }

    fn submit(&mut self, tasks: Vec<TaskSpec>) -> Vec<Action> {
        self.submit_as(CLIENT, tasks)
    }

    fn submit_as(&mut self, client: ClientId, tasks: Vec<TaskSpec>) -> Vec<Action> {
        self.ev(Event::FromClient { id: client, msg: ClientToScheduler::Submit { tasks } })
    }

    fn run(&self, key: &str) -> RunId {
        self.s.task_run(key).expect("known task")
    }

    fn finish(&mut self, w: WorkerId, key: &str, nbytes: u64) -> Vec<Action> {
        let run = self.run(key);
        let msg = WorkerToScheduler::Finished { key: key.into(), run, nbytes, seconds: 0.0 };
        self.ev(Event::FromWorker { id: w, msg })
    }

    fn processing_on(&self, key: &str) -> WorkerId {
        match self.s.task_state(key) {
            Some(TaskState::Processing(w)) => *w,
            s => panic!("{key} is {s:?}"),
        }
    }
}

fn addr(id: WorkerId) -> String {
    format!("tcp://10.0.0.{id}:9000")
}

fn task(key: &str, deps: &[&str]) -> TaskSpec {
    let mut args: Vec<ArgSpec> = deps.iter().map(|d| ArgSpec::Key((*d).into())).collect();
    args.push(ArgSpec::Value(Payload::new(&1).unwrap()));
    TaskSpec { key: key.into(), func: "f".into(), args, retries: 0, wanted: true }
}

fn unwanted(key: &str, deps: &[&str]) -> TaskSpec {
    TaskSpec { wanted: false, ..task(key, deps) }
}

fn computes(actions: &[Action]) -> Vec<(WorkerId, Key)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(w, SchedulerToWorker::Compute { key, .. }) => Some((*w, key.clone())),
            _ => None,
        })
        .collect()
}

fn to_client(actions: &[Action], client: ClientId) -> Vec<&SchedulerToClient> {
    actions
        .iter()
        .filter_map(|a| if let Action::ToClient(c, m) = a { (*c == client).then_some(m) } else { None })
        .collect()
}

fn failures(actions: &[Action]) -> Vec<(Key, Failure)> {
    to_client(actions, CLIENT)
        .into_iter()
        .filter_map(|m| match m {
            SchedulerToClient::Erred { key, failure } => Some((key.clone(), failure.clone())),
            _ => None,
        })
        .collect()
}

fn releases_to(actions: &[Action], w: WorkerId) -> Vec<Key> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(x, SchedulerToWorker::Release { keys }) if *x == w => Some(keys.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn independent_tasks_spread_over_least_loaded_workers_with_bounded_queues() {
    let mut h = Harness::new(&[(1, 1), (2, 1)]);
    let out = h.submit((0..6).map(|i| task(&format!("t{i}"), &[])).collect());
    let assigned = computes(&out);
    // Each worker takes nthreads * tasks_per_thread = 2; the rest wait in the scheduler.
    assert_eq!(assigned.len(), 4);
    assert_eq!(assigned.iter().filter(|(w, _)| *w == 1).count(), 2);
    assert_eq!(h.s.task_state("t4"), Some(&TaskState::Queued));
    let (w, k) = assigned[0].clone();
    let out = h.finish(w, &k, 8);
    assert_eq!(computes(&out), vec![(w, "t4".into())], "room on the worker takes the next queued task");
    assert!(to_client(&out, CLIENT).contains(&&SchedulerToClient::Done { key: k, holders: [addr(w).into()].into() }));
}

#[test]
fn dependents_go_where_their_largest_inputs_live_and_learn_who_has_them() {
    let mut h = Harness::new(&[(1, 4), (2, 4)]);
    let out = h.submit(vec![task("a", &[]), task("b", &[]), task("c", &["a", "b"])]);
    let placed: HashMap<String, WorkerId> = computes(&out).into_iter().map(|(w, k)| (k.to_string(), w)).collect();
    assert_ne!(placed["a"], placed["b"], "idle workers share the roots");
    assert_eq!(h.s.task_state("c"), Some(&TaskState::Waiting));
    h.finish(placed["a"], "a", 10);
    let out = h.finish(placed["b"], "b", 1_000_000);
    let Some(Action::ToWorker(w, SchedulerToWorker::Compute { who_has, run, .. })) =
        out.iter().find(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::Compute { .. })))
    else {
        panic!("c was not scheduled: {out:?}")
    };
    assert_eq!(*w, placed["b"], "c runs where the 1 MB input lives");
    assert_eq!(*run, h.run("c"));
    let who: HashMap<String, _> = who_has.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(who["a"], vec![addr(placed["a"])], "the worker fetches a from its peer directly");
}

#[test]
fn released_results_are_forgotten_once_dependents_finish_and_tables_empty() {
    let mut h = Harness::new(&[(1, 4)]);
    h.submit(vec![task("a", &[]), task("b", &["a"])]);
    h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Release { keys: vec!["a".into()] } });
    assert!(h.s.task_state("a").is_some(), "b still needs a");
    h.finish(1, "a", 1);
    let out = h.finish(1, "b", 1);
    assert_eq!(h.s.task_state("a"), Some(&TaskState::Released), "data released, lineage kept for b");
    assert_eq!(releases_to(&out, 1), vec![Key::from("a")]);
    h.ev(Event::ClientLeft { id: CLIENT });
    assert_eq!(h.s.task_count(), 0, "a client that leaves releases everything it wanted");
    assert_eq!(h.s.stats().outstanding, 0);
}

#[test]
fn graph_intermediates_are_released_as_soon_as_their_dependents_finish() {
    let mut h = Harness::new(&[(1, 4)]);
    h.submit(vec![unwanted("x", &[]), unwanted("y", &["x"]), task("z", &["y"])]);
    h.finish(1, "x", 1);
    h.finish(1, "y", 1);
    assert_eq!(h.s.task_state("x"), Some(&TaskState::Released));
    let out = h.finish(1, "z", 1);
    assert_eq!(h.s.task_state("y"), Some(&TaskState::Released));
    assert!(releases_to(&out, 1).contains(&Key::from("y")));
    h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Release { keys: vec!["z".into()] } });
    assert_eq!(h.s.task_count(), 0, "the whole graph is forgotten");
}

#[test]
fn errors_retry_then_propagate_to_dependents_as_typed_failures() {
    let mut h = Harness::new(&[(1, 4)]);
    let mut flaky = task("a", &[]);
    flaky.retries = 1;
    h.submit(vec![flaky, task("b", &["a"])]);
    let err = |h: &mut Harness| {
        let run = h.run("a");
        h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::Erred { key: "a".into(), run, message: "bad".into() } })
    };
    let first_run = h.run("a");
    let out = err(&mut h);
    assert_eq!(computes(&out), vec![(1, "a".into())], "one retry");
    assert_ne!(h.run("a"), first_run, "a retry is a new run");
    let out = err(&mut h);
    let errs = failures(&out);
    assert_eq!(errs.len(), 2);
    assert!(errs.contains(&("a".into(), Failure::Error { message: "bad".into() })));
    assert!(errs.contains(&(
        "b".into(),
        Failure::Dependency { root: "a".into(), cause: Box::new(Failure::Error { message: "bad".into() }) }
    )));
}

#[test]
fn unknown_dependencies_and_cancel_fail_with_typed_failures() {
    let mut h = Harness::new(&[(1, 1)]);
    let out = h.submit(vec![task("x", &["never-submitted"])]);
    assert!(matches!(&failures(&out)[0].1, Failure::Rejected { reason } if reason.contains("does not know")));
    // Kept as failed while wanted (later submissions inherit the failure), then forgotten.
    let out = h.submit(vec![task("y", &["x"])]);
    assert!(matches!(&failures(&out)[0].1, Failure::Dependency { root, .. } if &**root == "x"), "{out:?}");
    for k in ["x", "y"] {
        h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Release { keys: vec![k.into()] } });
    }
    assert_eq!(h.s.task_count(), 0, "a rejected task leaves nothing behind once released");
    h.submit(vec![task("slow", &[])]);
    let run = h.run("slow");
    let out = h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Cancel { keys: vec!["slow".into()] } });
    assert_eq!(failures(&out), vec![("slow".into(), Failure::Cancelled)]);
    assert_eq!(releases_to(&out, 1), vec![Key::from("slow")], "the worker is told to stop it");
    assert_eq!(h.s.task_count(), 0);
    // The worker finishing it anyway is told to drop the result.
    let msg = WorkerToScheduler::Finished { key: "slow".into(), run, nbytes: 1, seconds: 0.1 };
    let out = h.ev(Event::FromWorker { id: 1, msg });
    assert_eq!(releases_to(&out, 1), vec![Key::from("slow")]);
}

#[test]
fn dependency_cycles_are_rejected_at_submission_and_leave_nothing_behind() {
    let mut h = Harness::new(&[(1, 1)]);
    let out =
        h.submit(vec![task("a", &["c"]), task("b", &["a"]), task("c", &["b"]), task("d", &["c"]), task("ok", &[])]);
    let mut rejected: Vec<Key> = failures(&out).into_iter().map(|(k, _)| k).collect();
    rejected.sort();
    assert_eq!(rejected, ["a", "b", "c", "d"].map(Key::from));
    assert!(matches!(&failures(&out)[0].1, Failure::Rejected { reason } if reason.contains("cycle")));
    assert_eq!(computes(&out), vec![(1, "ok".into())], "the rest of the batch runs");
    assert_eq!(h.s.task_count(), 1);
    assert_eq!(h.s.adaptive_target(), 1, "cycles do not inflate the adaptive target");
    // A task depending on itself.
    let out = h.submit(vec![task("self", &["self"])]);
    assert_eq!(failures(&out).len(), 1);
}

#[test]
fn keys_belong_to_the_client_that_created_them() {
    let mut h = Harness::new(&[(1, 1)]);
    h.submit(vec![task("mine", &[])]);
    // Another client can neither cancel, release nor overwrite it.
    let other = |h: &mut Harness, msg| h.ev(Event::FromClient { id: OTHER, msg });
    let out = other(&mut h, ClientToScheduler::Cancel { keys: vec!["mine".into()] });
    assert!(out.is_empty(), "{out:?}");
    other(&mut h, ClientToScheduler::Release { keys: vec!["mine".into()] });
    assert!(h.s.task_state("mine").is_some());
    let out = h.submit_as(OTHER, vec![task("mine", &[])]);
    assert!(matches!(
        to_client(&out, OTHER)[..],
        [SchedulerToClient::Erred { failure: Failure::Rejected { reason }, .. }] if reason.contains("another client")
    ));
    let out = other(&mut h, ClientToScheduler::Scatter { id: 1, keys: vec![("mine".into(), 8)] });
    assert!(matches!(
        to_client(&out, OTHER)[..],
        [SchedulerToClient::ScatterTargets { result: Err(ScatterError::InvalidKey { .. }), .. }]
    ));
    // It may still use it as an input.
    h.finish(1, "mine", 8);
    let out = h.submit_as(OTHER, vec![task("uses", &["mine"])]);
    assert_eq!(computes(&out), vec![(1, "uses".into())]);
    // The owner's release works.
    h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Release { keys: vec!["mine".into()] } });
    h.finish(1, "uses", 8);
    h.ev(Event::FromClient { id: OTHER, msg: ClientToScheduler::Release { keys: vec!["uses".into()] } });
    assert_eq!(h.s.task_count(), 0);
}

#[test]
fn a_dead_workers_tasks_and_results_are_recomputed_elsewhere() {
    let mut h = Harness::new(&[(1, 4), (2, 4)]);
    let out = h.submit(vec![task("a", &[]), task("b", &["a"])]);
    let wa = computes(&out)[0].0;
    h.finish(wa, "a", 1);
    // b was sent to wa (a lives there); wa dies before finishing b.
    let out = h.ev(Event::WorkerLeft { id: wa });
    let other = if wa == 1 { 2 } else { 1 };
    assert_eq!(computes(&out), vec![(other, "a".into())], "lost a is recomputed first");
    assert!(to_client(&out, CLIENT).contains(&&SchedulerToClient::Lost { key: "a".into() }));
    assert!(out.contains(&Action::ToWorker(other, SchedulerToWorker::PeerGone { address: addr(wa) })));
    let out = h.finish(other, "a", 1);
    assert_eq!(computes(&out), vec![(other, "b".into())]);
    h.finish(other, "b", 1);
    assert!(matches!(h.s.task_state("b"), Some(TaskState::Memory(_))));
}

#[test]
fn a_task_that_keeps_killing_workers_fails_as_killed_worker() {
    let mut h = Harness::new(&[]);
    h.submit(vec![task("bomb", &[])]);
    for id in 1..=3 {
        h.join(id, 1);
        let out = h.ev(Event::WorkerLeft { id });
        if id == 3 {
            let f = failures(&out);
            assert_eq!(f, vec![("bomb".into(), Failure::KilledWorker { workers: vec![addr(1), addr(2), addr(3)] })]);
        }
    }
}

#[test]
fn results_lost_after_their_inputs_were_released_are_recomputed_from_lineage() {
    let mut h = Harness::new(&[(1, 4), (2, 4)]);
    h.submit(vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])]);
    for k in ["a", "b"] {
        h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Release { keys: vec![k.into()] } });
    }
    let wa = h.processing_on("a");
    h.finish(wa, "a", 1);
    h.finish(wa, "b", 1);
    assert_eq!(h.s.task_state("a"), Some(&TaskState::Released));
    // c is running on wa, which dies with b's data: a and then b are recomputed.
    let out = h.ev(Event::WorkerLeft { id: wa });
    let other = if wa == 1 { 2 } else { 1 };
    assert_eq!(computes(&out), vec![(other, "a".into())]);
    let out = h.finish(other, "a", 1);
    assert_eq!(computes(&out), vec![(other, "b".into())]);
    let out = h.finish(other, "b", 1);
    assert_eq!(computes(&out), vec![(other, "c".into())]);
}

/// Regression: lineage was recomputed recursively and a chain of 6,000 released tasks
/// overflowed the stack when the worker holding its end died.
#[test]
fn a_deep_released_lineage_is_recomputed_without_recursion() {
    const N: usize = 20_000;
    let mut h = Harness::with(SchedulerConfig { tasks_per_thread: 2, ..SchedulerConfig::default() }, &[(1, 1), (2, 1)]);
    let keys: Vec<Key> = (0..N).map(|i| Key::from(format!("k{i}"))).collect();
    let mut specs = vec![unwanted(&keys[0], &[])];
    for i in 1..N {
        specs.push(if i == N - 1 { task(&keys[i], &[&keys[i - 1]]) } else { unwanted(&keys[i], &[&keys[i - 1]]) });
    }
    // Submitted and run without the per-event invariant check (it is O(tables)).
    let mut now = h.now;
    let mut step = |s: &mut Scheduler, e| {
        now += Duration::from_millis(1);
        s.handle(e, now)
    };
    for chunk in specs.chunks(crate::protocol::bounds::MAX_TASKS_PER_SUBMIT) {
        step(&mut h.s, Event::FromClient { id: CLIENT, msg: ClientToScheduler::Submit { tasks: chunk.to_vec() } });
    }
    for k in &keys {
        let run = h.s.task_run(k).unwrap();
        let msg = WorkerToScheduler::Finished { key: k.clone(), run, nbytes: 1, seconds: 0.0 };
        let w = match h.s.task_state(k) {
            Some(TaskState::Processing(w)) => *w,
            s => panic!("{k}: {s:?}"),
        };
        step(&mut h.s, Event::FromWorker { id: w, msg });
    }
    assert_eq!(h.s.task_state(&keys[N - 2]), Some(&TaskState::Released));
    let holder = match h.s.task_state(&keys[N - 1]) {
        Some(TaskState::Memory(hs)) => hs[0],
        s => panic!("{s:?}"),
    };
    let out = step(&mut h.s, Event::WorkerLeft { id: holder });
    let survivor = if holder == 1 { 2 } else { 1 };
    assert_eq!(computes(&out), vec![(survivor, keys[0].clone())], "the chain restarts at its root");
    h.s.check_invariants().unwrap();
    assert_eq!(h.s.stats().outstanding, N);
}

#[test]
fn a_worker_missing_a_dependency_gets_it_recomputed() {
    let mut h = Harness::new(&[(1, 4), (2, 4)]);
    let out = h.submit(vec![task("a", &[])]);
    let wa = computes(&out)[0].0;
    h.finish(wa, "a", 1);
    h.ev(Event::WorkerJoined { id: 3, name: "w3".into(), address: addr(3), nthreads: 4, local: None });
    h.submit(vec![task("b", &["a"])]);
    let wb = h.processing_on("b");
    let run = h.run("b");
    let msg = WorkerToScheduler::MissingData { key: "b".into(), run, dep: "a".into(), tried: vec![addr(wa)] };
    let out = h.ev(Event::FromWorker { id: wb, msg });
    assert_eq!(releases_to(&out, wa), vec![Key::from("a")], "the holder that failed is told to drop it");
    assert!(computes(&out).iter().any(|(_, k)| &**k == "a"), "{out:?}");
    assert_eq!(h.s.task_state("b"), Some(&TaskState::Waiting));
    // A stale report of the old run changes nothing.
    let msg = WorkerToScheduler::MissingData { key: "b".into(), run, dep: "a".into(), tried: vec![] };
    assert!(h.ev(Event::FromWorker { id: wb, msg }).is_empty());
}

#[test]
fn retirement_copies_unique_results_then_shuts_the_worker_down() {
    let mut h = Harness::new(&[(1, 4), (2, 4)]);
    h.submit(vec![task("a", &[])]);
    let wa = h.processing_on("a");
    h.finish(wa, "a", 8);
    let other = if wa == 1 { 2 } else { 1 };
    let out = h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Retire { id: 7, workers: vec![addr(wa)] } });
    assert!(
        out.contains(&Action::ToWorker(other, SchedulerToWorker::Replicate { key: "a".into(), from: vec![addr(wa)] }))
    );
    // Nothing new is placed on a retiring worker.
    let out = h.submit(vec![task("b", &[])]);
    assert_eq!(computes(&out), vec![(other, "b".into())]);
    h.finish(other, "b", 1);
    let out = h.ev(Event::FromWorker { id: other, msg: WorkerToScheduler::Replicated { key: "a".into(), ok: true } });
    assert!(out.contains(&Action::ToWorker(wa, SchedulerToWorker::Shutdown)));
    assert!(to_client(&out, CLIENT).contains(&&SchedulerToClient::Retired { id: 7, result: Ok(()) }));
    // The owner hears where its result went before it hears that the worker is gone: a
    // gather started on the news of the departure finds the new holder, not the old one.
    let news = to_client(&out, CLIENT);
    let moved = news
        .iter()
        .position(|m| **m == SchedulerToClient::Done { key: "a".into(), holders: [addr(other).into()].into() });
    let gone =
        news.iter().position(|m| matches!(m, SchedulerToClient::Workers { removed, .. } if removed == &[addr(wa)]));
    assert!(moved.is_some() && gone.is_some() && moved < gone, "news in this order: {news:?}");
    assert_eq!(h.s.task_state("a"), Some(&TaskState::Memory(smallvec::smallvec![other])));
    assert_eq!(h.s.stats().workers, 1);
}

#[test]
fn retirement_is_refused_when_nobody_can_take_the_data() {
    let mut h = Harness::new(&[(1, 4)]);
    h.submit(vec![task("a", &[])]);
    h.finish(1, "a", 8);
    let out = h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Retire { id: 1, workers: vec![addr(1)] } });
    assert!(
        matches!(
            to_client(&out, CLIENT)[..],
            [SchedulerToClient::Retired { result: Err(RetireError::Refused { .. }), .. }]
        ),
        "{out:?}"
    );
    let out = h.ev(Event::FromClient {
        id: CLIENT,
        msg: ClientToScheduler::Retire { id: 2, workers: vec!["tcp://nowhere:1".into()] },
    });
    assert!(matches!(
        to_client(&out, CLIENT)[..],
        [SchedulerToClient::Retired { result: Err(RetireError::UnknownWorker { .. }), .. }]
    ));
    // The worker stays and keeps working.
    let out = h.submit(vec![task("b", &[])]);
    assert_eq!(computes(&out), vec![(1, "b".into())]);
}

/// Regression: retiring a busy worker that then disconnected left it in the pending
/// retirement, and the next finished task panicked (`self.workers[w]`), ending the scheduler.
#[test]
fn a_busy_retiring_worker_that_dies_ends_its_retirement_with_an_error() {
    let mut h = Harness::new(&[(1, 1), (2, 1)]);
    h.submit(vec![task("long", &[]), task("other", &[])]);
    let w = h.processing_on("long");
    let survivor = h.processing_on("other");
    h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Retire { id: 9, workers: vec![addr(w)] } });
    let run = h.run("long");
    h.ev(Event::FromWorker { id: w, msg: WorkerToScheduler::StealReply { key: "long".into(), run, stolen: false } });
    let out = h.ev(Event::WorkerLeft { id: w });
    assert!(
        to_client(&out, CLIENT).contains(&&SchedulerToClient::Retired {
            id: 9,
            result: Err(RetireError::Died { workers: vec![addr(w)] })
        })
    );
    // Tasks keep finishing; nothing panics.
    h.finish(survivor, "other", 1);
    let long_on = h.processing_on("long");
    h.finish(long_on, "long", 1);
    assert!(matches!(h.s.task_state("long"), Some(TaskState::Memory(_))));
}

#[test]
fn a_silent_worker_is_removed_after_the_timeout_in_simulated_time() {
    let mut h = Harness::new(&[(1, 1), (2, 1)]);
    h.s.config.worker_timeout = Duration::from_secs(10);
    // The deadlines queued at registration use the default; reset them.
    h.s.timeouts.clear();
    for id in [1, 2] {
        h.s.timeouts.push(std::cmp::Reverse((h.now + Duration::from_secs(10), id)));
    }
    h.submit(vec![task("a", &[]), task("b", &[])]);
    h.now += Duration::from_secs(6);
    h.ev(Event::FromWorker { id: 2, msg: WorkerToScheduler::Heartbeat });
    assert!(h.ev(Event::Tick).iter().all(|a| !matches!(a, Action::DropWorker { .. })), "6 s of silence is fine");
    h.now += Duration::from_secs(6);
    let out = h.ev(Event::Tick);
    assert!(
        out.iter().any(|a| matches!(a, Action::DropWorker { id: 1, .. })),
        "12 s of silence from worker 1: {out:?}"
    );
    assert!(!out.iter().any(|a| matches!(a, Action::DropWorker { id: 2, .. })), "worker 2 heartbeated");
    let moved = computes(&out);
    assert!(moved.iter().all(|(w, _)| *w == 2) && !moved.is_empty(), "worker 1's task moves to worker 2: {out:?}");
}

/// Scatters `key` (8 MiB) to one of workers 1 and 2; returns which.
fn scatter_8_mib(h: &mut Harness, key: &str) -> WorkerId {
    let out = h.ev(Event::FromClient {
        id: CLIENT,
        msg: ClientToScheduler::Scatter { id: 1, keys: vec![(key.into(), 8 << 20)] },
    });
    let Some(&Action::ToWorker(holder, SchedulerToWorker::ExpectScatter { id: sid, .. })) = out.first() else {
        panic!("{out:?}")
    };
    h.ev(Event::FromWorker { id: holder, msg: WorkerToScheduler::ScatterReady { id: sid } });
    h.ev(Event::FromWorker { id: holder, msg: WorkerToScheduler::Stored { key: key.into(), nbytes: 8 << 20 } });
    holder
}

#[test]
fn tasks_stay_with_large_inputs_unless_they_take_longer_than_moving_them() {
    // Worker 1 holds d (8 MiB), one thread and room for 2 tasks; worker 2 is empty.
    let config = SchedulerConfig { tasks_per_thread: 2, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1), (2, 1)]);
    let holder = scatter_8_mib(&mut h, "d");
    let other = 3 - holder;
    // Slices of d (unmeasured: assumed quicker than moving 8 MiB): all go to the holder, past
    // its room, and none is stolen by the idle worker.
    let out = h.submit((0..6).map(|i| task(&format!("slice-{i}"), &["d"])).collect());
    let placed = computes(&out);
    assert_eq!(placed.len(), 6);
    assert!(placed.iter().all(|(w, _)| *w == holder), "{placed:?}");
    let out = h.ev(Event::Tick);
    assert!(!out.iter().any(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::Steal { .. }))), "{out:?}");
    // Once measured at 1 s a run (8 MiB moves in ~8 ms at 1 GiB/s), the idle worker steals.
    let run = h.run("slice-0");
    let msg = WorkerToScheduler::Finished { key: "slice-0".into(), run, nbytes: 1, seconds: 1.0 };
    h.ev(Event::FromWorker { id: holder, msg });
    let out = h.ev(Event::Tick);
    assert!(
        out.iter().any(|a| matches!(a, Action::ToWorker(w, SchedulerToWorker::Steal { .. }) if *w == holder)),
        "{out:?}"
    );
    // And a new slow task with the holder busy goes to the worker with room.
    let out = h.submit(vec![task("slice-late", &["d"])]);
    assert_eq!(computes(&out), vec![(other, Key::from("slice-late"))]);
}

#[test]
fn with_free_transfers_tasks_on_large_inputs_are_placed_by_load_alone() {
    // As LocalCluster over inproc:// configures it: moving a value moves no bytes.
    let config =
        SchedulerConfig { tasks_per_thread: 2, transfer_bandwidth: f64::INFINITY, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1), (2, 1)]);
    let holder = scatter_8_mib(&mut h, "d");
    let other = 3 - holder;
    // Unmeasured slices of 8 MiB (which stay with their input at a finite bandwidth): the
    // holder takes what it has room for, the other worker the rest.
    let placed = computes(&h.submit((0..4).map(|i| task(&format!("slice-{i}"), &["d"])).collect()));
    let on = |w| placed.iter().filter(|(x, _)| *x == w).count();
    assert_eq!((on(holder), on(other)), (2, 2), "{placed:?}");
}

#[test]
fn stealing_moves_unstarted_tasks_only_when_the_victim_agrees() {
    let mut h = Harness::with(SchedulerConfig { tasks_per_thread: 8, ..SchedulerConfig::default() }, &[(1, 1)]);
    let out = h.ev(Event::FromClient {
        id: CLIENT,
        msg: ClientToScheduler::Scatter { id: 1, keys: vec![("d".into(), 1 << 10)] },
    });
    let Some(Action::ToWorker(1, SchedulerToWorker::ExpectScatter { id: sid, .. })) = out.first() else {
        panic!("{out:?}")
    };
    let sid = *sid;
    h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::ScatterReady { id: sid } });
    h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::Stored { key: "d".into(), nbytes: 1 << 10 } });
    // Every task needs d (small: it moves freely), which lives on worker 1: they all go there.
    let out = h.submit((0..4).map(|i| task(&format!("t{i}"), &["d"])).collect());
    assert!(computes(&out).iter().all(|(w, _)| *w == 1));
    h.join(2, 1);
    let out = h.ev(Event::Tick);
    let steals: Vec<(Key, RunId)> = out
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(1, SchedulerToWorker::Steal { key, run }) => Some((key.clone(), *run)),
            _ => None,
        })
        .collect();
    assert_eq!(steals.len(), 1, "one idle thread, one steal: {out:?}");
    // The victim had already started it: nothing moves, and it is not asked again.
    let (key, run) = steals[0].clone();
    let out =
        h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::StealReply { key: key.clone(), run, stolen: false } });
    assert!(computes(&out).is_empty());
    let out = h.ev(Event::Tick);
    let Some((key2, run2)) = out.iter().find_map(|a| match a {
        Action::ToWorker(1, SchedulerToWorker::Steal { key, run }) => Some((key.clone(), *run)),
        _ => None,
    }) else {
        panic!("{out:?}")
    };
    assert_ne!(key2, key, "a started task is not asked for again");
    let out = h.ev(Event::FromWorker {
        id: 1,
        msg: WorkerToScheduler::StealReply { key: key2.clone(), run: run2, stolen: true },
    });
    assert_eq!(computes(&out), vec![(2, key2.clone())]);
    // A late Finished from the victim's superseded run changes nothing but its data.
    let msg = WorkerToScheduler::Finished { key: key2.clone(), run: run2, nbytes: 1, seconds: 0.0 };
    let out = h.ev(Event::FromWorker { id: 1, msg });
    assert_eq!(releases_to(&out, 1), vec![key2.clone()]);
    assert_eq!(h.s.task_state(&key2), Some(&TaskState::Processing(2)));
}

#[test]
fn the_adaptive_target_follows_queued_work_and_measured_durations() {
    let mut h = Harness::new(&[(1, 1)]);
    assert_eq!(h.s.adaptive_target(), 0, "no work, no workers needed");
    h.submit((0..10).map(|i| task(&format!("t{i}"), &[])).collect());
    assert_eq!(h.s.adaptive_target(), 5, "10 tasks x 0.5 s (unmeasured) = 5 worker-seconds");
    assert_eq!(h.s.snapshot(h.now).adaptive_target, 5, "the dashboard's metric shows it");
    // Measured: these tasks take 2 s each; 9 remain.
    let run = h.run("t0");
    let msg = WorkerToScheduler::Finished { key: "t0".into(), run, nbytes: 1, seconds: 2.0 };
    h.ev(Event::FromWorker { id: 1, msg });
    assert_eq!(h.s.adaptive_target(), 9, "never more workers than tasks");
    for i in 1..10 {
        let k = format!("t{i}");
        let w = h.processing_on(&k);
        h.finish(w, &k, 1);
    }
    assert_eq!(h.s.adaptive_target(), 0);
}

#[test]
fn scatter_issues_tickets_and_lost_scattered_data_fails_its_dependents() {
    let mut h = Harness::new(&[(1, 1), (2, 1)]);
    let out =
        h.ev(Event::FromClient { id: CLIENT, msg: ClientToScheduler::Scatter { id: 5, keys: vec![("s".into(), 8)] } });
    let (w, sid, ticket) = match &out[..] {
        [Action::ToWorker(w, SchedulerToWorker::ExpectScatter { id, keys })] => (*w, *id, keys[0].1),
        other => panic!("{other:?}"),
    };
    let out = h.ev(Event::FromWorker { id: w, msg: WorkerToScheduler::ScatterReady { id: sid } });
    assert!(to_client(&out, CLIENT).contains(&&SchedulerToClient::ScatterTargets {
        id: 5,
        result: Ok(vec![crate::protocol::ScatterTarget { key: "s".into(), worker: addr(w), ticket }])
    }));
    // A Stored from another worker (a forged store) is refused.
    let other = if w == 1 { 2 } else { 1 };
    let out = h.ev(Event::FromWorker { id: other, msg: WorkerToScheduler::Stored { key: "s".into(), nbytes: 8 } });
    assert_eq!(releases_to(&out, other), vec![Key::from("s")]);
    h.ev(Event::FromWorker { id: w, msg: WorkerToScheduler::Stored { key: "s".into(), nbytes: 8 } });
    h.submit(vec![task("use", &["s"])]);
    let out = h.ev(Event::WorkerLeft { id: w });
    let f = failures(&out);
    assert!(f.iter().any(|(k, f)| &**k == "s" && matches!(f, Failure::DataLost { .. })), "{f:?}");
    assert!(f.iter().any(|(k, f)| &**k == "use" && matches!(f.root_cause(), Failure::DataLost { .. })), "{f:?}");
}

/// Regression: a registered worker announcing 2^32 - 1 threads absorbed 60,000 tasks.
#[test]
fn registrations_outside_the_bounds_are_refused() {
    let mut h = Harness::new(&[(1, 1)]);
    for (id, name, address, nthreads) in [
        (2, "big", addr(2), u32::MAX),
        (3, "zero", addr(3), 0),
        (4, "dup", addr(1), 1),
        (5, "bad", "not a url".to_owned(), 1),
        (6, "", addr(6), 1),
    ] {
        let out = h.ev(Event::WorkerJoined { id, name: name.into(), address, nthreads, local: None });
        assert!(matches!(&out[..], [Action::DropWorker { id: x, .. }] if *x == id), "{name}: {out:?}");
    }
    assert_eq!(h.s.stats().workers, 1);
}

/// Regression: requeueing a departed worker's tasks called `queued.retain` once per task
/// (quadratic: 60,000 tasks stalled the scheduler for 9-15 s). Requeueing is O(1) per task
/// and the queue never holds more than twice its live entries plus a constant.
#[test]
fn a_departing_worker_with_many_tasks_is_requeued_in_linear_work() {
    const N: usize = 60_000;
    let config =
        SchedulerConfig { tasks_per_thread: N, worker_saturation: f64::INFINITY, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1)]);
    let mut now = h.now;
    let specs: Vec<TaskSpec> = (0..N).map(|i| task(&format!("t{i}"), &[])).collect();
    let mut step = |s: &mut Scheduler, e| {
        now += Duration::from_millis(1);
        s.handle(e, now)
    };
    for chunk in specs.chunks(crate::protocol::bounds::MAX_TASKS_PER_SUBMIT) {
        step(&mut h.s, Event::FromClient { id: CLIENT, msg: ClientToScheduler::Submit { tasks: chunk.to_vec() } });
    }
    assert_eq!(h.s.workers[&1].processing.len(), N);
    step(&mut h.s, Event::WorkerJoined { id: 2, name: "w2".into(), address: addr(2), nthreads: 1, local: None });
    h.s.config.tasks_per_thread = 4;
    let out = step(&mut h.s, Event::WorkerLeft { id: 1 });
    assert_eq!(computes(&out).len(), 4, "the survivor takes what it has room for");
    assert_eq!(h.s.stats().queued, N - 4);
    let entries = h.s.queue.len() + h.s.root_queue.len();
    assert!(entries <= 2 * h.s.queued + 1024, "queue of {entries} for {} queued", h.s.queued);
    h.s.check_invariants().unwrap();
}

#[test]
fn a_submission_over_the_bound_cuts_the_client_off_and_bad_specs_are_rejected() {
    let mut h = Harness::new(&[(1, 1)]);
    let n = crate::protocol::bounds::MAX_TASKS_PER_SUBMIT + 1;
    let out = h.submit((0..n).map(|i| task(&format!("t{i}"), &[])).collect());
    assert!(matches!(&out[..], [Action::DropClient { id: CLIENT, reason }] if reason.contains("exceeds")), "{out:?}");
    assert_eq!(h.s.task_count(), 0);
    let bad = TaskSpec { key: "k\n".into(), ..task("x", &[]) };
    let out = h.submit(vec![bad, TaskSpec { retries: 1_000_000, ..task("r", &[]) }]);
    assert_eq!(failures(&out).len(), 2);
}

#[test]
fn memory_is_returned_when_tables_shrink() {
    let mut h = Harness::new(&[(1, 1)]);
    let mut now = h.now;
    let mut step = |s: &mut Scheduler, e| {
        now += Duration::from_millis(1);
        s.handle(e, now)
    };
    let specs: Vec<TaskSpec> = (0..50_000).map(|i| task(&format!("t{i}"), &[])).collect();
    for chunk in specs.chunks(crate::protocol::bounds::MAX_TASKS_PER_SUBMIT) {
        step(&mut h.s, Event::FromClient { id: CLIENT, msg: ClientToScheduler::Submit { tasks: chunk.to_vec() } });
    }
    let big = h.s.tasks.capacity();
    step(&mut h.s, Event::ClientLeft { id: CLIENT });
    step(&mut h.s, Event::Tick);
    assert_eq!(h.s.task_count(), 0);
    assert!(h.s.tasks.capacity() < big / 8, "capacity {} after holding {big}", h.s.tasks.capacity());
}

/// Regression (found by the simulator): a running task whose input was lost meanwhile, given up
/// to a steal, was placed as if the input were still there. It now waits for the input.
#[test]
fn a_stolen_run_whose_input_was_lost_waits_for_it_again() {
    let mut h = Harness::with(SchedulerConfig { tasks_per_thread: 1, ..SchedulerConfig::default() }, &[(1, 1), (2, 1)]);
    h.submit(vec![task("a", &[])]);
    let wa = h.processing_on("a");
    h.finish(wa, "a", 1);
    let other = if wa == 1 { 2 } else { 1 };
    // The holder of `a` is kept busy, so `t0` (which needs `a`) runs on the other worker.
    h.submit(vec![task("blocker", &["a"])]);
    assert_eq!(h.processing_on("blocker"), wa);
    h.submit(vec![task("t0", &["a"])]);
    assert_eq!(h.processing_on("t0"), other);
    // `a`'s holder dies: `a` must be recomputed; `t0` keeps running (it may have fetched `a`).
    h.ev(Event::WorkerLeft { id: wa });
    assert_eq!(h.processing_on("t0"), other);
    // `t0` is stolen before it starts: it must wait for `a`, not be placed without it.
    let run = h.run("t0");
    h.s.tasks.get_mut(&Key::from("t0")).unwrap().stealing = true;
    h.s.steals_in_flight += 1;
    h.ev(Event::FromWorker { id: other, msg: WorkerToScheduler::StealReply { key: "t0".into(), run, stolen: true } });
    assert_eq!(h.s.task_state("t0"), Some(&TaskState::Waiting), "its input is not in memory");
}

#[test]
fn workers_of_one_host_are_introduced_to_each_other_and_clients_hear_of_all() {
    use crate::protocol::LocalContact;
    let contact = |id: WorkerId, host: &str| LocalContact { address: format!("shm://@w{id}"), host: host.into() };
    let mut h = Harness::new(&[]);
    let join = |h: &mut Harness, id: WorkerId, local: Option<LocalContact>| {
        h.ev(Event::WorkerJoined { id, name: format!("w{id}"), address: addr(id), nthreads: 1, local })
    };
    let out = join(&mut h, 1, Some(contact(1, "a")));
    assert!(!out.iter().any(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::LocalPeers { .. }))), "alone");
    let to_client = |out: &[Action]| {
        out.iter()
            .find_map(|a| match a {
                Action::ToClient(CLIENT, SchedulerToClient::Workers { local, .. }) => Some(local.clone()),
                _ => None,
            })
            .expect("clients hear of every worker")
    };
    assert_eq!(to_client(&out), vec![(addr(1), contact(1, "a"))]);
    // Another host, and a worker without a contact: nobody is introduced.
    let out = join(&mut h, 2, Some(contact(2, "b")));
    assert!(!out.iter().any(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::LocalPeers { .. }))), "{out:?}");
    let out = join(&mut h, 3, None);
    assert_eq!(to_client(&out), vec![]);
    assert!(!out.iter().any(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::LocalPeers { .. }))), "{out:?}");
    // A second worker on host a: it learns of 1, and 1 of it; nobody else hears.
    let out = join(&mut h, 4, Some(contact(4, "a")));
    let introduced: Vec<(WorkerId, Vec<(String, LocalContact)>)> = out
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(w, SchedulerToWorker::LocalPeers { peers }) => Some((*w, peers.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        introduced,
        vec![(4, vec![(addr(1), contact(1, "a"))]), (1, vec![(addr(4), contact(4, "a"))])],
        "{out:?}"
    );
    // A client joining later hears of every contact; a departed worker's is forgotten.
    h.ev(Event::WorkerLeft { id: 1 });
    let out = join(&mut h, 5, Some(contact(5, "a")));
    let introduced: Vec<WorkerId> = out
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(w, SchedulerToWorker::LocalPeers { .. }) => Some(*w),
            _ => None,
        })
        .collect();
    assert_eq!(introduced, vec![5, 4], "worker 1 left and is not introduced");
    let out = h.ev(Event::ClientJoined { id: 300, name: "late".into() });
    let Some(Action::ToClient(300, SchedulerToClient::Workers { local, .. })) = out.first() else { panic!("{out:?}") };
    let mut names: Vec<&str> = local.iter().map(|(a, _)| a.as_str()).collect();
    names.sort();
    let mut want = [addr(2), addr(4), addr(5)];
    want.sort();
    assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>());
    // Invalid contacts are ignored, not trusted.
    let out = join(&mut h, 6, Some(LocalContact { address: "not a url".into(), host: "a".into() }));
    assert!(!out.iter().any(|a| matches!(a, Action::ToWorker(_, SchedulerToWorker::LocalPeers { .. }))), "{out:?}");
}

// ---- root-task queuing, paused workers, lost spilled data ----

fn finish_after(h: &mut Harness, w: WorkerId, key: &str, seconds: f64) -> Vec<Action> {
    let run = h.run(key);
    let msg = WorkerToScheduler::Finished { key: key.into(), run, nbytes: 8, seconds };
    h.ev(Event::FromWorker { id: w, msg })
}

#[test]
fn root_tasks_are_held_back_to_saturation_but_dependents_are_not() {
    let config = SchedulerConfig { tasks_per_thread: 64, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 2)]);
    let out = h.submit((0..20).map(|i| task(&format!("r{i}"), &[])).collect());
    // ceil(2 threads × 1.1) = 3 root tasks; the other 17 wait on the scheduler.
    assert_eq!(computes(&out).len(), 3);
    assert_eq!(h.s.stats().queued, 17);
    // A slow root function keeps the limit: one finish lets exactly one more in.
    let out = finish_after(&mut h, 1, "r0", 1.0);
    assert_eq!(computes(&out).len(), 1);
    // Tasks with dependencies are not held back: ten dependents of r0 all go out.
    let out = h.submit((0..10).map(|i| task(&format!("d{i}"), &["r0"])).collect());
    assert_eq!(computes(&out).len(), 10);
}

#[test]
fn held_back_root_tasks_run_in_submission_order_across_submissions() {
    let config = SchedulerConfig { tasks_per_thread: 64, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 2)]);
    // A quick function `g` (measured at 100 µs: 100 slots per thread, capped at 64) ...
    let quick = |key: &str| TaskSpec { func: "g".into(), ..task(key, &[]) };
    h.submit(vec![quick("g0")]);
    finish_after(&mut h, 1, "g0", 100e-6);
    // ... and a slow one `f` (1 s: saturation, ceil(2 × 1.1) = 3 slots).
    let out = h.submit((0..6).map(|i| task(&format!("a{i}"), &[])).collect());
    let started: Vec<Key> = computes(&out).into_iter().map(|(_, k)| k).collect();
    assert_eq!(started, ["a0", "a1", "a2"].map(Key::from), "3 slots: the first three");
    finish_after(&mut h, 1, "a0", 1.0);
    // Room for a `g` task, but three `f` tasks are held back: the new one waits behind them
    // instead of overtaking.
    assert!(computes(&h.submit(vec![quick("g1")])).is_empty());
    let mut order = Vec::new();
    for done in ["a1", "a2", "a3", "a4"] {
        let out = finish_after(&mut h, 1, done, 1.0);
        order.extend(computes(&out).into_iter().map(|(_, k)| k));
    }
    assert_eq!(order, ["a4", "a5", "g1"].map(Key::from));
    assert_eq!(h.s.stats().queued, 0);
}

#[test]
fn short_root_functions_get_a_window_of_slots_so_they_never_wait_on_a_round_trip() {
    let config = SchedulerConfig { tasks_per_thread: 64, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1)]);
    let out = h.submit((0..200).map(|i| task(&format!("r{i}"), &[])).collect());
    assert_eq!(computes(&out).len(), 2, "unmeasured: saturation alone");
    // Measured at 100 µs: a 5 ms window is 50 slots per thread.
    let out = finish_after(&mut h, 1, "r0", 100e-6);
    assert_eq!(computes(&out).len(), 49, "the worker fills up to 50 tasks");
    assert_eq!(h.s.root_slots(1, &Key::from("f")), 50);
    // At 1 µs the window exceeds tasks_per_thread, the cap.
    let out = finish_after(&mut h, 1, "r1", 1e-6);
    assert!(!computes(&out).is_empty());
    assert_eq!(h.s.root_slots(1, &Key::from("f")), 64);
    // Queuing off: every root task fills tasks_per_thread at once.
    let config =
        SchedulerConfig { tasks_per_thread: 64, worker_saturation: f64::INFINITY, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1)]);
    assert_eq!(computes(&h.submit((0..200).map(|i| task(&format!("r{i}"), &[])).collect())).len(), 64);
}

fn memory(paused: bool) -> WorkerToScheduler {
    WorkerToScheduler::Memory(crate::protocol::WorkerMemory { limit: 1000, paused, ..Default::default() })
}

fn steals_to(actions: &[Action], w: WorkerId) -> Vec<(Key, RunId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToWorker(x, SchedulerToWorker::Steal { key, run }) if *x == w => Some((key.clone(), *run)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_paused_worker_gets_nothing_new_and_its_unstarted_runs_move_elsewhere() {
    let config =
        SchedulerConfig { tasks_per_thread: 4, worker_saturation: f64::INFINITY, ..SchedulerConfig::default() };
    let mut h = Harness::with(config, &[(1, 1)]);
    h.submit((0..4).map(|i| task(&format!("t{i}"), &[])).collect());
    assert!((0..4).all(|i| h.processing_on(&format!("t{i}")) == 1));
    let out = h.ev(Event::FromWorker { id: 1, msg: memory(true) });
    let mut asked = steals_to(&out, 1);
    asked.sort();
    assert_eq!(asked.len(), 4, "every run it holds is asked back");
    // A second worker joins: nothing goes to the paused one, and the runs it gives up go there.
    h.join(2, 1);
    let out = h.submit(vec![task("new", &[])]);
    assert_eq!(computes(&out), vec![(2, Key::from("new"))]);
    // t0 is executing (refused); t1..t3 are given up and placed on worker 2.
    let (key, run) = asked[0].clone();
    h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::StealReply { key, run, stolen: false } });
    let mut moved = Vec::new();
    for (key, run) in asked[1..].iter().cloned() {
        let out = h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::StealReply { key, run, stolen: true } });
        moved.extend(computes(&out));
    }
    assert_eq!(h.processing_on("t0"), 1);
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(moved.iter().all(|(w, _)| *w == 2), "{moved:?}");
    // Resumed: placeable again.
    h.ev(Event::FromWorker { id: 1, msg: memory(false) });
    let out = h.submit(vec![task("after", &[])]);
    assert_eq!(computes(&out), vec![(1, Key::from("after"))], "the least loaded is the resumed worker");
}

#[test]
fn data_a_worker_lost_from_disk_is_recomputed() {
    let mut h = Harness::new(&[(1, 1)]);
    h.submit(vec![task("a", &[])]);
    h.finish(1, "a", 8);
    let out = h.ev(Event::FromWorker {
        id: 1,
        msg: WorkerToScheduler::DataLost { key: "a".into(), reason: "checksum mismatch".into() },
    });
    assert_eq!(computes(&out), vec![(1, Key::from("a"))], "a wanted key with no holder left is computed again");
}

/// The observer's groups, counters and stream follow the tasks; a flood of made-up function
/// names shares one group past `MAX_GROUPS`, and the stream keeps only the newest runs.
#[test]
fn the_snapshot_counts_groups_and_bounds_names_and_the_stream() {
    let mut h = Harness::new(&[(1, 1)]);
    h.submit(vec![task("a", &[]), task("b", &["a"])]);
    let snap = h.s.snapshot(h.now);
    let g = snap.groups.iter().find(|g| g.function == "f").unwrap();
    assert_eq!((g.waiting, g.queued, g.processing, g.finished), (1, 0, 1, 0));
    h.finish(1, "a", 8);
    h.finish(1, "b", 8);
    let snap = h.s.snapshot(h.now);
    let g = snap.groups.iter().find(|g| g.function == "f").unwrap();
    assert_eq!((g.waiting, g.queued, g.processing, g.finished), (0, 0, 0, 2));
    assert_eq!(snap.counters.submitted, 2);
    assert_eq!(snap.counters.finished, 2);
    assert_eq!(snap.stream.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(snap.workers.len(), 1);
    assert_eq!(snap.workers[0].ran, 2);

    let names: Vec<TaskSpec> = (0..MAX_GROUPS + 50)
        .map(|i| TaskSpec { func: format!("made-up-{i}").into(), ..task(&format!("n{i}"), &[]) })
        .collect();
    h.submit(names);
    let snap = h.s.snapshot(h.now);
    assert_eq!(snap.groups.len(), MAX_GROUPS + 1, "MAX_GROUPS names and the shared group");
    let other = snap.groups.iter().find(|g| g.function == super::OTHER).expect("the shared group");
    assert!(other.queued + other.processing + other.waiting >= 50);
    // Every run finished is in the stream, up to its bound.
    let mut done = 0;
    while let Some(key) = h.s.workers.get(&1).and_then(|w| w.processing.iter().next().cloned()) {
        h.finish(1, &key, 1);
        done += 1;
    }
    assert_eq!(done, MAX_GROUPS + 50);
    let snap = h.s.snapshot(h.now);
    assert_eq!(snap.stream.len(), (MAX_GROUPS + 52).min(STREAM_KEEP));
    assert_eq!(snap.stream.last().unwrap().seq, (MAX_GROUPS + 52) as u64);
    assert_eq!(snap.groups.iter().map(|g| g.finished).sum::<u64>(), (MAX_GROUPS + 52) as u64);
}

/// A worker's transfer report is kept within its bounds: at most `MAX_TRANSFER_SCHEMES`
/// entries per list, schemes cut to 32 characters; it is forgotten when the worker leaves.
#[test]
fn a_hostile_transfer_report_is_cut_to_its_bounds_and_forgotten_with_its_worker() {
    use crate::protocol::{MAX_TRANSFER_SCHEMES, TransferCount, WorkerTransfers};
    let mut h = Harness::new(&[(1, 1)]);
    let entry =
        |i: usize| TransferCount { scheme: format!("{i}{}", "x".repeat(10_000)), requests: 1, values: 1, bytes: 8 };
    let report = WorkerTransfers { fetched: (0..1000).map(entry).collect(), served: (0..1000).map(entry).collect() };
    h.ev(Event::FromWorker { id: 1, msg: WorkerToScheduler::Transfers(report) });
    let snap = h.s.snapshot(h.now);
    let t = &snap.workers[0].transfers;
    assert_eq!((t.fetched.len(), t.served.len()), (MAX_TRANSFER_SCHEMES, MAX_TRANSFER_SCHEMES));
    assert!(t.fetched.iter().chain(&t.served).all(|c| c.scheme.len() <= 32));
    h.ev(Event::WorkerLeft { id: 1 });
    assert!(h.s.observer.transfers.is_empty());
    assert_eq!(h.s.snapshot(h.now).counters.workers_lost, 1);
}
