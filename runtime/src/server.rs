//! The scheduler's tokio driver: accepts comms, turns their messages into [`Event`]s for the
//! sans-IO [`Scheduler`], and sends the resulting actions, batched per destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use courier_core::{CloseSignal, Comm, CommError, Registry};
use tokio::sync::mpsc;

use crate::protocol::{FromScheduler, ToScheduler};
use crate::scheduler::{Action, Event, Scheduler, SchedulerConfig};
use crate::wire::send_batch;

/// A running scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    /// The contact address clients and workers connect to.
    pub address: String,
    shutdown: CloseSignal,
    received: Arc<AtomicU64>,
}

impl SchedulerHandle {
    /// Bytes of messages the scheduler has received from all peers (headers and frames).
    /// Task data moves worker to worker, so this stays small however large the results.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the scheduler; its comms close, so workers and clients see it go.
    pub fn shutdown(&self) {
        self.shutdown.close();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Peer {
    Worker(u64),
    Client(u64),
}

enum Core {
    Joined(Peer, mpsc::Sender<Vec<FromScheduler>>, Event),
    Event(Event),
}

/// Listens on `listen` and runs the scheduler until shut down.
pub async fn start_scheduler(
    registry: Registry,
    listen: &str,
    config: SchedulerConfig,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>), CommError> {
    let mut listener = registry.listen(listen).await?;
    let address = listener.contact_address().to_string();
    let shutdown = CloseSignal::new();
    let (events_tx, mut events) = mpsc::channel::<Core>(8192);
    let ids = Arc::new(AtomicU64::new(1));
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();

    let stop = shutdown.clone();
    let accept_events = events_tx.clone();
    tokio::spawn(async move {
        loop {
            let comm = tokio::select! {
                () = stop.closed() => break,
                c = listener.accept() => match c { Ok(c) => c, Err(_) => break },
            };
            tokio::spawn(serve_peer(comm, accept_events.clone(), ids.clone(), stop.clone(), counter.clone()));
        }
        listener.close().await;
    });

    // Time passes for the state machine in ticks: silent workers, work stealing.
    let ticks = events_tx.clone();
    let tick_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tick_stop.closed() => break,
                _ = every.tick() => if ticks.send(Core::Event(Event::Tick)).await.is_err() { break },
            }
        }
    });
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let mut scheduler = Scheduler::new(config);
        let mut outboxes: HashMap<Peer, mpsc::Sender<Vec<FromScheduler>>> = HashMap::new();
        let mut grouped: HashMap<Peer, Vec<FromScheduler>> = HashMap::new();
        loop {
            let first = tokio::select! {
                () = stop.closed() => break,
                e = events.recv() => match e { Some(e) => e, None => break },
            };
            let mut next = Some(first);
            let mut handled = 0;
            // Handle everything already queued, then send one batch per destination.
            while let Some(item) = next.take() {
                let event = match item {
                    Core::Joined(peer, tx, event) => {
                        outboxes.insert(peer, tx);
                        event
                    }
                    Core::Event(e) => e,
                };
                if let Event::WorkerLeft { id } = event {
                    outboxes.remove(&Peer::Worker(id));
                }
                if let Event::ClientLeft { id } = event {
                    outboxes.remove(&Peer::Client(id));
                }
                for action in scheduler.handle(event, Instant::now()) {
                    let (peer, msg) = match action {
                        Action::ToWorker(id, m) => (Peer::Worker(id), m),
                        Action::ToClient(id, m) => (Peer::Client(id), m),
                        Action::DropWorker(id) => {
                            // Its writer ends, closing the comm; the worker sees the scheduler go.
                            outboxes.remove(&Peer::Worker(id));
                            continue;
                        }
                    };
                    grouped.entry(peer).or_default().push(msg);
                }
                handled += 1;
                if handled < 4096 {
                    next = events.try_recv().ok();
                }
            }
            for (peer, batch) in grouped.drain() {
                if let Some(tx) = outboxes.get(&peer) {
                    // A peer that stopped reading is gone; its reader reports it.
                    let _ = tx.send(batch).await;
                }
            }
        }
        stop.close();
    });
    Ok((SchedulerHandle { address, shutdown, received }, task))
}

/// Receives one batch, counting its bytes.
async fn recv_counted(rx: &mut courier_core::CommReceiver, counter: &AtomicU64) -> Result<Vec<ToScheduler>, CommError> {
    let msg = rx.recv().await?;
    counter.fetch_add(msg.byte_len(), Ordering::Relaxed);
    courier_core::from_message(&msg)
}

async fn serve_peer(
    comm: Comm,
    events: mpsc::Sender<Core>,
    ids: Arc<AtomicU64>,
    stop: CloseSignal,
    counter: Arc<AtomicU64>,
) {
    let (mut tx, mut rx) = comm.split();
    let Ok(first) = recv_counted(&mut rx, &counter).await else { return };
    let mut rest = first.into_iter();
    let id = ids.fetch_add(1, Ordering::Relaxed);
    let (peer, joined) = match rest.next() {
        Some(ToScheduler::RegisterWorker { address, nthreads, .. }) => {
            (Peer::Worker(id), Event::WorkerJoined { id, address, nthreads })
        }
        Some(ToScheduler::RegisterClient { .. }) => (Peer::Client(id), Event::ClientJoined { id }),
        other => {
            tracing::warn!(?other, "a peer did not register first; dropping it");
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<FromScheduler>>(1024);
    if events.send(Core::Joined(peer, out_tx, joined)).await.is_err() {
        return;
    }
    let wrap = move |msg: ToScheduler| match peer {
        Peer::Worker(id) => Event::FromWorker { id, msg },
        Peer::Client(id) => Event::FromClient { id, msg },
    };
    for msg in rest {
        let _ = events.send(Core::Event(wrap(msg))).await;
    }
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                () = writer_stop.closed() => break,
                b = out_rx.recv() => match b { Some(b) => b, None => break },
            };
            if send_batch(&mut tx, &batch).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    });
    loop {
        let batch = tokio::select! {
            () = stop.closed() => break,
            b = recv_counted(&mut rx, &counter) => match b { Ok(b) => b, Err(_) => break },
        };
        for msg in batch {
            if events.send(Core::Event(wrap(msg))).await.is_err() {
                return;
            }
        }
    }
    let left = match peer {
        Peer::Worker(id) => Event::WorkerLeft { id },
        Peer::Client(id) => Event::ClientLeft { id },
    };
    let _ = events.send(Core::Event(left)).await;
    writer.abort();
}
