//! The scheduler's tokio driver: accepts comms, turns their messages into [`Event`]s for the
//! sans-IO [`Scheduler`], and pushes the resulting messages into per-peer batched outboxes.
//!
//! The event loop never awaits a peer. Each peer has a reader task that decodes its messages
//! and waits for room in the (bounded) event queue, so a peer flooding the scheduler is slowed
//! down by its own back-pressure while the others keep their turns; each peer has an
//! [`Outbox`] that the loop pushes into without waiting, so a peer that stops reading only
//! grows its own backlog, and past the bound it is disconnected with a log line that says so.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{CloseSignal, Comm, CommError, CommReceiver, Registry, into_value};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::batched::Outbox;
use crate::collections::{Map, Set};
use crate::dashboard::{Feed, Publisher};
use crate::protocol::{ClientToScheduler, Hello, SchedulerToClient, SchedulerToWorker, WorkerToScheduler};
use crate::scheduler::{Action, ClientId, Event, Scheduler, SchedulerConfig, SchedulerStats, WorkerId};

/// How long a new comm may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often time passes for the state machine.
const TICK: Duration = Duration::from_millis(100);
/// Items queued from peers' readers before they wait.
const EVENT_QUEUE: usize = 8192;
/// Messages handled per round before the outboxes are flushed.
const ROUND: usize = 4096;

/// Settings of the scheduler's driver, beside the state machine's [`SchedulerConfig`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The state machine's settings.
    pub scheduler: SchedulerConfig,
    /// Unsent messages a peer may accumulate before it is disconnected (default 1,000,000).
    pub outbox_limit: usize,
    /// Serve the dashboard (`/`, `/metrics`, `/api/…`) over HTTP (default: off).
    pub dashboard: Option<crate::dashboard::DashboardConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { scheduler: SchedulerConfig::default(), outbox_limit: 1_000_000, dashboard: None }
    }
}

impl From<SchedulerConfig> for ServerConfig {
    fn from(scheduler: SchedulerConfig) -> Self {
        ServerConfig { scheduler, ..ServerConfig::default() }
    }
}

/// A running scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    /// The contact address clients and workers connect to.
    pub address: String,
    shutdown: CloseSignal,
    received: Arc<AtomicU64>,
    stats: tokio::sync::watch::Sender<SchedulerStats>,
    dashboard: Option<std::net::SocketAddr>,
}

impl SchedulerHandle {
    /// Where the dashboard listens, if it was started.
    pub fn dashboard_address(&self) -> Option<std::net::SocketAddr> {
        self.dashboard
    }

    /// Bytes of messages the scheduler has received from all peers (headers and frames).
    /// Task data moves worker to worker, so this stays small however large the results.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The scheduler's table sizes after its latest round of events.
    pub fn stats(&self) -> SchedulerStats {
        self.stats.borrow().clone()
    }

    /// Waits until the scheduler's table sizes satisfy `predicate` (checked now, then after
    /// every round of events) and returns them; `None` if the scheduler stopped first.
    pub async fn wait_for_stats(&self, mut predicate: impl FnMut(&SchedulerStats) -> bool) -> Option<SchedulerStats> {
        let mut rx = self.stats.subscribe();
        rx.wait_for(|s| predicate(s)).await.map(|s| s.clone()).ok()
    }

