//! Rate-limited logging: a hostile peer must not be able to flood the logs either.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets at most `per_second` events through per second and counts the others.
///
/// ```
/// # use courier_core::ratelimit::RateLimit;
/// static REFUSALS: RateLimit = RateLimit::new(10);
/// if let Some(suppressed) = REFUSALS.allow() {
///     // log the event, and that `suppressed` similar ones were not logged
/// #   let _ = suppressed;
/// }
/// ```
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter letting `per_second` events through per second.
    pub const fn new(per_second: u32) -> Self {
        RateLimit { per_second, state: Mutex::new(Window { start: None, passed: 0, suppressed: 0 }) }
    }

    /// `Some(n)` when this event may be logged (`n` events were suppressed since the last
    /// one let through), `None` when it should be dropped.
    pub fn allow(&self) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.start.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed < self.per_second {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_and_counts_the_rest() {
        let r = RateLimit::new(3);
        let passed = (0..100).filter(|_| r.allow().is_some()).count();
        assert_eq!(passed, 3);
    }
}
