//! What the components layer counts: loads and changes, calls between
//! components, and each database's statements. `ops::metrics` registers
//! these families and serves them.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Prometheus;

use crate::capabilities::http::OutboundLabels;
use crate::capabilities::sqlite::SqliteStats;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SqliteLabels {
    pub component: Arc<str>,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: Arc<str>,
}

pub struct ComponentStats {
    pub changes: Family<ChangeLabels, Counter>,
    /// Outgoing HTTP requests, by component and outcome.
    pub outbound: Family<OutboundLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub call_duration: Family<CallLabels, Histogram>,
    sqlite_statements: Family<SqliteLabels, Counter>,
    sqlite_duration: Family<ComponentLabels, Histogram>,
}

/// 50 µs to about 1.6 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// 5 µs to about 1.3 s.
fn sqlite_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 2.0, 19))
}

impl Default for ComponentStats {
    fn default() -> Self {
        ComponentStats {
            changes: Family::default(),
            outbound: Family::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            sqlite_statements: Family::default(),
            sqlite_duration: Family::new_with_constructor(sqlite_histogram),
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
            "outbound_requests",
            "Outgoing HTTP requests, by component and outcome",
            self.outbound.clone(),
        );
        prometheus.register(
            "call_duration_seconds",
            "Time of a call between components, as the caller sees it",
            self.call_duration.clone(),
        );
        prometheus.register(
            "sqlite_statements",
            "SQL statements run by components, by outcome",
            self.sqlite_statements.clone(),
        );
        prometheus.register(
            "sqlite_statement_duration_seconds",
            "Time of one SQL statement as the guest sees it",
            self.sqlite_duration.clone(),
        );
    }

    pub fn count_change(&self, component: &Arc<str>, kind: &'static str) {
        self.changes
            .get_or_create(&ChangeLabels {
                component: Arc::clone(component),
                kind,
            })
            .inc();
    }

    /// The statement metrics of one component, for its database handle.
    pub fn sqlite_stats(&self, component: &Arc<str>) -> SqliteStats {
        let outcome = |outcome| SqliteLabels {
            component: Arc::clone(component),
            outcome,
        };
        SqliteStats {
            ok: self.sqlite_statements.get_or_create_owned(&outcome("ok")),
            failed: self.sqlite_statements.get_or_create_owned(&outcome("error")),
            duration: self.sqlite_duration.get_or_create_owned(&ComponentLabels {
                component: Arc::clone(component),
            }),
        }
    }
}
