//! Unit tests of the worker state machine alone, fed events at simulated instants.

use std::time::{Duration, Instant};

use courier_core::Payload;

use super::state::*;
use crate::protocol::{ArgSpec, DataReply, DataRequest, Key, RunId, SchedulerToWorker, WorkerToScheduler};

const ME: &str = "tcp://10.0.0.1:9000";
const PEER: &str = "tcp://10.0.0.2:9000";
const PEER2: &str = "tcp://10.0.0.3:9000";

struct W {
    s: WorkerState,
    now: Instant,
}

impl W {
    /// A worker that hands a run over only when a thread is free (`execute_ahead` 0), so a
    /// handed-over run is a started one; [`W::ahead`] for the default.
    fn new(nthreads: usize) -> Self {
        W {
            s: WorkerState::new(WorkerLimits { execute_ahead: 0, ..WorkerLimits::new(ME, nthreads) }),
            now: Instant::now(),
        }
    }

    fn ahead(nthreads: usize) -> Self {
        W { s: WorkerState::new(WorkerLimits::new(ME, nthreads)), now: Instant::now() }
    }

    fn ev(&mut self, e: WorkerEvent) -> Vec<WorkerAction> {
        self.now += Duration::from_millis(1);
        self.s.handle(e, self.now)
    }

    fn sched(&mut self, m: SchedulerToWorker) -> Vec<WorkerAction> {
        self.ev(WorkerEvent::Scheduler(m))
    }

    fn compute(&mut self, key: &str, run: RunId, deps: &[(&str, &[&str])]) -> Vec<WorkerAction> {
        let mut args: Vec<ArgSpec> = deps.iter().map(|(d, _)| ArgSpec::Key((*d).into())).collect();
        args.push(ArgSpec::Value(v(1)));
        let who_has = deps.iter().map(|(d, h)| (Key::from(*d), h.iter().map(|s| s.to_string()).collect())).collect();
        self.sched(SchedulerToWorker::Compute { key: key.into(), run, func: "f".into(), args: args.into(), who_has })
    }

    fn done(&mut self, key: &str, run: RunId, value: i64) -> Vec<WorkerAction> {
        self.ev(WorkerEvent::ExecuteDone { key: key.into(), run, result: Ok(v(value)), seconds: 0.5 })
    }
}

fn v(x: i64) -> Payload {
    Payload::new(&x).unwrap()
}

fn executes(a: &[WorkerAction]) -> Vec<(Key, RunId)> {
    a.iter()
        .filter_map(|a| match a {
            WorkerAction::Execute { key, run, .. } => Some((key.clone(), *run)),
            _ => None,
        })
        .collect()
}

fn fetches(a: &[WorkerAction]) -> Vec<(FetchId, String, Vec<Key>)> {
    a.iter()
        .filter_map(|a| match a {
            WorkerAction::Fetch { id, peer, keys } => Some((*id, peer.clone(), keys.clone())),
            _ => None,
        })
        .collect()
}

fn to_scheduler(a: &[WorkerAction]) -> Vec<WorkerToScheduler> {
    a.iter()
        .filter_map(|a| match a {
            WorkerAction::ToScheduler(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn runs_execute_in_at_most_nthreads_slots_and_report_with_their_run() {
    let mut w = W::new(2);
    let mut started = Vec::new();
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        started.extend(executes(&w.compute(k, 10 + i as u64, &[])));
    }
    assert_eq!(started, vec![("a".into(), 10), ("b".into(), 11)], "two slots");
    let out = w.done("a", 10, 5);
    assert_eq!(executes(&out), vec![("c".into(), 12)], "a freed slot starts the next");
    assert_eq!(
        to_scheduler(&out),
        vec![WorkerToScheduler::Finished { key: "a".into(), run: 10, nbytes: v(5).byte_len(), seconds: 0.5 }]
    );
    assert_eq!(w.s.value("a"), Some(&v(5)));
    let out = w.ev(WorkerEvent::ExecuteDone { key: "b".into(), run: 11, result: Err("boom".into()), seconds: 0.1 });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::Erred { key: "b".into(), run: 11, message: "boom".into() }]);
    assert_eq!(w.s.value("b"), None);
}

#[test]
fn by_default_one_run_per_thread_is_handed_over_ahead_and_is_not_given_up_to_a_steal() {
    let mut w = W::ahead(2);
    let mut handed = Vec::new();
    for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        handed.extend(executes(&w.compute(k, 10 + i as u64, &[])));
    }
    let keys: Vec<&str> = handed.iter().map(|(k, _)| &**k).collect();
    assert_eq!(keys, ["a", "b", "c", "d"], "two threads and one queued run for each");
    assert_eq!(w.s.executing(), 4);
    // Queued in the driver: it may start any moment, so it is not given up.
    let out = w.sched(SchedulerToWorker::Steal { key: "d".into(), run: 13 });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::StealReply { key: "d".into(), run: 13, stolen: false }]);
    let out = w.sched(SchedulerToWorker::Steal { key: "e".into(), run: 14 });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::StealReply { key: "e".into(), run: 14, stolen: true }]);
    w.compute("e", 15, &[]);
    assert_eq!(executes(&w.done("a", 10, 1)), vec![("e".into(), 15)], "a finished run makes room for the next");
}

#[test]
fn missing_inputs_are_fetched_from_holders_batched_and_bounded_per_peer() {
    let mut w = W::new(1);
    let batch = (0..200)
        .map(|i| SchedulerToWorker::Compute {
            key: format!("t{i}").into(),
            run: i,
            func: "f".into(),
            args: vec![ArgSpec::Key(format!("d{i}").into())].into(),
            who_has: vec![(format!("d{i}").into(), vec![PEER.into()])],
        })
        .collect();
    let out = w.ev(WorkerEvent::SchedulerBatch(batch));
    let f = fetches(&out);
    assert!(executes(&out).is_empty(), "nothing runs before its input is here");
    // 128 keys per request, at most 4 requests in flight to one peer.
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].2.len(), 128);
    assert!(f.iter().all(|(_, p, _)| p == PEER));
    let (id, _, keys) = &f[0];
    let values = keys.iter().map(|_| Some(v(7))).collect();
    let out = w.ev(WorkerEvent::FetchDone { id: *id, result: Ok(values) });
    assert_eq!(executes(&out).len(), 1, "one thread");
    // Fetched copies are kept only while local runs need them.
    assert_eq!(w.s.held_keys(), 127);
}

