//! Messages between clients, the scheduler and workers. Every comm message is a batch
//! (`Vec` of one of these enums), serialized with [`courier_core::to_message`]; task data
//! travels as opaque [`Payload`]s, out of band.

use courier_core::Payload;
use serde::{Deserialize, Serialize};

/// A task's name, unique in the cluster.
pub type Key = String;

/// An argument of a task: a value, or the result of another task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArgSpec {
    /// A serialized value.
    Value(Payload),
    /// The result of the task with this key (a dependency).
    Key(Key),
}

/// A task as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Its key.
    pub key: Key,
    /// The registered function to run.
    pub func: String,
    /// Its arguments.
    pub args: Vec<ArgSpec>,
    /// How many times to retry after a failure.
    pub retries: u32,
}

/// Anything sent to the scheduler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToScheduler {
    /// First message of a worker.
    RegisterWorker {
        /// Its name.
        name: String,
        /// Where peers and clients reach it for data.
        address: String,
        /// Tasks it runs at once.
        nthreads: u32,
    },
    /// First message of a client.
    RegisterClient {
        /// Its name.
        name: String,
    },
    /// Client: run these tasks; the client wants their results.
    Submit {
        /// The tasks, dependencies first or in any order.
        tasks: Vec<TaskSpec>,
    },
    /// Client: it no longer needs these keys.
    Release {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Client: stop these tasks.
    Cancel {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Client: data was scattered to a worker under these keys.
    Scattered {
        /// The worker's address.
        worker: String,
        /// Keys and sizes.
        keys: Vec<(Key, u64)>,
    },
    /// Worker: a task finished; its result is held there.
    Finished {
        /// Key.
        key: Key,
        /// Result size in bytes.
        nbytes: u64,
        /// How long the function ran, in seconds (for adaptive scaling).
        #[serde(default)]
        seconds: f64,
    },
    /// Client: how many workers would suit the current work? Answered with `Target`.
    AdaptiveTarget {
        /// The request's id, echoed in the answer.
        id: u64,
    },
    /// Client: retire these workers (by address) gracefully; answered with `Retired`.
    Retire {
        /// The request's id, echoed in the answer.
        id: u64,
        /// Worker addresses.
        workers: Vec<String>,
    },
    /// Worker: still alive (sent every heartbeat interval).
    Heartbeat,
    /// Worker: the answer to `Steal`: `true` when the task had not started and was given up.
    StealReply {
        /// Key.
        key: Key,
        /// Whether the worker gave the task up.
        stolen: bool,
    },
    /// Worker: it now holds a copy of `key` (after `Replicate`).
    Replicated {
        /// Key.
        key: Key,
    },
    /// Worker: a task could not start because a dependency could not be fetched (its holder
    /// died or dropped it). The scheduler recomputes the dependency and reschedules the task.
    MissingData {
        /// The task.
        key: Key,
        /// The dependency that could not be fetched.
        dep: Key,
    },
    /// Worker: a task failed.
    Erred {
        /// Key.
        key: Key,
        /// What went wrong.
        error: String,
    },
}

/// Anything the scheduler sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromScheduler {
    /// Worker: run this task. `who_has` says where each dependency lives.
    Compute {
        /// Key.
        key: Key,
        /// Function.
        func: String,
        /// Arguments.
        args: Vec<ArgSpec>,
        /// Dependency → workers holding it.
        who_has: Vec<(Key, Vec<String>)>,
    },
    /// Worker: fetch `key` from one of `from` and keep a copy (retirement moves data away).
    Replicate {
        /// Key.
        key: Key,
        /// Workers holding it.
        from: Vec<String>,
    },
    /// Worker: finish up and exit; the scheduler has moved its data elsewhere.
    Shutdown,
    /// Worker: give up `key` if it has not started (work stealing); answer with `StealReply`.
    Steal {
        /// Key.
        key: Key,
    },
    /// Worker: forget these results.
    Release {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Client: a key's result is ready on these workers.
    Done {
        /// Key.
        key: Key,
        /// Workers holding it.
        holders: Vec<String>,
    },
    /// Client: a key failed for good.
    Erred {
        /// Key.
        key: Key,
        /// The remote error message.
        error: String,
    },
    /// Client: the answer to `AdaptiveTarget`.
    Target {
        /// The request's id.
        id: u64,
        /// Workers the outstanding work calls for (before any min/max bounds).
        workers: usize,
        /// Workers with nothing to do, the best to retire first.
        idle: Vec<String>,
    },
    /// Client: the answer to `Retire`.
    Retired {
        /// The request's id.
        id: u64,
        /// `None` when done, else why the workers were kept.
        error: Option<String>,
    },
    /// Client: the worker addresses, for scatter.
    Workers {
        /// Addresses.
        addresses: Vec<String>,
    },
}

/// Requests to a worker's data listener, from peers and clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Send these results.
    Get {
        /// Keys.
        keys: Vec<Key>,
    },
    /// Keep this value under this key (scatter).
    Store {
        /// Key.
        key: Key,
        /// Value.
        value: Payload,
    },
}

/// Replies of a worker's data listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// Results, in the order asked; `None` for a key the worker does not hold.
    Data {
        /// Values.
        values: Vec<Option<Payload>>,
    },
    /// A `Store` was kept.
    Stored,
}
