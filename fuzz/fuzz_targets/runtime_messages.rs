//! The runtime's message sets decoded from hostile bytes, then driven through the real state
//! machines: a simulated cluster (scheduler, two workers, an honest client running a small
//! graph) receives the decoded messages as if from a hostile client, a hostile registered
//! worker, and a stranger at a worker's data port.
//!
//! Input: segments of `[role][nframes][header length: u16 LE][header][frames: u16 LE length +
//! bytes]…`. Every segment is decoded as every message set (decoding alone must not panic);
//! by role it is then delivered: 0 client → scheduler, 1 worker → scheduler, 2 stranger →
//! worker data port, 3 time passes (the cluster steps).
//!
//! Checks: no panic; the scheduler's invariants hold after every step; no task executes on two
//! workers at once; the simulation settles (never loops forever).
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use courier_core::{Message, from_message};
use courier_runtime::protocol::{
    ArgSpec, ClientToScheduler, DataReply, DataRequest, Hello, SchedulerToClient, SchedulerToWorker, TaskSpec,
    WorkerToScheduler,
};
use courier_runtime::sim::{Sim, SimConfig, SimError};
use courier_runtime::{Functions, SchedulerConfig, arg};
use libfuzzer_sys::fuzz_target;

fn segments(mut data: &[u8]) -> Vec<(u8, Message)> {
    let mut out = Vec::new();
    while let Some((&[role, nframes, lo, hi], rest)) = data.split_first_chunk::<4>() {
        let hlen = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
        let (header, mut rest) = rest.split_at(hlen);
        let mut frames = Vec::new();
        for _ in 0..nframes % 8 {
            let Some((&[lo, hi], r)) = rest.split_first_chunk::<2>() else { break };
            let len = usize::from(u16::from_le_bytes([lo, hi])).min(r.len());
            frames.push(Bytes::copy_from_slice(&r[..len]));
            rest = &r[len..];
        }
        out.push((role, Message::new(Bytes::copy_from_slice(header), frames)));
        data = rest;
        if out.len() >= 64 {
            break;
        }
    }
    out
}

/// `worker_lied`: messages were forged on a worker's own comm. A worker that says it gave a run
/// up (`StealReply { stolen: true }`) while it runs it can make the task run twice: no scheduler
/// can tell that lie from the truth. Its tables must still hold.
fn fail_on(e: SimError, worker_lied: bool) {
    match e {
        SimError::RanTwice { .. } if worker_lied => {}
        SimError::Invariant { .. } | SimError::RanTwice { .. } | SimError::Wire { .. } => panic!("{e}"),
        // Hostile peers can make honest work fail or wait; they must not break the tables.
        SimError::Stuck { .. } | SimError::TimeLimit(..) | SimError::Lost(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let segs = segments(data);
    // Decoding alone, as every driver does for its peers' batches.
    for (_, m) in &segs {
        let _ = from_message::<Hello>(m);
        let _ = from_message::<Vec<ClientToScheduler>>(m);
        let _ = from_message::<Vec<SchedulerToClient>>(m);
        let _ = from_message::<Vec<WorkerToScheduler>>(m);
        let _ = from_message::<Vec<SchedulerToWorker>>(m);
        let _ = from_message::<Vec<DataRequest>>(m);
        let _ = from_message::<Vec<DataReply>>(m);
    }

    let config = SimConfig {
        workers: 2,
        nthreads: 1,
        seed: 7,
        scheduler: SchedulerConfig { tasks_per_thread: 2, ..SchedulerConfig::default() },
        time_limit: Duration::from_secs(600),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    let mut functions = Functions::new();
    functions.register("inc", |(x,): (i64,)| x.checked_add(1).ok_or_else(|| "overflow".to_owned()));
    functions.register("add", |(x, y): (i64, i64)| x.checked_add(y).ok_or_else(|| "overflow".to_owned()));
    functions.register("fail", |(): ()| Err::<i64, _>("failed on purpose".to_owned()));
    sim.set_functions(functions);
    let hostile = sim.add_client();
    let honest = sim.add_client();
    let task = |key: &str, func: &str, args: Vec<ArgSpec>| TaskSpec {
        key: key.into(),
        func: func.into(),
        args,
        retries: 1,
        wanted: true,
    };
    sim.submit(
        honest,
        vec![
            task("a", "inc", vec![arg(&1i64)]),
            task("b", "inc", vec![ArgSpec::Key("a".into())]),
            task("c", "add", vec![ArgSpec::Key("a".into()), ArgSpec::Key("b".into())]),
        ],
    );
    let mut worker_lied = false;
    for (role, m) in segs {
        match role % 4 {
            0 => {
                if let Ok(batch) = from_message::<Vec<ClientToScheduler>>(&m) {
                    batch.into_iter().for_each(|msg| sim.client_sends(hostile, msg));
                }
            }
            1 => {
                if let Ok(batch) = from_message::<Vec<WorkerToScheduler>>(&m) {
                    worker_lied |= !batch.is_empty();
                    batch.into_iter().for_each(|msg| sim.worker_sends(usize::from(role >> 7), msg));
                }
            }
            2 => {
                if let Ok(batch) = from_message::<Vec<DataRequest>>(&m) {
                    batch.into_iter().for_each(|r| sim.peer_requests(usize::from(role >> 7), r));
                }
            }
            _ => {
                for _ in 0..(role >> 2) {
                    match sim.step() {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => return fail_on(e, worker_lied),
                    }
                }
            }
        }
    }
    if let Err(e) = sim.settle() {
        fail_on(e, worker_lied);
    }
});