#[test]
fn a_failing_holder_is_skipped_and_when_all_fail_the_run_is_reported_missing() {
    let mut w = W::new(1);
    let out = w.compute("t", 3, &[("d", &[PEER, PEER2])]);
    let (id, peer, _) = fetches(&out)[0].clone();
    assert_eq!(peer, PEER);
    let out = w.ev(WorkerEvent::FetchDone { id, result: Err("connection refused".into()) });
    let (id2, peer2, _) = fetches(&out)[0].clone();
    assert_eq!(peer2, PEER2, "the next holder is asked");
    let out = w.ev(WorkerEvent::FetchDone { id: id2, result: Ok(vec![None]) });
    assert_eq!(
        to_scheduler(&out),
        vec![WorkerToScheduler::MissingData {
            key: "t".into(),
            run: 3,
            dep: "d".into(),
            tried: vec![PEER.into(), PEER2.into()]
        }]
    );
    assert_eq!(w.s.assigned(), 0, "the run was dropped");
    // A late answer to an abandoned fetch is ignored.
    assert!(w.ev(WorkerEvent::FetchDone { id, result: Ok(vec![Some(v(1))]) }).is_empty());
}

#[test]
fn a_departed_peer_fails_its_fetches_at_once() {
    let mut w = W::new(1);
    let out = w.compute("t", 1, &[("d", &[PEER, PEER2])]);
    let (id, _, _) = fetches(&out)[0].clone();
    let out = w.sched(SchedulerToWorker::PeerGone { address: PEER.into() });
    assert!(out.contains(&WorkerAction::AbortFetch { id }));
    assert_eq!(fetches(&out)[0].1, PEER2, "moved to the other holder without waiting for a timeout");
}

#[test]
fn steal_gives_up_only_runs_that_have_not_started() {
    let mut w = W::new(1);
    w.compute("running", 1, &[]);
    w.compute("queued", 2, &[]);
    w.compute("fetching", 3, &[("d", &[PEER])]);
    for (key, run, expect) in [("running", 1, false), ("queued", 2, true), ("fetching", 3, true), ("queued", 2, false)]
    {
        let out = w.sched(SchedulerToWorker::Steal { key: key.into(), run });
        assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::StealReply { key: key.into(), run, stolen: expect }]);
    }
    // A steal of an old run of a key does not touch the current one.
    w.compute("queued", 20, &[]);
    let out = w.sched(SchedulerToWorker::Steal { key: "queued".into(), run: 2 });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::StealReply { key: "queued".into(), run: 2, stolen: false }]);
    // The stolen run never executes here.
    let out = w.done("running", 1, 1);
    assert_eq!(executes(&out), vec![("queued".into(), 20)]);
}

#[test]
fn release_drops_data_and_unstarted_runs_and_a_started_run_finishes_quietly() {
    let mut w = W::new(1);
    w.compute("a", 1, &[]);
    w.done("a", 1, 1);
    w.compute("running", 2, &[]);
    w.compute("waiting", 3, &[]);
    let out = w.sched(SchedulerToWorker::Release { keys: vec!["a".into(), "running".into(), "waiting".into()] });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(w.s.value("a"), None);
    assert_eq!(w.s.executing(), 1, "the started run keeps its thread");
    // A newer run of the same key waits for the old execution to end.
    let out = w.compute("running", 4, &[]);
    assert!(executes(&out).is_empty());
    let out = w.done("running", 2, 99);
    assert!(to_scheduler(&out).is_empty(), "the released run's result is dropped");
    assert_eq!(executes(&out), vec![("running".into(), 4)]);
    let out = w.done("running", 4, 5);
    assert!(matches!(&to_scheduler(&out)[..], [WorkerToScheduler::Finished { run: 4, .. }]));
    assert_eq!(w.s.value("running"), Some(&v(5)));
    assert_eq!(w.s.value("waiting"), None);
}

#[test]
fn replicate_fetches_a_copy_and_keeps_it_as_its_own() {
    let mut w = W::new(1);
    let out = w.sched(SchedulerToWorker::Replicate { key: "k".into(), from: vec![PEER.into()] });
    let (id, peer, keys) = fetches(&out)[0].clone();
    assert_eq!((peer.as_str(), keys), (PEER, vec![Key::from("k")]));
    let out = w.ev(WorkerEvent::FetchDone { id, result: Ok(vec![Some(v(3))]) });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::Replicated { key: "k".into(), ok: true }]);
    assert_eq!(w.s.value("k"), Some(&v(3)));
    let out = w.sched(SchedulerToWorker::Replicate { key: "gone".into(), from: vec![PEER.into()] });
    let (id, _, _) = fetches(&out)[0].clone();
    let out = w.ev(WorkerEvent::FetchDone { id, result: Ok(vec![None]) });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::Replicated { key: "gone".into(), ok: false }]);
}

#[test]
fn stores_need_the_announced_ticket_and_never_overwrite() {
    let mut w = W::new(1);
    let store = |w: &mut W, id, key: &str, ticket| {
        w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Store { id, key: key.into(), ticket, value: v(1337) } })
    };
    let out = store(&mut w, 1, "victim", 42);
    assert!(matches!(&out[..], [WorkerAction::Reply { reply: DataReply::Refused { id: 1, .. }, .. }]), "{out:?}");
    w.sched(SchedulerToWorker::ExpectScatter { id: 5, keys: vec![("s".into(), 777)] });
    assert!(matches!(&store(&mut w, 2, "s", 776)[..], [WorkerAction::Reply { reply: DataReply::Refused { .. }, .. }]));
    let out = store(&mut w, 3, "s", 777);
    assert!(out.contains(&WorkerAction::Reply { conn: 1, reply: DataReply::Stored { id: 3 } }));
    assert!(out.contains(&WorkerAction::ToScheduler(WorkerToScheduler::Stored {
        key: "s".into(),
        nbytes: v(1337).byte_len()
    })));
    // The ticket is used up.
    assert!(matches!(&store(&mut w, 4, "s", 777)[..], [WorkerAction::Reply { reply: DataReply::Refused { .. }, .. }]));
    // Results computed here cannot be overwritten either.
    w.compute("r", 1, &[]);
    w.done("r", 1, 1);
    w.sched(SchedulerToWorker::ExpectScatter { id: 6, keys: vec![("r".into(), 1)] });
    assert!(matches!(&store(&mut w, 5, "r", 1)[..], [WorkerAction::Reply { reply: DataReply::Refused { .. }, .. }]));
    assert_eq!(w.s.value("r"), Some(&v(1)));
}

