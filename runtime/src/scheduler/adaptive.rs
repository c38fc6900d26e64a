//! The adaptive target: how many workers the outstanding work calls for.

use super::Scheduler;

/// Seconds of work a worker thread should have queued.
const TARGET_SECONDS: f64 = 1.0;
/// Assumed duration of a function never measured.
const UNMEASURED_SECONDS: f64 = 0.5;

impl Scheduler {
    /// Workers the outstanding work calls for: its expected duration (the mean measured run
    /// time per function, 0.5 s before any measurement) divided by one second of work per
    /// worker thread, and never more workers than outstanding tasks. Cost: O(functions with
    /// outstanding tasks), kept as running counts; never a scan of the task table.
    pub fn adaptive_target(&self) -> usize {
        if self.outstanding_total == 0 {
            return 0;
        }
        let seconds: f64 = self
            .outstanding
            .iter()
            .map(|(func, &n)| {
                let mean = match self.durations.get(func) {
                    Some(&(total, runs)) if runs > 0 => total / runs as f64,
                    _ => UNMEASURED_SECONDS,
                };
                mean * n as f64
            })
            .sum();
        let threads_per_worker =
            if self.workers.is_empty() { 1.0 } else { self.total_threads as f64 / self.workers.len() as f64 };
        let by_time = (seconds / TARGET_SECONDS / threads_per_worker.max(1.0)).ceil() as usize;
        by_time.clamp(1, self.outstanding_total)
    }

    /// Up to `limit` running workers with nothing assigned (the best to retire first).
    pub(crate) fn idle_addresses(&self, limit: usize) -> Vec<String> {
        self.idle.iter().take(limit).filter_map(|w| self.workers.get(w)).map(|w| w.address.clone()).collect()
    }
}
