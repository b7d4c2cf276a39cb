//! How many instances of one component may be alive at once: a
//! [`ConcurrencyGate`] with a bounded, timed queue in front.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ComponentLimits;

/// Bounds the instances of one component alive at once, with a bounded
/// queue in front: past it, requests are refused at once rather than piling
/// up, which keeps a flood from turning into unbounded memory and latency.
/// Its size follows the config: a reload resizes it in place, so requests
/// running on the old size count against the new one.
pub struct ConcurrencyGate {
    permits: Arc<Semaphore>,
    /// The current size; permits beyond it are being taken back.
    max_concurrent: AtomicUsize,
    max_queued: AtomicUsize,
    queue_timeout_ms: AtomicU64,
    counts: Arc<Counts>,
}

/// Gauges kept by drop guards, so that a request that ends any way at all,
/// its client gone or its task cancelled, is counted out.
#[derive(Default)]
struct Counts {
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
}

/// An instance slot: held until dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    counts: Arc<Counts>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one waiting request until dropped.
struct Waiting<'a>(&'a Counts);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
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
            max_concurrent: AtomicUsize::new(limits.max_concurrent),
            max_queued: AtomicUsize::new(limits.max_queued),
            queue_timeout_ms: AtomicU64::new(limits.queue_timeout.as_millis() as u64),
            counts: Arc::default(),
        }
    }

    /// Takes the sizes of `limits`. Growing frees slots at once; shrinking
    /// takes slots back as the requests holding them finish.
    pub fn resize(&self, limits: &ComponentLimits) {
        self.max_queued.store(limits.max_queued, Ordering::Release);
        self.queue_timeout_ms
            .store(limits.queue_timeout.as_millis() as u64, Ordering::Release);
        let before = self.max_concurrent.swap(limits.max_concurrent, Ordering::AcqRel);
        match limits.max_concurrent.cmp(&before) {
            std::cmp::Ordering::Greater => self.permits.add_permits(limits.max_concurrent - before),
            std::cmp::Ordering::Less => {
                let surplus = (before - limits.max_concurrent) as u32;
                let permits = Arc::clone(&self.permits);
                tokio::spawn(async move {
                    if let Ok(taken) = permits.acquire_many_owned(surplus).await {
                        taken.forget();
                    }
                });
            }
            std::cmp::Ordering::Equal => {}
        }
    }

    /// A free slot now, if there is one.
    pub fn try_enter(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        self.counts.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            _permit: permit,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Waits for a free slot.
    pub async fn enter(&self) -> Result<Slot, Overloaded> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait().await?,
        };
        self.counts.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            _permit: permit,
            counts: Arc::clone(&self.counts),
        })
    }

    async fn wait(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        let max_queued = self.max_queued.load(Ordering::Acquire);
        if self.counts.waiting.fetch_add(1, Ordering::AcqRel) >= max_queued {
            self.counts.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded::QueueFull(max_queued));
        }
        let _waiting = Waiting(&self.counts);
        let timeout = Duration::from_millis(self.queue_timeout_ms.load(Ordering::Acquire));
        match tokio::time::timeout(timeout, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(permit) => Ok(permit.expect("the semaphore is never closed")),
            Err(_) => Err(Overloaded::QueueTimeout(timeout)),
        }
    }

    /// Requests running in the component now.
    pub fn in_flight(&self) -> usize {
        self.counts.in_flight.load(Ordering::Acquire)
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.counts.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: usize, max_queued: usize) -> ComponentLimits {
        ComponentLimits {
            max_concurrent,
            max_queued,
            queue_timeout: Duration::from_secs(60),
            ..ComponentLimits::default()
        }
    }

    #[tokio::test]
    async fn abandoned_waits_leave_no_trace() {
        let gate = Arc::new(ConcurrencyGate::new(&limits(1, 1000)));
        let held = gate.enter().await.unwrap();
        let waiters: Vec<_> = (0..500)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.enter().await.map(drop) })
            })
            .collect();
        while gate.waiting() < 500 {
            tokio::task::yield_now().await;
        }
        for waiter in &waiters {
            waiter.abort();
        }
        for waiter in waiters {
            let _ = waiter.await;
        }
        assert_eq!((gate.waiting(), gate.in_flight()), (0, 1));
        drop(held);
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn shrinking_takes_slots_back_as_requests_finish() {
        let gate = ConcurrencyGate::new(&limits(3, 0));
        let slots: Vec<_> = take_slots(&gate, 3).await;
        gate.resize(&limits(1, 0));
        drop(slots);
        tokio::task::yield_now().await;
        let one = gate.enter().await.unwrap();
        assert_eq!(gate.enter().await.err(), Some(Overloaded::QueueFull(0)));
        gate.resize(&limits(2, 0));
        let two = gate.enter().await.unwrap();
        assert_eq!(gate.in_flight(), 2);
        drop((one, two));
    }

    async fn take_slots(gate: &ConcurrencyGate, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(gate.enter().await.unwrap());
        }
        slots
    }
}
