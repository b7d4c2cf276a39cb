//! What one component may use: per-request resource limits, enforced inside
//! the store by [`StoreLimiter`] and around it by the gateway.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::sqlite::DbLimits;

/// Limits for one component, from the config or the host-wide defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentLimits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Elements one table may grow to.
    pub table_elements: usize,
    /// Core instances, memories and tables one store may create.
    pub instances: usize,
    /// Time a request may compute, counted in epoch ticks while the guest runs.
    pub cpu_time: Duration,
    /// Time a request may take from start to end, waiting included.
    pub timeout: Duration,
    /// The largest request body the component accepts.
    pub max_request_body_bytes: usize,
    /// The largest response body the component may return.
    pub max_response_body_bytes: usize,
    pub db: DbLimits,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        ComponentLimits {
            memory_bytes: 128 << 20,
            table_elements: 100_000,
            instances: 64,
            cpu_time: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 16 << 20,
            db: DbLimits::default(),
        }
    }
}

/// A guest grew past a limit; the trap it causes carries this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("the component grew its linear memory past its limit of {0} bytes")]
    Memory(usize),
    #[error("the component grew a table past its limit of {0} elements")]
    Table(usize),
}

/// The [`ResourceLimiter`] of one request's store.
pub struct StoreLimiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
}

impl StoreLimiter {
    pub fn new(limits: &ComponentLimits) -> Self {
        StoreLimiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
        }
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(LimitExceeded::Memory(self.memory_bytes).into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
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
