//! The dispatcher: for every subscribed component, takes due deliveries from
//! the log (up to its concurrency, in key order when it asks for it), hands
//! each to a fresh instance of the version serving now, in the component's
//! gate like a request but never rate limited, and settles it: acked,
//! retried with exponential backoff and jitter, or dead-lettered once its
//! attempts are spent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument;

use super::stats::{DeliveryLabels, EventStats, OTHER_TOPIC, SubscriberLabels};
use super::{Claimed, EventLog, Settlement};
use crate::capabilities::bindings::subscriber::exports::corral::service::subscriber::{Delivery, Outcome};
use crate::clock::now_ms;
use crate::components::registry::Registry;
use crate::components::snapshot::Entry;
use crate::config::events::{Ordering, Subscription};
use crate::telemetry;
use crate::wasm::invoke;

/// Due deliveries are looked for at least this often.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Expired leases are looked for this often.
const RECOVER_EVERY: Duration = Duration::from_secs(5);
/// Backlogs for the metrics are read this often.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Deliveries in flight per subscriber, kept across snapshots.
#[derive(Default)]
struct InFlight(std::sync::Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>);

impl InFlight {
    fn of(&self, subscriber: &Arc<str>) -> Arc<AtomicUsize> {
        let mut all = self.0.lock().expect("in-flight lock");
        Arc::clone(all.entry(Arc::clone(subscriber)).or_default())
    }
}

/// Counts a delivery in flight until dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

/// Dispatches until the task is dropped. At start, every lease left from
/// before is released: those deliveries were in flight when the host died.
pub async fn run(registry: Arc<Registry>, log: Arc<dyn EventLog>, wake: Arc<Notify>, stats: Arc<EventStats>) {
    match log.recover(true).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "delivering again what was in flight when the host stopped"
        ),
        Err(e) => tracing::warn!("cannot release old leases: {e:#}"),
    }
    // Finished deliveries, settled together at the top of each round.
    let (settled, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Dispatcher {
        registry,
        log,
        wake,
        stats,
        in_flight: InFlight::default(),
        settled,
    };
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut last_recover = Instant::now();
    let mut last_backlog = Instant::now() - BACKLOG_EVERY;
    loop {
        tokio::select! {
            () = dispatcher.wake.notified() => {}
            _ = poll.tick() => {}
        }
        dispatcher.settle(&mut finished).await;
        if last_recover.elapsed() >= RECOVER_EVERY {
            last_recover = Instant::now();
            let _ = dispatcher.log.recover(false).await;
        }
        if last_backlog.elapsed() >= BACKLOG_EVERY {
            last_backlog = Instant::now();
            if let Ok(backlogs) = dispatcher.log.backlogs().await {
                dispatcher.stats.set_backlogs(&backlogs);
            }
        }
        let snapshot = dispatcher.registry.snapshot();
        for entry in &snapshot.entries {
            dispatcher.start(entry).await;
        }
    }
}

/// A finished delivery: its subscriber, its id and how it is settled.
type Settled = (Arc<str>, String, Settlement);

/// What one dispatching task holds.
struct Dispatcher {
    registry: Arc<Registry>,
    log: Arc<dyn EventLog>,
    wake: Arc<Notify>,
    stats: Arc<EventStats>,
    in_flight: InFlight,
    /// Where finished deliveries send their settlement.
    settled: tokio::sync::mpsc::UnboundedSender<Settled>,
}

impl Dispatcher {
    /// Settles every delivery finished since the last round, together.
    async fn settle(&self, finished: &mut tokio::sync::mpsc::UnboundedReceiver<Settled>) {
        let mut settled = Vec::new();
        while let Ok(one) = finished.try_recv() {
            settled.push(one);
        }
        if !settled.is_empty()
            && let Err(e) = self.log.settle(settled).await
        {
            // Their leases run out and they come again.
            tracing::warn!("cannot settle deliveries: {e:#}");
        }
    }

    /// Claims as many due deliveries for `entry` as it has room for, and
    /// starts each on an instance of its own.
    async fn start(&self, entry: &Arc<Entry>) {
        let Some(subscription) = &entry.config.events.subscription else {
            return;
        };
        // In a cluster, a subscriber with its database on another host (or
        // on one this host does not know yet) is never run here: its
        // deliveries wait in this host's log.
        if !self.registry.placement.serves_here(entry) {
            return;
        }
        let running = self.in_flight.of(&entry.name);
        let free = subscription
            .settings
            .concurrency
            .saturating_sub(running.load(AtomicOrdering::Acquire));
        if free == 0 {
            return;
        }
        let by_key = subscription.ordering == Ordering::Key;
        let claimed = match self
            .log
            .claim(entry.name.to_string(), free, by_key, subscription.settings.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(subscriber = %entry.name, "cannot take deliveries: {e:#}");
                return;
            }
        };
        for claimed in claimed {
            running.fetch_add(1, AtomicOrdering::AcqRel);
            let guard = Running(Arc::clone(&running));
            let job = Job {
                entry: Arc::clone(entry),
                stats: Arc::clone(&self.stats),
            };
            let (settled, wake) = (self.settled.clone(), Arc::clone(&self.wake));
            tokio::spawn(async move {
                let settlement = job.deliver(claimed).await;
                let _ = settled.send(settlement);
                drop(guard);
                wake.notify_one();
            });
        }
    }
}

/// One delivery's handling.
struct Job {
    entry: Arc<Entry>,
    stats: Arc<EventStats>,
}

