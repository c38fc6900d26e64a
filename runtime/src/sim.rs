//! A deterministic cluster simulator: the [`Scheduler`], N [`WorkerState`] machines and
//! simple protocol clients run together in simulated time, with no sockets, threads, sleeps
//! or clock. Every message travels over a simulated link with a random delay (drawn from the
//! seed) and links keep FIFO order, as comms do; messages on different links may overtake one
//! another, as the protocol allows. Workers can be killed or frozen at any point, and executions
//! take random simulated time. The same seed replays the same run exactly (maps hash with
//! fixed keys while a simulator exists on the thread).
//!
//! After every step the simulator checks the scheduler's invariants
//! ([`Scheduler::check_invariants`]) and that no key is executing on two live workers at
//! once; [`Sim::run_until`] fails with a [`SimError`] describing the first violation, or if
//! nothing is left to do before the condition holds (a hang), or if simulated time runs out.
//!
//! quinn-proto's `tests/util.rs` (`Pair`, `drive`) is the model.
//!
//! ```
//! use courier_runtime::sim::{Sim, SimConfig};
//! use courier_runtime::protocol::{ArgSpec, TaskSpec};
//!
//! let mut sim = Sim::new(SimConfig { workers: 2, ..SimConfig::default() });
//! let c = sim.add_client();
//! let one = ArgSpec::Value(courier_core::Payload::new(&1i64).unwrap());
//! sim.submit(c, vec![TaskSpec { key: "x".into(), func: "inc".into(), args: vec![one], retries: 0, wanted: true }]);
//! sim.run_until(|s| s.client(c).resolved()).unwrap();
//! assert_eq!(sim.fetch_i64(c, "x").unwrap(), 2);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use courier_core::Payload;

use crate::collections::{Deterministic, Map};
use crate::functions::Functions;
use crate::protocol::{
    ClientToScheduler, DataReply, DataRequest, Failure, Key, RequestId, SchedulerToClient, TaskSpec, WorkerToScheduler,
};
use crate::scheduler::{Action, ClientId, Event, Scheduler, SchedulerConfig, WorkerId};
use crate::worker::{ConnId, Value, WorkerAction, WorkerEvent, WorkerLimits, WorkerState};

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Workers at the start.
    pub workers: usize,
    /// Threads per worker.
    pub nthreads: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Delay of each message, uniform in this range.
    pub latency: (Duration, Duration),
    /// Duration of each execution, uniform in this range.
    pub compute: (Duration, Duration),
    /// How long a fetch waits for a frozen peer before it fails (the driver's timeout).
    pub fetch_timeout: Duration,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// Simulated time after which [`Sim::run_until`] gives up.
    pub time_limit: Duration,
    /// Check the scheduler's invariants every this many steps (they cost O(tables); 1 checks
    /// every step, 0 never).
    pub check_every: u64,
    /// Workers' memory limits (`None`: unlimited). The simulator has no disk: spills fail.
    pub memory: Option<crate::worker::MemoryLimits>,
    /// Send every protocol message as over a wire: encoded to MessagePack and decoded again
    /// (a message that does not come back equal is a [`SimError::Wire`]). Off, messages travel
    /// as typed values, as between the roles of one process over inproc://.
    pub wire: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workers: 3,
            nthreads: 2,
            seed: 1,
            latency: (Duration::from_micros(50), Duration::from_millis(2)),
            compute: (Duration::from_micros(100), Duration::from_millis(20)),
            fetch_timeout: Duration::from_secs(60),
            scheduler: SchedulerConfig { tasks_per_thread: 4, ..SchedulerConfig::default() },
            time_limit: Duration::from_secs(3600),
            check_every: 1,
            memory: None,
            wire: false,
        }
    }
}

/// Why a simulation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The scheduler's tables disagree with each other.
    #[error("at {at:?}: scheduler invariant broken: {what}")]
    Invariant {
        /// Simulated time.
        at: Duration,
        /// The inconsistency.
        what: String,
    },
    /// A key started executing on a worker while another live worker executed it.
    #[error("at {at:?}: {key} executing on workers {first} and {second} at once")]
    RanTwice {
        /// Simulated time.
        at: Duration,
        /// Key.
        key: Key,
        /// One worker.
        first: usize,
        /// The other.
        second: usize,
    },
    /// Nothing was left to happen but the condition did not hold.
    #[error("at {at:?}: nothing left to do but the condition does not hold (a hang): {state}")]
    Stuck {
        /// Simulated time.
        at: Duration,
        /// A summary of the state.
        state: String,
    },
    /// Simulated time ran out.
    #[error("simulated time limit of {0:?} reached: {1}")]
    TimeLimit(Duration, String),
    /// A client could not get a value it was told is done.
    #[error("{0}")]
    Lost(String),
    /// A message did not survive MessagePack encoding and decoding intact ([`SimConfig::wire`]).
    #[error("at {at:?}: a message changed on the wire: {what}")]
    Wire {
        /// Simulated time.
        at: Duration,
        /// The message and what came back.
        what: String,
    },
}

