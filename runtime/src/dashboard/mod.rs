//! The scheduler's HTTP face: Prometheus `/metrics`, JSON `/api/…`, and a live page at `/`.
//!
//! ## How it stays out of the scheduler's way
//!
//! The HTTP server never touches the scheduler's state. A request asks the event loop for a
//! fresh [`Snapshot`](crate::scheduler::Snapshot) through a [`Feed`] (an atomic counter and a
//! wake-up) and waits for it on a `watch` channel; the loop builds one when asked, at most
//! every [`MIN_INTERVAL`], in O(function names + workers + stream) — never per event, never
//! when nobody asks. All requests in between share the same snapshot; a loop that does not
//! answer within [`FRESH_WAIT`] leaves the request with the last one.
//!
//! The page never receives one message per task: `/api/updates` (server-sent events) pushes
//! one aggregated update every [`UPDATE_INTERVAL`] (groups, workers, counters, and at most
//! [`STREAM_PER_UPDATE`] new task-stream bars).
//!
//! ## Hostile clients
//!
//! Connections beyond [`DashboardConfig::max_connections`] are closed at once; request headers
//! beyond [`DashboardConfig::max_header_bytes`] are refused (hyper answers 431 or closes);
//! a client that does not finish its headers within [`DashboardConfig::header_timeout`]
//! (slowloris) is disconnected; only `GET` of the known paths is served (404 otherwise) and
//! request bodies are never read. Memory is thus bounded by connections × buffer size, and
//! the scheduler's event loop runs in its own task, which no HTTP connection can block.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use courier_core::{CloseSignal, ErrorKind, RejectionLog};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};

use crate::collections::Map;
use crate::scheduler::{Execution, Scheduler, Snapshot};

/// The shortest time between two snapshots the event loop builds.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// How long a request waits for a fresh snapshot before it takes the last one.
pub const FRESH_WAIT: Duration = Duration::from_secs(2);
/// How often the live page gets an update.
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(500);
/// Task-stream bars in one update, at most (the newest).
pub const STREAM_PER_UPDATE: usize = 2000;

/// Settings of the dashboard's HTTP server.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// `host:port` to listen on (port 0: any).
    pub listen: String,
    /// Connections served at once; more are closed at once (default 64).
    pub max_connections: usize,
    /// Bytes of request head buffered per connection (default 16 KiB; at least 8 KiB).
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (default 5 s).
    pub header_timeout: Duration,
}

impl DashboardConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: impl Into<String>) -> Self {
        DashboardConfig {
            listen: listen.into(),
            max_connections: 64,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// A published snapshot and the driver's own figures beside it.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Requests (by number) this snapshot answers.
    #[serde(skip)]
    answers: u64,
    /// Tasks finished per second over the last second or more.
    pub tasks_per_second: f64,
    /// Bytes of messages the scheduler received from its peers.
    pub received_bytes: u64,
    /// The scheduler's transport scheme.
    pub scheme: String,
    /// Comm errors on the scheduler's peers' comms, by kind.
    pub comm_errors: Vec<(String, u64)>,
    /// Connections the scheduler's listener refused, by kind.
    pub refused: Vec<(String, u64)>,
    /// The state machine's view.
    pub snapshot: Snapshot,
}

/// What the event loop and the HTTP server share.
#[derive(Debug)]
pub(crate) struct Feed {
    requested: AtomicU64,
    wake: Notify,
    published: watch::Sender<Arc<Published>>,
    errors: std::sync::Mutex<Map<ErrorKind, u64>>,
    rejections: Option<RejectionLog>,
    received: Arc<AtomicU64>,
    scheme: String,
}

impl Feed {
    pub(crate) fn new(
        scheduler: &Scheduler,
        rejections: Option<RejectionLog>,
        received: Arc<AtomicU64>,
        scheme: String,
    ) -> Self {
        let first = Published {
            answers: 0,
            tasks_per_second: 0.0,
            received_bytes: 0,
            scheme: scheme.clone(),
            comm_errors: Vec::new(),
            refused: Vec::new(),
            snapshot: scheduler.snapshot(Instant::now()),
        };
        Feed {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            published: watch::Sender::new(Arc::new(first)),
            errors: std::sync::Mutex::new(Map::default()),
            rejections,
            received,
            scheme,
        }
    }

