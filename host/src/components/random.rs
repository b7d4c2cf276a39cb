//! Cheap random numbers for choices that need no secrecy: which version
//! serves a request, and request ids.

use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A well-spread number: a counter through a randomly keyed hash, unique
/// within the process and unpredictable across runs.
pub fn u64() -> u64 {
    static SEED: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    SEED.hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