#[test]
fn get_serves_held_values_and_bounds_the_request() {
    let mut w = W::new(1);
    w.compute("a", 1, &[]);
    w.done("a", 1, 11);
    let out =
        w.ev(WorkerEvent::Data { conn: 9, request: DataRequest::Get { id: 4, keys: vec!["a".into(), "b".into()] } });
    assert_eq!(
        out,
        vec![WorkerAction::Reply { conn: 9, reply: DataReply::Data { id: 4, values: vec![Some(v(11)), None] } }]
    );
    let keys = vec![Key::from("a"); crate::protocol::bounds::MAX_KEYS_PER_MESSAGE + 1];
    let out = w.ev(WorkerEvent::Data { conn: 9, request: DataRequest::Get { id: 5, keys } });
    assert!(matches!(&out[..], [WorkerAction::Reply { reply: DataReply::Refused { id: 5, .. }, .. }]));
}

#[test]
fn a_compute_for_a_key_already_held_is_answered_at_once() {
    let mut w = W::new(1);
    w.compute("a", 1, &[]);
    w.done("a", 1, 4);
    let out = w.compute("a", 7, &[]);
    assert!(executes(&out).is_empty());
    assert!(
        matches!(&to_scheduler(&out)[..], [WorkerToScheduler::Finished { run: 7, seconds, .. }] if *seconds == 0.0)
    );
}

#[test]
fn heartbeats_and_retirement() {
    let mut w = W::new(1);
    assert_eq!(to_scheduler(&w.ev(WorkerEvent::Tick)), vec![WorkerToScheduler::Heartbeat]);
    let out = w.sched(SchedulerToWorker::Shutdown);
    assert!(out.contains(&WorkerAction::Shutdown));
    assert!(w.s.is_shutting_down());
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec![] } });
    assert!(matches!(&out[..], [WorkerAction::Reply { reply: DataReply::Refused { .. }, .. }]));
}

#[test]
fn a_missing_dependency_without_holders_is_reported_before_anything_is_claimed() {
    let mut w = W::new(1);
    let out = w.compute("t", 2, &[("d", &[])]);
    assert_eq!(
        to_scheduler(&out),
        vec![WorkerToScheduler::MissingData { key: "t".into(), run: 2, dep: "d".into(), tried: vec![] }]
    );
    assert_eq!(w.s.describe(), WorkerState::new(WorkerLimits::new(ME, 1)).describe());
}

// ---- memory: spilling, pausing, terminating ----

/// A value of `n` bytes of frames.
fn big(n: usize) -> Payload {
    Payload { header: bytes::Bytes::from_static(b"\x90"), frames: vec![bytes::Bytes::from(vec![7u8; n])] }
}

fn limited(limit: u64, nthreads: usize) -> W {
    let limits = WorkerLimits { memory: Some(MemoryLimits::new(limit)), ..WorkerLimits::new(ME, nthreads) };
    W { s: WorkerState::new(limits), now: Instant::now() }
}

fn spills(a: &[WorkerAction]) -> Vec<(Key, u64)> {
    a.iter()
        .filter_map(|a| match a {
            WorkerAction::Spill { key, id, .. } => Some((key.clone(), *id)),
            _ => None,
        })
        .collect()
}

fn spill_file(n: u64) -> std::sync::Arc<super::spill::SpillFile> {
    std::sync::Arc::new(super::spill::SpillFile::new(std::path::PathBuf::from("/nonexistent/courier-test"), n))
}

/// Finishes run `run` of `key` with a value of `n` bytes.
/// Returns what starting and finishing it did.
fn finish_big(w: &mut W, key: &str, run: RunId, n: usize) -> Vec<WorkerAction> {
    let mut out = w.compute(key, run, &[]);
    assert_eq!(executes(&out).len(), 1, "{out:?}");
    out.extend(w.ev(WorkerEvent::ExecuteDone { key: key.into(), run, result: Ok(big(n)), seconds: 0.1 }));
    out
}

