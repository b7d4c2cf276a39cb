//! What the events layer counts: messages published (committed and taken
//! from an outbox) by topic pattern and source, deliveries by subscriber,
//! topic pattern and outcome, the time handlers take; and, refreshed from the log, each
//! subscriber's backlog. `ops::metrics` registers these families.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as Prometheus;

use super::Backlog;
use crate::components::stats::latency_histogram;

/// A topic is named by the config's pattern it matched (`orders.*`), not
/// by itself, and one no pattern matches (the config changed meanwhile) by
/// [`OTHER_TOPIC`]: a guest choosing topic names cannot add series.
pub const OTHER_TOPIC: &str = "(other)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishedLabels {
    pub topic: String,
    pub source: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub subscriber: Arc<str>,
    /// The subscription's pattern the topic matched.
    pub topic: String,
    /// `ack`, `retry`, `dead` or `requeued`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    pub subscriber: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BacklogLabels {
    pub subscriber: String,
    /// `ready`, `retrying`, `in_flight` or `dead`.
    pub state: &'static str,
}

pub struct EventStats {
    pub published: Family<PublishedLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub handler_duration: Family<SubscriberLabels, Histogram>,
    backlog: Family<BacklogLabels, Gauge>,
    oldest_age: Family<SubscriberLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for EventStats {
    fn default() -> Self {
        EventStats {
            published: Family::default(),
            deliveries: Family::default(),
            handler_duration: Family::new_with_constructor(latency_histogram),
            backlog: Family::default(),
            oldest_age: Family::default(),
        }
    }
}

impl EventStats {
    pub fn register(&self, prometheus: &mut Prometheus) {
        prometheus.register(
            "events_published",
            "Messages published, once committed, by topic and source",
            self.published.clone(),
        );
        prometheus.register(
            "event_deliveries",
            "Delivery attempts settled, by subscriber, topic and outcome",
            self.deliveries.clone(),
        );
        prometheus.register(
            "event_handler_duration_seconds",
            "Time a subscriber's handler took",
            self.handler_duration.clone(),
        );
        prometheus.register(
            "event_backlog",
            "Deliveries per subscriber, by state",
            self.backlog.clone(),
        );
        prometheus.register(
            "event_oldest_age_seconds",
            "Age of each subscriber's oldest undelivered message",
            self.oldest_age.clone(),
        );
    }

    /// Takes the backlogs the log reported.
    pub fn set_backlogs(&self, backlogs: &[Backlog]) {
        self.backlog.clear();
        self.oldest_age.clear();
        for b in backlogs {
            for (state, n) in [
                ("ready", b.ready),
                ("retrying", b.retrying),
                ("in_flight", b.in_flight),
                ("dead", b.dead),
            ] {
                let labels = BacklogLabels {
                    subscriber: b.subscriber.clone(),
                    state,
                };
                self.backlog.get_or_create(&labels).set(n as i64);
            }
            if let Some(age) = b.oldest_age_ms {
                let labels = SubscriberLabels {
                    subscriber: b.subscriber.as_str().into(),
                };
                self.oldest_age.get_or_create(&labels).set(age as f64 / 1000.0);
            }
        }
    }
}
