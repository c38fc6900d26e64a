//! The sans-IO scheduler alone (no I/O, no serialization, no worker state machines): the cost
//! per task of submit → assign → finish → release, as the graph grows and as the cluster
//! grows. Fake workers answer every `Compute` with `Finished` at once.
//!
//! Ids: `scheduler/map/{tasks}x{workers}w` (independent `inc` tasks) and
//! `scheduler/tree/{tasks}x{workers}w` (a tree reduction with fan-in 32 over `tasks` leaves,
//! so results move between workers' holders). Throughput is in tasks. Every run ends with
//! the scheduler's task table empty (asserted).
//!
//! Before the timings it prints the scheduler's memory: bytes allocated per waiting task with
//! 10^6 tasks submitted and no worker to run them, and what stays allocated after the client
//! leaves (counted by a global allocator wrapper in this binary).
//!
//! `COURIER_BENCH_QUICK=1` runs only the smallest graphs, briefly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use courier_runtime::protocol::bounds::MAX_TASKS_PER_SUBMIT;
use courier_runtime::protocol::{ClientToScheduler, SchedulerToClient, SchedulerToWorker, TaskSpec, WorkerToScheduler};
use courier_runtime::scheduler::{Action, Event};
use courier_runtime::{ArgSpec, Key, Scheduler, SchedulerConfig, arg};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Map,
    Tree,
}

fn spec(key: String, func: &str, args: Vec<ArgSpec>, wanted: bool) -> TaskSpec {
    TaskSpec { key: key.into(), func: func.into(), args, retries: 0, wanted }
}

/// The graph's tasks (dependencies before dependents) and the keys the client wants.
fn graph(shape: Shape, tasks: usize) -> (Vec<TaskSpec>, Vec<Key>) {
    let leaves: Vec<TaskSpec> = (0..tasks)
        .map(|i| spec(format!("inc-{i}"), "inc", vec![arg(&(i as i64))], matches!(shape, Shape::Map)))
        .collect();
    match shape {
        Shape::Map => {
            let wanted = leaves.iter().map(|t| t.key.clone()).collect();
            (leaves, wanted)
        }
        Shape::Tree => {
            let mut level: Vec<Key> = leaves.iter().map(|t| t.key.clone()).collect();
            let mut all = leaves;
            let mut depth = 0;
            while level.len() > 1 {
                depth += 1;
                let next: Vec<TaskSpec> = level
                    .chunks(32)
                    .enumerate()
                    .map(|(i, c)| {
                        spec(format!("sum-{depth}-{i}"), "sum", c.iter().cloned().map(ArgSpec::Key).collect(), false)
                    })
                    .collect();
                level = next.iter().map(|t| t.key.clone()).collect();
                all.extend(next);
            }
            let root = all.last_mut().expect("a graph");
            root.wanted = true;
            (all, level)
        }
    }
}

/// Submits the graph to a scheduler with `workers` fake workers, runs it to the end, releases
/// the wanted keys; returns the time spent inside `Scheduler::handle`.
fn run(shape: Shape, tasks: usize, workers: usize) -> Duration {
    let (specs, wanted) = graph(shape, tasks);
    let total = specs.len();
    let mut s = Scheduler::with_seed(SchedulerConfig::default(), 7);
    let now = Instant::now();
    let mut pending: VecDeque<Event> = VecDeque::new();
    for w in 0..workers as u64 {
        pending.push_back(Event::WorkerJoined {
            id: w,
            name: format!("w{w}"),
            address: format!("tcp://w{w}"),
            nthreads: 2,
            local: None,
        });
    }
    pending.push_back(Event::ClientJoined { id: 1, name: "bench".into() });
    let mut specs = specs.into_iter();
    loop {
        let chunk: Vec<TaskSpec> = specs.by_ref().take(MAX_TASKS_PER_SUBMIT).collect();
        if chunk.is_empty() {
            break;
        }
        pending.push_back(Event::FromClient { id: 1, msg: ClientToScheduler::Submit { tasks: chunk } });
    }
    let mut done = 0;
    let mut finished = 0;
    let mut spent = Duration::ZERO;
    let mut released = false;
    while let Some(event) = pending.pop_front() {
        let start = Instant::now();
        let actions = s.handle(event, now);
        spent += start.elapsed();
        for a in actions {
            match a {
                Action::ToWorker(w, SchedulerToWorker::Compute { key, run, .. }) => {
                    finished += 1;
                    pending.push_back(Event::FromWorker {
                        id: w,
                        msg: WorkerToScheduler::Finished { key, run, nbytes: 8, seconds: 1e-4 },
                    });
                }
                Action::ToClient(_, SchedulerToClient::Done { .. }) => done += 1,
                Action::ToClient(_, SchedulerToClient::Erred { key, failure }) => panic!("{key} failed: {failure:?}"),
                _ => {}
            }
        }
        if done == wanted.len() && !released {
            released = true;
            for keys in wanted.chunks(MAX_TASKS_PER_SUBMIT) {
                pending.push_back(Event::FromClient { id: 1, msg: ClientToScheduler::Release { keys: keys.to_vec() } });
            }
        }
    }
    assert_eq!(finished, total, "every task ran once");
    assert_eq!(s.stats().tasks, 0, "the task table is empty after release");
    spent
}

