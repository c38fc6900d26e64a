//! Receive budgets: how many bytes partially received messages may hold, per connection and
//! per listener.
//!
//! A receiver commits memory for a message as its bytes arrive (at most
//! [`SPECULATIVE_MAX`] ahead of them), and every byte so committed is first reserved from the
//! comm's [`RecvBudget`]: its own limit and, for comms a listener accepted, the listener's
//! shared pool. A reservation that does not fit fails the message with `FrameTooLarge` and
//! closes that connection only; the bytes return to the pools when the message is delivered
//! (the application owns it then) or the comm ends. A peer can therefore make a receiver hold
//! at most the budget, however large the lengths it announces.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{CommError, ErrorKind};

/// The most a receiver allocates for a frame ahead of its bytes: 64 MiB. A larger frame's
/// buffer grows as its bytes arrive.
pub const SPECULATIVE_MAX: usize = 64 << 20;

/// A pool of bytes shared by the comms of one listener (or any group of comms).
#[derive(Debug)]
pub struct SharedBudget {
    limit: u64,
    used: AtomicU64,
}

impl SharedBudget {
    /// A pool of `limit` bytes.
    pub fn new(limit: u64) -> Arc<SharedBudget> {
        Arc::new(SharedBudget { limit, used: AtomicU64::new(0) })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The pool's size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn try_take(&self, n: u64) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(n).filter(|&next| next <= self.limit) else { return false };
            match self.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One comm's receive budget: its own limit, and optionally a shared pool it also draws from.
/// Dropping it returns what it holds.
#[derive(Debug)]
pub struct RecvBudget {
    limit: u64,
    used: u64,
    shared: Option<Arc<SharedBudget>>,
}

impl RecvBudget {
    /// A budget of `limit` bytes, drawing also from `shared` if given.
    pub fn new(limit: u64, shared: Option<Arc<SharedBudget>>) -> RecvBudget {
        RecvBudget { limit, used: 0, shared }
    }

    /// No limit of its own and no pool (for comms nobody needs to bound).
    pub fn unlimited() -> RecvBudget {
        RecvBudget::new(u64::MAX, None)
    }

    /// Bytes this comm holds now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Reserves `n` more bytes, or fails (nothing reserved) naming what was exceeded.
    pub fn reserve(&mut self, n: u64) -> Result<(), CommError> {
        let Some(total) = self.used.checked_add(n).filter(|&t| t <= self.limit) else {
            return Err(CommError::new(
                ErrorKind::FrameTooLarge,
                format!(
                    "receiving this message would hold {} bytes, over this connection's budget of {} bytes",
                    self.used.saturating_add(n),
                    self.limit
                ),
            ));
        };
        if let Some(shared) = &self.shared
            && !shared.try_take(n)
        {
            return Err(CommError::new(
                ErrorKind::FrameTooLarge,
                format!(
                    "receiving this message would exceed the listener's budget of {} bytes ({} in use)",
                    shared.limit(),
                    shared.used()
                ),
            ));
        }
        self.used = total;
        Ok(())
    }

    /// Returns `n` of the bytes held (at most what is held).
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.used);
        if let Some(shared) = &self.shared {
            shared.give_back(n);
        }
        self.used -= n;
    }

    /// Returns everything held (the message was delivered or abandoned).
    pub fn release_all(&mut self) {
        if let Some(shared) = &self.shared {
            shared.give_back(self.used);
        }
        self.used = 0;
    }
}

impl Drop for RecvBudget {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Receive budgets a listener gives its comms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetConfig {
    /// Bytes one comm's partially received messages may hold. Default: the largest message
    /// the comm accepts (its `Limits::max_message_size`) or the per-listener pool, whichever
    /// is smaller.
    pub per_connection: Option<u64>,
    /// Bytes all comms of one listener may hold together. Default: half of this machine's
    /// physical memory (read from `/proc/meminfo`; 8 GiB where it cannot be read).
    pub per_listener: Option<u64>,
}

impl BudgetConfig {
    /// The per-listener pool in bytes.
    pub fn listener_bytes(&self) -> u64 {
        self.per_listener.unwrap_or_else(|| physical_memory().map_or(8 << 30, |m| m / 2))
    }

    /// The per-comm budget in bytes, for a comm accepting messages of up to `max_message`.
    pub fn connection_bytes(&self, max_message: u64) -> u64 {
        self.per_connection.unwrap_or_else(|| max_message.min(self.listener_bytes()))
    }
}

/// Total physical memory, from `/proc/meminfo` (Linux).
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_both_limits_and_return_on_drop() {
        let shared = SharedBudget::new(100);
        let mut a = RecvBudget::new(60, Some(shared.clone()));
        let mut b = RecvBudget::new(60, Some(shared.clone()));
        a.reserve(50).unwrap();
        assert!(a.reserve(20).unwrap_err().to_string().contains("this connection's budget of 60"));
        b.reserve(50).unwrap();
        let e = b.reserve(1).unwrap_err();
        assert!(e.to_string().contains("listener's budget of 100"), "{e}");
        assert_eq!(shared.used(), 100);
        drop(a);
        assert_eq!(shared.used(), 50);
        b.release(20);
        assert_eq!((b.used(), shared.used()), (30, 30));
        b.release(1000);
        assert_eq!((b.used(), shared.used()), (0, 0), "releasing more than held returns what is held");
        assert!(RecvBudget::unlimited().reserve(u64::MAX).is_ok());
        assert!(RecvBudget::new(10, None).reserve(u64::MAX).is_err(), "no overflow");
    }
}