/// An idle worker asked for a spilled value that does not fit under pause spills to make room
/// first and reads the value back once that spill is done (it used to start at once when idle:
/// a 64 MiB read-back could pass a 256 MiB worker's terminate threshold).
#[test]
fn an_idle_worker_makes_room_before_reading_a_value_back_for_a_peer() {
    // Limit 1000: target 600, pause 800.
    let mut w = limited(1000, 1);
    assert!(spills(&finish_big(&mut w, "a", 1, 250)).is_empty());
    assert!(spills(&finish_big(&mut w, "b", 2, 250)).is_empty());
    // Starting `c` makes room first (`a` goes to disk), then `c` runs; ~590 stay, under target.
    let out = w.compute("c", 3, &[]);
    let spilled = spills(&out);
    assert_eq!(spilled.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["a"]);
    let file = spill_file(big(250).byte_len());
    let out = w.ev(WorkerEvent::Spilled { key: "a".into(), id: spilled[0].1, result: Ok(file), seconds: 0.01 });
    assert_eq!(executes(&out), vec![("c".into(), 3)]);
    let out = w.ev(WorkerEvent::ExecuteDone { key: "c".into(), run: 3, result: Ok(big(340)), seconds: 0.1 });
    assert!(spills(&out).is_empty(), "{out:?}");
    assert!(w.s.memory().managed <= 600);
    // Idle: reading `a` back (~250) on top of ~590 would pass pause (800). `b` goes first.
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec!["a".into()] } });
    assert!(!out.iter().any(|a| matches!(a, WorkerAction::ReplyLoading { .. })), "{out:?}");
    let room = spills(&out);
    assert_eq!(room.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["b"], "{out:?}");
    let file = spill_file(big(250).byte_len());
    let out = w.ev(WorkerEvent::Spilled { key: "b".into(), id: room[0].1, result: Ok(file), seconds: 0.01 });
    match &out[..] {
        [WorkerAction::ReplyLoading { conn: 1, id: 1, values, .. }] => {
            assert!(matches!(&values[0], Some(Value::Disk { key, .. }) if &**key == "a"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn results_above_target_are_spilled_least_recently_used_first() {
    // Limit 1000: target 600. Three results of ~250 bytes: the third crosses target.
    let mut w = limited(1000, 1);
    assert!(spills(&finish_big(&mut w, "a", 1, 250)).is_empty());
    assert!(spills(&finish_big(&mut w, "b", 2, 250)).is_empty());
    // `a` is used (served to a peer): `b` is now the least recently used.
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec!["a".into()] } });
    // With a memory limit every reply is reserved for until the driver reports it written.
    let serve = match &out[..] {
        [WorkerAction::ReplyLoading { conn: 1, id: 1, values, serve }] => {
            assert_eq!(values, &vec![Some(Value::Memory(big(250)))]);
            *serve
        }
        other => panic!("{other:?}"),
    };
    w.ev(WorkerEvent::Served { serve });
    // Starting `c` (expected to be as large as the others) makes room first, and waits for it.
    let out = w.compute("c", 3, &[]);
    assert_eq!(spills(&out).iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["b"]);
    assert!(executes(&out).is_empty());
    let id = spills(&out)[0].1;
    assert!(w.s.value("b").is_some(), "served from memory while being written");
    let before = w.s.memory();
    let out =
        w.ev(WorkerEvent::Spilled { key: "b".into(), id, result: Ok(spill_file(big(250).byte_len())), seconds: 0.01 });
    assert!(spills(&out).is_empty());
    assert_eq!(executes(&out), vec![("c".into(), 3)]);
    let after = w.s.memory();
    assert!(w.s.is_spilled("b") && w.s.value("b").is_none());
    assert_eq!(after.managed, before.managed - big(250).byte_len());
    assert_eq!(after.spilled, big(250).byte_len());
    assert_eq!((after.spill.count, after.spill.bytes), (1, big(250).byte_len()));
    // A peer asking for it gets it read back by the driver, once the running execution no
    // longer needs the room (the reply would take the worker past pause).
    let out = w.ev(WorkerEvent::Data {
        conn: 2,
        request: DataRequest::Get { id: 9, keys: vec!["b".into(), "a".into(), "zz".into()] },
    });
    // It waits, and makes room meanwhile: `a` (not used by the running `c`) goes to disk.
    assert_eq!(spills(&out).iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["a"]);
    assert!(out.iter().all(|a| matches!(a, WorkerAction::Spill { .. })), "{out:?}");
    let out = w.ev(WorkerEvent::ExecuteDone { key: "c".into(), run: 3, result: Ok(v(1)), seconds: 0.1 });
    let out: Vec<_> = out.into_iter().filter(|a| matches!(a, WorkerAction::ReplyLoading { .. })).collect();
    match &out[..] {
        [WorkerAction::ReplyLoading { conn: 2, id: 9, values, .. }] => {
            assert!(matches!(&values[0], Some(Value::Disk { key, .. }) if &**key == "b"));
            assert_eq!(values[1], Some(Value::Memory(big(250))));
            assert_eq!(values[2], None);
        }
        other => panic!("{other:?}"),
    }
    // Released: the spilled bytes are no longer counted (the file goes with the handle).
    w.sched(SchedulerToWorker::Release { keys: vec!["b".into()] });
    assert_eq!(w.s.memory().spilled, 0);
}

#[test]
fn with_a_memory_limit_a_run_is_handed_over_only_when_a_thread_is_free() {
    // Plenty of room: still one run at a time (a queued run would start after a pause).
    let mut w = limited(1 << 30, 1);
    let mut out = w.compute("x", 2, &[]);
    out.extend(w.compute("y", 3, &[]));
    assert_eq!(executes(&out), vec![("x".into(), 2)]);
    assert_eq!(executes(&w.done("x", 2, 1)), vec![("y".into(), 3)]);
}

#[test]
fn a_spilled_input_is_handed_to_the_execution_to_read_back() {
    let mut w = limited(1000, 1);
    let (key, id) = spills(&finish_big(&mut w, "a", 1, 700)).remove(0);
    assert_eq!(&*key, "a");
    w.ev(WorkerEvent::Spilled { key: "a".into(), id, result: Ok(spill_file(big(700).byte_len())), seconds: 0.01 });
    let out = w.compute("c", 3, &[("a", &[ME])]);
    match &out[..] {
        [WorkerAction::Execute { key, args, .. }] => {
            assert_eq!(&**key, "c");
            assert!(matches!(&args[0], Value::Disk { key, .. } if &**key == "a"));
        }
        other => panic!("{other:?}"),
    }
    // It cannot be read back: the scheduler hears the key is lost here, and the run is
    // reported as missing its input (to run again once it is recomputed).
    let out = w.ev(WorkerEvent::Unreadable { key: "a".into(), error: "checksum".into(), run: Some(("c".into(), 3)) });
    assert_eq!(
        to_scheduler(&out),
        vec![
            WorkerToScheduler::DataLost { key: "a".into(), reason: "checksum".into() },
            WorkerToScheduler::MissingData { key: "c".into(), run: 3, dep: "a".into(), tried: vec![] },
        ]
    );
    assert_eq!(w.s.executing(), 0, "the slot is free again");
    assert_eq!(w.s.memory().spilled, 0);
}

#[test]
fn a_failed_spill_keeps_the_value_in_memory_reports_and_retries_later() {
    let mut w = limited(1000, 1);
    let (_, id) = spills(&finish_big(&mut w, "a", 1, 700)).remove(0);
    let out = w.ev(WorkerEvent::Spilled {
        key: "a".into(),
        id,
        result: Err("cannot spill to /full/disk/0.spill: No space left on device".into()),
        seconds: 0.0,
    });
    assert_eq!(w.s.value("a"), Some(&big(700)), "nothing lost");
    let reports: Vec<_> = to_scheduler(&out)
        .into_iter()
        .filter_map(|m| match m {
            WorkerToScheduler::Memory(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(reports[0].spill_error.as_deref().is_some_and(|e| e.contains("/full/disk")), "{reports:?}");
    assert!(spills(&out).is_empty(), "no retry at once");
    assert!(spills(&w.ev(WorkerEvent::Tick)).is_empty());
    w.now += SPILL_RETRY;
    assert_eq!(spills(&w.ev(WorkerEvent::Tick)).len(), 1, "retried after SPILL_RETRY");
}

#[test]
fn rss_above_spill_spills_by_the_excess_once_per_sample() {
    // Limit 10,000: target 6,000, spill 7,000. Managed is small but RSS is high.
    let mut w = limited(10_000, 1);
    for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
        finish_big(&mut w, k, i as u64 + 1, 500);
    }
    assert!(spills(&w.ev(WorkerEvent::Memory { rss: 6_900 })).is_empty(), "below spill");
    // 7,100 RSS: 1,100 bytes over target, so three results of ~510 bytes, oldest first.
    let out = w.ev(WorkerEvent::Memory { rss: 7_100 });
    assert_eq!(spills(&out).iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    // Other events before the next sample do not spill again.
    assert!(spills(&w.ev(WorkerEvent::Tick)).is_empty());
}

#[test]
fn a_paused_worker_starts_nothing_until_it_drops_below_pause_and_tells_the_scheduler() {
    let mut w = limited(10_000, 1);
    let out = w.ev(WorkerEvent::Memory { rss: 8_500 });
    assert!(to_scheduler(&out).iter().any(|m| matches!(m, WorkerToScheduler::Memory(r) if r.paused)), "{out:?}");
    assert!(w.s.is_paused());
    assert!(executes(&w.compute("x", 1, &[])).is_empty(), "no run starts while paused");
    assert!(fetches(&w.compute("y", 2, &[("d", &[PEER])])).is_empty(), "no fetch begins while paused");
    // The scheduler may take the unstarted run away meanwhile.
    let out = w.sched(SchedulerToWorker::Steal { key: "x".into(), run: 1 });
    assert_eq!(to_scheduler(&out), vec![WorkerToScheduler::StealReply { key: "x".into(), run: 1, stolen: true }]);
    let out = w.ev(WorkerEvent::Memory { rss: 7_000 });
    assert!(to_scheduler(&out).iter().any(|m| matches!(m, WorkerToScheduler::Memory(r) if !r.paused)));
    assert_eq!(fetches(&out).len(), 1, "fetches resume");
}

#[test]
fn at_terminate_the_worker_asks_to_restart_once() {
    let mut w = limited(10_000, 1);
    let out = w.ev(WorkerEvent::Memory { rss: 9_600 });
    assert!(matches!(&out[..], [WorkerAction::Terminate { reason }] if reason.contains("terminate")), "{out:?}");
    assert!(w.ev(WorkerEvent::Memory { rss: 9_900 }).iter().all(|a| !matches!(a, WorkerAction::Terminate { .. })));
}

#[test]
fn without_a_limit_nothing_is_spilled_or_paused() {
    let mut w = W::new(1);
    finish_big(&mut w, "a", 1, 1 << 20);
    let out = w.ev(WorkerEvent::Memory { rss: u64::MAX / 2 });
    assert!(spills(&out).is_empty() && !w.s.is_paused());
    assert_eq!(w.s.memory().managed, big(1 << 20).byte_len());
}

#[test]
fn memory_thresholds_are_validated() {
    assert!(MemoryLimits::new(1 << 30).validate().is_ok());
    assert!(MemoryLimits { target: 0.9, ..MemoryLimits::new(1 << 30) }.validate().is_err());
    assert!(MemoryLimits { pause: 1.5, ..MemoryLimits::new(1 << 30) }.validate().is_err());
    assert!(MemoryLimits::new(0).validate().is_err());
}

#[test]
fn an_execution_waits_for_the_spills_that_make_room_for_it() {
    // Limit 1000, target 600: two results of ~400 bytes; the second run's expected result
    // (as large as the first) would take the worker over target.
    let mut w = limited(1000, 1);
    finish_big(&mut w, "a", 1, 400);
    let out = w.compute("b", 2, &[]);
    let spilled = spills(&out);
    assert_eq!(spilled.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["a"]);
    assert!(executes(&out).is_empty(), "b waits while a is written: {out:?}");
    let id = spilled[0].1;
    let out =
        w.ev(WorkerEvent::Spilled { key: "a".into(), id, result: Ok(spill_file(big(400).byte_len())), seconds: 0.0 });
    assert_eq!(executes(&out), vec![("b".into(), 2)], "room made: b starts");
}

#[test]
fn with_nothing_left_to_spill_an_execution_starts_anyway() {
    let mut w = limited(1000, 1);
    // A first result larger than target (below pause): spilled (and failing), nothing else
    // to spill.
    let out = finish_big(&mut w, "a", 1, 700);
    let (_, id) = spills(&out)[0].clone();
    w.ev(WorkerEvent::Spilled { key: "a".into(), id, result: Err("disk full".into()), seconds: 0.0 });
    assert_eq!(executes(&w.compute("b", 2, &[])), vec![("b".into(), 2)], "no deadlock waiting for room");
}

#[test]
fn values_a_running_execution_uses_are_not_spilled() {
    // Limit 1000, target 600, two threads. `a` (~300 bytes) is an input of `c`; `c`'s expected
    // result takes the worker past target, but spilling `a` would free nothing while `c` holds
    // it.
    let mut w = limited(1000, 2);
    finish_big(&mut w, "a", 1, 300);
    let out = w.compute("c", 2, &[("a", &[ME])]);
    assert!(spills(&out).is_empty(), "{out:?}");
    assert_eq!(executes(&out), vec![("c".into(), 2)], "nothing else to spill: it starts");
    // While `c` runs, a new result over target: the least recently used value that is not
    // pinned goes to disk (`b`), not `a`.
    let out = finish_big(&mut w, "b", 3, 300);
    let spilled: Vec<Key> = spills(&out).into_iter().map(|(k, _)| k).collect();
    assert_eq!(spilled, vec![Key::from("b")]);
    // Once `c` is done, `a` is spillable again.
    let out = w.ev(WorkerEvent::ExecuteDone { key: "c".into(), run: 2, result: Ok(big(300)), seconds: 0.1 });
    let spilled: Vec<Key> = spills(&out).into_iter().map(|(k, _)| k).collect();
    assert_eq!(spilled, vec![Key::from("a")]);
}

/// A fetch of several keys counts each key at the largest value seen: a reply that would pass
/// pause once they land waits (counted per fetch, it started at once while two values of the
/// largest size were on their way; in a 256 MiB worker reducing 64 MiB arrays, the process
/// peaked past its terminate threshold in CI).
#[test]
fn a_fetch_of_several_keys_counts_each_key_against_the_limit() {
    // Limit 1000: pause 800. `x` (~200 bytes) is held; the largest value seen.
    let mut w = limited(1000, 1);
    assert!(spills(&finish_big(&mut w, "x", 1, 200)).is_empty());
    // `c` needs `d1` and `d2` from a peer: one fetch of both (2 × ~200 fit under pause).
    let out = w.compute("c", 2, &[("d1", &[PEER]), ("d2", &[PEER])]);
    let f = fetches(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].2.len(), 2, "{out:?}");
    // Serving `x` now would hold ~200 more: ~200 held + ~400 arriving + ~200 > 800.
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec!["x".into()] } });
    let replies = out.iter().filter(|a| matches!(a, WorkerAction::Reply { .. } | WorkerAction::ReplyLoading { .. }));
    assert_eq!(replies.count(), 0, "the reply waits for the fetch: {out:?}");
    // It makes room meanwhile: `x` goes to disk, and once written its bytes are counted once,
    // by the reply that keeps its copy (~200 + ~400 arriving + ~0 managed ≤ 800): it starts.
    let spilled = spills(&out);
    assert_eq!(spilled.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["x"], "{out:?}");
    let file = spill_file(big(200).byte_len());
    let out = w.ev(WorkerEvent::Spilled { key: "x".into(), id: spilled[0].1, result: Ok(file), seconds: 0.01 });
    assert!(out.iter().any(|a| matches!(a, WorkerAction::ReplyLoading { conn: 1, id: 1, .. })), "{out:?}");
}

