//! # courier-runtime
//!
//! A distributed task runtime on Courier comms, over any registered transport: the scheme of
//! the scheduler's URL alone picks it.
//!
//! ## Shape
//!
//! Every decider is a sans-IO state machine; the tokio drivers only move bytes and timers.
//!
//! - [`Scheduler`]: `handle(event, now) -> actions`; placement, the ready queue, stealing,
//!   retirement, recovery from dead workers by lineage, ownership of keys.
//! - [`WorkerState`](worker::WorkerState): `handle(event, now) -> actions`; execution slots,
//!   dependency fetching, stealing's worker half, release, scatter tickets.
//! - [`sim`]: a deterministic simulator running the scheduler, workers and clients together in
//!   simulated time with message delays and injected deaths.
//! - Drivers: [`start_scheduler`], [`start_worker`], and the [`Client`]. Each sends through
//!   one batched outbox per peer that never blocks (a peer that stops reading is cut off),
//!   and matches every reply to its request by id.
//! - [`protocol`]: the typed message sets per role, specified in `docs/PROTOCOL.md` §7.
//! - [`Functions`]: functions registered by name with typed (serde) arguments and results;
//!   [`Functions::with_builtins`] is the safe set `courier worker` ships.
//! - [`LocalCluster`]: everything in this process (inproc:// by default), or processes.
//!
//! ## Client verbs
//!
//! `submit`, `map`, `gather`, `scatter`, `as_completed` (a stream that accepts new futures
//! while it runs), `persist` vs `compute`, `cancel`, retries, `wait`, `retire_workers`.
//! Dropping the last [`TaskFuture`] of a key lets the cluster forget its data.
//!
//! ```
//! use courier_runtime::{Functions, LocalCluster, arg};
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let registry = courier_core::Registry::new().with(std::sync::Arc::new(courier_inproc::InprocTransport::new()));
//! let cluster = LocalCluster::inproc(registry, 2, Functions::with_builtins()).await?;
//! let client = cluster.client().await?;
//! let x = client.submit::<i64>("inc", vec![arg(&41)]).await?;
//! let y = client.submit::<i64>("add", vec![x.arg(), arg(&0)]).await?;
//! assert_eq!(y.result().await?, 42);
//! # Ok(())
//! # }
//! ```

mod client;
mod cluster;
mod collections;
pub mod dashboard;
pub mod driver;
mod functions;
pub mod protocol;
pub mod scheduler;
pub mod sim;
pub mod worker;

pub use client::{AsCompleted, Client, ClusterError, Graph, Status, TaskError, TaskFuture, arg, try_arg};
pub use cluster::{Adaptive, LocalCluster};
pub use dashboard::DashboardConfig;
pub use driver::{SchedulerHandle, ServerConfig, start_scheduler};
pub use functions::{Args, Functions, MAX_BUILTIN_ELEMENTS, MAX_BUILTIN_SLEEP, TaskFn};
pub use protocol::{ArgSpec, Failure, Key, LocalContact, TransferCount};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use worker::{MemoryLimits, MemoryProbe, WorkerConfig, WorkerHandle, start_worker};