/// A node of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Scheduler,
    Worker(usize),
    Client(usize),
}

#[derive(Debug)]
enum Delivery {
    ToScheduler(Event),
    ToWorker(usize, u64, WorkerEvent),
    ToClient(usize, SchedulerToClient),
    DataReply(usize, DataReply),
    SchedulerTick,
    Heartbeat(usize, u64),
}

#[derive(Debug)]
struct SimWorker {
    state: WorkerState,
    address: String,
    alive: bool,
    frozen: bool,
    /// Bumped on each death so deliveries to an earlier life are dropped.
    life: u64,
    /// Deliveries held while frozen.
    held: Vec<Delivery>,
    /// When each of its threads is next free: the driver's execution lanes, which start the
    /// runs handed over (up to `nthreads + execute_ahead`) in order on `nthreads` threads.
    lanes_free: Vec<Duration>,
}

/// What a simulated client knows of a key it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyView {
    /// Not done yet.
    Pending,
    /// In memory on these workers.
    Done(Vec<String>),
    /// Failed.
    Failed(Failure),
}

/// A minimal protocol client: submits, releases, cancels, retires, and fetches values.
#[derive(Debug, Default)]
pub struct SimClient {
    keys: Map<Key, KeyView>,
    /// Fetches in flight: request id → key.
    fetching: Map<RequestId, Key>,
    /// Values fetched.
    values: Map<Key, Payload>,
    /// Failed fetch attempts per key.
    attempts: Map<Key, u32>,
    /// Answers to `Retire`, by request id.
    retired: Map<RequestId, Result<(), crate::protocol::RetireError>>,
    next_id: RequestId,
    /// Disconnected.
    gone: bool,
}

impl SimClient {
    /// True when every wanted key is done or failed.
    pub fn resolved(&self) -> bool {
        self.keys.values().all(|v| !matches!(v, KeyView::Pending))
    }

    /// What the client knows of `key`.
    pub fn view(&self, key: &str) -> Option<&KeyView> {
        self.keys.get(&Key::from(key))
    }

    /// Every wanted key and its view, sorted by key.
    pub fn views(&self) -> Vec<(Key, KeyView)> {
        let mut v: Vec<_> = self.keys.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The fetched value of `key`.
    pub fn value(&self, key: &str) -> Option<&Payload> {
        self.values.get(&Key::from(key))
    }

    /// The answer to the `Retire` request `id`, once it came.
    pub fn retired(&self, id: RequestId) -> Option<&Result<(), crate::protocol::RetireError>> {
        self.retired.get(&id)
    }

    /// True when every done key's value has been fetched.
    pub fn fetched_all(&self) -> bool {
        self.keys.iter().all(|(k, v)| !matches!(v, KeyView::Done(_)) || self.values.contains_key(k))
    }
}

#[derive(Debug)]
enum Requester {
    Worker(usize, u64),
    Client(usize),
    /// A peer outside the simulated cluster (see [`Sim::peer_requests`]): replies are dropped.
    Stranger,
}

/// A simulated cluster. See the [module docs](self).
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: fastrand::Rng,
    start: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: Map<u64, (Node, Delivery)>,
    link_clock: Map<(Node, Node), Duration>,
    scheduler: Scheduler,
    workers: Vec<SimWorker>,
    clients: Vec<SimClient>,
    functions: Functions,
    /// Executions in progress: key → worker.
    running: Map<Key, usize>,
    /// Data requests in flight: connection → (requester, target worker).
    requests: Map<ConnId, (Requester, usize)>,
    next_conn: ConnId,
    /// A double execution seen by the last step.
    ran_twice: Option<SimError>,
    /// A message the last step's sends changed on the wire ([`SimConfig::wire`]).
    wire_error: Option<SimError>,
    /// Print every delivery (`COURIER_SIM_TRACE=1`).
    trace: bool,
    /// Counters, for tests.
    pub stats: SimStats,
    _deterministic: Deterministic,
}

/// What happened in a simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Executions started.
    pub executions: u64,
    /// Workers killed.
    pub killed: u64,
    /// Executions started per key (to check what ran more than once).
    pub runs_of: Vec<(Key, u64)>,
    /// Steps taken.
    pub steps: u64,
    /// The most result bytes held in memory by all workers together at any instant.
    pub peak_managed: u64,
    /// Messages sent through MessagePack and back ([`SimConfig::wire`]).
    pub wire_trips: u64,
}

fn client_id(c: usize) -> ClientId {
    1_000_000 + c as u64
}

fn worker_id(w: usize) -> WorkerId {
    w as u64 + 1
}

