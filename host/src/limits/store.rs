//! What one store may grow to, enforced inside it by [`StoreLimiter`]: its
//! linear memories together, its tables, its instances.

use wasmtime::ResourceLimiter;

use crate::config::ComponentLimits;

/// A guest grew past a limit; the trap it causes carries this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("the component grew its linear memories past its limit of {0} bytes")]
    Memory(usize),
    #[error("the component grew a table past its limit of {0} elements")]
    Table(usize),
}

/// The [`ResourceLimiter`] of one request's store.
pub struct StoreLimiter {
    memory_bytes: usize,
    /// Bytes of every linear memory of the store together.
    memory_used: usize,
    table_elements: usize,
    instances: usize,
}

impl StoreLimiter {
    pub fn new(limits: &ComponentLimits) -> Self {
        StoreLimiter {
            memory_bytes: limits.memory_bytes,
            memory_used: 0,
            table_elements: limits.table_elements,
            instances: limits.instances,
        }
    }
}

impl ResourceLimiter for StoreLimiter {
    /// Called for a memory's creation too (from 0), so `memory_used` counts
    /// every memory the store has.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let used = self.memory_used.saturating_sub(current).saturating_add(desired);
        if used > self.memory_bytes {
            return Err(LimitExceeded::Memory(self.memory_bytes).into());
        }
        self.memory_used = used;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(LimitExceeded::Table(self.table_elements).into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_limited_for_every_memory_of_a_store_together() {
        let mut limiter = StoreLimiter::new(&ComponentLimits {
            memory_bytes: 10 << 20,
            ..ComponentLimits::default()
        });
        // Two memories created at 4 MiB each, then one grows.
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(4 << 20, 6 << 20, None).unwrap());
        let refused = limiter.memory_growing(4 << 20, 5 << 20, None).unwrap_err();
        assert_eq!(refused.downcast_ref(), Some(&LimitExceeded::Memory(10 << 20)));
    }
}
