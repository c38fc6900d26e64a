//! # courier-runtime
//!
//! A distributed task runtime on Courier comms, over any registered transport: the scheme of
//! the scheduler's URL alone picks it.
//!
//! - [`Scheduler`]: a sans-IO state machine (`handle(event, now) -> actions`), tested without
//!   sockets; [`start_scheduler`] drives it over comms, batching messages per destination.
//! - Workers ([`start_worker`]) run [`Functions`] registered by name with typed serde
//!   arguments, keep results in memory, fetch dependencies from peer workers directly (large
//!   data never passes through the scheduler) and serve data to clients.
//! - [`Client`]: `submit`, `map`, `gather`, `scatter`, `as_completed` (a stream that accepts
//!   new futures while it runs), `persist` vs `compute`, `cancel`, retries, `wait`. Dropping
//!   the last [`TaskFuture`] of a key lets the cluster forget its data.
//! - [`LocalCluster`]: everything in this process over inproc://, or `courier` processes.
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
mod functions;
pub mod protocol;
pub mod scheduler;
mod server;
mod wire;
mod worker;

pub use client::{AsCompleted, Client, Graph, Status, TaskError, TaskFuture, arg};
pub use cluster::{Adaptive, LocalCluster};
pub use functions::{Args, Functions, TaskFn};
pub use protocol::{ArgSpec, Key};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use server::{SchedulerHandle, start_scheduler};
pub use worker::{WorkerConfig, WorkerHandle, start_worker};
