//! What the serving layer counts: requests by component, version, method,
//! route and status class; their latency; refusals and traps by reason;
//! queue waits; open connections. `ops::metrics` registers these families.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as Prometheus;

use crate::components::stats::{ComponentLabels, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub component: Arc<str>,
    pub version: Arc<str>,
    pub method: Method,
    /// The route prefix that matched, so cardinality stays bounded.
    pub route: Arc<str>,
    pub status: &'static str,
}

/// HTTP methods, with everything unusual folded into `OTHER`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl Method {
    pub fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => Method::GET,
            http::Method::HEAD => Method::HEAD,
            http::Method::POST => Method::POST,
            http::Method::PUT => Method::PUT,
            http::Method::PATCH => Method::PATCH,
            http::Method::DELETE => Method::DELETE,
            http::Method::OPTIONS => Method::OPTIONS,
            _ => Method::OTHER,
        }
    }
}

pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub component: Arc<str>,
    pub version: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub component: Arc<str>,
    /// `rate_limit`, `concurrency`, `body_size` or `body_timeout`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrapLabels {
    pub component: Arc<str>,
    pub version: Arc<str>,
    /// `timeout`, `cpu-time`, `memory`, `panic`, ... (see `InvokeError::cause`).
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub component: Arc<str>,
    /// The host it went to.
    pub to: String,
    /// `owner`: that host owns the component's database; `busy`: every
    /// slot here was taken.
    pub why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` or `admin`.
    pub listener: &'static str,
}

pub struct ServingStats {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<VersionLabels, Histogram>,
    pub rejected: Family<RejectionLabels, Counter>,
    pub traps: Family<TrapLabels, Counter>,
    pub queue_wait: Family<ComponentLabels, Histogram>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    /// Requests sent on to another host of the cluster.
    pub forwarded: Family<ForwardLabels, Counter>,
    /// Requests limited by this host alone because the shared store failed.
    pub rate_limit_fallbacks: Family<ComponentLabels, Counter>,
}

impl Default for ServingStats {
    fn default() -> Self {
        ServingStats {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            traps: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            open_connections: Family::default(),
            forwarded: Family::default(),
            rate_limit_fallbacks: Family::default(),
        }
    }
}

impl ServingStats {
    pub fn register(&self, prometheus: &mut Prometheus) {
        prometheus.register("requests", "Requests served by components", self.requests.clone());
        prometheus.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response, per component version",
            self.request_duration.clone(),
        );
        prometheus.register(
            "requests_rejected",
            "Requests refused before reaching a component, by reason",
            self.rejected.clone(),
        );
        prometheus.register("traps", "Requests a component failed, by cause", self.traps.clone());
        prometheus.register(
            "queue_wait_seconds",
            "Time requests waited for a free instance slot",
            self.queue_wait.clone(),
        );
        prometheus.register(
            "open_connections",
            "Open client connections",
            self.open_connections.clone(),
        );
        prometheus.register(
            "requests_forwarded",
            "Requests sent on to another host: the owner of their component's database, or one with free slots",
            self.forwarded.clone(),
        );
        prometheus.register(
            "rate_limit_fallbacks",
            "Requests limited by this host alone because the shared rate limit store did not answer",
            self.rate_limit_fallbacks.clone(),
        );
    }

    pub fn observe_queue_wait(&self, component: &Arc<str>, waited: Duration) {
        self.queue_wait
            .get_or_create(&ComponentLabels {
                component: Arc::clone(component),
            })
            .observe(waited.as_secs_f64());
    }

    /// The gauge of connections open on `listener`.
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.open_connections.get_or_create_owned(&ListenerLabels { listener })
    }
}
