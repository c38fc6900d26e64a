//! Why a key has no value: typed, so a client can tell a cancelled task from a crashing one.

use serde::{Deserialize, Serialize};

use super::Key;

/// Why a task has no result. Sent by the scheduler in
/// [`SchedulerToClient::Erred`](super::SchedulerToClient::Erred).
///
/// A failure inherited from a dependency is [`Failure::Dependency`], which names the task
/// where the failure started and carries that task's own failure (never another
/// `Dependency`), so failures stay flat however long the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// The function returned an error or panicked; the worker's message.
    #[error("{message}")]
    Error {
        /// What the worker reported.
        message: String,
    },
    /// The task's owner cancelled it.
    #[error("cancelled")]
    Cancelled,
    /// The task was running on this many workers when they died, more than the scheduler's
    /// `allowed_failures`: it is probably what kills them.
    #[error("KilledWorker: the task was running on {} workers that died: {}", workers.len(), workers.join(", "))]
    KilledWorker {
        /// The workers that died while running it.
        workers: Vec<String>,
    },
    /// The value existed only on a worker that died and cannot be recomputed (scattered data).
    #[error("data lost: {reason}")]
    DataLost {
        /// What happened.
        reason: String,
    },
    /// The scheduler refused the task: invalid spec, unknown or forgotten dependency, a
    /// dependency cycle, a key owned by another client, a limit exceeded.
    #[error("rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// A task this one depends on (directly or not) failed.
    #[error("dependency {root} failed: {cause}")]
    Dependency {
        /// The task where the failure started.
        root: Key,
        /// That task's own failure (never `Dependency`).
        cause: Box<Failure>,
    },
}

impl Failure {
    /// The failure a dependent of a task that failed with `self` inherits.
    pub fn inherited(&self, failed: &str) -> Failure {
        match self {
            Failure::Dependency { .. } => self.clone(),
            own => Failure::Dependency { root: failed.into(), cause: Box::new(own.clone()) },
        }
    }

    /// The failure at the root of a dependency chain.
    pub fn root_cause(&self) -> &Failure {
        match self {
            Failure::Dependency { cause, .. } => cause,
            own => own,
        }
    }

    /// True when the task, or the task its failure comes from, was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.root_cause(), Failure::Cancelled)
    }

    /// A rejection with this reason.
    pub fn rejected(reason: impl Into<String>) -> Failure {
        Failure::Rejected { reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_failures_stay_flat_along_a_chain() {
        let root = Failure::Error { message: "boom".into() };
        let mut f = root.inherited("a");
        for k in 0..10_000 {
            f = f.inherited(&format!("k{k}"));
        }
        assert_eq!(f, Failure::Dependency { root: "a".into(), cause: Box::new(root) });
        assert_eq!(f.to_string(), "dependency a failed: boom");
        assert!(!f.is_cancelled());
        assert!(Failure::Cancelled.inherited("x").is_cancelled());
    }
}