    /// Stops the scheduler; its comms close, so workers and clients see it go.
    pub fn shutdown(&self) {
        self.shutdown.close();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Peer {
    Worker(WorkerId),
    Client(ClientId),
}

#[derive(Debug)]
enum PeerOutbox {
    Worker(Outbox<SchedulerToWorker>),
    Client(Outbox<SchedulerToClient>),
}

impl PeerOutbox {
    fn flush(&self) {
        match self {
            PeerOutbox::Worker(o) => o.flush(),
            PeerOutbox::Client(o) => o.flush(),
        }
    }

    fn close(&self) {
        match self {
            PeerOutbox::Worker(o) => o.close(),
            PeerOutbox::Client(o) => o.close(),
        }
    }
}

/// What a peer's reader hands the event loop. Each peer's items are handled in the order
/// sent; different peers take turns.
enum Item {
    Joined(PeerOutbox, Event),
    /// A batch being worked through: a turn takes up to `SLICE` events off the front, in O(1)
    /// (splitting the rest off a `Vec` would copy it on every turn: quadratic in the batch).
    Batch(std::vec::IntoIter<Event>, OwnedSemaphorePermit),
    Left(Event),
}

struct FromPeer(Peer, Item);

/// Batches a peer may have waiting in the event loop before its reader stops reading.
const PEER_CREDIT: usize = 2;
/// Messages of one peer handled before the next peer's turn.
const SLICE: usize = 256;

/// Listens on `listen` and runs a scheduler until [`SchedulerHandle::shutdown`]. The join
/// handle resolves with an error if the scheduler stops for any other reason.
pub async fn start_scheduler(
    registry: Registry,
    listen: &str,
    config: impl Into<ServerConfig>,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<Result<(), CommError>>), CommError> {
    let config = config.into();
    let mut listener = registry.listen(listen).await?;
    let address = listener.contact_address().to_string();
    let rejections = listener.rejections();
    let shutdown = CloseSignal::new();
    let (events_tx, events) = mpsc::channel::<FromPeer>(EVENT_QUEUE);
    let received = Arc::new(AtomicU64::new(0));
    let stats = tokio::sync::watch::Sender::new(SchedulerStats::default());
    let ids = Arc::new(AtomicU64::new(1));
    let scheduler = Scheduler::new(config.scheduler);
    let scheme = address.split("://").next().unwrap_or("").to_owned();
    let feed = Arc::new(Feed::new(&scheduler, rejections, received.clone(), scheme));
    let dashboard = match config.dashboard {
        Some(d) => {
            let listen = d.listen.clone();
            let started = crate::dashboard::start(d, feed.clone(), shutdown.clone()).await.map_err(|e| {
                CommError::new(courier_core::ErrorKind::Io, format!("the dashboard cannot listen on {listen}: {e}"))
            });
            match started {
                Ok(d) => Some(d.address),
                Err(e) => {
                    listener.close().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };

    let stop = shutdown.clone();
    let errors = feed.clone();
    let (counter, limit) = (received.clone(), config.outbox_limit);
    tokio::spawn(async move {
        loop {
            let comm = tokio::select! {
                () = stop.closed() => break,
                c = listener.accept() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "the scheduler's listener failed");
                        stop.close();
                        break;
                    }
                },
            };
            let id = ids.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve_peer(comm, id, events_tx.clone(), stop.clone(), counter.clone(), limit, errors.clone()));
        }
        listener.close().await;
    });
    let core = Core::new(scheduler, stats.clone(), Publisher::new(feed.clone()));
    let task = tokio::spawn(core.run(events, shutdown.clone(), feed));
    Ok((SchedulerHandle { address, shutdown, received, stats, dashboard }, task))
}

/// The event loop's state: the state machine, the outboxes, and each peer's waiting items.
struct Core {
    scheduler: Scheduler,
    outboxes: Map<Peer, PeerOutbox>,
    touched: Set<Peer>,
    /// Items received and not yet handled, per peer, and the order peers take turns in.
    waiting: Map<Peer, VecDeque<Item>>,
    turns: VecDeque<Peer>,
    /// Departures found while routing (overflowed outboxes), handled next.
    departed: VecDeque<Event>,
    stats: tokio::sync::watch::Sender<SchedulerStats>,
    publisher: Publisher,
}

impl Core {
    fn new(scheduler: Scheduler, stats: tokio::sync::watch::Sender<SchedulerStats>, publisher: Publisher) -> Self {
        Core {
            scheduler,
            outboxes: Map::default(),
            touched: Set::default(),
            waiting: Map::default(),
            turns: VecDeque::new(),
            departed: VecDeque::new(),
            stats,
            publisher,
        }
    }

    fn enqueue(&mut self, FromPeer(peer, item): FromPeer) {
        let queue = self.waiting.entry(peer).or_default();
        if queue.is_empty() {
            self.turns.push_back(peer);
        }
        queue.push_back(item);
    }

    fn handle(&mut self, event: Event) {
        match &event {
            Event::WorkerLeft { id } => drop(self.outboxes.remove(&Peer::Worker(*id))),
            Event::ClientLeft { id } => drop(self.outboxes.remove(&Peer::Client(*id))),
            _ => {}
        }
        let mut actions = self.scheduler.handle(event, Instant::now());
        route(&mut actions, &mut self.outboxes, &mut self.touched, &mut self.departed);
        self.scheduler.recycle(actions);
        while let Some(e) = self.departed.pop_front() {
            let mut actions = self.scheduler.handle(e, Instant::now());
            route(&mut actions, &mut self.outboxes, &mut self.touched, &mut self.departed);
            self.scheduler.recycle(actions);
        }
    }

