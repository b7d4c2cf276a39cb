//! The database as a [`Capability`]: each component gets its own file under
//! `data_dir`, kept across versions and reopened only when its limits
//! change; each store gets a [`SqliteCtx`] on it; statements are counted
//! and timed per component.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Prometheus;
use wasmtime::component::{HasSelf, Linker};

use super::{Database, DbLimits, SqliteCtx, SqliteStats, wit};
use crate::capabilities::{Call, Capability, ComponentLabels, Host, StoreData};
use crate::config::ComponentConfig;

/// `corral:service/sqlite`.
pub struct Sqlite;

/// A component's database and where its statements are counted.
pub struct ComponentDb {
    pub db: Arc<Database>,
    stats: SqliteStats,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SqliteLabels {
    pub component: Arc<str>,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    statements: Family<SqliteLabels, Counter>,
    duration: Family<ComponentLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        // 5 µs to about 1.3 s.
        let histogram = || Histogram::new(exponential_buckets(0.000_005, 2.0, 19));
        Metrics {
            statements: Family::default(),
            duration: Family::new_with_constructor(histogram),
        }
    }
}

impl Metrics {
    /// The statement metrics of one component, for its database handle.
    pub fn of(&self, component: &Arc<str>) -> SqliteStats {
        let outcome = |outcome| SqliteLabels {
            component: Arc::clone(component),
            outcome,
        };
        SqliteStats {
            ok: self.statements.get_or_create_owned(&outcome("ok")),
            failed: self.statements.get_or_create_owned(&outcome("error")),
            duration: self.duration.get_or_create_owned(&ComponentLabels {
                component: Arc::clone(component),
            }),
        }
    }
}

impl Capability for Sqlite {
    type Component = ComponentDb;
    type Instance = SqliteCtx;
    type Metrics = Metrics;

    fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<SqliteCtx>>(linker, |data| &mut data.capabilities().0.sqlite)
    }

    async fn configure(
        host: &Host,
        metrics: &Metrics,
        config: &ComponentConfig,
        previous: Option<&Arc<ComponentDb>>,
        created: &mut Vec<PathBuf>,
    ) -> anyhow::Result<Arc<ComponentDb>> {
        let limits = DbLimits::from(&config.limits);
        if let Some(previous) = previous
            && previous.db.limits == limits
        {
            return Ok(Arc::clone(previous));
        }
        let path = host.data_dir.join(format!("{}.sqlite3", config.name));
        if !path.exists() {
            created.push(path.clone());
        }
        let threads = Arc::clone(&host.sql_threads);
        let relay = Arc::clone(&host.relay);
        let db = tokio::task::spawn_blocking(move || Database::open(path, limits, threads, relay)).await??;
        let name: Arc<str> = config.name.as_str().into();
        Ok(Arc::new(ComponentDb {
            db,
            stats: metrics.of(&name),
        }))
    }

    fn prepare(component: &Arc<ComponentDb>, _call: &Call<'_>) -> SqliteCtx {
        SqliteCtx::new(Arc::clone(&component.db), component.stats.clone())
    }

    fn register(metrics: &Metrics, prometheus: &mut Prometheus) {
        prometheus.register(
            "sqlite_statements",
            "SQL statements run by components, by outcome",
            metrics.statements.clone(),
        );
        prometheus.register(
            "sqlite_statement_duration_seconds",
            "Time of one SQL statement as the guest sees it",
            metrics.duration.clone(),
        );
    }
}
