//! Client ↔ scheduler messages.

use serde::{Deserialize, Serialize};

use super::{Failure, Key, RequestId, TaskSpec, Ticket};

/// What a client sends the scheduler, after its [`Hello::Client`](super::Hello::Client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientToScheduler {
    /// Run these tasks. Each key must be new, or already this client's (then only `wanted` is
    /// taken into account). A task may depend on keys of this batch (in any order) and on
    /// keys the scheduler holds. Each key is eventually answered with `Done` or `Erred` if it
    /// is wanted; a key that cannot be accepted is answered with `Erred` (`Rejected`).
    Submit {
        /// At most [`MAX_TASKS_PER_SUBMIT`](super::bounds::MAX_TASKS_PER_SUBMIT).
        tasks: Vec<TaskSpec>,
    },
    /// The client no longer wants these keys (its last future of each was dropped). Keys of
    /// other clients are ignored.
    Release {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Stop these tasks: they fail with [`Failure::Cancelled`] (as do their dependents), and
    /// are released. Keys of other clients are ignored.
    Cancel {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Reserve new keys for values the client will store on workers itself. Answered with
    /// [`SchedulerToClient::ScatterTargets`]; then the client sends each value with
    /// [`DataRequest::Store`](super::DataRequest::Store) and its ticket, and the scheduler sends
    /// `Done` once the worker has it.
    Scatter {
        /// Echoed in the answer.
        id: RequestId,
        /// The new keys, with each value's size in bytes.
        keys: Vec<(Key, u64)>,
    },
    /// Where do these keys live now? Answered with [`SchedulerToClient::WhoHasReply`].
    WhoHas {
        /// Echoed in the answer.
        id: RequestId,
        /// Keys.
        keys: Vec<Key>,
    },
    /// Retire these workers (by address) gracefully. Answered with
    /// [`SchedulerToClient::Retired`].
    Retire {
        /// Echoed in the answer.
        id: RequestId,
        /// Worker addresses.
        workers: Vec<String>,
    },
    /// How many workers would suit the outstanding work? Answered with
    /// [`SchedulerToClient::Target`].
    AdaptiveTarget {
        /// Echoed in the answer.
        id: RequestId,
    },
    /// What is each worker doing, and how much memory does it use? Answered with
    /// [`SchedulerToClient::WorkerInfo`].
    WorkerInfo {
        /// Echoed in the answer.
        id: RequestId,
    },
}

/// One worker, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// Its name.
    pub name: String,
    /// Its data address.
    pub address: String,
    /// Its threads.
    pub nthreads: u32,
    /// Runs assigned to it and not finished.
    pub processing: u64,
    /// Results it holds.
    pub held: u64,
    /// Tasks it has completed.
    pub ran: u64,
    /// Whether it is retiring.
    pub retiring: bool,
    /// Its last memory report (all zero before the first).
    pub memory: super::WorkerMemory,
}

/// Where to store one scattered value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScatterTarget {
    /// The key.
    pub key: Key,
    /// The worker's data address.
    pub worker: String,
    /// The permission to present with the `Store`.
    pub ticket: Ticket,
}

/// Why a scatter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ScatterError {
    /// No worker can take data.
    #[error("no workers to scatter to")]
    NoWorkers,
    /// A key is invalid or already exists.
    #[error("cannot scatter {key}: {reason}")]
    InvalidKey {
        /// The key.
        key: Key,
        /// Why.
        reason: String,
    },
    /// A chosen worker left before it could take the data.
    #[error("worker {worker} left before it could take the data")]
    WorkerLeft {
        /// Its address.
        worker: String,
    },
}

/// Why a retirement did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RetireError {
    /// No worker has this address.
    #[error("no worker at {address}")]
    UnknownWorker {
        /// The address asked for.
        address: String,
    },
    /// Refused: nothing changed, the workers stay.
    #[error("cannot retire {workers:?}: {reason}")]
    Refused {
        /// The workers asked for.
        workers: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Workers died while retiring; results only they held were recomputed or lost.
    #[error("workers died while retiring: {workers:?}")]
    Died {
        /// The workers that died.
        workers: Vec<String>,
    },
    /// Copying their data away failed; they were put back to work.
    #[error("could not move {key} away from the retiring workers; retirement abandoned")]
    CopyFailed {
        /// A key that could not be copied.
        key: Key,
    },
}

/// What the scheduler sends a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SchedulerToClient {
    /// Workers joined or left. The first message after the `Hello` lists every worker in
    /// `added`; later ones say what changed.
    Workers {
        /// Data addresses of workers that joined.
        added: Vec<String>,
        /// Data addresses of workers that left.
        removed: Vec<String>,
        /// Same-host contacts of workers in `added` that have one: a client on the same host
        /// fetches from them there. Absent from older schedulers.
        #[serde(default)]
        local: Vec<(String, super::LocalContact)>,
    },
    /// A wanted key's result is in memory on these workers (again after it moved).
    Done {
        /// Key.
        key: Key,
        /// Data addresses of the workers holding it (a sequence of strings on the wire; shared
        /// here, so the usual single holder costs the scheduler no allocation per task, and
        /// decoded [shared](super::deserialize_holders), so it costs a client none either).
        #[serde(deserialize_with = "super::deserialize_holders")]
        holders: std::sync::Arc<[std::sync::Arc<str>]>,
    },
    /// A wanted key failed for good.
    Erred {
        /// Key.
        key: Key,
        /// Why.
        failure: Failure,
    },
    /// A wanted key's data was lost with its workers and is being computed again; `Done`
    /// follows.
    Lost {
        /// Key.
        key: Key,
    },
    /// The answer to `Scatter`.
    ScatterTargets {
        /// The request's id.
        id: RequestId,
        /// One target per key, in order, or why none.
        result: Result<Vec<ScatterTarget>, ScatterError>,
    },
    /// The answer to `WhoHas`: per key, the holders (empty if not in memory or unknown).
    WhoHasReply {
        /// The request's id.
        id: RequestId,
        /// Holders per key, in the order asked.
        holders: Vec<Vec<String>>,
    },
    /// The answer to `Retire`.
    Retired {
        /// The request's id.
        id: RequestId,
        /// `Ok` once the workers have shut down with their data moved.
        result: Result<(), RetireError>,
    },
    /// The answer to `AdaptiveTarget`.
    Target {
        /// The request's id.
        id: RequestId,
        /// Workers the outstanding work calls for (before any min/max bounds).
        workers: usize,
        /// Workers with nothing to do, the best to retire first.
        idle: Vec<String>,
    },
    /// The answer to `WorkerInfo`: every worker (at most
    /// [`MAX_KEYS_PER_MESSAGE`](super::bounds::MAX_KEYS_PER_MESSAGE)), by address.
    WorkerInfo {
        /// The request's id.
        id: RequestId,
        /// The workers.
        workers: Vec<WorkerSummary>,
    },
}
