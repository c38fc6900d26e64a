//! The scheduler as a sans-IO state machine: [`Scheduler::handle`] takes an [`Event`] and the
//! current time and returns [`Action`]s (messages to send). The tokio driver in
//! [`crate::server`] owns the comms; this module has no I/O, no clock and no randomness, so
//! every scheduling decision is unit-tested deterministically.
//!
//! Task life cycle: `Waiting` (dependencies not all in memory) → `Queued` (ready, no worker
//! has room) → `Processing(worker)` → `Memory(holders)`, or `Erred`. A task leaves the
//! table once no client wants it and no unfinished task depends on it; its holders are told
//! to release the data.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::{ArgSpec, FromScheduler, Key, TaskSpec, ToScheduler};

/// A worker's id, given by the driver.
pub type WorkerId = u64;
/// A client's id, given by the driver.
pub type ClientId = u64;

/// Scheduling settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tasks a worker may have assigned per thread (running or queued on it).
    pub tasks_per_thread: usize,
    /// How many workers may die while running a task before it fails as `KilledWorker`.
    pub allowed_failures: u32,
    /// A worker silent for longer than this (no heartbeat, no message) is removed as dead.
    pub worker_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { tasks_per_thread: 128, allowed_failures: 3, worker_timeout: Duration::from_secs(30) }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker registered.
    WorkerJoined {
        /// Driver-given id.
        id: WorkerId,
        /// Its data address.
        address: String,
        /// Its thread count.
        nthreads: u32,
    },
    /// A worker's comm closed: it is dead or gone.
    WorkerLeft {
        /// Id.
        id: WorkerId,
    },
    /// A client registered.
    ClientJoined {
        /// Id.
        id: ClientId,
    },
    /// A client's comm closed.
    ClientLeft {
        /// Id.
        id: ClientId,
    },
    /// A client sent something.
    FromClient {
        /// Id.
        id: ClientId,
        /// The message.
        msg: ToScheduler,
    },
    /// A worker sent something.
    FromWorker {
        /// Id.
        id: WorkerId,
        /// The message.
        msg: ToScheduler,
    },
    /// Time passed: check for silent workers and for work to steal.
    Tick,
}

/// What to send.
#[derive(Debug, Clone)]
pub enum Action {
    /// A message for a worker.
    ToWorker(WorkerId, FromScheduler),
    /// A message for a client.
    ToClient(ClientId, FromScheduler),
    /// Close the comm of a worker declared dead.
    DropWorker(WorkerId),
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Some dependencies are not in memory yet.
    Waiting,
    /// Ready, waiting for a worker with room.
    Queued,
    /// Assigned to a worker.
    Processing(WorkerId),
    /// Done; the result lives on these workers.
    Memory(BTreeSet<WorkerId>),
    /// Done once, data released; the spec is kept so it can be recomputed if a dependent
    /// needs it again (its lineage).
    Released,
    /// Failed for good.
    Erred(String),
}

#[derive(Debug)]
struct Task {
    func: String,
    args: Vec<ArgSpec>,
    deps: Vec<Key>,
    dependents: HashSet<Key>,
    waiting: usize,
    state: TaskState,
    wanted_by: HashSet<ClientId>,
    retries: u32,
    deaths: Vec<String>,
    nbytes: u64,
    scattered: bool,
}

#[derive(Debug)]
struct Worker {
    address: String,
    nthreads: u32,
    processing: HashSet<Key>,
    has: HashSet<Key>,
    ran: u64,
    retiring: bool,
    last_seen: Instant,
}

/// A retirement in progress: the client to answer and the workers leaving.
#[derive(Debug)]
struct Retirement {
    client: ClientId,
    id: u64,
    workers: Vec<WorkerId>,
    /// Keys asked to be replicated and not yet confirmed.
    copying: HashSet<Key>,
}

/// The scheduler state machine. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Scheduler {
    config: SchedulerConfig,
    workers: BTreeMap<WorkerId, Worker>,
    clients: HashMap<ClientId, HashSet<Key>>,
    tasks: HashMap<Key, Task>,
    queued: VecDeque<Key>,
    retirements: Vec<Retirement>,
    stealing: HashSet<Key>,
    /// Per function: total seconds and count of finished runs.
    durations: HashMap<String, (f64, u64)>,
    out: Vec<Action>,
}