    /// One peer's turn: up to `SLICE` of its messages, in order.
    fn turn(&mut self) {
        let Some(peer) = self.turns.pop_front() else { return };
        let mut budget = SLICE;
        while budget > 0 {
            let Some(item) = self.waiting.get_mut(&peer).and_then(VecDeque::pop_front) else { break };
            match item {
                Item::Joined(outbox, event) => {
                    self.outboxes.insert(peer, outbox);
                    self.handle(event);
                    budget -= 1;
                }
                Item::Left(event) => {
                    self.handle(event);
                    budget = 0;
                }
                Item::Batch(mut events, permit) => {
                    let take = events.len().min(budget);
                    for e in events.by_ref().take(take) {
                        self.handle(e);
                    }
                    budget -= take;
                    if !events.as_slice().is_empty()
                        && let Some(q) = self.waiting.get_mut(&peer)
                    {
                        q.push_front(Item::Batch(events, permit));
                    }
                }
            }
        }
        match self.waiting.get(&peer) {
            Some(q) if !q.is_empty() => self.turns.push_back(peer),
            _ => {
                self.waiting.remove(&peer);
            }
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<FromPeer>,
        stop: CloseSignal,
        feed: Arc<Feed>,
    ) -> Result<(), CommError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.turns.is_empty() {
                tokio::select! {
                    biased;
                    () = stop.closed() => break,
                    _ = tick.tick() => self.handle(Event::Tick),
                    () = feed.asked() => {}
                    e = events.recv() => match e {
                        Some(e) => self.enqueue(e),
                        None => break,
                    },
                }
            } else if stop.is_closed() {
                break;
            } else {
                // Work is waiting: let the tasks woken last round (writers, readers) run first.
                tokio::task::yield_now().await;
                if tick.tick().now_or_never().is_some() {
                    self.handle(Event::Tick);
                }
            }
            while let Ok(e) = events.try_recv() {
                self.enqueue(e);
            }
            let mut handled = 0;
            while handled < ROUND && !self.turns.is_empty() {
                self.turn();
                handled += SLICE;
            }
            for peer in self.touched.drain() {
                if let Some(o) = self.outboxes.get(&peer) {
                    o.flush();
                }
            }
            let now = self.scheduler.stats();
            self.stats.send_if_modified(|s| {
                let changed = *s != now;
                *s = now;
                changed
            });
            self.publisher.maybe_publish(&self.scheduler, Instant::now());
        }
        for o in self.outboxes.values() {
            o.close();
        }
        stop.close();
        Ok(())
    }
}

/// Pushes actions into outboxes without waiting. A peer whose outbox overflows is dropped
/// (its comm is already closed), and its departure handled as the next event.
fn route(
    actions: &mut Vec<Action>,
    outboxes: &mut Map<Peer, PeerOutbox>,
    touched: &mut Set<Peer>,
    left: &mut VecDeque<Event>,
) {
    // Consecutive actions mostly go to one peer: it is marked touched once.
    let mut last_touched = None;
    for action in actions.drain(..) {
        let (peer, pushed) = match action {
            Action::ToWorker(id, msg) => {
                let peer = Peer::Worker(id);
                match outboxes.get(&peer) {
                    Some(PeerOutbox::Worker(o)) => (peer, o.push(msg)),
                    _ => continue,
                }
            }
            Action::ToClient(id, msg) => {
                let peer = Peer::Client(id);
                match outboxes.get(&peer) {
                    Some(PeerOutbox::Client(o)) => (peer, o.push(msg)),
                    _ => continue,
                }
            }
            Action::DropWorker { id, reason } => {
                tracing::warn!(worker = id, %reason, "dropping a worker");
                if let Some(o) = outboxes.remove(&Peer::Worker(id)) {
                    o.close();
                }
                continue;
            }
            Action::DropClient { id, reason } => {
                tracing::warn!(client = id, %reason, "dropping a client that broke the protocol");
                if let Some(o) = outboxes.remove(&Peer::Client(id)) {
                    o.close();
                }
                left.push_back(Event::ClientLeft { id });
                continue;
            }
        };
        match pushed {
            Ok(()) => {
                if last_touched != Some(peer) {
                    touched.insert(peer);
                    last_touched = Some(peer);
                }
            }
            Err(e) => {
                if outboxes.remove(&peer).is_some() {
                    tracing::warn!(?peer, error = %e, "a peer stopped reading; disconnected it");
                    left.push_back(match peer {
                        Peer::Worker(id) => Event::WorkerLeft { id },
                        Peer::Client(id) => Event::ClientLeft { id },
                    });
                }
            }
        }
    }
}

