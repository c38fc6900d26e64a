//! The tokio side of the runtime: moving bytes and timers, deciding nothing.
//!
//! - [`batched`]: the one batched, bounded, never-blocking sender every node uses per peer.
//! - [`pool`]: request/reply to workers' data listeners, matched by request id, with
//!   timeouts and no lock held across a connect.
//! - [`scheduler`]: the scheduler's driver ([`start_scheduler`]).
//!
//! The worker's driver lives with the worker ([`crate::worker`]); the client is its own
//! driver ([`crate::Client`]).

pub(crate) mod batched;
pub(crate) mod pool;
mod scheduler;

pub use scheduler::{SchedulerHandle, ServerConfig, start_scheduler};