/// A value released while its spill is in flight is still in memory (the write holds it) until
/// the write ends: an execution that would pass target on top of it waits for the write.
#[test]
fn a_value_released_while_being_spilled_counts_until_its_write_ends() {
    // Limit 1000: target 600. `a` and `b` (~250 each) are held; `c` (~250 expected) would pass
    // target: `a` is spilled to make room and `c` waits for the write.
    let mut w = limited(1000, 1);
    finish_big(&mut w, "a", 1, 250);
    finish_big(&mut w, "b", 2, 250);
    let out = w.compute("c", 3, &[]);
    assert!(executes(&out).is_empty(), "{out:?}");
    let spilled = spills(&out);
    assert_eq!(spilled.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), vec!["a"], "{out:?}");
    // `a` is released while it is written: its bytes are still here, so `c` still waits.
    let out = w.sched(SchedulerToWorker::Release { keys: vec!["a".into()] });
    assert!(executes(&out).is_empty(), "{out:?}");
    // The write ends: `a`'s bytes are gone and `c` starts.
    let file = spill_file(big(250).byte_len());
    let out = w.ev(WorkerEvent::Spilled { key: "a".into(), id: spilled[0].1, result: Ok(file), seconds: 0.01 });
    assert_eq!(executes(&out), vec![("c".into(), 3)], "{out:?}");
}