/// Receives one batch, counting its bytes.
async fn recv_batch<T: DeserializeOwned + Send + Sync + Clone + 'static>(
    rx: &mut CommReceiver,
    counter: &AtomicU64,
) -> Result<Vec<T>, CommError> {
    let msg = rx.recv().await?;
    counter.fetch_add(msg.byte_len(), Ordering::Relaxed);
    into_value(msg)
}

async fn serve_peer(
    comm: Comm,
    id: u64,
    events: mpsc::Sender<FromPeer>,
    stop: CloseSignal,
    counter: Arc<AtomicU64>,
    limit: usize,
    feed: Arc<Feed>,
) {
    let remote = comm.peer_address().to_string();
    let role = comm.peer_info().role.clone();
    let (tx, mut rx) = comm.split();
    let hello = tokio::select! {
        () = stop.closed() => return,
        h = tokio::time::timeout(HELLO_TIMEOUT, recv_batch::<Hello>(&mut rx, &counter)) => h,
    };
    let hello = match hello {
        Ok(Ok(mut batch)) if batch.len() == 1 => batch.pop().expect("one"),
        Ok(Ok(batch)) => {
            tracing::warn!(%remote, messages = batch.len(), "a peer's first message was not a single hello; dropped it");
            return;
        }
        Ok(Err(e)) => {
            if !e.is_closed() {
                feed.comm_error(e.kind());
                tracing::warn!(%remote, error = %e, "a peer did not start with a hello; dropped it");
            }
            return;
        }
        Err(_) => {
            feed.comm_error(courier_core::ErrorKind::Timeout);
            tracing::warn!(%remote, "a peer sent no hello within {HELLO_TIMEOUT:?}; dropped it");
            return;
        }
    };
    if matches!(hello, Hello::Worker { .. }) && role.as_deref().is_some_and(|r| r != crate::protocol::ROLE_WORKER) {
        tracing::warn!(%remote, role = role.as_deref().unwrap_or(""), "a peer without the worker role tried to register as a worker; dropped it");
        return;
    }
    let credit = Arc::new(Semaphore::new(PEER_CREDIT));
    let ctx = Relay { events: &events, stop: &stop, counter: &counter, remote: &remote, credit: &credit, feed: &feed };
    match hello {
        Hello::Worker { name, address, nthreads, local } => {
            let peer = Peer::Worker(id);
            let outbox = Outbox::spawn(tx, limit, format!("worker {address}"));
            let event = Event::WorkerJoined { id, name, address, nthreads, local };
            if events.send(FromPeer(peer, Item::Joined(PeerOutbox::Worker(outbox.clone()), event))).await.is_err() {
                return;
            }
            ctx.run::<WorkerToScheduler, _>(peer, &mut rx, &outbox, |msg| Event::FromWorker { id, msg }).await;
            let _ = events.send(FromPeer(peer, Item::Left(Event::WorkerLeft { id }))).await;
        }
        Hello::Client { name } => {
            let peer = Peer::Client(id);
            let outbox = Outbox::spawn(tx, limit, format!("client {remote}"));
            let event = Event::ClientJoined { id, name };
            if events.send(FromPeer(peer, Item::Joined(PeerOutbox::Client(outbox.clone()), event))).await.is_err() {
                return;
            }
            ctx.run::<ClientToScheduler, _>(peer, &mut rx, &outbox, |msg| Event::FromClient { id, msg }).await;
            let _ = events.send(FromPeer(peer, Item::Left(Event::ClientLeft { id }))).await;
        }
    }
}

/// A peer's reader.
struct Relay<'a> {
    events: &'a mpsc::Sender<FromPeer>,
    stop: &'a CloseSignal,
    counter: &'a AtomicU64,
    remote: &'a str,
    credit: &'a Arc<Semaphore>,
    feed: &'a Feed,
}