    /// Counts an error on a peer's comm.
    pub(crate) fn comm_error(&self, kind: ErrorKind) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_insert(0) += 1;
    }

    /// Resolves when a request for a snapshot is waiting (for the event loop's select).
    pub(crate) async fn asked(&self) {
        self.wake.notified().await
    }

    /// A snapshot at least as new as this call: asks the event loop and waits, up to
    /// [`FRESH_WAIT`], then takes the last one.
    pub(crate) async fn fresh(&self) -> Arc<Published> {
        let target = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        let mut rx = self.published.subscribe();
        let got = match tokio::time::timeout(FRESH_WAIT, rx.wait_for(|p| p.answers >= target)).await {
            Ok(Ok(p)) => Some(p.clone()),
            _ => None,
        };
        got.unwrap_or_else(|| self.published.borrow().clone())
    }
}

/// The event loop's side of the [`Feed`]: builds a snapshot when one was asked for.
#[derive(Debug)]
pub(crate) struct Publisher {
    feed: Arc<Feed>,
    last: Option<Instant>,
    /// (uptime, runs finished) of recent snapshots, for the rate.
    samples: std::collections::VecDeque<(f64, u64)>,
}

impl Publisher {
    pub(crate) fn new(feed: Arc<Feed>) -> Self {
        Publisher { feed, last: None, samples: std::collections::VecDeque::new() }
    }

    /// Publishes a snapshot if one was asked for since the last and [`MIN_INTERVAL`] has
    /// passed; O(1) otherwise.
    pub(crate) fn maybe_publish(&mut self, scheduler: &Scheduler, now: Instant) {
        let asked = self.feed.requested.load(Ordering::Acquire);
        if asked <= self.feed.published.borrow().answers {
            return;
        }
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < MIN_INTERVAL) {
            return;
        }
        self.last = Some(now);
        let snapshot = scheduler.snapshot(now);
        let (t, done) = (snapshot.uptime, snapshot.counters.finished);
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(s, _)| t - s >= 1.0) {
            self.samples.pop_front();
        }
        let tasks_per_second = match self.samples.front() {
            Some((t0, d0)) if t > *t0 => (done - d0) as f64 / (t - t0),
            _ => 0.0,
        };
        self.samples.push_back((t, done));
        let label = |k: ErrorKind| format!("{k:?}");
        let mut comm_errors: Vec<(String, u64)> = {
            let errors = self.feed.errors.lock().unwrap_or_else(|e| e.into_inner());
            errors.iter().map(|(k, n)| (label(*k), *n)).collect()
        };
        comm_errors.sort();
        let mut refused: Vec<(String, u64)> = match &self.feed.rejections {
            Some(r) => r.by_kind().into_iter().map(|(k, n)| (label(k), n)).collect(),
            None => Vec::new(),
        };
        refused.sort();
        self.feed.published.send_replace(Arc::new(Published {
            answers: asked,
            tasks_per_second,
            received_bytes: self.feed.received.load(Ordering::Relaxed),
            scheme: self.feed.scheme.clone(),
            comm_errors,
            refused,
            snapshot,
        }));
    }
}

/// A running dashboard.
#[derive(Debug)]
pub(crate) struct Dashboard {
    pub(crate) address: SocketAddr,
}

/// Binds the dashboard's listener and serves it until `stop` closes.
pub(crate) async fn start(config: DashboardConfig, feed: Arc<Feed>, stop: CloseSignal) -> std::io::Result<Dashboard> {
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_text))
        .route("/api/summary", get(api_summary))
        .route("/api/workers", get(api_workers))
        .route("/api/groups", get(api_groups))
        .route("/api/stream", get(api_stream))
        .route("/api/updates", get(updates))
        .fallback(not_found)
        .with_state(feed);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let max_buf = config.max_header_bytes.max(8192);
    tracing::info!(%address, "dashboard listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.closed() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "the dashboard's accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "dashboard connection refused: at its connection cap");
                drop(stream);
                continue;
            };
            let (app, stop) = (app.clone(), stop.clone());
            let timeout = config.header_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .max_buf_size(max_buf)
                    .serve_connection(io, service);
                tokio::select! {
                    () = stop.closed() => {}
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "dashboard connection ended");
                    },
                }
            });
        }
    });
    Ok(Dashboard { address })
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("page.html"))
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found: try /, /metrics or /api/summary\n")
}

