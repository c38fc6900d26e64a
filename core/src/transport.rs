//! The plugin-facing traits: [`Transport`] and [`Listener`], and the settings they take.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::address::Address;
use crate::auth::{AccessList, Credential};
use crate::budget::BudgetConfig;
use crate::comm::Comm;
use crate::compression::Compression;
use crate::error::{CommError, ErrorKind};
use crate::limits::Limits;

/// Settings for connecting and listening, shared by every transport.
#[derive(Debug, Clone)]
pub struct CommConfig {
    /// Budget for establishing the connection, retries included (default 10 s).
    pub connect_timeout: Duration,
    /// Budget for the handshake once connected, separate from the above (default 10 s).
    pub handshake_timeout: Duration,
    /// What this side accepts from peers.
    pub limits: Limits,
    /// Compression for what this side sends; `None` picks the transport's default (no
    /// compression on loopback and in-process, `auto` otherwise).
    pub compression: Option<Compression>,
    /// The name announced in the handshake.
    pub name: String,
    /// Capacity of bounded queues (messages), where a transport has them (default 16).
    pub queue_capacity: usize,
    /// The secret presented when connecting to a listener that checks credentials.
    pub credential: Option<Credential>,
    /// Listeners: the credentials accepted, and the role each grants. `None` (the default)
    /// admits every peer that completes the handshake.
    pub access: Option<AccessList>,
    /// Bytes partially received messages may hold, per comm and per listener.
    pub budget: BudgetConfig,
    /// Listeners: a comm accepted must receive its first message within this, else it is
    /// closed (default 60 s). Idle connections cannot pile up.
    pub first_message_timeout: Option<Duration>,
    /// A message being received must make progress: no bytes for this long in the middle
    /// of a message fails the comm (default 60 s).
    pub message_timeout: Duration,
    /// Listeners: most connections open at once (handshaking or accepted). Default: the
    /// process's file descriptor limit less 64, at least 64. Beyond it new connections are
    /// closed at once.
    pub max_connections: Option<usize>,
    /// Listeners: most connections from one IP address that are still in their handshake or
    /// have not yet sent their first message (default 64). A source of idle connections
    /// cannot fill the connection cap: beyond this its new connections are closed at once,
    /// while other addresses are served.
    pub max_pending_per_address: usize,
}

impl Default for CommConfig {
    fn default() -> Self {
        CommConfig {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            compression: None,
            name: String::new(),
            queue_capacity: 16,
            credential: None,
            access: None,
            budget: BudgetConfig::default(),
            first_message_timeout: Some(Duration::from_secs(60)),
            message_timeout: Duration::from_secs(60),
            max_connections: None,
            max_pending_per_address: 64,
        }
    }
}

impl CommConfig {
    /// The per-listener connection cap in force (see [`CommConfig::max_connections`]).
    pub fn connection_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let mut limit = libc_nofile().unwrap_or(1024);
            limit = limit.saturating_sub(64);
            limit.max(64)
        })
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
fn libc_nofile() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A transport: one per URL scheme.
///
/// # Note for implementers
/// - `connect` makes **one** attempt, bounded by `config.connect_timeout` for reaching the
///   peer and by `config.handshake_timeout` for the handshake; the [`Registry`](crate::Registry)
///   retries transient failures (`ConnectionRefused`, `Io`, `Closed`) with jittered backoff.
///   Nothing listening is `ConnectionRefused`; running out of time is `ConnectTimeout`.
/// - An address the transport cannot use is `InvalidAddress` naming it.
/// - `listen` binds at once; its listener's contact address is concrete (port 0 resolved).
/// - Run the conformance kit (`courier_core::conformance_tests!`) from your crate's tests.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The scheme this transport serves, e.g. `"tcp"`.
    fn scheme(&self) -> &str;

    /// Connects to `addr` and completes the handshake.
    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError>;

    /// Starts listening on `addr`.
    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError>;
}

/// Accepts comms on an address.
///
/// # Note for implementers
/// - `accept` returns only comms whose handshake succeeded; a peer that never handshakes, or
///   sends garbage, never reaches the caller and does not delay other peers. Record such
///   failures in a [`RejectionLog`].
/// - `accept` is cancel-safe: a comm is never lost because an `accept` future was dropped.
/// - After `close`, `accept` returns `Closed` and the address can be bound again.
#[async_trait]
pub trait Listener: Send + fmt::Debug {
    /// Waits for the next handshaken comm.
    async fn accept(&mut self) -> Result<Comm, CommError>;

    /// The address as asked for (may be a wildcard, port 0 or an empty name).
    fn listen_address(&self) -> &Address;

    /// A concrete address peers can connect to.
    fn contact_address(&self) -> &Address;

    /// Stops listening; idempotent.
    async fn close(&mut self);

    /// Connections this listener refused (bad handshakes, timeouts), if it keeps a log.
    fn rejections(&self) -> Option<RejectionLog> {
        None
    }
}

impl ErrorKind {
    /// True for failures worth retrying while connecting (a handshake that timed out is: the
    /// listener may have been saturated for a moment).
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::ConnectionRefused | ErrorKind::Io | ErrorKind::Closed | ErrorKind::HandshakeTimeout)
    }
}

/// A bounded record of connections a listener refused, with their errors.
#[derive(Clone, Default)]
pub struct RejectionLog {
    inner: Arc<(Mutex<RejectionState>, Notify)>,
}

#[derive(Default)]
struct RejectionState {
    total: u64,
    recent: VecDeque<(ErrorKind, String)>,
    /// Refusals per kind (a handful of kinds: a short list).
    by_kind: Vec<(ErrorKind, u64)>,
}

impl fmt::Debug for RejectionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionLog").field("total", &self.total()).finish()
    }
}

impl RejectionLog {
    const KEEP: usize = 64;

    /// Records a refused connection.
    pub fn record(&self, err: &CommError) {
        let mut s = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        s.total += 1;
        match s.by_kind.iter_mut().find(|(k, _)| *k == err.kind()) {
            Some((_, n)) => *n += 1,
            None => s.by_kind.push((err.kind(), 1)),
        }
        if s.recent.len() == Self::KEEP {
            s.recent.pop_front();
        }
        s.recent.push_back((err.kind(), err.to_string()));
        drop(s);
        self.inner.1.notify_waiters();
    }

    /// How many connections were refused in all.
    pub fn total(&self) -> u64 {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Refusals in all, per kind of error.
    pub fn by_kind(&self) -> Vec<(ErrorKind, u64)> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).by_kind.clone()
    }

    /// The most recent refusals (at most 64), oldest first.
    pub fn recent(&self) -> Vec<(ErrorKind, String)> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).recent.iter().cloned().collect()
    }

    /// Waits until at least `n` refusals were recorded in all.
    pub async fn wait_for(&self, n: u64) {
        loop {
            let notified = self.inner.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.total() >= n {
                return;
            }
            notified.await;
        }
    }
}
