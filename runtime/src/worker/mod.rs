//! The worker: a sans-IO state machine ([`WorkerState`]) that decides everything, a tokio
//! driver ([`start_worker`]) that only moves messages, runs functions and keeps timers, and a
//! data server that feeds peers' and clients' requests to the state machine.

mod data_server;
mod driver;
pub mod spill;
mod state;
#[cfg(test)]
mod tests;

pub use driver::{
    MEMORY_SAMPLE_INTERVAL, MemoryProbe, WorkerConfig, WorkerHandle, default_memory_limit, process_rss, start_worker,
};
pub use state::{
    ConnId, FetchId, MAX_SPILLS_IN_FLIGHT, MemoryLimits, SERVE_WAIT, SPILL_RETRY, Value, WorkerAction, WorkerEvent,
    WorkerLimits, WorkerState,
};

/// How often a worker tells the scheduler it is alive.
pub(crate) const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
