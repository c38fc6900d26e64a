//! What the scheduler shows of itself: task groups (counts per function name), a bounded
//! stream of recent executions, a histogram of run times, and cumulative counters. The state
//! machine keeps them as it moves tasks (`set_state`, `finished`) and workers (join, leave,
//! timeout): O(1) per event, one hash lookup by function name. The dashboard and `/metrics`
//! read them as a [`Snapshot`], built on demand by the driver (never per event) in
//! O(groups + workers + stream), none of which grows with the task table.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::state::TaskState;
use super::{Scheduler, WorkerId};
use crate::collections::Map;
use crate::protocol::{Key, MAX_TRANSFER_SCHEMES, WorkerMemory, WorkerTransfers};

/// Distinct function names counted apart; further names share the group [`OTHER`] (a client
/// submitting a million made-up names cannot grow the table).
pub const MAX_GROUPS: usize = 1024;
/// The group of function names beyond [`MAX_GROUPS`].
pub const OTHER: &str = "(other)";
/// Executions kept for the task stream (the newest).
pub const STREAM_KEEP: usize = 4096;
/// Upper bounds (seconds) of the run-time histogram's buckets; a last bucket takes the rest.
pub const DURATION_BUCKETS: [f64; 12] = [1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0];

/// Counts of one function's tasks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    /// The function's name ([`OTHER`] for names beyond [`MAX_GROUPS`]).
    pub function: String,
    /// Waiting for dependencies.
    pub waiting: u64,
    /// Ready, waiting for room on a worker.
    pub queued: u64,
    /// Assigned to a worker.
    pub processing: u64,
    /// Runs finished (a recomputed task counts again).
    pub finished: u64,
    /// Tasks failed for good.
    pub erred: u64,
    /// Seconds its finished runs took, summed.
    pub seconds: f64,
}

/// One finished run, for the task stream. Times are seconds since the scheduler started:
/// `stop` is when the scheduler heard, `start` that minus the run's duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    /// Increasing number of this record (to ask for what is new).
    pub seq: u64,
    /// The worker's id ([`WorkerView::id`]).
    pub worker: WorkerId,
    /// The function.
    pub function: Arc<str>,
    /// Start, seconds since the scheduler started.
    pub start: f64,
    /// Stop, seconds since the scheduler started.
    pub stop: f64,
}

/// Cumulative counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Tasks submitted (accepted into the table).
    pub submitted: u64,
    /// Runs finished.
    pub finished: u64,
    /// Tasks failed for good.
    pub erred: u64,
    /// Workers that joined.
    pub workers_joined: u64,
    /// Workers that left after retirement.
    pub workers_retired: u64,
    /// Workers lost otherwise (their comm closed, or they fell silent).
    pub workers_lost: u64,
    /// Workers dropped for missing their heartbeats.
    pub heartbeats_missed: u64,
}

/// A histogram of run times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Durations {
    /// Upper bounds of the buckets (seconds); the counts have one more entry (the rest).
    pub bounds: Vec<f64>,
    /// Runs per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Seconds in all.
    pub sum: f64,
}

/// A worker as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerView {
    /// The scheduler's id for it.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// Its data address.
    pub address: String,
    /// Its data address's transport scheme.
    pub scheme: String,
    /// Threads.
    pub nthreads: u32,
    /// Runs assigned to it.
    pub processing: u64,
    /// Results it holds.
    pub held: u64,
    /// Their bytes.
    pub held_bytes: u64,
    /// Runs it finished.
    pub ran: u64,
    /// Whether it is being retired.
    pub retiring: bool,
    /// Its last memory report.
    pub memory: WorkerMemory,
    /// Its last transfer report.
    pub transfers: WorkerTransfers,
}

