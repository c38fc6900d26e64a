//! Worker ↔ scheduler messages.

use serde::{Deserialize, Serialize};

use super::{ArgSpec, Key, RequestId, RunId, Ticket};

/// What a worker sends the scheduler, after its [`Hello::Worker`](super::Hello::Worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerToScheduler {
    /// A run finished; its result is held here.
    Finished {
        /// Key.
        key: Key,
        /// The run, as in `Compute`.
        run: RunId,
        /// Result size in bytes.
        nbytes: u64,
        /// How long the function ran, in seconds.
        seconds: f64,
    },
    /// A run's function failed.
    Erred {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
        /// The error message.
        message: String,
    },
    /// A run could not start: no holder of `dep` could serve it. The worker has dropped the
    /// run.
    MissingData {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
        /// The dependency that could not be fetched.
        dep: Key,
        /// The holders that were asked and failed.
        tried: Vec<String>,
    },
    /// The answer to `Steal`: `true` when the run had not started and was dropped here.
    StealReply {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
        /// Whether it was given up.
        stolen: bool,
    },
    /// The answer to `Replicate`: `ok` when the worker now holds a copy.
    Replicated {
        /// Key.
        key: Key,
        /// Whether the copy succeeded.
        ok: bool,
    },
    /// The answer to `ExpectScatter`: the tickets are in force.
    ScatterReady {
        /// The scheduler's id from `ExpectScatter`.
        id: RequestId,
    },
    /// A client stored a scattered value here, with a valid ticket.
    Stored {
        /// Key.
        key: Key,
        /// Its size in bytes.
        nbytes: u64,
    },
    /// Still alive (every heartbeat interval, 1 s).
    Heartbeat,
    /// This worker's memory figures: sent with a heartbeat when they changed, and at once
    /// when it pauses or resumes or a spill fails. While `paused` the scheduler assigns it
    /// nothing and moves its unstarted runs elsewhere.
    Memory(WorkerMemory),
    /// This worker's transfer counters (cumulative), sent with a heartbeat when they changed:
    /// what it fetched from peers and what it served them, per transport scheme. The
    /// scheduler only displays them (dashboard, `/metrics`).
    Transfers(WorkerTransfers),
    /// A result this worker held is gone (its spilled copy could not be read back): it no
    /// longer holds `key`.
    DataLost {
        /// Key.
        key: Key,
        /// Why.
        reason: String,
    },
}

/// Counts of spill or unspill operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IoCount {
    /// Values written or read.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// A worker's memory, as reported to the scheduler (bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// Its memory limit (0: none).
    pub limit: u64,
    /// Results held in memory.
    pub managed: u64,
    /// Results held on disk.
    pub spilled: u64,
    /// The process's resident memory at the last sample, as the worker's memory probe reads it
    /// (Courier's workers count each shared-memory page once; 0: not sampled).
    pub rss: u64,
    /// Whether it is paused (starts no run).
    pub paused: bool,
    /// Spills so far.
    pub spill: IoCount,
    /// Values read back so far.
    pub unspill: IoCount,
    /// The last spill or unspill error, naming the path.
    pub spill_error: Option<String>,
}

/// A worker's cumulative transfer counters, per transport scheme (at most
/// [`MAX_TRANSFER_SCHEMES`] entries each; the scheduler ignores the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTransfers {
    /// Values this worker fetched from peers (bytes in).
    pub fetched: Vec<super::TransferCount>,
    /// Values this worker served to peers and clients (bytes out).
    pub served: Vec<super::TransferCount>,
}

/// Entries of each [`WorkerTransfers`] list the scheduler keeps.
pub const MAX_TRANSFER_SCHEMES: usize = 16;

/// What the scheduler sends a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SchedulerToWorker {
    /// Compute `key`: fetch the dependencies it does not hold from the listed holders, run
    /// `func`, keep the result, answer `Finished` or `Erred` (or `MissingData`).
    Compute {
        /// Key.
        key: Key,
        /// This assignment's id.
        run: RunId,
        /// Function (shared with the scheduler's task; a string on the wire, decoded
        /// [interned](Key::deserialize_interned)).
        #[serde(deserialize_with = "Key::deserialize_interned")]
        func: Key,
        /// Arguments (shared with the scheduler's task, which keeps them while the task can
        /// be computed again; a sequence on the wire).
        args: std::sync::Arc<Vec<ArgSpec>>,
        /// Per dependency, the data addresses of workers holding it.
        who_has: Vec<(Key, Vec<String>)>,
    },
    /// Forget these keys: drop their data, and any run of them not yet started (a started
    /// run is finished quietly and its result dropped).
    Release {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Give up this run if it has not started; answer `StealReply`.
    Steal {
        /// Key.
        key: Key,
        /// The run.
        run: RunId,
    },
    /// Fetch `key` from one of `from` and keep a copy (retirement moves data away); answer
    /// `Replicated`.
    Replicate {
        /// Key.
        key: Key,
        /// Data addresses of workers holding it.
        from: Vec<String>,
    },
    /// Accept `Store` requests for these keys with these tickets; answer `ScatterReady`.
    ExpectScatter {
        /// Echoed in `ScatterReady`.
        id: RequestId,
        /// Keys and tickets.
        keys: Vec<(Key, Ticket)>,
    },
    /// This worker left the cluster: fail fetches from it at once.
    PeerGone {
        /// Its data address.
        address: String,
    },
    /// Workers on this worker's host (same [`LocalContact::host`](super::LocalContact)) and
    /// their same-host addresses: fetch from them there. Sent when this worker joins (those
    /// already there) and when another joins on its host.
    LocalPeers {
        /// (data address, same-host contact).
        peers: Vec<(String, super::LocalContact)>,
    },
    /// Exit: the worker has been retired and its data moved.
    Shutdown,
}