impl Sim {
    /// A cluster of `config.workers` workers and no clients, at simulated time zero.
    pub fn new(config: SimConfig) -> Sim {
        let deterministic = Deterministic::enter();
        let scheduler = Scheduler::with_seed(config.scheduler.clone(), config.seed);
        let mut sim = Sim {
            rng: fastrand::Rng::with_seed(config.seed),
            start: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: Map::default(),
            link_clock: Map::default(),
            scheduler,
            workers: Vec::new(),
            clients: Vec::new(),
            functions: Functions::with_builtins(),
            running: Map::default(),
            requests: Map::default(),
            next_conn: 1,
            ran_twice: None,
            wire_error: None,
            trace: std::env::var_os("COURIER_SIM_TRACE").is_some(),
            stats: SimStats::default(),
            _deterministic: deterministic,
            config,
        };
        for _ in 0..sim.config.workers {
            sim.add_worker();
        }
        sim.at(Duration::from_millis(100), Node::Scheduler, Delivery::SchedulerTick);
        sim
    }

    /// Simulated time elapsed.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    /// The scheduler, to inspect.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Worker `w`'s state machine, to inspect.
    pub fn worker(&self, w: usize) -> &WorkerState {
        &self.workers[w].state
    }

    /// Worker `w`'s process now uses `rss` bytes (the driver's memory sample), delivered at
    /// once.
    pub fn set_rss(&mut self, w: usize, rss: u64) {
        let life = self.workers[w].life;
        self.send(Node::Worker(w), Node::Worker(w), Delivery::ToWorker(w, life, WorkerEvent::Memory { rss }));
    }

    /// Worker `w`'s data address.
    pub fn worker_address(&self, w: usize) -> &str {
        &self.workers[w].address
    }

    /// Workers ever started (dead ones included).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Whether worker `w` is alive.
    pub fn is_alive(&self, w: usize) -> bool {
        self.workers[w].alive
    }

    /// Whether worker `w` is frozen.
    pub fn is_frozen(&self, w: usize) -> bool {
        self.workers[w].frozen
    }

    /// Client `c`.
    pub fn client(&self, c: usize) -> &SimClient {
        &self.clients[c]
    }

    /// Replaces the functions workers run (default: the built-ins).
    pub fn set_functions(&mut self, functions: Functions) {
        self.functions = functions;
    }

    /// Starts a worker; returns its index.
    pub fn add_worker(&mut self) -> usize {
        let w = self.workers.len();
        let address = format!("tcp://10.0.0.{}:{}", w % 250 + 1, 9000 + w);
        let limits = WorkerLimits {
            memory: self.config.memory,
            ..WorkerLimits::new(address.clone(), self.config.nthreads as usize)
        };
        self.workers.push(SimWorker {
            state: WorkerState::new(limits),
            address: address.clone(),
            alive: true,
            frozen: false,
            life: 0,
            held: Vec::new(),
            lanes_free: vec![Duration::ZERO; self.config.nthreads.max(1) as usize],
        });
        let event = Event::WorkerJoined {
            id: worker_id(w),
            name: format!("worker-{w}"),
            address,
            nthreads: self.config.nthreads,
            local: None,
        };
        self.send(Node::Worker(w), Node::Scheduler, Delivery::ToScheduler(event));
        let first = self.jitter((Duration::from_millis(500), Duration::from_secs(1)));
        self.at(first, Node::Worker(w), Delivery::Heartbeat(w, 0));
        w
    }

    /// Adds a client; returns its index.
    pub fn add_client(&mut self) -> usize {
        let c = self.clients.len();
        self.clients.push(SimClient { next_id: 1, ..SimClient::default() });
        let event = Event::ClientJoined { id: client_id(c), name: format!("client-{c}") };
        self.send(Node::Client(c), Node::Scheduler, Delivery::ToScheduler(event));
        c
    }

    fn client_to_scheduler(&mut self, c: usize, msg: ClientToScheduler) {
        let event = Event::FromClient { id: client_id(c), msg };
        self.send(Node::Client(c), Node::Scheduler, Delivery::ToScheduler(event));
    }

    /// Client `c` submits tasks; it tracks the wanted ones.
    pub fn submit(&mut self, c: usize, tasks: Vec<TaskSpec>) {
        if self.clients[c].gone {
            return;
        }
        for t in tasks.iter().filter(|t| t.wanted) {
            self.clients[c].keys.insert(t.key.clone(), KeyView::Pending);
        }
        self.client_to_scheduler(c, ClientToScheduler::Submit { tasks });
    }

    /// Client `c` releases `key`.
    pub fn release(&mut self, c: usize, key: &str) {
        let key = Key::from(key);
        self.clients[c].keys.remove(&key);
        self.clients[c].values.remove(&key);
        self.client_to_scheduler(c, ClientToScheduler::Release { keys: vec![key] });
    }

    /// Client `c` cancels `key`: it fails as cancelled (finished or not), as with the
    /// real client.
    pub fn cancel(&mut self, c: usize, key: &str) {
        let key = &Key::from(key);
        if let Some(v) = self.clients[c].keys.get_mut(key) {
            *v = KeyView::Failed(Failure::Cancelled);
            self.clients[c].values.remove(key);
        }
        self.client_to_scheduler(c, ClientToScheduler::Cancel { keys: vec![key.clone()] });
    }