async fn metrics_text(State(feed): State<Arc<Feed>>) -> Response {
    let p = feed.fresh().await;
    match metrics::render(&p) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode the metrics").into_response(),
    }
}

/// `/api/summary`: everything but the per-worker, per-group and stream lists.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Seconds since the scheduler started.
    pub uptime: f64,
    /// Tasks in the table.
    pub tasks: u64,
    /// Tasks waiting, queued or processing.
    pub outstanding: u64,
    /// Workers connected.
    pub workers: u64,
    /// Threads of the connected workers.
    pub threads: u64,
    /// Clients connected.
    pub clients: u64,
    /// Tasks finished per second over the last second or more.
    pub tasks_per_second: f64,
    /// Bytes of messages the scheduler received.
    pub received_bytes: u64,
    /// The scheduler's transport scheme.
    pub scheme: String,
    /// Cumulative counters.
    pub counters: crate::scheduler::Counters,
    /// Comm errors by kind.
    pub comm_errors: Vec<(String, u64)>,
    /// Refused connections by kind.
    pub refused: Vec<(String, u64)>,
}

fn summary(p: &Published) -> Summary {
    let s = &p.snapshot;
    Summary {
        uptime: s.uptime,
        tasks: s.tasks,
        outstanding: s.outstanding,
        workers: s.workers.len() as u64,
        threads: s.workers.iter().map(|w| u64::from(w.nthreads)).sum(),
        clients: s.clients,
        tasks_per_second: p.tasks_per_second,
        received_bytes: p.received_bytes,
        scheme: p.scheme.clone(),
        counters: s.counters.clone(),
        comm_errors: p.comm_errors.clone(),
        refused: p.refused.clone(),
    }
}

async fn api_summary(State(feed): State<Arc<Feed>>) -> Response {
    axum::Json(summary(&*feed.fresh().await)).into_response()
}

async fn api_workers(State(feed): State<Arc<Feed>>) -> Response {
    axum::Json(&feed.fresh().await.snapshot.workers).into_response()
}

async fn api_groups(State(feed): State<Arc<Feed>>) -> Response {
    axum::Json(&feed.fresh().await.snapshot.groups).into_response()
}

/// The query of `/api/stream` and `/api/updates`.
#[derive(Debug, serde::Deserialize)]
struct Since {
    /// Only executions with a larger `seq`.
    since: Option<u64>,
}

fn stream_since(s: &Snapshot, since: u64, limit: usize) -> Vec<Execution> {
    let new: Vec<&Execution> = s.stream.iter().filter(|e| e.seq > since).collect();
    new[new.len().saturating_sub(limit)..].iter().map(|e| (*e).clone()).collect()
}

async fn api_stream(State(feed): State<Arc<Feed>>, Query(q): Query<Since>) -> Response {
    let p = feed.fresh().await;
    axum::Json(stream_since(&p.snapshot, q.since.unwrap_or(0), crate::scheduler::STREAM_KEEP)).into_response()
}

/// One update of the live page.
#[derive(Debug, Serialize)]
struct Update<'a> {
    summary: Summary,
    groups: &'a [crate::scheduler::Group],
    workers: &'a [crate::scheduler::WorkerView],
    durations: &'a crate::scheduler::Durations,
    stream: Vec<Execution>,
}

async fn updates(State(feed): State<Arc<Feed>>) -> impl IntoResponse {
    let stream = futures::stream::unfold((feed, 0u64, true), |(feed, since, first)| async move {
        if !first {
            tokio::time::sleep(UPDATE_INTERVAL).await;
        }
        let p = feed.fresh().await;
        let s = &p.snapshot;
        let bars = stream_since(s, since, STREAM_PER_UPDATE);
        let next = bars.last().map_or(since, |e| e.seq);
        let update = Update {
            summary: summary(&p),
            groups: &s.groups,
            workers: &s.workers,
            durations: &s.durations,
            stream: bars,
        };
        let event = SseEvent::default().json_data(&update).unwrap_or_else(|_| SseEvent::default().comment("encode"));
        Some((Ok::<_, std::convert::Infallible>(event), (feed, next, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