impl Scheduler {
    /// A scheduler with `config`.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler { config, ..Default::default() }
    }

    /// Applies one event; returns the messages to send, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::WorkerJoined { id, address, nthreads } => {
                let nthreads = nthreads.max(1);
                self.workers.insert(
                    id,
                    Worker {
                        address,
                        nthreads,
                        processing: HashSet::new(),
                        has: HashSet::new(),
                        ran: 0,
                        retiring: false,
                        last_seen: now,
                    },
                );
                self.broadcast_workers();
                self.fill_from_queue();
            }
            Event::WorkerLeft { id } => self.worker_left(id),
            Event::ClientJoined { id } => {
                self.clients.insert(id, HashSet::new());
                let addresses = self.workers.values().map(|w| w.address.clone()).collect();
                self.out.push(Action::ToClient(id, FromScheduler::Workers { addresses }));
            }
            Event::ClientLeft { id } => {
                let keys: Vec<Key> = self.clients.remove(&id).unwrap_or_default().into_iter().collect();
                for k in keys {
                    self.release(id, &k);
                }
            }
            Event::FromClient { id, msg } => self.on_client(id, msg),
            Event::FromWorker { id, msg } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.last_seen = now;
                }
                self.on_worker(id, msg);
            }
            Event::Tick => {
                let silent: Vec<WorkerId> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > self.config.worker_timeout)
                    .map(|(&id, _)| id)
                    .collect();
                for id in silent {
                    tracing::warn!(address = %self.workers[&id].address, "worker silent too long; removing it");
                    self.worker_left(id);
                    self.out.push(Action::DropWorker(id));
                }
                self.steal();
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The state of a task, if the scheduler still knows it.
    pub fn task_state(&self, key: &str) -> Option<&TaskState> {
        self.tasks.get(key).map(|t| &t.state)
    }

    /// How many tasks the scheduler knows.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks each worker has completed, by address.
    pub fn tasks_run(&self) -> Vec<(String, u64)> {
        self.workers.values().map(|w| (w.address.clone(), w.ran)).collect()
    }

    fn broadcast_workers(&mut self) {
        let addresses: Vec<String> = self.workers.values().map(|w| w.address.clone()).collect();
        for &c in self.clients.keys() {
            self.out.push(Action::ToClient(c, FromScheduler::Workers { addresses: addresses.clone() }));
        }
    }

    fn on_client(&mut self, client: ClientId, msg: ToScheduler) {
        match msg {
            ToScheduler::Submit { tasks } => self.submit(client, tasks),
            ToScheduler::Release { keys } => {
                for k in keys {
                    self.release(client, &k);
                }
            }
            ToScheduler::Cancel { keys } => {
                for k in keys {
                    self.cancel(&k);
                    self.release(client, &k);
                }
            }
            ToScheduler::Retire { id, workers } => self.retire(client, id, workers),
            ToScheduler::AdaptiveTarget { id } => {
                let workers = self.adaptive_target();
                let idle = self
                    .workers
                    .values()
                    .filter(|w| !w.retiring && w.processing.is_empty())
                    .map(|w| w.address.clone())
                    .collect();
                self.out.push(Action::ToClient(client, FromScheduler::Target { id, workers, idle }));
            }
            ToScheduler::Scattered { worker, keys } => {
                let Some((&wid, _)) = self.workers.iter().find(|(_, w)| w.address == worker) else {
                    for (key, _) in keys {
                        let error = format!("scatter of {key} failed: no worker at {worker}");
                        self.out.push(Action::ToClient(client, FromScheduler::Erred { key, error }));
                    }
                    return;
                };
                for (key, nbytes) in keys {
                    let holders = BTreeSet::from([wid]);
                    self.workers.get_mut(&wid).expect("worker").has.insert(key.clone());
                    let task = Task {
                        func: String::new(),
                        args: Vec::new(),
                        deps: Vec::new(),
                        dependents: HashSet::new(),
                        waiting: 0,
                        state: TaskState::Memory(holders),
                        wanted_by: HashSet::from([client]),
                        retries: 0,
                        deaths: Vec::new(),
                        nbytes,
                        scattered: true,
                    };
                    self.tasks.insert(key.clone(), task);
                    self.clients.entry(client).or_default().insert(key.clone());
                    self.notify_done(&key);
                }
            }
            other => tracing::warn!(?other, "unexpected message from a client"),
        }
    }

    fn on_worker(&mut self, wid: WorkerId, msg: ToScheduler) {
        match msg {
            ToScheduler::Finished { key, nbytes, seconds } => {
                if let Some(t) = self.tasks.get(&key) {
                    let d = self.durations.entry(t.func.clone()).or_insert((0.0, 0));
                    *d = (d.0 + seconds.max(0.0), d.1 + 1);
                }
                self.finished(wid, key, nbytes)
            }
            ToScheduler::Erred { key, error } => self.erred_on_worker(wid, key, error),
            ToScheduler::Heartbeat => {}
            ToScheduler::StealReply { key, stolen } => {
                self.stealing.remove(&key);
                if !stolen || self.tasks.get(&key).map(|t| &t.state) != Some(&TaskState::Processing(wid)) {
                    return;
                }
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.processing.remove(&key);
                }
                // The victim gave it up before starting: it runs exactly once, elsewhere.
                match self.idle_worker(Some(wid)) {
                    Some(thief) => self.assign(&key, thief),
                    None => self.make_ready(&key),
                }
            }
            ToScheduler::Replicated { key } => {
                if let Some(TaskState::Memory(h)) = self.tasks.get_mut(&key).map(|t| &mut t.state) {
                    h.insert(wid);
                    if let Some(w) = self.workers.get_mut(&wid) {
                        w.has.insert(key.clone());
                    }
                } else {
                    // Released meanwhile: the copy is not needed.
                    self.out.push(Action::ToWorker(wid, FromScheduler::Release { keys: vec![key.clone()] }));
                }
                for r in &mut self.retirements {
                    r.copying.remove(&key);
                }
                self.advance_retirements();
            }
            ToScheduler::MissingData { key, dep } => {
                if self.tasks.get(&key).map(|t| &t.state) != Some(&TaskState::Processing(wid)) {
                    return;
                }
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.processing.remove(&key);
                }
                // The worker tried every holder and none could serve it: treat the data as
                // lost and recompute it (correct, if wasteful, when a holder only hiccuped).
                if let Some(t) = self.tasks.get_mut(&dep)
                    && let TaskState::Memory(holders) = std::mem::replace(&mut t.state, TaskState::Released)
                {
                    for h in holders {
                        if let Some(w) = self.workers.get_mut(&h) {
                            w.has.remove(&dep);
                        }
                    }
                }
                self.recompute(&key);
                self.fill_from_queue();
            }
            other => tracing::warn!(?other, "unexpected message from a worker"),
        }
    }

    fn submit(&mut self, client: ClientId, specs: Vec<TaskSpec>) {
        let mut new = Vec::new();
        for spec in specs {
            self.clients.entry(client).or_default().insert(spec.key.clone());
            if let Some(t) = self.tasks.get_mut(&spec.key) {
                t.wanted_by.insert(client);
                match &t.state {
                    TaskState::Memory(_) => self.notify_done(&spec.key),
                    TaskState::Erred(e) => {
                        let error = e.clone();
                        self.out.push(Action::ToClient(client, FromScheduler::Erred { key: spec.key, error }));
                    }
                    _ => {}
                }
                continue;
            }
            let mut deps: Vec<Key> = Vec::new();
            for a in &spec.args {
                if let ArgSpec::Key(k) = a
                    && !deps.contains(k)
                {
                    deps.push(k.clone());
                }
            }
            self.tasks.insert(
                spec.key.clone(),
                Task {
                    func: spec.func,
                    args: spec.args,
                    deps,
                    dependents: HashSet::new(),
                    waiting: 0,
                    state: TaskState::Waiting,
                    wanted_by: HashSet::from([client]),
                    retries: spec.retries,
                    deaths: Vec::new(),
                    nbytes: 0,
                    scattered: false,
                },
            );
            new.push(spec.key);
        }
        for key in new {
            let deps = self.tasks[&key].deps.clone();
            let mut waiting = 0;
            let mut failure = None;
            let mut revive = Vec::new();
            for d in &deps {
                match self.tasks.get_mut(d) {
                    None => {
                        failure = Some(format!(
                            "depends on {d}, which the scheduler does not know (released or never submitted)"
                        ));
                    }
                    Some(dep) => {
                        dep.dependents.insert(key.clone());
                        match &dep.state {
                            TaskState::Memory(_) => {}
                            TaskState::Erred(e) => failure = Some(format!("dependency {d} failed: {e}")),
                            TaskState::Released => {
                                waiting += 1;
                                revive.push(d.clone());
                            }
                            _ => waiting += 1,
                        }
                    }
                }
            }
            if let Some(error) = failure {
                self.fail(&key, error);
                continue;
            }
            let t = self.tasks.get_mut(&key).expect("just inserted");
            t.waiting = waiting;
            for d in revive {
                self.recompute(&d);
            }
            if waiting == 0 {
                self.make_ready(&key);
            }
        }
    }

    fn capacity(&self, w: &Worker) -> usize {
        w.nthreads as usize * self.config.tasks_per_thread
    }

    /// Picks a worker with room: the one holding the most bytes of the task's dependencies,
    /// else the least loaded.
    fn pick_worker(&self, key: &str) -> Option<WorkerId> {
        let task = &self.tasks[key];
        let with_room = self.workers.iter().filter(|(_, w)| !w.retiring && w.processing.len() < self.capacity(w));
        let mut best: Option<(u64, f64, WorkerId)> = None;
        for (&id, w) in with_room {
            let local: u64 = task
                .deps
                .iter()
                .filter(|d| w.has.contains(*d))
                .map(|d| self.tasks.get(d).map_or(0, |t| t.nbytes.max(1)))
                .sum();
            let load = w.processing.len() as f64 / w.nthreads as f64;
            let better = match best {
                None => true,
                Some((bl, bload, _)) => local > bl || (local == bl && load < bload),
            };
            if better {
                best = Some((local, load, id));
            }
        }
        best.map(|(_, _, id)| id)
    }

    fn make_ready(&mut self, key: &str) {
        match self.pick_worker(key) {
            Some(w) => self.assign(key, w),
            None => {
                self.tasks.get_mut(key).expect("task").state = TaskState::Queued;
                self.queued.push_back(key.to_owned());
            }
        }
    }

    fn assign(&mut self, key: &str, wid: WorkerId) {
        let task = self.tasks.get_mut(key).expect("task");
        task.state = TaskState::Processing(wid);
        let (func, args, deps) = (task.func.clone(), task.args.clone(), task.deps.clone());
        let who_has = deps
            .into_iter()
            .map(|d| {
                let holders = match self.tasks.get(&d).map(|t| &t.state) {
                    Some(TaskState::Memory(h)) => {
                        h.iter().filter_map(|w| self.workers.get(w)).map(|w| w.address.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                (d, holders)
            })
            .collect();
        self.workers.get_mut(&wid).expect("worker").processing.insert(key.to_owned());
        self.out.push(Action::ToWorker(wid, FromScheduler::Compute { key: key.to_owned(), func, args, who_has }));
    }

    fn fill_from_queue(&mut self) {
        while let Some(key) = self.queued.front().cloned() {
            if !matches!(self.tasks.get(&key).map(|t| &t.state), Some(TaskState::Queued)) {
                self.queued.pop_front();
                continue;
            }
            let Some(w) = self.pick_worker(&key) else { return };
            self.queued.pop_front();
            self.assign(&key, w);
        }
    }

    fn notify_done(&mut self, key: &str) {
        let t = &self.tasks[key];
        let TaskState::Memory(holders) = &t.state else { return };
        let holders: Vec<String> =
            holders.iter().filter_map(|w| self.workers.get(w)).map(|w| w.address.clone()).collect();
        for &c in &t.wanted_by {
            self.out.push(Action::ToClient(c, FromScheduler::Done { key: key.to_owned(), holders: holders.clone() }));
        }
    }

    fn finished(&mut self, wid: WorkerId, key: Key, nbytes: u64) {
        let current = self.tasks.get(&key).map(|t| t.state.clone());
        if current != Some(TaskState::Processing(wid)) {
            // Cancelled, released or reassigned meanwhile: the worker may drop the result.
            if !self.tasks.get(&key).is_some_and(|t| matches!(&t.state, TaskState::Memory(h) if h.contains(&wid))) {
                self.out.push(Action::ToWorker(wid, FromScheduler::Release { keys: vec![key] }));
            }
            return;
        }
        if let Some(w) = self.workers.get_mut(&wid) {
            w.processing.remove(&key);
            w.has.insert(key.clone());
            w.ran += 1;
        }
        let task = self.tasks.get_mut(&key).expect("task");
        task.state = TaskState::Memory(BTreeSet::from([wid]));
        task.nbytes = nbytes;
        let dependents: Vec<Key> = task.dependents.iter().cloned().collect();
        self.notify_done(&key);
        for d in dependents {
            if let Some(t) = self.tasks.get_mut(&d)
                && t.state == TaskState::Waiting
            {
                t.waiting = t.waiting.saturating_sub(1);
                if t.waiting == 0 {
                    self.make_ready(&d);
                }
            }
        }
        let deps = self.tasks[&key].deps.clone();
        for d in deps {
            self.maybe_forget(&d);
        }
        self.maybe_forget(&key);
        self.fill_from_queue();
        self.advance_retirements();
    }

    fn erred_on_worker(&mut self, wid: WorkerId, key: Key, error: String) {
        if self.tasks.get(&key).map(|t| &t.state) != Some(&TaskState::Processing(wid)) {
            return;
        }
        if let Some(w) = self.workers.get_mut(&wid) {
            w.processing.remove(&key);
        }
        let task = self.tasks.get_mut(&key).expect("task");
        if task.retries > 0 {
            task.retries -= 1;
            self.make_ready(&key);
        } else {
            self.fail(&key, error);
        }
        self.fill_from_queue();
    }

    /// Marks `key` and everything depending on it as failed, telling the clients that want them.
    fn fail(&mut self, key: &str, error: String) {
        let mut stack = vec![(key.to_owned(), error)];
        while let Some((k, e)) = stack.pop() {
            let Some(t) = self.tasks.get_mut(&k) else { continue };
            if matches!(t.state, TaskState::Erred(_)) {
                continue;
            }
            if let TaskState::Processing(w) = t.state
                && let Some(w) = self.workers.get_mut(&w)
            {
                w.processing.remove(&k);
            }
            t.state = TaskState::Erred(e.clone());
            for &c in &t.wanted_by {
                self.out.push(Action::ToClient(c, FromScheduler::Erred { key: k.clone(), error: e.clone() }));
            }
            for d in &t.dependents {
                stack.push((d.clone(), format!("dependency {k} failed: {e}")));
            }
        }
    }

    fn cancel(&mut self, key: &str) {
        if matches!(
            self.tasks.get(key).map(|t| &t.state),
            Some(TaskState::Waiting | TaskState::Queued | TaskState::Processing(_))
        ) {
            self.fail(key, "cancelled".into());
        }
    }

    fn release(&mut self, client: ClientId, key: &str) {
        if let Some(keys) = self.clients.get_mut(&client) {
            keys.remove(key);
        }
        if let Some(t) = self.tasks.get_mut(key) {
            t.wanted_by.remove(&client);
            self.maybe_forget(key);
        }
    }

    /// Releases what nobody needs any more. A task no client wants whose dependents are all
    /// finished has its data released (its spec stays while dependents exist, so it can be
    /// recomputed if one of them is lost); a task with no dependents left is forgotten, which
    /// may make its own dependencies forgettable.
    fn maybe_forget(&mut self, key: &str) {
        let mut stack = vec![key.to_owned()];
        while let Some(k) = stack.pop() {
            let Some(t) = self.tasks.get(&k) else { continue };
            let unfinished = t.dependents.iter().any(|d| {
                self.tasks.get(d).is_some_and(|dt| {
                    matches!(dt.state, TaskState::Waiting | TaskState::Queued | TaskState::Processing(_))
                })
            });
            if !t.wanted_by.is_empty() || unfinished {
                continue;
            }
            let t = self.tasks.get_mut(&k).expect("task");
            match std::mem::replace(&mut t.state, TaskState::Released) {
                TaskState::Memory(holders) => {
                    for w in holders {
                        if let Some(worker) = self.workers.get_mut(&w) {
                            worker.has.remove(&k);
                            self.out.push(Action::ToWorker(w, FromScheduler::Release { keys: vec![k.clone()] }));
                        }
                    }
                }
                TaskState::Processing(w) => {
                    if let Some(worker) = self.workers.get_mut(&w) {
                        worker.processing.remove(&k);
                    }
                }
                TaskState::Erred(e) => t.state = TaskState::Erred(e),
                _ => {}
            }
            if !t.dependents.is_empty() {
                continue;
            }
            let t = self.tasks.remove(&k).expect("task");
            for d in &t.deps {
                if let Some(dt) = self.tasks.get_mut(d) {
                    dt.dependents.remove(&k);
                }
                stack.push(d.clone());
            }
        }
    }

    /// Workers the outstanding work calls for: its expected duration (mean measured run time
    /// per function, 0.5 s before any measurement) divided by the target of one second of
    /// work per worker thread, and never more than one worker per outstanding task.
    pub fn adaptive_target(&self) -> usize {
        const TARGET_SECONDS: f64 = 1.0;
        let outstanding: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Waiting | TaskState::Queued | TaskState::Processing(_)))
            .collect();
        if outstanding.is_empty() {
            return 0;
        }
        let seconds: f64 = outstanding
            .iter()
            .map(|t| match self.durations.get(&t.func) {
                Some(&(total, n)) if n > 0 => total / n as f64,
                _ => 0.5,
            })
            .sum();
        let threads = self.workers.values().map(|w| w.nthreads as f64).sum::<f64>() / self.workers.len().max(1) as f64;
        let by_time = (seconds / TARGET_SECONDS / threads.max(1.0)).ceil() as usize;
        by_time.clamp(1, outstanding.len())
    }

    /// A worker with a free thread and nothing queued, other than `not`.
    fn idle_worker(&self, not: Option<WorkerId>) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(id, w)| Some(**id) != not && !w.retiring && w.processing.len() < w.nthreads as usize)
            .min_by_key(|(_, w)| w.processing.len())
            .map(|(&id, _)| id)
    }

    /// Work stealing: while some worker has idle threads and another has more tasks than
    /// threads, ask the busiest to give up one task it has not started. The move happens only
    /// when the victim confirms (`StealReply`), so a task never runs twice because of it.
    fn steal(&mut self) {
        let idle = self
            .workers
            .values()
            .filter(|w| !w.retiring)
            .map(|w| w.nthreads as usize - w.processing.len().min(w.nthreads as usize))
            .sum::<usize>();
        let mut budget = idle.saturating_sub(self.stealing.len());
        while budget > 0 {
            let victim = self
                .workers
                .iter()
                .filter(|(_, w)| w.processing.len() > w.nthreads as usize)
                .max_by_key(|(_, w)| w.processing.len() - w.nthreads as usize)
                .map(|(&id, _)| id);
            let Some(victim) = victim else { return };
            let mut candidates: Vec<&Key> =
                self.workers[&victim].processing.iter().filter(|k| !self.stealing.contains(*k)).collect();
            candidates.sort();
            let Some(key) = candidates.last().map(|k| (*k).clone()) else { return };
            self.stealing.insert(key.clone());
            self.out.push(Action::ToWorker(victim, FromScheduler::Steal { key }));
            budget -= 1;
        }
    }

    /// Starts retiring `addresses`: no new work goes to them, their unique results are copied
    /// to other workers, then they are told to shut down and the client is answered. Refused,
    /// keeping the workers, when no other worker could take their data.
    fn retire(&mut self, client: ClientId, id: u64, addresses: Vec<String>) {
        let mut ids = Vec::new();
        for a in &addresses {
            match self.workers.iter().find(|(_, w)| &w.address == a) {
                Some((&wid, _)) => ids.push(wid),
                None => {
                    let error = Some(format!("no worker at {a}"));
                    self.out.push(Action::ToClient(client, FromScheduler::Retired { id, error }));
                    return;
                }
            }
        }
        let staying = self.workers.iter().filter(|(w, worker)| !ids.contains(w) && !worker.retiring).count();
        let unique = self.unique_keys(&ids);
        if staying == 0 && (!unique.is_empty() || ids.iter().any(|w| !self.workers[w].processing.is_empty())) {
            let error = Some(format!(
                "cannot retire {}: no other worker can take the {} results only they hold",
                addresses.join(", "),
                unique.len()
            ));
            self.out.push(Action::ToClient(client, FromScheduler::Retired { id, error }));
            return;
        }
        for w in &ids {
            self.workers.get_mut(w).expect("worker").retiring = true;
        }
        self.retirements.push(Retirement { client, id, workers: ids, copying: HashSet::new() });
        self.advance_retirements();
    }

    /// Results held by `ids` and by no worker outside them.
    fn unique_keys(&self, ids: &[WorkerId]) -> Vec<Key> {
        let mut keys: Vec<Key> = ids
            .iter()
            .flat_map(|w| self.workers[w].has.iter())
            .filter(|k| match self.tasks.get(*k).map(|t| &t.state) {
                Some(TaskState::Memory(h)) => h.iter().all(|w| ids.contains(w)),
                _ => false,
            })
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn advance_retirements(&mut self) {
        let mut finished = Vec::new();
        for i in 0..self.retirements.len() {
            let ids = self.retirements[i].workers.clone();
            let busy = ids.iter().any(|w| self.workers.get(w).is_some_and(|w| !w.processing.is_empty()));
            let unique = self.unique_keys(&ids);
            for key in unique.iter().filter(|k| !self.retirements[i].copying.contains(*k)).cloned().collect::<Vec<_>>()
            {
                let target = self
                    .workers
                    .iter()
                    .filter(|(_, w)| !w.retiring)
                    .min_by_key(|(_, w)| w.processing.len() + w.has.len())
                    .map(|(&id, _)| id);
                let Some(target) = target else { continue };
                let from = match &self.tasks[&key].state {
                    TaskState::Memory(h) => {
                        h.iter().filter_map(|w| self.workers.get(w)).map(|w| w.address.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                self.retirements[i].copying.insert(key.clone());
                self.out.push(Action::ToWorker(target, FromScheduler::Replicate { key, from }));
            }
            if !busy && unique.is_empty() {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let r = self.retirements.remove(i);
            let mut moved = Vec::new();
            for w in &r.workers {
                if let Some(worker) = self.workers.remove(w) {
                    for k in &worker.has {
                        if let Some(TaskState::Memory(h)) = self.tasks.get_mut(k).map(|t| &mut t.state) {
                            h.remove(w);
                            moved.push(k.clone());
                        }
                    }
                    self.out.push(Action::ToWorker(*w, FromScheduler::Shutdown));
                }
            }
            // Clients that want moved results learn where they live now.
            moved.sort();
            moved.dedup();
            for k in moved {
                self.notify_done(&k);
            }
            self.broadcast_workers();
            self.out.push(Action::ToClient(r.client, FromScheduler::Retired { id: r.id, error: None }));
        }
    }

    fn worker_left(&mut self, wid: WorkerId) {
        let Some(worker) = self.workers.remove(&wid) else { return };
        tracing::info!(address = %worker.address, "worker left");
        self.broadcast_workers();
        // Results that lived only there are lost: recompute what is still needed.
        let mut lost: Vec<Key> = Vec::new();
        for k in &worker.has {
            if let Some(t) = self.tasks.get_mut(k)
                && let TaskState::Memory(h) = &mut t.state
            {
                h.remove(&wid);
                if h.is_empty() {
                    lost.push(k.clone());
                }
            }
        }
        for k in lost {
            let t = self.tasks.get_mut(&k).expect("task");
            if t.scattered {
                self.fail(&k, format!("data lost: {k} was scattered to {} which died", worker.address));
                continue;
            }
            t.state = TaskState::Waiting;
            for d in t.dependents.clone() {
                if let Some(dt) = self.tasks.get_mut(&d)
                    && matches!(dt.state, TaskState::Waiting | TaskState::Queued)
                {
                    dt.state = TaskState::Waiting;
                    dt.waiting += 1;
                }
            }
            self.recompute(&k);
        }
        // Its running tasks go elsewhere, unless they keep killing workers.
        let mut running: Vec<Key> = worker.processing.into_iter().collect();
        running.sort();
        for k in running {
            let Some(t) = self.tasks.get_mut(&k) else { continue };
            if t.state != TaskState::Processing(wid) {
                continue;
            }
            t.deaths.push(worker.address.clone());
            if t.deaths.len() as u32 > self.config.allowed_failures {
                let error = format!(
                    "KilledWorker: task {k} was running on {} workers that died: {}",
                    t.deaths.len(),
                    t.deaths.join(", ")
                );
                self.fail(&k, error);
            } else {
                t.state = TaskState::Waiting;
                self.recompute(&k);
            }
        }
        self.fill_from_queue();
    }

    /// Puts a lost or interrupted task back on the path to memory.
    fn recompute(&mut self, key: &str) {
        let deps = self.tasks[key].deps.clone();
        let mut waiting = 0;
        for d in &deps {
            match self.tasks.get(d).map(|t| t.state.clone()) {
                Some(TaskState::Memory(_)) => {}
                Some(TaskState::Erred(e)) => return self.fail(key, format!("dependency {d} failed: {e}")),
                Some(TaskState::Released) => {
                    waiting += 1;
                    self.recompute(d);
                }
                Some(_) => waiting += 1,
                None => return self.fail(key, format!("dependency {d} was forgotten and cannot be recomputed")),
            }
        }
        self.queued.retain(|k| k != key);
        let t = self.tasks.get_mut(key).expect("task");
        t.waiting = waiting;
        t.state = TaskState::Waiting;
        if waiting == 0 {
            self.make_ready(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskSpec;
    use courier_core::Payload;

    /// A scheduler fed events at simulated instants; collects what it sends.
    struct Harness {
        s: Scheduler,
        now: Instant,
    }

    impl Harness {
        fn new(workers: &[(WorkerId, u32)]) -> Self {
            let mut h = Harness {
                s: Scheduler::new(SchedulerConfig {
                    tasks_per_thread: 2,
                    allowed_failures: 2,
                    ..SchedulerConfig::default()
                }),
                now: Instant::now(),
            };
            for &(id, nthreads) in workers {
                h.ev(Event::WorkerJoined { id, address: format!("w{id}"), nthreads });
            }
            h.ev(Event::ClientJoined { id: 100 });
            h
        }

        fn ev(&mut self, e: Event) -> Vec<Action> {
            self.now += std::time::Duration::from_millis(1);
            self.s.handle(e, self.now)
        }

        fn submit(&mut self, tasks: Vec<TaskSpec>) -> Vec<Action> {
            self.ev(Event::FromClient { id: 100, msg: ToScheduler::Submit { tasks } })
        }

        fn finish(&mut self, w: WorkerId, key: &str, nbytes: u64) -> Vec<Action> {
            self.ev(Event::FromWorker { id: w, msg: ToScheduler::Finished { key: key.into(), nbytes, seconds: 0.0 } })
        }
    }

    fn task(key: &str, deps: &[&str]) -> TaskSpec {
        let mut args: Vec<ArgSpec> = deps.iter().map(|d| ArgSpec::Key((*d).into())).collect();
        args.push(ArgSpec::Value(Payload::new(&1).unwrap()));
        TaskSpec { key: key.into(), func: "f".into(), args, retries: 0 }
    }

    fn computes(actions: &[Action]) -> Vec<(WorkerId, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ToWorker(w, FromScheduler::Compute { key, .. }) => Some((*w, key.clone())),
                _ => None,
            })
            .collect()
    }

    fn client_msgs(actions: &[Action]) -> Vec<&FromScheduler> {
        actions.iter().filter_map(|a| if let Action::ToClient(_, m) = a { Some(m) } else { None }).collect()
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
        let out = h.finish(1, &assigned[0].1, 8);
        assert_eq!(computes(&out), vec![(1, "t4".into())], "room on worker 1 takes the next queued task");
        assert!(
            matches!(client_msgs(&out)[0], FromScheduler::Done { key, holders } if key == &assigned[0].1 && holders == &vec!["w1".to_owned()])
        );
    }

    #[test]
    fn dependents_go_where_their_largest_inputs_live_and_learn_who_has_them() {
        let mut h = Harness::new(&[(1, 4), (2, 4)]);
        let out = h.submit(vec![task("a", &[]), task("b", &[]), task("c", &["a", "b"])]);
        let placed: HashMap<String, WorkerId> = computes(&out).into_iter().map(|(w, k)| (k, w)).collect();
        assert_ne!(placed["a"], placed["b"], "idle workers share the roots");
        assert_eq!(h.s.task_state("c"), Some(&TaskState::Waiting));
        h.finish(placed["a"], "a", 10);
        let out = h.finish(placed["b"], "b", 1_000_000);
        let Some(Action::ToWorker(w, FromScheduler::Compute { who_has, .. })) =
            out.iter().find(|a| matches!(a, Action::ToWorker(_, FromScheduler::Compute { .. })))
        else {
            panic!("c was not scheduled: {out:?}")
        };
        assert_eq!(*w, placed["b"], "c runs where the 1 MB input lives");
        let who: HashMap<_, _> = who_has.iter().cloned().collect();
        assert_eq!(who["a"], vec![format!("w{}", placed["a"])], "the worker fetches a from its peer directly");
    }

    #[test]
    fn released_results_are_forgotten_once_dependents_finish() {
        let mut h = Harness::new(&[(1, 4)]);
        h.submit(vec![task("a", &[]), task("b", &["a"])]);
        h.ev(Event::FromClient { id: 100, msg: ToScheduler::Release { keys: vec!["a".into()] } });
        assert!(h.s.task_state("a").is_some(), "b still needs a");
        h.finish(1, "a", 1);
        let out = h.finish(1, "b", 1);
        assert_eq!(h.s.task_state("a"), Some(&TaskState::Released), "data released, lineage kept for b");
        assert!(out.iter().any(
            |a| matches!(a, Action::ToWorker(1, FromScheduler::Release { keys }) if keys == &vec!["a".to_owned()])
        ));
        h.ev(Event::ClientLeft { id: 100 });
        assert_eq!(h.s.task_count(), 0, "a client that leaves releases everything it wanted");
    }

    #[test]
    fn errors_retry_then_propagate_to_dependents() {
        let mut h = Harness::new(&[(1, 4)]);
        let mut flaky = task("a", &[]);
        flaky.retries = 1;
        h.submit(vec![flaky, task("b", &["a"])]);
        let err = |h: &mut Harness| {
            h.ev(Event::FromWorker { id: 1, msg: ToScheduler::Erred { key: "a".into(), error: "bad".into() } })
        };
        let out = err(&mut h);
        assert_eq!(computes(&out), vec![(1, "a".into())], "one retry");
        let out = err(&mut h);
        let errs: Vec<_> = client_msgs(&out)
            .into_iter()
            .filter_map(|m| {
                if let FromScheduler::Erred { key, error } = m { Some((key.clone(), error.clone())) } else { None }
            })
            .collect();
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().any(|(k, e)| k == "b" && e.contains("dependency a failed: bad")));
    }

    #[test]
    fn unknown_dependencies_and_cancel_fail_clearly() {
        let mut h = Harness::new(&[(1, 1)]);
        let out = h.submit(vec![task("x", &["never-submitted"])]);
        assert!(matches!(client_msgs(&out)[0], FromScheduler::Erred { error, .. } if error.contains("does not know")));
        h.submit(vec![task("slow", &[])]);
        let out = h.ev(Event::FromClient { id: 100, msg: ToScheduler::Cancel { keys: vec!["slow".into()] } });
        assert!(matches!(client_msgs(&out)[0], FromScheduler::Erred { error, .. } if error == "cancelled"));
        // The worker finishing it later is told to drop the result.
        let out = h.finish(1, "slow", 1);
        assert!(out.iter().any(|a| matches!(a, Action::ToWorker(1, FromScheduler::Release { .. }))));
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
            h.ev(Event::WorkerJoined { id, address: format!("w{id}"), nthreads: 1 });
            let out = h.ev(Event::WorkerLeft { id });
            if id == 3 {
                let msg = client_msgs(&out)
                    .into_iter()
                    .find_map(|m| if let FromScheduler::Erred { error, .. } = m { Some(error.clone()) } else { None });
                let msg = msg.expect("KilledWorker after 3 deaths with allowed_failures = 2");
                assert!(msg.contains("KilledWorker") && msg.contains("w1") && msg.contains("w3"), "{msg}");
            }
        }
    }

    #[test]
    fn results_lost_after_their_inputs_were_released_are_recomputed_from_lineage() {
        let mut h = Harness::new(&[(1, 4), (2, 4)]);
        h.submit(vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])]);
        for k in ["a", "b"] {
            h.ev(Event::FromClient { id: 100, msg: ToScheduler::Release { keys: vec![k.into()] } });
        }
        let wa = match h.s.task_state("a") {
            Some(TaskState::Processing(w)) => *w,
            s => panic!("{s:?}"),
        };
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

    #[test]
    fn a_worker_missing_a_dependency_gets_it_recomputed() {
        let mut h = Harness::new(&[(1, 4)]);
        h.submit(vec![task("a", &[]), task("b", &["a"])]);
        h.finish(1, "a", 1);
        let out = h.ev(Event::FromWorker { id: 1, msg: ToScheduler::MissingData { key: "b".into(), dep: "a".into() } });
        assert!(computes(&out).contains(&(1, "a".to_owned())), "{out:?}");
    }

    #[test]
    fn retirement_copies_unique_results_then_shuts_the_worker_down() {
        let mut h = Harness::new(&[(1, 4), (2, 4)]);
        h.submit(vec![task("a", &[])]);
        let wa = match h.s.task_state("a") {
            Some(TaskState::Processing(w)) => *w,
            s => panic!("{s:?}"),
        };
        h.finish(wa, "a", 8);
        let other = if wa == 1 { 2 } else { 1 };
        let out =
            h.ev(Event::FromClient { id: 100, msg: ToScheduler::Retire { id: 7, workers: vec![format!("w{wa}")] } });
        assert!(out.iter().any(|a| matches!(a, Action::ToWorker(w, FromScheduler::Replicate { key, from }) if *w == other && key == "a" && from == &vec![format!("w{wa}")])), "{out:?}");
        // Nothing new is placed on a retiring worker.
        let out = h.submit(vec![task("b", &[])]);
        assert_eq!(computes(&out), vec![(other, "b".into())]);
        h.finish(other, "b", 1);
        let out = h.ev(Event::FromWorker { id: other, msg: ToScheduler::Replicated { key: "a".into() } });
        assert!(out.iter().any(|a| matches!(a, Action::ToWorker(w, FromScheduler::Shutdown) if *w == wa)));
        assert!(out.iter().any(|a| matches!(a, Action::ToClient(100, FromScheduler::Retired { id: 7, error: None }))));
        assert_eq!(h.s.task_state("a"), Some(&TaskState::Memory(BTreeSet::from([other]))));
    }

    #[test]
    fn retirement_is_refused_when_nobody_can_take_the_data() {
        let mut h = Harness::new(&[(1, 4)]);
        h.submit(vec![task("a", &[])]);
        h.finish(1, "a", 8);
        let out = h.ev(Event::FromClient { id: 100, msg: ToScheduler::Retire { id: 1, workers: vec!["w1".into()] } });
        assert!(
            matches!(client_msgs(&out)[..], [FromScheduler::Retired { error: Some(e), .. }] if e.contains("no other worker")),
            "{out:?}"
        );
        // The worker stays and keeps working.
        let out = h.submit(vec![task("b", &[])]);
        assert_eq!(computes(&out), vec![(1, "b".into())]);
    }

    #[test]
    fn a_silent_worker_is_removed_after_the_timeout_in_simulated_time() {
        let mut h = Harness::new(&[(1, 1), (2, 1)]);
        h.s.config.worker_timeout = std::time::Duration::from_secs(10);
        h.submit(vec![task("a", &[]), task("b", &[])]);
        h.now += std::time::Duration::from_secs(6);
        h.ev(Event::FromWorker { id: 2, msg: ToScheduler::Heartbeat });
        assert!(h.ev(Event::Tick).iter().all(|a| !matches!(a, Action::DropWorker(_))), "6 s of silence is fine");
        h.now += std::time::Duration::from_secs(6);
        let out = h.ev(Event::Tick);
        assert!(out.iter().any(|a| matches!(a, Action::DropWorker(1))), "12 s of silence from worker 1: {out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::DropWorker(2))), "worker 2 heartbeated");
        let on_2: Vec<_> = computes(&out);
        assert!(on_2.iter().all(|(w, _)| *w == 2) && !on_2.is_empty(), "worker 1's task moves to worker 2: {out:?}");
    }

    #[test]
    fn stealing_moves_unstarted_tasks_only_when_the_victim_agrees() {
        let mut h = Harness::new(&[(1, 1)]);
        h.s.config.tasks_per_thread = 8;
        h.ev(Event::FromClient {
            id: 100,
            msg: ToScheduler::Scattered { worker: "w1".into(), keys: vec![("d".into(), 1 << 20)] },
        });
        // Every task needs d, which lives on worker 1: they all go there.
        let out = h.submit((0..4).map(|i| task(&format!("t{i}"), &["d"])).collect());
        assert!(computes(&out).iter().all(|(w, _)| *w == 1));
        h.ev(Event::WorkerJoined { id: 2, address: "w2".into(), nthreads: 1 });
        let out = h.ev(Event::Tick);
        let steals: Vec<String> = out
            .iter()
            .filter_map(|a| {
                if let Action::ToWorker(1, FromScheduler::Steal { key }) = a { Some(key.clone()) } else { None }
            })
            .collect();
        assert_eq!(steals.len(), 1, "one idle thread, one steal: {out:?}");
        // The victim had already started it: nothing moves.
        let out =
            h.ev(Event::FromWorker { id: 1, msg: ToScheduler::StealReply { key: steals[0].clone(), stolen: false } });
        assert!(computes(&out).is_empty());
        // Next time it agrees: the task is assigned to the idle worker, with where d lives.
        let out = h.ev(Event::Tick);
        let key = out
            .iter()
            .find_map(
                |a| if let Action::ToWorker(1, FromScheduler::Steal { key }) = a { Some(key.clone()) } else { None },
            )
            .unwrap();
        let out = h.ev(Event::FromWorker { id: 1, msg: ToScheduler::StealReply { key: key.clone(), stolen: true } });
        assert_eq!(computes(&out), vec![(2, key.clone())]);
        // A late Finished from the victim for the stolen task is ignored.
        let out = h.finish(1, &key, 1);
        assert!(out.iter().any(|a| matches!(a, Action::ToWorker(1, FromScheduler::Release { .. }))));
        assert_eq!(h.s.task_state(&key), Some(&TaskState::Processing(2)));
    }

    #[test]
    fn the_adaptive_target_follows_queued_work_and_measured_durations() {
        let mut h = Harness::new(&[(1, 1)]);
        assert_eq!(h.s.adaptive_target(), 0, "no work, no workers needed");
        h.submit((0..10).map(|i| task(&format!("t{i}"), &[])).collect());
        assert_eq!(h.s.adaptive_target(), 5, "10 tasks x 0.5 s (unmeasured) = 5 worker-seconds");
        // Measured: these tasks take 2 s each; 9 remain.
        h.ev(Event::FromWorker { id: 1, msg: ToScheduler::Finished { key: "t0".into(), nbytes: 1, seconds: 2.0 } });
        assert_eq!(h.s.adaptive_target(), 9, "never more workers than tasks");
        for i in 1..10 {
            h.finish(1, &format!("t{i}"), 1);
        }
        assert_eq!(h.s.adaptive_target(), 0);
    }

    #[test]
    fn scattered_data_lost_with_its_worker_fails_its_dependents() {
        let mut h = Harness::new(&[(1, 1), (2, 1)]);
        h.ev(Event::FromClient {
            id: 100,
            msg: ToScheduler::Scattered { worker: "w1".into(), keys: vec![("s".into(), 8)] },
        });
        h.submit(vec![task("use", &["s"])]);
        let out = h.ev(Event::WorkerLeft { id: 1 });
        let errs: Vec<String> = client_msgs(&out)
            .into_iter()
            .filter_map(|m| if let FromScheduler::Erred { error, .. } = m { Some(error.clone()) } else { None })
            .collect();
        assert!(errs.iter().any(|e| e.contains("data lost")), "{errs:?}");
    }
}