    /// Client `c` asks to retire worker `w`; the answer lands in
    /// [`SimClient::retired`] under the returned id.
    pub fn retire(&mut self, c: usize, w: usize) -> RequestId {
        let id = self.clients[c].next_id;
        self.clients[c].next_id += 1;
        let workers = vec![self.workers[w].address.clone()];
        self.client_to_scheduler(c, ClientToScheduler::Retire { id, workers });
        id
    }

    /// Client `c` disconnects: the scheduler releases what it wanted; it hears nothing more.
    pub fn disconnect_client(&mut self, c: usize) {
        let event = Event::ClientLeft { id: client_id(c) };
        self.send(Node::Client(c), Node::Scheduler, Delivery::ToScheduler(event));
        self.clients[c].gone = true;
        self.clients[c].keys.clear();
    }

    /// Sends any message as client `c` (hostile or malformed ones included).
    pub fn client_sends(&mut self, c: usize, msg: ClientToScheduler) {
        self.client_to_scheduler(c, msg);
    }

    /// Sends any message as worker `w` (a forged report, a reply to nothing), as if its comm
    /// carried it.
    pub fn worker_sends(&mut self, w: usize, msg: WorkerToScheduler) {
        let event = Event::FromWorker { id: worker_id(w), msg };
        self.send(Node::Worker(w), Node::Scheduler, Delivery::ToScheduler(event));
    }

    /// A peer outside the cluster sends any data request to worker `w`'s data listener (its
    /// replies are dropped).
    pub fn peer_requests(&mut self, w: usize, request: DataRequest) {
        let Some(worker) = self.workers.get(w).filter(|x| x.alive) else { return };
        let life = worker.life;
        let conn = self.next_conn;
        self.next_conn += 1;
        self.requests.insert(conn, (Requester::Stranger, w));
        self.send(Node::Scheduler, Node::Worker(w), Delivery::ToWorker(w, life, WorkerEvent::Data { conn, request }));
    }

    /// Kills worker `w` now (SIGKILL): its comms close; the scheduler hears after a delay.
    pub fn kill_worker(&mut self, w: usize) {
        if !self.workers[w].alive {
            return;
        }
        self.workers[w].alive = false;
        self.workers[w].frozen = false;
        self.workers[w].held.clear();
        self.workers[w].life += 1;
        self.stats.killed += 1;
        self.running.retain(|_, r| *r != w);
        self.send(Node::Worker(w), Node::Scheduler, Delivery::ToScheduler(Event::WorkerLeft { id: worker_id(w) }));
        self.fail_requests_to(w, "connection reset");
    }

    /// Freezes worker `w` (SIGSTOP): it processes nothing, and its comms stay open.
    pub fn freeze_worker(&mut self, w: usize) {
        if self.workers[w].alive {
            self.workers[w].frozen = true;
        }
    }

    /// Thaws a frozen worker: it handles what it was sent meanwhile.
    pub fn thaw_worker(&mut self, w: usize) {
        if !self.workers[w].frozen {
            return;
        }
        self.workers[w].frozen = false;
        let held = std::mem::take(&mut self.workers[w].held);
        for d in held {
            self.deliver(Node::Worker(w), d);
        }
    }

    /// Data requests to `w` fail (its comms closed).
    fn fail_requests_to(&mut self, w: usize, why: &str) {
        let conns: Vec<ConnId> = self.requests.iter().filter(|(_, (_, t))| *t == w).map(|(&c, _)| c).collect();
        for conn in conns {
            let (requester, _) = self.requests.remove(&conn).expect("present");
            self.answer(Node::Worker(w), requester, DataReply::Refused { id: conn, reason: why.to_owned() });
        }
    }

    fn jitter(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        lo + Duration::from_nanos(self.rng.u64(0..(hi - lo).as_nanos() as u64))
    }

    fn at(&mut self, delay: Duration, to: Node, d: Delivery) {
        self.seq += 1;
        let when = self.now + delay;
        self.queue.push(Reverse((when, self.seq)));
        self.pending.insert(self.seq, (to, d));
    }

    /// Sends over the link `from → to`: a random delay, FIFO per link.
    fn send(&mut self, from: Node, to: Node, d: Delivery) {
        let d = if self.config.wire { self.over_the_wire(d) } else { d };
        let delay = self.jitter(self.config.latency);
        let earliest = self.link_clock.get(&(from, to)).copied().unwrap_or_default();
        let when = (self.now + delay).max(earliest);
        self.link_clock.insert((from, to), when);
        self.at(when - self.now, to, d);
    }

