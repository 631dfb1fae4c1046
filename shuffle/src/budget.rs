//! [`ByteBudget`]: a byte count shared by every connection, so that what the peers can make
//! the daemon hold in memory has one global bound rather than one per connection (which,
//! times thousands of connections, is no bound at all).
//!
//! The read buffers use it: each connection holds its first
//! [`crate::conn::READ_ALLOWANCE_BYTES`] for free (Spark's requests are a few KiB) and takes
//! anything above from the budget while a large frame is arriving; when the budget is spent,
//! the connection asking for more is closed with a clear error instead of growing.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A bounded pool of bytes. All methods take `&self`.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if that keeps the total within the limit; `false` (and nothing taken)
    /// otherwise.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let b = ByteBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41), "over the limit");
        assert_eq!(b.used(), 60, "a refused take takes nothing");
        assert!(b.try_take(40));
        assert!(!b.try_take(1));
        b.give_back(50);
        assert_eq!(b.used(), 50);
        assert!(b.try_take(50));
        assert!(!b.try_take(usize::MAX), "no overflow");
        b.give_back(1000);
        assert_eq!(b.used(), 0, "giving back more than taken saturates");
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let b = std::sync::Arc::new(ByteBudget::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take(7)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(taken, 1000 / 7);
        assert!(b.used() <= 1000);
    }
}
