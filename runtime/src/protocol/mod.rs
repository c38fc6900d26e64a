//! The runtime's wire protocol: one typed message set per pair of roles.
//!
//! | module | between | messages |
//! | --- | --- | --- |
//! | [`client`] | client ↔ scheduler | [`ClientToScheduler`], [`SchedulerToClient`] |
//! | [`worker`] | worker ↔ scheduler | [`WorkerToScheduler`], [`SchedulerToWorker`] |
//! | [`data`] | any peer ↔ a worker's data listener | [`DataRequest`], [`DataReply`] |
//!
//! Every Courier message on a runtime comm carries a **batch**: a MessagePack array of one of
//! these enums (serde's default external tagging; structs as maps). Task arguments and results
//! are [`Payload`]s, whose buffers travel as frames, so the scheduler relays them without
//! decoding. Every request that expects a reply carries a [`RequestId`] chosen by the asker and
//! echoed in the reply; replies are matched by id, never by order, so an abandoned request
//! can never be answered into another one. Every computation a scheduler hands a worker
//! carries a [`RunId`]; a worker's report names it, and a report about a superseded run is
//! ignored. Every value a peer announces is checked against [`bounds`] before it is used.
//!
//! `docs/PROTOCOL.md` §7 specifies all of this for implementers in other languages; a test
//! checks that its message table matches these types.

pub mod bounds;
pub mod client;
pub mod data;
mod failure;
mod key;
pub mod worker;

use courier_core::Payload;
use serde::{Deserialize, Serialize};

pub use client::{ClientToScheduler, RetireError, ScatterError, ScatterTarget, SchedulerToClient, WorkerSummary};
pub use data::{DataReply, DataRequest, TransferCount};
pub use failure::Failure;
pub use key::{Key, deserialize_holders};
pub use worker::{IoCount, MAX_TRANSFER_SCHEMES, SchedulerToWorker, WorkerMemory, WorkerToScheduler, WorkerTransfers};

/// The role a credential grants that may do everything, joining as a worker included
/// (see `courier_core::AccessList`).
pub const ROLE_WORKER: &str = "worker";
/// The role a credential grants that may act as a client only: a peer with it (or with any
/// role other than [`ROLE_WORKER`]) that sends [`Hello::Worker`] is refused, so it cannot
/// forge results. A comm without a role (the listener checks no credentials) may do anything.
pub const ROLE_CLIENT: &str = "client";

/// The first message on a comm to the scheduler: who is connecting. Alone in the first batch;
/// the scheduler drops a peer whose first message is anything else, or that sends none within
/// its registration timeout (10 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Hello {
    /// A client. The scheduler answers with [`SchedulerToClient::Workers`] listing every worker.
    Client {
        /// A name for logs (at most [`MAX_NAME_LEN`](bounds::MAX_NAME_LEN) bytes).
        name: String,
    },
    /// A worker.
    Worker {
        /// A name for logs (at most [`MAX_NAME_LEN`](bounds::MAX_NAME_LEN) bytes).
        name: String,
        /// Where peers and clients reach its data listener (a URL, unique in the cluster).
        address: String,
        /// Runs it executes at once (1..=[`MAX_NTHREADS`](bounds::MAX_NTHREADS)).
        nthreads: u32,
        /// Where peers on the same host can reach its data listener faster (shm://), if it
        /// listens there. Absent from older workers.
        #[serde(default)]
        local: Option<LocalContact>,
    },
}

/// A worker's second, same-host data address: peers whose [host identity](LocalContact::host)
/// is the same fetch from `address` (falling back to the network address if it cannot be
/// reached); others ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalContact {
    /// A URL reachable only on the worker's host (`shm://@name`), at most
    /// [`MAX_ADDRESS_LEN`](bounds::MAX_ADDRESS_LEN) bytes.
    pub address: String,
    /// The host as the worker sees it: the kernel's boot id and the worker's user and network
    /// namespaces (`boot-id/user-ns/net-ns`), at most [`MAX_ADDRESS_LEN`](bounds::MAX_ADDRESS_LEN)
    /// bytes. Two processes with the same identity share memory and abstract socket names.
    pub host: String,
}

impl LocalContact {
    /// This process's host identity, if the system exposes one (Linux: /proc).
    pub fn this_host() -> Option<String> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).ok().map(|p| p.display().to_string());
        Some(format!("{}/{}/{}", boot.trim(), ns("user")?, ns("net")?))
    }

    /// Whether both fields are within bounds.
    pub fn is_valid(&self) -> bool {
        !self.address.is_empty()
            && self.address.len() <= bounds::MAX_ADDRESS_LEN
            && !self.host.is_empty()
            && self.host.len() <= bounds::MAX_ADDRESS_LEN
    }
}

/// Chosen by whoever sends a request; echoed in its reply.
pub type RequestId = u64;

/// Identifies one assignment of a task to a worker. A task computed again (after a worker
/// died, a steal, a retry) gets a new run id, so late reports of old runs are recognised.
pub type RunId = u64;

/// A one-time permission, issued by the scheduler, for a client to store one scattered key on
/// one worker.
pub type Ticket = u64;

/// An argument of a task: a value, or the result of another task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArgSpec {
    /// A serialized value.
    Value(Payload),
    /// The result of the task with this key (a dependency).
    Key(Key),
}

/// A task as a client submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Its key: new, or the client's own (see [`ClientToScheduler::Submit`]).
    pub key: Key,
    /// The registered function to run (a [`Key`] for its cheap clones and hashing; on the
    /// wire a plain string like any other; decoded [interned](Key::deserialize_interned)).
    #[serde(deserialize_with = "Key::deserialize_interned")]
    pub func: Key,
    /// Its arguments.
    pub args: Vec<ArgSpec>,
    /// How many times to retry after the function fails.
    pub retries: u32,
    /// Whether the client wants the result kept until it releases the key. An unwanted task
    /// (an intermediate step of a graph) is forgotten once its dependents have finished.
    pub wanted: bool,
}

impl TaskSpec {
    /// The distinct keys among the arguments, in order of first appearance.
    pub fn dependencies(&self) -> Vec<Key> {
        let mut deps: Vec<Key> = Vec::new();
        for a in &self.args {
            if let ArgSpec::Key(k) = a
                && !deps.contains(k)
            {
                deps.push(k.clone());
            }
        }
        deps
    }
}