    /// `d` as a peer across a wire gets it: its protocol message encoded as MessagePack and
    /// decoded again. One that comes back different (or not at all) is recorded as a
    /// [`SimError::Wire`] and delivered as it was.
    fn over_the_wire(&mut self, d: Delivery) -> Delivery {
        fn trip<T>(m: T, bad: &mut Option<String>, trips: &mut u64) -> T
        where
            T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            *trips += 1;
            match courier_core::to_message(&m).and_then(|msg| courier_core::from_message::<T>(&msg)) {
                Ok(back) if back == m => back,
                Ok(back) => {
                    *bad = Some(format!("{m:?} came back as {back:?}"));
                    m
                }
                Err(e) => {
                    *bad = Some(format!("{m:?}: {e}"));
                    m
                }
            }
        }
        let mut bad = None;
        let (b, n) = (&mut bad, &mut self.stats.wire_trips);
        let d = match d {
            Delivery::ToScheduler(Event::FromClient { id, msg }) => {
                Delivery::ToScheduler(Event::FromClient { id, msg: trip(msg, b, n) })
            }
            Delivery::ToScheduler(Event::FromWorker { id, msg }) => {
                Delivery::ToScheduler(Event::FromWorker { id, msg: trip(msg, b, n) })
            }
            Delivery::ToWorker(w, life, WorkerEvent::Scheduler(msg)) => {
                Delivery::ToWorker(w, life, WorkerEvent::Scheduler(trip(msg, b, n)))
            }
            Delivery::ToWorker(w, life, WorkerEvent::SchedulerBatch(msgs)) => {
                Delivery::ToWorker(w, life, WorkerEvent::SchedulerBatch(trip(msgs, b, n)))
            }
            Delivery::ToWorker(w, life, WorkerEvent::Data { conn, request }) => {
                Delivery::ToWorker(w, life, WorkerEvent::Data { conn, request: trip(request, b, n) })
            }
            Delivery::ToWorker(w, life, WorkerEvent::FetchDone { id, result: Ok(values) }) => {
                Delivery::ToWorker(w, life, WorkerEvent::FetchDone { id, result: Ok(trip(values, b, n)) })
            }
            Delivery::ToClient(c, msg) => Delivery::ToClient(c, trip(msg, b, n)),
            Delivery::DataReply(c, reply) => Delivery::DataReply(c, trip(reply, b, n)),
            other => other,
        };
        if let Some(what) = bad {
            self.wire_error.get_or_insert(SimError::Wire { at: self.now, what });
        }
        d
    }

    /// Handles the next delivery. Returns `false` when nothing is left but periodic ticks.
    pub fn step(&mut self) -> Result<bool, SimError> {
        let Some(Reverse((when, seq))) = self.queue.pop() else { return Ok(false) };
        let (to, d) = self.pending.remove(&seq).expect("queued delivery");
        self.now = when;
        self.stats.steps += 1;
        self.deliver(to, d);
        self.check()?;
        Ok(!self.only_ticks_left())
    }

    fn only_ticks_left(&self) -> bool {
        self.pending.values().all(|(_, d)| self.is_timer(d))
    }

    /// Periodic ticks, and request timeouts whose request was already answered: they change
    /// nothing, so a run with only these left is idle.
    fn is_timer(&self, d: &Delivery) -> bool {
        match d {
            Delivery::SchedulerTick | Delivery::Heartbeat(..) => true,
            Delivery::ToWorker(w, life, WorkerEvent::FetchDone { id, result: Err(_) }) => {
                let w = &self.workers[*w];
                !w.alive || w.life != *life || !w.state.fetch_pending(*id)
            }
            Delivery::DataReply(c, DataReply::Refused { id, .. }) => !self.clients[*c].fetching.contains_key(id),
            _ => false,
        }
    }

    fn check(&mut self) -> Result<(), SimError> {
        if let Some(e) = self.ran_twice.take().or_else(|| self.wire_error.take()) {
            return Err(e);
        }
        if self.config.check_every == 0 || !self.stats.steps.is_multiple_of(self.config.check_every) {
            return Ok(());
        }
        self.scheduler.check_invariants().map_err(|what| SimError::Invariant { at: self.now, what })
    }

    /// Steps until `done` holds. Fails on a broken invariant, a key running twice, when
    /// nothing but timers is left before `done` holds and no frozen worker could change that
    /// (a hang), or at the time limit.
    pub fn run_until(&mut self, mut done: impl FnMut(&Sim) -> bool) -> Result<(), SimError> {
        loop {
            if done(self) {
                return Ok(());
            }
            if self.now > self.config.time_limit {
                return Err(SimError::TimeLimit(self.config.time_limit, self.summary()));
            }
            let busy = self.step()?;
            if !busy && !done(self) {
                // Only timers left: let them run (heartbeat timeouts can still change things),
                // but not forever.
                let horizon = self.now + self.config.scheduler.worker_timeout * 2 + Duration::from_secs(5);
                while self.now < horizon && !done(self) {
                    if self.step()? {
                        break;
                    }
                }
                if self.only_ticks_left() && !done(self) {
                    return Err(SimError::Stuck { at: self.now, state: self.summary() });
                }
            }
        }
    }

    /// Steps until nothing but periodic timers is left.
    pub fn settle(&mut self) -> Result<(), SimError> {
        while self.step()? {
            if self.now > self.config.time_limit {
                return Err(SimError::TimeLimit(self.config.time_limit, self.summary()));
            }
        }
        Ok(())
    }

    /// A summary of the cluster, for failure messages.
    pub fn summary(&self) -> String {
        let workers: Vec<String> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let life = if !w.alive {
                    "dead"
                } else if w.frozen {
                    "frozen"
                } else {
                    "alive"
                };
                format!("w{i}({life}: {})", w.state.describe())
            })
            .collect();
        let pending: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .flat_map(|(c, cl)| {
                cl.keys.iter().filter(|(_, v)| matches!(v, KeyView::Pending)).map(move |(k, _)| format!("c{c}:{k}"))
            })
            .take(8)
            .collect();
        format!(
            "{:?}; {}; pending keys {pending:?}; states {:?}",
            self.scheduler.stats(),
            workers.join(", "),
            pending
                .iter()
                .filter_map(|p| p.split_once(':').map(|(_, k)| (k.to_owned(), self.scheduler.task_state(k).cloned())))
                .collect::<Vec<_>>()
        )
    }

    fn deliver(&mut self, to: Node, d: Delivery) {
        if self.trace && !matches!(d, Delivery::SchedulerTick | Delivery::Heartbeat(..)) {
            let text = format!("{d:?}");
            eprintln!("{:>12?} {to:?} <- {}", self.now, &text[..text.len().min(300)]);
        }
        match d {
            Delivery::SchedulerTick => {
                self.scheduler_event(Event::Tick);
                self.at(Duration::from_millis(100), Node::Scheduler, Delivery::SchedulerTick);
            }
            Delivery::ToScheduler(e) => self.scheduler_event(e),
            Delivery::Heartbeat(w, life) => {
                if self.workers[w].alive && self.workers[w].life == life {
                    self.worker_event(w, life, WorkerEvent::Tick);
                    self.at(crate::worker::HEARTBEAT_INTERVAL, Node::Worker(w), Delivery::Heartbeat(w, life));
                }
            }
            Delivery::ToWorker(w, life, e) => self.worker_event(w, life, e),
            Delivery::ToClient(c, m) => self.client_message(c, m),
            Delivery::DataReply(c, r) => self.client_data(c, r),
        }
        let _ = to;
    }

    fn scheduler_event(&mut self, e: Event) {
        let actions = self.scheduler.handle(e, self.instant());
        for a in actions {
            match a {
                Action::ToWorker(id, msg) => {
                    let w = (id - 1) as usize;
                    if self.workers.get(w).is_some_and(|w| w.alive) {
                        let life = self.workers[w].life;
                        self.send(
                            Node::Scheduler,
                            Node::Worker(w),
                            Delivery::ToWorker(w, life, WorkerEvent::Scheduler(msg)),
                        );
                    }
                }
                Action::ToClient(id, msg) => {
                    let c = (id - 1_000_000) as usize;
                    self.send(Node::Scheduler, Node::Client(c), Delivery::ToClient(c, msg));
                }
                Action::DropClient { .. } => {}
                Action::DropWorker { id, .. } => {
                    // The scheduler closed its comm: the worker process exits.
                    let w = (id - 1) as usize;
                    if self.workers.get(w).is_some_and(|w| w.alive) {
                        self.kill_worker(w);
                        self.stats.killed -= 1;
                    }
                }
            }
        }
    }

    fn worker_event(&mut self, w: usize, life: u64, e: WorkerEvent) {
        let worker = &mut self.workers[w];
        if !worker.alive || worker.life != life {
            return;
        }
        if worker.frozen {
            worker.held.push(Delivery::ToWorker(w, life, e));
            return;
        }
        if let WorkerEvent::ExecuteDone { key, .. } = &e
            && self.running.get(key) == Some(&w)
        {
            self.running.remove(key);
        }
        let now = self.instant();
        let actions = self.workers[w].state.handle(e, now);
        let managed: u64 = self.workers.iter().filter(|x| x.alive).map(|x| x.state.memory().managed).sum();
        self.stats.peak_managed = self.stats.peak_managed.max(managed);
        for a in actions {
            self.worker_action(w, a);
        }
    }

    fn worker_action(&mut self, w: usize, action: WorkerAction) {
        let from = Node::Worker(w);
        let life = self.workers[w].life;
        match action {
            WorkerAction::ToScheduler(msg) => {
                let event = Event::FromWorker { id: worker_id(w), msg };
                self.send(from, Node::Scheduler, Delivery::ToScheduler(event));
            }
            WorkerAction::Reply { conn, reply } => {
                if let Some((requester, _)) = self.requests.remove(&conn) {
                    self.answer(from, requester, reply);
                }
            }
            WorkerAction::Fetch { id, peer, keys } => {
                let target = self.workers.iter().position(|x| x.address == peer && x.alive);
                match target {
                    Some(t) => {
                        let conn = self.next_conn;
                        self.next_conn += 1;
                        self.requests.insert(conn, (Requester::Worker(w, id), t));
                        let tlife = self.workers[t].life;
                        let request = DataRequest::Get { id: conn, keys };
                        self.send(
                            from,
                            Node::Worker(t),
                            Delivery::ToWorker(t, tlife, WorkerEvent::Data { conn, request }),
                        );
                        // The driver's timeout (ignored if the answer came first).
                        let timeout = self.config.fetch_timeout;
                        let event = WorkerEvent::FetchDone { id, result: Err("timed out".into()) };
                        self.at(timeout, from, Delivery::ToWorker(w, life, event));
                    }
                    None => {
                        let event = WorkerEvent::FetchDone { id, result: Err(format!("{peer}: connection refused")) };
                        self.send(Node::Scheduler, from, Delivery::ToWorker(w, life, event));
                    }
                }
            }
            WorkerAction::AbortFetch { .. } => {}
            WorkerAction::Execute { key, run, func, args } => {
                if let Some(&other) = self.running.get(&key)
                    && other != w
                    && self.workers[other].alive
                {
                    let (first, second) = (other, w);
                    // Reported by the next check.
                    self.ran_twice = Some(SimError::RanTwice { at: self.now, key: key.clone(), first, second });
                }
                self.running.insert(key.clone(), w);
                self.stats.executions += 1;
                match self.stats.runs_of.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => self.stats.runs_of.push((key.clone(), 1)),
                }
                let args: Result<Vec<Payload>, String> = args
                    .into_iter()
                    .map(|v| match v {
                        Value::Memory(p) => Ok(p),
                        Value::Disk { file, .. } => file.read(),
                    })
                    .collect();
                let result = match (self.functions.get(&func), args) {
                    (Some(f), Ok(args)) => crate::functions::run_guarded(&f.f, args),
                    (None, _) => Err(format!("unknown function {func:?} on this worker")),
                    (_, Err(e)) => Err(e),
                };
                let took = self.jitter(self.config.compute);
                // The first free lane takes it (FIFO, as the driver's queue); it may wait there.
                let now = self.now;
                let lanes = &mut self.workers[w].lanes_free;
                let Some(lane) = lanes.iter_mut().min() else { return };
                let start = (*lane).max(now);
                *lane = start + took;
                let done = *lane - now;
                let event = WorkerEvent::ExecuteDone { key, run, result, seconds: took.as_secs_f64() };
                self.at(done, from, Delivery::ToWorker(w, life, event));
            }
            WorkerAction::ReplyLoading { conn, id, values, serve } => {
                let values = values
                    .into_iter()
                    .map(|v| match v {
                        Some(Value::Memory(p)) => Some(p),
                        Some(Value::Disk { file, .. }) => file.read().ok(),
                        None => None,
                    })
                    .collect();
                let reply = WorkerAction::Reply { conn, reply: DataReply::Data { id, values } };
                self.worker_action(w, reply);
                let served = WorkerEvent::Served { serve };
                self.send(Node::Scheduler, from, Delivery::ToWorker(w, life, served));
            }
            WorkerAction::Spill { key, id, .. } => {
                // No disk in the simulator: every spill fails (the value stays in memory).
                let event =
                    WorkerEvent::Spilled { key, id, result: Err("the simulator has no disk".into()), seconds: 0.0 };
                self.send(Node::Scheduler, from, Delivery::ToWorker(w, life, event));
            }
            WorkerAction::Terminate { .. } => self.kill_worker(w),
            WorkerAction::Shutdown => {
                // Retired: the process exits; the scheduler already forgot it.
                self.workers[w].alive = false;
                self.workers[w].life += 1;
                self.running.retain(|_, r| *r != w);
                self.fail_requests_to(w, "worker exited");
            }
        }
    }

    /// Routes a data reply from `from` to whoever asked.
    fn answer(&mut self, from: Node, requester: Requester, reply: DataReply) {
        match requester {
            Requester::Worker(r, id) => {
                let result = match reply {
                    DataReply::Data { values, .. } => Ok(values),
                    DataReply::Refused { reason, .. } => Err(reason),
                    DataReply::Stored { .. } | DataReply::Stats { .. } => Err("unexpected reply".into()),
                };
                if self.workers[r].alive {
                    let life = self.workers[r].life;
                    self.send(
                        from,
                        Node::Worker(r),
                        Delivery::ToWorker(r, life, WorkerEvent::FetchDone { id, result }),
                    );
                }
            }
            Requester::Client(c) => self.send(from, Node::Client(c), Delivery::DataReply(c, reply)),
            Requester::Stranger => {}
        }
    }

    fn client_message(&mut self, c: usize, msg: SchedulerToClient) {
        let client = &mut self.clients[c];
        if client.gone {
            return;
        }
        match msg {
            SchedulerToClient::Done { key, holders } => {
                if let Some(v) = client.keys.get_mut(&key)
                    && !matches!(v, KeyView::Failed(_))
                {
                    *v = KeyView::Done(holders.iter().map(|h| h.to_string()).collect());
                }
            }
            SchedulerToClient::Erred { key, failure } => {
                if let Some(v) = client.keys.get_mut(&key) {
                    if matches!(v, KeyView::Failed(_)) {
                        return;
                    }
                    *v = KeyView::Failed(failure);
                }
            }
            SchedulerToClient::Lost { key } => {
                if let Some(v) = client.keys.get_mut(&key)
                    && matches!(v, KeyView::Done(_))
                {
                    *v = KeyView::Pending;
                }
            }
            SchedulerToClient::Retired { id, result } => {
                client.retired.insert(id, result);
            }
            SchedulerToClient::WhoHasReply { id, mut holders } => {
                if let Some(key) = client.fetching.remove(&id) {
                    let h = holders.pop().unwrap_or_default();
                    if let Some(v) = client.keys.get_mut(&key)
                        && matches!(v, KeyView::Done(_))
                    {
                        *v = if h.is_empty() { KeyView::Pending } else { KeyView::Done(h) };
                    }
                }
            }
            SchedulerToClient::Workers { .. }
            | SchedulerToClient::ScatterTargets { .. }
            | SchedulerToClient::Target { .. }
            | SchedulerToClient::WorkerInfo { .. } => {}
        }
    }

    fn client_data(&mut self, c: usize, reply: DataReply) {
        if self.clients[c].gone {
            return;
        }
        let id = reply.id();
        let Some(key) = self.clients[c].fetching.remove(&id) else { return };
        match reply {
            DataReply::Data { mut values, .. } if values.len() == 1 && values[0].is_some() => {
                let v = values.pop().flatten().expect("checked");
                self.clients[c].values.insert(key, v);
            }
            _ => {
                // Not there (moved, lost, or its worker died): ask where it lives now.
                *self.clients[c].attempts.entry(key.clone()).or_insert(0) += 1;
                let rid = self.clients[c].next_id + 1_000_000_000;
                self.clients[c].next_id += 1;
                self.clients[c].fetching.insert(rid, key.clone());
                self.client_to_scheduler(c, ClientToScheduler::WhoHas { id: rid, keys: vec![key] });
            }
        }
    }

    /// Client `c` asks a holder for every done key it has not fetched yet.
    fn request_values(&mut self, c: usize) -> Result<(), SimError> {
        let wanted: Vec<(Key, String)> = self.clients[c]
            .keys
            .iter()
            .filter(|(k, _)| {
                !self.clients[c].values.contains_key(*k) && !self.clients[c].fetching.values().any(|f| f == *k)
            })
            .filter_map(|(k, v)| match v {
                KeyView::Done(h) => h.first().map(|h| (k.clone(), h.clone())),
                _ => None,
            })
            .collect();
        for (key, holder) in wanted {
            if self.clients[c].attempts.get(&key).copied().unwrap_or(0) > 50 {
                return Err(SimError::Lost(format!("client {c} could not fetch {key} in 50 attempts")));
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            self.clients[c].fetching.insert(conn, key.clone());
            match self.workers.iter().position(|w| w.address == holder && w.alive) {
                Some(t) => {
                    self.requests.insert(conn, (Requester::Client(c), t));
                    let life = self.workers[t].life;
                    let request = DataRequest::Get { id: conn, keys: vec![key] };
                    self.send(
                        Node::Client(c),
                        Node::Worker(t),
                        Delivery::ToWorker(t, life, WorkerEvent::Data { conn, request }),
                    );
                    // The client's request timeout (ignored if the answer came first).
                    let reply = DataReply::Refused { id: conn, reason: "timed out".into() };
                    self.at(self.config.fetch_timeout, Node::Client(c), Delivery::DataReply(c, reply));
                }
                None => {
                    let reply = DataReply::Refused { id: conn, reason: "connection refused".into() };
                    self.send(Node::Scheduler, Node::Client(c), Delivery::DataReply(c, reply));
                }
            }
        }
        Ok(())
    }

    /// Runs until client `c` has fetched the value of every key it was told is done (keys
    /// whose data is lost meanwhile are waited for again).
    pub fn fetch_all(&mut self, c: usize) -> Result<(), SimError> {
        loop {
            self.request_values(c)?;
            if self.clients[c].resolved() && self.clients[c].fetched_all() {
                return Ok(());
            }
            if self.now > self.config.time_limit {
                return Err(SimError::TimeLimit(self.config.time_limit, self.summary()));
            }
            if !self.step()? {
                self.request_values(c)?;
                if self.clients[c].fetching.is_empty() && !(self.clients[c].resolved() && self.clients[c].fetched_all())
                {
                    self.run_until(|s| s.clients[c].fetching.is_empty() && s.clients[c].resolved())?;
                }
            }
        }
    }

    /// Fetches one key's value as an `i64`.
    pub fn fetch_i64(&mut self, c: usize, key: &str) -> Result<i64, SimError> {
        self.fetch_all(c)?;
        let v =
            self.clients[c].values.get(&Key::from(key)).ok_or_else(|| SimError::Lost(format!("{key} has no value")))?;
        v.decode::<i64>().map_err(|e| SimError::Lost(format!("{key} does not decode: {e}")))
    }
}
