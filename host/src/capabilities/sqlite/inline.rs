//! How many statements may run in place on the async workers at once,
//! outside the inline read budget: a transaction's statements and group
//! commits. Each holds its worker until it ends (within its statement
//! timeout), so at least one worker is always left free for everything
//! else; past that, statements go to the SQL threads.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// A statement running in place, counted until dropped.
pub struct Slot(());

impl Drop for Slot {
    fn drop(&mut self) {
        IN_USE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot, if one is free.
pub fn enter() -> Option<Slot> {
    let max = max();
    IN_USE
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
        .ok()
        .map(|_| Slot(()))
}

/// One fewer than the runtime's workers, and at least one.
fn max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        workers.saturating_sub(1).max(1)
    })
}