impl Relay<'_> {
    /// Forwards a peer's batches until its comm ends, it sends something malformed, or its
    /// outbox is closed (it was dropped). A batch is read only when the peer has credit: at
    /// most `PEER_CREDIT` of its batches wait in the event loop, so a flooding peer is slowed
    /// by its own back-pressure and cannot crowd others out.
    async fn run<T: DeserializeOwned + Send + Sync + Clone + 'static, O: serde::Serialize + Send + Sync + 'static>(
        &self,
        peer: Peer,
        rx: &mut CommReceiver,
        outbox: &Outbox<O>,
        wrap: impl Fn(T) -> Event,
    ) {
        loop {
            let Ok(permit) = self.credit.clone().acquire_owned().await else { return };
            let batch = tokio::select! {
                () = self.stop.closed() => return,
                () = outbox.closed() => return,
                b = recv_batch::<T>(rx, self.counter) => match b {
                    Ok(b) => b,
                    Err(e) => {
                        if !e.is_closed() {
                            self.feed.comm_error(e.kind());
                            tracing::warn!(remote = %self.remote, error = %e, "malformed message from a peer; disconnected it");
                        }
                        outbox.abort();
                        return;
                    }
                },
            };
            let batch: Vec<Event> = batch.into_iter().map(&wrap).collect();
            if self.events.send(FromPeer(peer, Item::Batch(batch.into_iter(), permit))).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskSpec;

    fn core() -> Core {
        let scheduler = Scheduler::new(SchedulerConfig::default());
        let feed = Arc::new(Feed::new(&scheduler, None, Arc::default(), "test".into()));
        Core::new(scheduler, tokio::sync::watch::Sender::new(SchedulerStats::default()), Publisher::new(feed))
    }

    /// A client that has joined; its outbox never sends (nothing here reads it).
    fn join(core: &mut Core, id: ClientId) -> Peer {
        let outbox = Outbox::spawn_lazy(std::future::pending(), usize::MAX, format!("client {id}"));
        let joined = Event::ClientJoined { id, name: format!("client {id}") };
        core.enqueue(FromPeer(Peer::Client(id), Item::Joined(PeerOutbox::Client(outbox), joined)));
        core.turn();
        Peer::Client(id)
    }

    /// A batch of `n` submissions of one task each, holding one of `credit`'s permits.
    fn submissions(id: ClientId, prefix: &str, n: usize, credit: &Arc<Semaphore>) -> Item {
        let submit = |i| Event::FromClient {
            id,
            msg: ClientToScheduler::Submit {
                tasks: vec![TaskSpec {
                    key: format!("{prefix}-{i}").into(),
                    func: "inc".into(),
                    args: vec![crate::arg(&1i64)],
                    retries: 0,
                    wanted: true,
                }],
            },
        };
        let events: Vec<Event> = (0..n).map(submit).collect();
        Item::Batch(events.into_iter(), credit.clone().try_acquire_owned().expect("credit"))
    }

    /// A flooding peer's batch is worked through one `SLICE` per turn, and another peer's
    /// waiting message is handled after at most one slice: a flood delays nobody by more than
    /// that. The flood's credit comes back only once its whole batch is handled, so its
    /// reader cannot queue more meanwhile.
    #[tokio::test]
    async fn a_flood_is_handled_one_slice_per_turn_between_other_peers_messages() {
        let mut core = core();
        let (flood, other) = (join(&mut core, 1), join(&mut core, 2));
        let tasks = |core: &Core| core.scheduler.stats().tasks;
        let (flood_credit, other_credit) = (Arc::new(Semaphore::new(PEER_CREDIT)), Arc::new(Semaphore::new(1)));
        core.enqueue(FromPeer(flood, submissions(1, "flood", 3 * SLICE, &flood_credit)));
        core.enqueue(FromPeer(other, submissions(2, "first", 1, &other_credit)));
        core.turn();
        assert_eq!(tasks(&core), SLICE, "one slice of the flood");
        assert_eq!(flood_credit.available_permits(), PEER_CREDIT - 1, "its batch is not done yet");
        core.turn();
        assert_eq!(tasks(&core), SLICE + 1, "the other peer's message comes next");
        assert_eq!(other_credit.available_permits(), 1);
        // The other peer sends again while the flood still waits: again one slice, then it.
        core.enqueue(FromPeer(other, submissions(2, "second", 1, &other_credit)));
        core.turn();
        assert_eq!(tasks(&core), 2 * SLICE + 1);
        core.turn();
        assert_eq!(tasks(&core), 2 * SLICE + 2);
        core.turn();
        assert_eq!(tasks(&core), 3 * SLICE + 2, "the rest of the flood");
        assert_eq!(flood_credit.available_permits(), PEER_CREDIT, "its credit is back");
        assert!(core.turns.is_empty() && core.waiting.is_empty(), "nothing left waiting");
    }
}
