//! What one component may use: per-request resource limits, enforced inside
//! the store by [`StoreLimiter`], and how many requests it may run at once,
//! enforced by its [`ConcurrencyGate`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Time a request may take in the component, host calls included.
    pub timeout: Duration,
    /// Instances of the component alive at once.
    pub max_concurrent: usize,
    /// Requests that may wait for an instance; more are refused with 503.
    pub max_queued: usize,
    /// How long a request may wait for an instance before it is refused.
    pub queue_timeout: Duration,
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
            max_concurrent: 64,
            max_queued: 256,
            queue_timeout: Duration::from_secs(10),
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
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(LimitExceeded::Memory(self.memory_bytes).into());
        }
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

/// Bounds the instances of one component alive at once, with a bounded
/// queue in front: past it, requests are refused at once rather than piling
/// up, which keeps a flood from turning into unbounded memory and latency.
pub struct ConcurrencyGate {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    waiting: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
}

/// Why a request did not get an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("{0} requests are already waiting for this component")]
    QueueFull(usize),
    #[error("no instance of this component became free within {0:?}")]
    QueueTimeout(Duration),
}

impl ConcurrencyGate {
    pub fn new(limits: &ComponentLimits) -> Self {
        ConcurrencyGate {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            max_concurrent: limits.max_concurrent,
            waiting: AtomicUsize::new(0),
            max_queued: limits.max_queued,
            queue_timeout: limits.queue_timeout,
        }
    }

    /// Waits for a free slot; the permit holds it until dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded::QueueFull(self.max_queued));
        }
        let waited = tokio::time::timeout(self.queue_timeout, Arc::clone(&self.permits).acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(permit) => Ok(permit.expect("the semaphore is never closed")),
            Err(_) => Err(Overloaded::QueueTimeout(self.queue_timeout)),
        }
    }

    /// Requests running in the component now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}
