//! Every Prometheus metric, with prometheus-client: the families each layer
//! counts in ([`ServingStats`], [`ComponentStats`], [`EventStats`])
//! registered once, and what
//! is read at scrape time (versions, instances in flight and queued, the
//! process's memory and CPU) refreshed in [`Metrics::encode`]. Served on the
//! admin listener's `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Prometheus;

use crate::components::snapshot::Snapshot;
use crate::components::stats::{ComponentLabels, ComponentStats};
use crate::events::stats::EventStats;
use crate::serving::stats::ServingStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// `current`, `canary` or `previous`.
    pub role: &'static str,
}

/// Read from the served snapshot and the process at each scrape.
#[derive(Default)]
struct ScrapeTime {
    info: Family<InfoLabels, Gauge>,
    in_flight: Family<ComponentLabels, Gauge>,
    queued: Family<ComponentLabels, Gauge>,
    resident_memory: Gauge,
    cpu_seconds: Gauge<f64, AtomicU64>,
}

impl ScrapeTime {
    fn register(&self, p: &mut Prometheus) {
        p.register("component_info", "The versions each component has", self.info.clone());
        p.register(
            "instances_in_flight",
            "Component instances running now",
            self.in_flight.clone(),
        );
        p.register(
            "requests_queued",
            "Requests waiting for an instance slot now",
            self.queued.clone(),
        );
        p.register(
            "process_resident_memory_bytes",
            "Resident memory of the host process",
            self.resident_memory.clone(),
        );
        p.register(
            "process_cpu_seconds",
            "CPU time used by the host process",
            self.cpu_seconds.clone(),
        );
    }
}

/// Every metric the host keeps.
pub struct Metrics {
    prometheus: Prometheus,
    pub serving: Arc<ServingStats>,
    pub components: Arc<ComponentStats>,
    pub events: Arc<EventStats>,
    scrape: ScrapeTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut prometheus = Prometheus::with_prefix("corral");
        let (serving, components, events, scrape) = (
            Arc::new(ServingStats::default()),
            Arc::new(ComponentStats::default()),
            Arc::new(EventStats::default()),
            ScrapeTime::default(),
        );
        serving.register(&mut prometheus);
        components.register(&mut prometheus);
        events.register(&mut prometheus);
        scrape.register(&mut prometheus);
        Metrics {
            prometheus,
            serving,
            components,
            events,
            scrape,
        }
    }

    /// The Prometheus text format, with what is read at scrape time
    /// refreshed from `snapshot` and the process.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        self.scrape.info.clear();
        self.scrape.in_flight.clear();
        self.scrape.queued.clear();
        for entry in &snapshot.entries {
            let name = &entry.name;
            let info = |version: &Arc<str>, role| {
                self.scrape
                    .info
                    .get_or_create(&InfoLabels {
                        name: Arc::clone(name),
                        version: Arc::clone(version),
                        role,
                    })
                    .set(1);
            };
            info(&entry.current().short, "current");
            if let Some(canary) = &entry.versions.canary {
                info(&canary.version.short, "canary");
            }
            if let Some(previous) = &entry.versions.previous {
                info(&previous.short, "previous");
            }
            let labels = ComponentLabels {
                component: Arc::clone(name),
            };
            self.scrape
                .in_flight
                .get_or_create(&labels)
                .set(entry.shared.gate.in_flight() as i64);
            self.scrape
                .queued
                .get_or_create(&labels)
                .set(entry.shared.gate.waiting() as i64);
        }
        if let Some((rss, cpu)) = process_usage() {
            self.scrape.resident_memory.set(rss as i64);
            self.scrape.cpu_seconds.set(cpu);
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