/// The scheduler's state for display: the `/api` JSON and the source of `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds since the scheduler started.
    pub uptime: f64,
    /// Tasks in the table.
    pub tasks: u64,
    /// Tasks waiting, queued or processing.
    pub outstanding: u64,
    /// Workers the outstanding work calls for ([`Scheduler::adaptive_target`]): what an
    /// autoscaler (a Kubernetes HorizontalPodAutoscaler on this metric) scales workers to.
    pub adaptive_target: u64,
    /// Clients connected.
    pub clients: u64,
    /// Cumulative counters.
    pub counters: Counters,
    /// Task groups, by function name.
    pub groups: Vec<Group>,
    /// Workers, by id.
    pub workers: Vec<WorkerView>,
    /// Run times.
    pub durations: Durations,
    /// The newest executions (at most [`STREAM_KEEP`]), oldest first.
    pub stream: Vec<Execution>,
}

/// The scheduler's observations (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Observer {
    start: Instant,
    /// Task groups in the order they appeared, each under its function's key; never removed,
    /// so an index stays valid.
    groups: Vec<(Key, Group)>,
    /// Where each function's group is.
    group_index: Map<Key, usize>,
    /// The function updated last and its group: tasks of one function move together, and
    /// the scheduler interns function names, so most updates compare one pointer.
    last_group: Option<(Key, usize)>,
    /// The key of the [`OTHER`] group.
    other: Key,
    stream: VecDeque<Execution>,
    next_seq: u64,
    pub(crate) counters: Counters,
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    seconds: f64,
    /// Workers' last transfer reports.
    pub(crate) transfers: Map<WorkerId, WorkerTransfers>,
}

impl Observer {
    pub(crate) fn new(start: Instant) -> Self {
        Observer {
            start,
            groups: Vec::new(),
            group_index: Map::default(),
            last_group: None,
            other: Key::from(OTHER),
            stream: VecDeque::new(),
            next_seq: 1,
            counters: Counters::default(),
            buckets: [0; DURATION_BUCKETS.len() + 1],
            seconds: 0.0,
            transfers: Map::default(),
        }
    }

    /// Updates the group counting `func`: its own while there is room, else [`OTHER`]. Groups
    /// are never removed, so a name resolves to the same group every time.
    fn group(&mut self, func: &Key, update: impl FnOnce(&mut Group)) {
        if let Some((last, i)) = &self.last_group
            && std::sync::Arc::ptr_eq(last.as_arc(), func.as_arc())
        {
            update(&mut self.groups[*i].1);
            return;
        }
        let i = match self.group_index.get(func) {
            Some(&i) => i,
            None => {
                let key = if self.groups.len() < MAX_GROUPS { func.clone() } else { self.other.clone() };
                match self.group_index.get(&key) {
                    Some(&i) => i,
                    None => {
                        self.groups.push((key.clone(), Group { function: key.to_string(), ..Group::default() }));
                        self.group_index.insert(key, self.groups.len() - 1);
                        self.groups.len() - 1
                    }
                }
            }
        };
        self.last_group = Some((func.clone(), i));
        update(&mut self.groups[i].1);
    }

    /// A task of `func` moved from `old` to `new`. Scattered values (no function) are not
    /// task groups.
    pub(crate) fn moved(&mut self, func: &Key, old: &TaskState, new: &TaskState) {
        let counted = |s: &TaskState| {
            matches!(s, TaskState::Waiting | TaskState::Queued | TaskState::Processing(_) | TaskState::Erred(_))
        };
        if func.is_empty()
            || std::mem::discriminant(old) == std::mem::discriminant(new)
            || !(counted(old) || counted(new))
        {
            return;
        }
        let failed = matches!(new, TaskState::Erred(_));
        self.group(func, |g| {
            match old {
                TaskState::Waiting => g.waiting -= 1,
                TaskState::Queued => g.queued -= 1,
                TaskState::Processing(_) => g.processing -= 1,
                _ => {}
            }
            match new {
                TaskState::Waiting => g.waiting += 1,
                TaskState::Queued => g.queued += 1,
                TaskState::Processing(_) => g.processing += 1,
                TaskState::Erred(_) => g.erred += 1,
                _ => {}
            }
        });
        if failed {
            self.counters.erred += 1;
        }
    }