fn scheduler(c: &mut Criterion) {
    let quick = std::env::var_os("COURIER_BENCH_QUICK").is_some();
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10).warm_up_time(Duration::from_millis(if quick { 10 } else { 500 }));
    group.measurement_time(Duration::from_millis(if quick { 50 } else { 3000 }));
    // Growth with the graph, 16 workers; growth with the cluster, 100,000 tasks.
    let mut cases: Vec<(Shape, usize, usize)> = Vec::new();
    for shape in [Shape::Map, Shape::Tree] {
        let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000, 100_000, 1_000_000] };
        cases.extend(sizes.iter().map(|&n| (shape, n, 16)));
        let clusters: &[usize] = if quick { &[2] } else { &[2, 128, 1_024, 10_000] };
        cases.extend(clusters.iter().map(|&w| (shape, if quick { 1_000 } else { 100_000 }, w)));
    }
    for (shape, tasks, workers) in cases {
        let name = match shape {
            Shape::Map => "map",
            Shape::Tree => "tree",
        };
        group.throughput(Throughput::Elements(tasks as u64));
        group.bench_function(BenchmarkId::new(name, format!("{tasks}x{workers}w")), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(shape, tasks, workers)).sum())
        });
    }
    group.finish();
}

/// Bytes the scheduler holds per task with the whole graph submitted and nothing run (no
/// worker), and bytes still allocated after the client left (everything released) and the
/// next tick.
fn memory(shape: Shape, tasks: usize) -> (f64, isize) {
    let base = live();
    let mut s = Scheduler::with_seed(SchedulerConfig::default(), 7);
    let now = Instant::now();
    drop(s.handle(Event::ClientJoined { id: 1, name: "bench".into() }, now));
    let (specs, wanted) = graph(shape, tasks);
    let total = specs.len();
    drop(wanted);
    let mut specs = specs.into_iter();
    loop {
        let chunk: Vec<TaskSpec> = specs.by_ref().take(MAX_TASKS_PER_SUBMIT).collect();
        if chunk.is_empty() {
            break;
        }
        drop(s.handle(Event::FromClient { id: 1, msg: ClientToScheduler::Submit { tasks: chunk } }, now));
    }
    drop(specs); // the bench's own buffer of specs, not the scheduler's
    assert_eq!(s.stats().tasks, total);
    let waiting = (live() - base) as f64 / total as f64;
    drop(s.handle(Event::ClientLeft { id: 1 }, now));
    // Tables give memory back on the periodic tick.
    drop(s.handle(Event::Tick, now));
    assert_eq!(s.stats().tasks, 0, "the task table is empty after the client left");
    let retained = live() - base;
    drop(s);
    (waiting, retained)
}

criterion_group!(benches, scheduler);

fn main() {
    let quick = std::env::var_os("COURIER_BENCH_QUICK").is_some();
    let tasks = if quick { 10_000 } else { 1_000_000 };
    for (name, shape) in [("map", Shape::Map), ("tree", Shape::Tree)] {
        let (waiting, retained) = memory(shape, tasks);
        println!(
            "scheduler memory, {name} of {tasks} tasks, no worker: {waiting:.0} B per waiting task; \
             {retained} B still allocated after the client left and a tick"
        );
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