impl Job {
    /// Handles the delivery; what to settle it with.
    async fn deliver(&self, claimed: Claimed) -> (Arc<str>, String, Settlement) {
        let name = Arc::clone(&self.entry.name);
        let Some(subscription) = self.entry.config.events.subscription.as_ref() else {
            let later = now_ms() + 1000;
            return (name, claimed.message.id, Settlement::Requeue { at_ms: later });
        };
        let (id, claimed_topic) = (claimed.message.id.clone(), claimed.message.topic.clone());
        let pattern = subscription.pattern_of(&claimed_topic);
        let topic = pattern.map_or(OTHER_TOPIC, |p| p.as_str()).to_string();
        let started = Instant::now();
        let settlement = self.attempt(subscription, claimed).await;
        let outcome = match &settlement {
            Settlement::Ack => "ack",
            Settlement::Retry { .. } => "retry",
            Settlement::Requeue { .. } => "requeued",
            Settlement::Dead { .. } => "dead",
        };
        if let Settlement::Dead { reason } = &settlement {
            tracing::warn!(subscriber = %name, topic = %claimed_topic, message = id, "a message became a dead letter: {reason}");
        }
        self.stats
            .handler_duration
            .get_or_create(&SubscriberLabels {
                subscriber: Arc::clone(&name),
            })
            .observe(started.elapsed().as_secs_f64());
        self.stats
            .deliveries
            .get_or_create(&DeliveryLabels {
                subscriber: Arc::clone(&name),
                topic,
                outcome,
            })
            .inc();
        (name, id, settlement)
    }

    /// Runs the handler once; what to do with the delivery after.
    async fn attempt(&self, subscription: &Subscription, claimed: Claimed) -> Settlement {
        let entry = &self.entry;
        let attempt = claimed.attempt;
        let version = Arc::clone(entry.pick(crate::components::random::u64()));
        let Some(pre) = &version.subscriber else {
            return Settlement::Requeue {
                at_ms: now_ms() + subscription.settings.backoff_initial.as_millis() as u64,
            };
        };
        let slot = match entry.shared.gate.enter().await {
            Ok(slot) => slot,
            Err(_) => {
                return Settlement::Requeue {
                    at_ms: now_ms() + backoff(subscription, 1).as_millis() as u64,
                };
            }
        };
        let (delivery, traceparent) = delivery(claimed);
        let span = tracing::info_span!(
            "event",
            subscriber = %entry.name,
            topic = %delivery.topic,
            message = %delivery.id,
            attempt = delivery.attempt,
        );
        if let Some(traceparent) = &traceparent {
            telemetry::link(&span, traceparent);
        }
        let outcome = invoke::deliver(entry.target(&version), pre, delivery, subscription.exactly_once)
            .instrument(span)
            .await;
        drop(slot);
        let spent = attempt as usize >= subscription.settings.max_attempts;
        let retry = |error: String, after: Duration| match spent {
            true => Settlement::Dead {
                reason: format!("{attempt} attempts failed; the last: {error}"),
            },
            false => Settlement::Retry {
                at_ms: now_ms() + after.as_millis() as u64,
                error,
            },
        };
        match outcome {
            Ok(Outcome::Ack) => Settlement::Ack,
            Ok(Outcome::DeadLetter(reason)) => Settlement::Dead { reason },
            Ok(Outcome::RetryAfter(ms)) => retry(
                format!("the handler asked to retry after {ms} ms"),
                Duration::from_millis(u64::from(ms)),
            ),
            Err(e) => retry(e.to_string(), backoff(subscription, attempt)),
        }
    }
}

/// How long to wait after failed attempt `attempt` (1-based): doubling from
/// the initial backoff up to the maximum, with jitter between half and all
/// of it so that retries spread out.
fn backoff(subscription: &Subscription, attempt: u32) -> Duration {
    let settings = &subscription.settings;
    let doubled = settings
        .backoff_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(settings.backoff_max);
    let jitter = 0.5 + (crate::components::random::u64() % 1000) as f64 / 2000.0;
    capped.mul_f64(jitter)
}

/// A delivery as its handler gets it, and apart, the trace of the request
/// that published it, which the handler does not see.
fn delivery(claimed: Claimed) -> (Delivery, Option<String>) {
    let m = claimed.message;
    let (trace, headers): (Vec<_>, Vec<_>) = m
        .headers
        .into_iter()
        .partition(|(name, _)| telemetry::is_trace_name(name));
    let traceparent = trace
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(telemetry::TRACEPARENT.as_str()))
        .map(|(_, value)| value);
    let delivery = Delivery {
        id: m.id,
        topic: m.topic,
        source: m.source,
        payload: m.payload,
        content_type: m.content_type,
        headers,
        ordering_key: m.ordering_key,
        attempt: claimed.attempt,
        published_at: m.published_at,
    };
    (delivery, traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::events::SubscriptionSettings;

    #[test]
    fn backoff_doubles_within_bounds_with_jitter() {
        let subscription = Subscription {
            topics: Vec::new(),
            settings: SubscriptionSettings {
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_millis(1000),
                ..SubscriptionSettings::default()
            },
            ordering: Ordering::None,
            exactly_once: false,
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let wait = backoff(&subscription, attempt).as_millis() as u64;
            assert!((full / 2..=full).contains(&wait), "attempt {attempt}: {wait} ms");
        }
    }
}