/// A value released while an execution still uses it (its run was cancelled and finishes
/// quietly) stays in memory until that execution ends: a reply that would pass pause on top
/// of it waits for the execution.
#[test]
fn a_value_released_while_an_execution_uses_it_counts_until_the_execution_ends() {
    // Limit 1000 with target and pause at 900. `a` and `b` (~250 each) are held; `c` runs on
    // `a` (~250 expected): ~750 committed.
    let memory = MemoryLimits { target: 0.9, spill: 0.9, pause: 0.9, ..MemoryLimits::new(1000) };
    let limits = WorkerLimits { memory: Some(memory), ..WorkerLimits::new(ME, 1) };
    let mut w = W { s: WorkerState::new(limits), now: Instant::now() };
    finish_big(&mut w, "a", 1, 250);
    finish_big(&mut w, "b", 2, 250);
    let out = w.compute("c", 3, &[("a", &[ME])]);
    assert_eq!(executes(&out), vec![("c".into(), 3)], "{out:?}");
    // The client gives up `c` and `a`: `c` finishes quietly, holding `a` until then.
    w.sched(SchedulerToWorker::Release { keys: vec!["a".into(), "c".into()] });
    // Serving `b` would hold ~250 more: `b` + `a` (still used) + `c`'s result + ~250 > 900.
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec!["b".into()] } });
    let replies = out.iter().filter(|a| matches!(a, WorkerAction::Reply { .. } | WorkerAction::ReplyLoading { .. }));
    assert_eq!(replies.count(), 0, "the reply waits for the execution: {out:?}");
    // `c` ends: its reservation and `a` are gone, and the reply goes out (with `b` spilled
    // to make room meanwhile, once its write ends).
    let mut out = w.ev(WorkerEvent::ExecuteDone { key: "c".into(), run: 3, result: Ok(big(250)), seconds: 0.1 });
    for (key, id) in spills(&out.clone()) {
        let file = spill_file(big(250).byte_len());
        out.extend(w.ev(WorkerEvent::Spilled { key, id, result: Ok(file), seconds: 0.01 }));
    }
    assert!(out.iter().any(|a| matches!(a, WorkerAction::ReplyLoading { conn: 1, id: 1, .. })), "{out:?}");
}