    /// A run of `func` on `w` finished after `seconds`, heard at `now`.
    pub(crate) fn executed(&mut self, w: WorkerId, func: &Key, seconds: f64, now: Instant) {
        self.counters.finished += 1;
        self.group(func, |g| {
            g.finished += 1;
            g.seconds += seconds;
        });
        let bucket = DURATION_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.seconds += seconds;
        let stop = now.saturating_duration_since(self.start).as_secs_f64();
        if self.stream.len() == STREAM_KEEP {
            self.stream.pop_front();
        }
        self.stream.push_back(Execution {
            seq: self.next_seq,
            worker: w,
            function: func.as_arc().clone(),
            start: (stop - seconds).max(0.0),
            stop,
        });
        self.next_seq += 1;
    }

    /// Checks the groups' counts against the task table (O(tables); the simulator and tests
    /// call it through `check_invariants`).
    pub(crate) fn check(&self, tasks: &Map<crate::protocol::Key, Box<super::state::Task>>) -> Result<(), String> {
        if self.groups.len() >= MAX_GROUPS {
            return Ok(());
        }
        let mut want: Map<&str, [u64; 3]> = Map::default();
        for t in tasks.values().filter(|t| !t.func.is_empty()) {
            let i = match t.state {
                TaskState::Waiting => 0,
                TaskState::Queued => 1,
                TaskState::Processing(_) => 2,
                _ => continue,
            };
            want.entry(&*t.func).or_default()[i] += 1;
        }
        for (f, g) in &self.groups {
            let w = want.remove(&**f).unwrap_or_default();
            if [g.waiting, g.queued, g.processing] != w {
                return Err(format!("group {f} counts {:?}, the table has {w:?}", [g.waiting, g.queued, g.processing]));
            }
        }
        match want.keys().next() {
            Some(f) => Err(format!("function {f} has outstanding tasks but no group")),
            None => Ok(()),
        }
    }

    /// A worker's transfer report, cut to its bound.
    pub(crate) fn transfers(&mut self, w: WorkerId, mut report: WorkerTransfers) {
        report.fetched.truncate(MAX_TRANSFER_SCHEMES);
        report.served.truncate(MAX_TRANSFER_SCHEMES);
        for c in report.fetched.iter_mut().chain(report.served.iter_mut()) {
            if c.scheme.len() > 32 {
                c.scheme = c.scheme.chars().take(32).collect();
            }
        }
        self.transfers.insert(w, report);
    }
}

impl Scheduler {
    /// The state for display, at `now`: O(function names + workers + [`STREAM_KEEP`]).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let o = &self.observer;
        let mut groups: Vec<Group> = o.groups.iter().map(|(_, g)| g.clone()).collect();
        groups.sort_by(|a, b| a.function.cmp(&b.function));
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerView {
                id: *id,
                name: w.name.clone(),
                address: w.address.clone(),
                scheme: w.address.split("://").next().unwrap_or("").to_owned(),
                nthreads: w.nthreads,
                processing: w.processing.len() as u64,
                held: w.has.len() as u64,
                held_bytes: w.nbytes,
                ran: w.ran,
                retiring: !w.running(),
                memory: w.memory.clone(),
                transfers: o.transfers.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        Snapshot {
            uptime: now.saturating_duration_since(o.start).as_secs_f64(),
            tasks: self.tasks.len() as u64,
            outstanding: self.outstanding_total as u64,
            adaptive_target: self.adaptive_target() as u64,
            clients: self.clients.len() as u64,
            counters: o.counters.clone(),
            groups,
            workers,
            durations: Durations { bounds: DURATION_BUCKETS.to_vec(), counts: o.buckets.to_vec(), sum: o.seconds },
            stream: o.stream.iter().cloned().collect(),
        }
    }
}
