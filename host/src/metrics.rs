//! What the host reports to Prometheus, with prometheus-client: requests,
//! latencies, rejections, traps, instances, queue waits, SQLite statements,
//! loads and changes per component (and version), plus the process's
//! connections, memory and CPU. Scraped from the admin listener's `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Prometheus;

use crate::registry::Snapshot;
use crate::sqlite::SqliteStats;

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

/// `2xx`, `4xx`, ...: the class of an HTTP status, a label of bounded cardinality.
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
pub struct ComponentLabels {
    pub component: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub component: Arc<str>,
    /// `rate_limit`, `concurrency` or `body_size`.
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
pub struct SqliteLabels {
    pub component: Arc<str>,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub component: Arc<str>,
    /// `load`, `load_failed`, `swap`, `canary`, `promote`, `rollback`.
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
pub struct InfoLabels {
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// `current`, `canary` or `previous`.
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` or `admin`.
    pub listener: &'static str,
}

/// Every metric the host keeps.
pub struct Metrics {
    prometheus: Prometheus,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<VersionLabels, Histogram>,
    pub rejected: Family<RejectionLabels, Counter>,
    pub traps: Family<TrapLabels, Counter>,
    pub queue_wait: Family<ComponentLabels, Histogram>,
    sqlite_statements: Family<SqliteLabels, Counter>,
    sqlite_duration: Family<ComponentLabels, Histogram>,
    pub changes: Family<ChangeLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub call_duration: Family<CallLabels, Histogram>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    /// Refreshed at each scrape.
    info: Family<InfoLabels, Gauge>,
    in_flight: Family<ComponentLabels, Gauge>,
    queued: Family<ComponentLabels, Gauge>,
    resident_memory: Gauge,
    cpu_seconds: Gauge<f64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn sqlite_histogram() -> Histogram {
    // 5 µs to about 1.3 s.
    Histogram::new(exponential_buckets(0.000_005, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            prometheus: Prometheus::with_prefix("corral"),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            traps: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            sqlite_statements: Family::default(),
            sqlite_duration: Family::new_with_constructor(sqlite_histogram),
            changes: Family::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            open_connections: Family::default(),
            info: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
            resident_memory: Gauge::default(),
            cpu_seconds: Gauge::default(),
        };
        let p = &mut metrics.prometheus;
        p.register("requests", "Requests served by components", metrics.requests.clone());
        p.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response, per component version",
            metrics.request_duration.clone(),
        );
        p.register(
            "requests_rejected",
            "Requests refused before reaching a component, by reason",
            metrics.rejected.clone(),
        );
        p.register("traps", "Requests a component failed, by cause", metrics.traps.clone());
        p.register(
            "queue_wait_seconds",
            "Time requests waited for a free instance slot",
            metrics.queue_wait.clone(),
        );
        p.register(
            "sqlite_statements",
            "SQL statements run by components, by outcome",
            metrics.sqlite_statements.clone(),
        );
        p.register(
            "sqlite_statement_duration_seconds",
            "Time of one SQL statement as the guest sees it",
            metrics.sqlite_duration.clone(),
        );
        p.register(
            "component_changes",
            "Component loads and version changes, by kind",
            metrics.changes.clone(),
        );
        p.register("calls", "Calls between components, by outcome", metrics.calls.clone());
        p.register(
            "call_duration_seconds",
            "Time of a call between components, as the caller sees it",
            metrics.call_duration.clone(),
        );
        p.register(
            "open_connections",
            "Open client connections",
            metrics.open_connections.clone(),
        );
        p.register(
            "component_info",
            "The versions each component has",
            metrics.info.clone(),
        );
        p.register(
            "instances_in_flight",
            "Component instances running now",
            metrics.in_flight.clone(),
        );
        p.register(
            "requests_queued",
            "Requests waiting for an instance slot now",
            metrics.queued.clone(),
        );
        p.register(
            "process_resident_memory_bytes",
            "Resident memory of the host process",
            metrics.resident_memory.clone(),
        );
        p.register(
            "process_cpu_seconds",
            "CPU time used by the host process",
            metrics.cpu_seconds.clone(),
        );
        metrics
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

    pub fn count_change(&self, component: &Arc<str>, kind: &'static str) {
        self.changes
            .get_or_create(&ChangeLabels {
                component: Arc::clone(component),
                kind,
            })
            .inc();
    }

    pub fn observe_queue_wait(&self, component: &Arc<str>, waited: Duration) {
        self.queue_wait
            .get_or_create(&ComponentLabels {
                component: Arc::clone(component),
            })
            .observe(waited.as_secs_f64());
    }

    /// The Prometheus text format, with what is read at scrape time
    /// refreshed from `snapshot` and the process.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        self.info.clear();
        self.in_flight.clear();
        self.queued.clear();
        for entry in &snapshot.entries {
            let name = &entry.name;
            let info = |version: &Arc<str>, role| {
                self.info
                    .get_or_create(&InfoLabels {
                        name: Arc::clone(name),
                        version: Arc::clone(version),
                        role,
                    })
                    .set(1);
            };
            info(&entry.current.short, "current");
            if let Some(canary) = &entry.canary {
                info(&canary.version.short, "canary");
            }
            if let Some(previous) = &entry.previous {
                info(&previous.short, "previous");
            }
            let labels = ComponentLabels {
                component: Arc::clone(name),
            };
            self.in_flight
                .get_or_create(&labels)
                .set(entry.shared.gate.in_flight() as i64);
            self.queued
                .get_or_create(&labels)
                .set(entry.shared.gate.waiting() as i64);
        }
        if let Some((rss, cpu)) = process_usage() {
            self.resident_memory.set(rss as i64);
            self.cpu_seconds.set(cpu);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.prometheus).expect("writing to a String");
        text
    }
}

/// Resident bytes and CPU seconds of this process, from `/proc`.
fn process_usage() -> Option<(u64, f64)> {
    /// Linux reports CPU time in clock ticks of 1/100 s on every platform it supports.
    const TICKS_PER_SECOND: f64 = 100.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((rss_kib * 1024, (utime + stime) / TICKS_PER_SECOND))
}