/// Whatever happens in whatever order (runs on local and fetched inputs, replies, releases,
/// steals, replications, RSS samples, and the driver finishing or failing executions, spills,
/// fetches and replies in any order), once every key is released and nothing is in flight,
/// every memory count is back to zero: none leaks (a leaked count would make a long-running
/// worker believe memory is committed that is not), and every data request was answered.
/// Throughout, no more runs are handed over than the worker has threads.
mod memory_accounting {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Compute key `key` on inputs (index, held by a peer rather than here).
        Compute(u8, Vec<(u8, bool)>),
        Get(u8),
        Release(u8),
        Steal(u8),
        Replicate(u8),
        /// The scheduler announces a scatter of the key, and a client stores it (`Store`).
        Scatter(u8),
        /// The driver sampled the process's resident memory (per mille of the limit).
        Rss(u64),
        /// The driver finishes one pending action (index modulo the pending ones), failing it
        /// (a fetch or spill error) if `fail`.
        Finish(usize, bool),
    }

    #[derive(Debug)]
    enum Pending {
        /// An execution, and the memory its arguments hold.
        Execute(Key, RunId, Holds),
        /// A spill write, and the value it holds.
        Spill(Key, u64, u64, Holds),
        Fetch(FetchId, usize),
        /// A reply being written, and the values it holds (read back or in memory).
        Serve(u64, Holds),
    }

    /// Memory something holds: buffers that may be shared with the worker's values (by
    /// address and length), and bytes that only it holds (values read back from disk).
    #[derive(Debug, Default)]
    struct Holds {
        shared: Vec<(usize, u64)>,
        private: u64,
    }

    impl Holds {
        fn of<'a>(values: impl IntoIterator<Item = &'a Value>) -> Holds {
            let mut h = Holds::default();
            for v in values {
                match v {
                    Value::Memory(p) => h.payload(p),
                    Value::Disk { file, .. } => h.private += file.nbytes(),
                }
            }
            h
        }

        fn payload(&mut self, p: &Payload) {
            self.shared.extend(p.frames.iter().map(|f| (f.as_ptr() as usize, f.len() as u64)));
        }
    }

    impl Pending {
        fn holds(&self) -> Option<&Holds> {
            match self {
                Pending::Execute(_, _, h) | Pending::Spill(_, _, _, h) | Pending::Serve(_, h) => Some(h),
                Pending::Fetch(..) => None,
            }
        }
    }

    fn key(i: u8) -> Key {
        format!("k{i}").as_str().into()
    }

    struct Driver {
        w: W,
        limit: u64,
        /// Data requests made, and replies the worker gave (each request gets one).
        gets: usize,
        replies: usize,
        pending: Vec<Pending>,
        run: RunId,
    }

    impl Driver {
        fn take(&mut self, out: Vec<WorkerAction>) {
            for a in out {
                match a {
                    WorkerAction::Execute { key, run, args, .. } => {
                        self.pending.push(Pending::Execute(key, run, Holds::of(&args)))
                    }
                    WorkerAction::Spill { key, id, value } => {
                        let mut holds = Holds::default();
                        holds.payload(&value);
                        self.pending.push(Pending::Spill(key, id, value.byte_len(), holds))
                    }
                    WorkerAction::Fetch { id, keys, .. } => self.pending.push(Pending::Fetch(id, keys.len())),
                    WorkerAction::ReplyLoading { serve, values, .. } => {
                        self.replies += 1;
                        self.pending.push(Pending::Serve(serve, Holds::of(values.iter().flatten())))
                    }
                    WorkerAction::Reply { .. } => self.replies += 1,
                    _ => {}
                }
            }
            // With a memory limit no run is handed over beyond the worker's threads.
            let executing = self.pending.iter().filter(|p| matches!(p, Pending::Execute(..))).count();
            assert!(executing <= 2, "{executing} executions handed over to 2 threads: {:?}", self.pending);
            // What the worker counts covers what the process holds: its values in memory,
            // and what executions, spill writes and replies hold (each buffer once).
            let mut buffers = crate::collections::Set::default();
            let mut held = 0;
            for h in self.pending.iter().filter_map(Pending::holds) {
                held += h.private;
            }
            let shared = self.pending.iter().filter_map(Pending::holds).flat_map(|h| h.shared.iter().copied());
            for (address, n) in self.w.s.buffers_held().into_iter().chain(shared) {
                if buffers.insert(address) {
                    held += n;
                }
            }
            let committed = self.w.s.committed();
            assert!(held <= committed, "{held} bytes held, {committed} counted: {:?}", self.pending);
        }

        fn apply(&mut self, op: Op) {
            let out = match op {
                Op::Compute(k, deps) => {
                    self.run += 1;
                    let names: Vec<(String, &[&str])> = deps
                        .iter()
                        .filter(|(d, _)| *d != k)
                        .map(|&(d, remote)| (format!("k{d}"), if remote { &[PEER][..] } else { &[ME][..] }))
                        .collect();
                    let deps: Vec<(&str, &[&str])> = names.iter().map(|(n, h)| (n.as_str(), *h)).collect();
                    self.w.compute(&format!("k{k}"), self.run, &deps)
                }
                Op::Get(k) => {
                    self.gets += 1;
                    self.w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec![key(k)] } })
                }
                Op::Release(k) => self.w.sched(SchedulerToWorker::Release { keys: vec![key(k)] }),
                Op::Steal(k) => self.w.sched(SchedulerToWorker::Steal { key: key(k), run: self.run }),
                Op::Replicate(k) => {
                    self.w.sched(SchedulerToWorker::Replicate { key: key(k), from: vec![PEER.to_string()] })
                }
                Op::Scatter(k) => {
                    let mut out = self.w.sched(SchedulerToWorker::ExpectScatter { id: 1, keys: vec![(key(k), 7)] });
                    self.take(std::mem::take(&mut out));
                    let store = DataRequest::Store { id: 2, key: key(k), ticket: 7, value: big(150) };
                    self.gets += 1;
                    self.w.ev(WorkerEvent::Data { conn: 1, request: store })
                }
                Op::Rss(per_mille) => {
                    let rss = self.limit * per_mille / 1000;
                    self.w.ev(WorkerEvent::Memory { rss })
                }
                Op::Finish(i, fail) => {
                    if self.pending.is_empty() {
                        return;
                    }
                    let p = self.pending.swap_remove(i % self.pending.len());
                    self.finish(p, fail)
                }
            };
            self.take(out);
        }

        fn finish(&mut self, p: Pending, fail: bool) -> Vec<WorkerAction> {
            match p {
                Pending::Spill(key, id, _, _) if fail => {
                    self.w.ev(WorkerEvent::Spilled { key, id, result: Err("disk full".into()), seconds: 0.01 })
                }
                Pending::Fetch(id, _) if fail => self.w.ev(WorkerEvent::FetchDone { id, result: Err("gone".into()) }),
                Pending::Execute(key, run, _) => {
                    let n = 100 + 60 * (key.len() % 4);
                    self.w.ev(WorkerEvent::ExecuteDone { key, run, result: Ok(big(n)), seconds: 0.01 })
                }
                Pending::Spill(key, id, n, _) => {
                    self.w.ev(WorkerEvent::Spilled { key, id, result: Ok(spill_file(n)), seconds: 0.01 })
                }
                Pending::Fetch(id, n) => {
                    let values = (0..n).map(|_| Some(big(200))).collect();
                    self.w.ev(WorkerEvent::FetchDone { id, result: Ok(values) })
                }
                Pending::Serve(serve, _) => self.w.ev(WorkerEvent::Served { serve }),
            }
        }

        /// Finishes everything pending, and whatever that starts, oldest first.
        fn settle(&mut self) {
            for _ in 0..10_000 {
                if self.pending.is_empty() {
                    return;
                }
                let p = self.pending.remove(0);
                let out = self.finish(p, false);
                self.take(out);
            }
            panic!("the worker never settles: {:?}", self.pending);
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..8u8, proptest::collection::vec((0..8u8, any::<bool>()), 0..3)).prop_map(|(k, d)| Op::Compute(k, d)),
            1 => (0..8u8).prop_map(Op::Get),
            2 => (0..8u8).prop_map(Op::Release),
            1 => (0..8u8).prop_map(Op::Steal),
            1 => (0..8u8).prop_map(Op::Replicate),
            1 => (0..8u8).prop_map(Op::Scatter),
            1 => (0..1100u64).prop_map(Op::Rss),
            5 => (any::<usize>(), proptest::bool::weighted(0.1)).prop_map(|(i, f)| Op::Finish(i, f)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]
        #[test]
        fn no_memory_count_leaks(ops in proptest::collection::vec(op(), 0..60), limit in 300u64..3000) {
            let mut d = Driver { w: limited(limit, 2), limit, gets: 0, replies: 0, pending: Vec::new(), run: 0 };
            for op in ops {
                d.apply(op);
            }
            d.settle();
            let out = d.w.sched(SchedulerToWorker::Release { keys: (0..8).map(key).collect() });
            d.take(out);
            d.settle();
            prop_assert_eq!(d.w.s.memory_counts(), [0; 8]);
            prop_assert_eq!(d.replies, d.gets, "every data request was answered");
        }
    }
}

