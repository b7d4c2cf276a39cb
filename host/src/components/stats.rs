//! What the components layer counts: loads and changes, calls between
//! components, and what the capabilities count. `ops::metrics` registers
//! these families and serves them.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Prometheus;

use crate::capabilities;
pub use crate::capabilities::ComponentLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub component: Arc<str>,
    /// `load`, `load_failed`, `swap`, `canary`, `promote`, `rollback`, `reload`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub caller: Arc<str>,
    pub callee: Arc<str>,
    /// The callee's version that answered, `-` when none did.
    pub version: Arc<str>,
    pub interface: Arc<str>,
    /// `ok` or `unavailable`.
    pub outcome: &'static str,
}

pub struct ComponentStats {
    pub changes: Family<ChangeLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub call_duration: Family<CallLabels, Histogram>,
    pub capabilities: capabilities::Metrics,
}

/// 50 µs to about 1.6 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for ComponentStats {
    fn default() -> Self {
        ComponentStats {
            changes: Family::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            capabilities: capabilities::Metrics::default(),
        }
    }
}

impl ComponentStats {
    pub fn register(&self, prometheus: &mut Prometheus) {
        prometheus.register(
            "component_changes",
            "Component loads and version changes, by kind",
            self.changes.clone(),
        );
        prometheus.register("calls", "Calls between components, by outcome", self.calls.clone());
        prometheus.register(
            "call_duration_seconds",
            "Time of a call between components, as the caller sees it",
            self.call_duration.clone(),
        );
        self.capabilities.register(prometheus);
    }

    pub fn count_change(&self, component: &Arc<str>, kind: &'static str) {
        self.changes
            .get_or_create(&ChangeLabels {
                component: Arc::clone(component),
                kind,
            })
            .inc();
    }
}