/// A key computed here while a fetch of it (for another run) is on its way: the value held
/// is kept, the fetched copy is dropped, and the run that waited for the fetch, released,
/// leaves nothing behind (its claim used to stay on the fetch: the copy then replaced this
/// worker's own result, was never freed, and a later run's count of missing inputs went
/// below zero).
#[test]
fn a_fetch_landing_on_a_key_computed_here_meanwhile_keeps_the_own_value() {
    let mut w = W::new(2);
    let out = w.compute("a", 1, &[]);
    assert_eq!(executes(&out), vec![("a".into(), 1)]);
    // The scheduler names a peer as `a`'s holder for `b`: a fetch starts.
    let f = fetches(&w.compute("b", 2, &[("a", &[PEER])]));
    assert_eq!(f.len(), 1);
    w.done("a", 1, 7);
    // `b` is given up, then `c` uses `a` (held here, own), then the fetch lands.
    w.sched(SchedulerToWorker::Release { keys: vec!["b".into()] });
    let out = w.compute("c", 3, &[("a", &[ME])]);
    assert_eq!(executes(&out), vec![("c".into(), 3)]);
    w.ev(WorkerEvent::FetchDone { id: f[0].0, result: Ok(vec![Some(v(99))]) });
    // `a` is still this worker's own result: released, it is gone.
    let out = w.ev(WorkerEvent::Data { conn: 1, request: DataRequest::Get { id: 1, keys: vec!["a".into()] } });
    assert!(
        matches!(&out[..], [WorkerAction::Reply { reply: DataReply::Data { values, .. }, .. }] if values == &vec![Some(v(7))]),
        "{out:?}"
    );
    w.done("c", 3, 8);
    w.sched(SchedulerToWorker::Release { keys: vec!["a".into(), "c".into()] });
    assert_eq!(w.s.memory_counts(), [0; 8]);
    assert!(w.s.memory().managed == 0);
}

/// Two runs use one fetched input, and the run that started second ends first: the input,
/// still held by the other execution, stays counted until that one ends too. (It was in the
/// reservation of the run that started last, for it alone by then, and left the count with it.)
#[test]
fn a_fetched_input_of_two_executions_stays_counted_until_both_end() {
    let mut w = limited(100_000, 2);
    // `f` is known to return small results: an execution reserves little beyond its inputs.
    assert_eq!(executes(&w.compute("warm", 3, &[])), vec![("warm".into(), 3)]);
    w.done("warm", 3, 0);
    let f = fetches(&w.compute("a", 1, &[("x", &[PEER])]));
    assert!(fetches(&w.compute("b", 2, &[("x", &[PEER])])).is_empty(), "b waits for the same fetch");
    let out = w.ev(WorkerEvent::FetchDone { id: f[0].0, result: Ok(vec![Some(big(5_000))]) });
    // Both start (in the order the fetch's waiters come out); the second ends first.
    let started = executes(&out);
    let [(first, first_run), (second, second_run)] = &started[..] else { panic!("{started:?}") };
    let x = big(5_000).byte_len();
    w.done(second, *second_run, 7);
    let (committed, managed) = (w.s.committed(), w.s.memory().managed);
    assert!(committed >= managed + x, "{first} still holds x: {committed} committed, {managed} managed, x is {x}");
    w.done(first, *first_run, 8);
    w.sched(SchedulerToWorker::Release { keys: vec!["a".into(), "b".into(), "warm".into()] });
    assert_eq!(w.s.memory_counts(), [0; 8]);
}
