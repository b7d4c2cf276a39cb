//! corral serves HTTP microservices as sandboxed WebAssembly components.
//!
//! Layers, in reading order; each uses only those before it, and all
//! [`clock`] and [`telemetry`] (spans exported, trace context in headers):
//! - [`config`]: the TOML file, validated into a [`config::Config`], and the
//!   types of every setting.
//! - [`limits`]: where limits live, enforced: store growth, the concurrency
//!   gate, rate limits.
//! - [`capabilities`]: what guests import (their database, log, events and
//!   outgoing HTTP), each behind one trait, composed in one list.
//! - [`wasm`]: the engine, the store of one call, and one call into a
//!   component. Knows nothing of HTTP.
//! - [`components`]: versions, the served snapshot, changes all at once,
//!   calls between components, the operator's reloads.
//! - [`events`]: durable messages between components: the relay from
//!   outboxes to the log, and the dispatcher to subscribers.
//! - [`cluster`]: many hosts as one, on NATS JetStream: versions every host
//!   converges to, and which host owns each database.
//! - [`serving`]: the public listener and one request from arrival to
//!   response.
//! - [`ops`]: the admin API (its routes and answers as types, and the
//!   OpenAPI document made from them), its CLI client, metrics.
//!
//! This file starts it all: [`run`] and [`check`].

pub mod capabilities;
pub mod clock;
pub mod cluster;
pub mod components;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod ops;
pub mod serving;
pub mod telemetry;
pub mod wasm;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::capabilities::sqlite::{self, SqlThreads};
use crate::cluster::Cluster;
use crate::components::control::Control;
use crate::components::interfaces;
use crate::components::oci::Registries;
use crate::components::registry::Registry;
use crate::components::stats::ComponentStats;
use crate::components::version::digest;
use crate::config::{Config, Overrides, TrustedProxies};
use crate::limits::shared::SharedLimits;
use crate::ops::admin::Admin;
use crate::ops::metrics::Metrics;
use crate::serving::body::BodyPace;
use crate::serving::calls::Elsewhere;
use crate::serving::forward::Forwarder;
use crate::serving::gateway::{Gateway, Internal};
use crate::wasm::engine::{self, EngineSettings, EpochTicker};

/// The event log's file under `data_dir`; no component name starts with `_`.
const EVENT_LOG_FILE: &str = "_corral_events.sqlite3";

/// How often rate limiters forget idle clients.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);
/// How long a host of a cluster waits to join it at start before it serves
/// what needs no owner, and joins once NATS answers.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Builds the engine and the (empty) registry the config describes; the
/// databases it opens wake `relay` when they publish.
pub fn registry(config: &Config, stats: Arc<ComponentStats>, relay: Arc<Notify>) -> anyhow::Result<Registry> {
    let settings = &config.server.settings;
    let engine = engine::build(&EngineSettings {
        max_instances: u32::try_from(settings.max_instances).unwrap_or(u32::MAX),
        cache_dir: config.cache_dir.clone(),
    })?;
    sqlite::limit_heap(settings.sqlite_heap_bytes as u64)?;
    Registry::new(
        engine,
        config.data_dir.clone(),
        settings.max_rate_limit_clients,
        SqlThreads::start(settings.sql_threads)?,
        relay,
        stats,
        Arc::new(Registries::new(config.registries.clone())),
    )
}

/// The sockets the host serves.
pub struct Listeners {
    pub public: TcpListener,
    /// Present when the config has an `[admin]` section.
    pub admin: Option<TcpListener>,
}

/// Serves the admin API at once (so `/readyz` can say "not yet"), loads the
/// components of `config`, then serves them until `shutdown` resolves;
/// then stops accepting, lets requests in flight finish, and closes the
/// databases. SIGHUP reloads the config file.
pub async fn run(
    config: Config,
    overrides: Overrides,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let relay_wake = Arc::new(Notify::new());
    let registry = Arc::new(registry(
        &config,
        Arc::clone(&metrics.components),
        Arc::clone(&relay_wake),
    )?);
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", config.source.display());
    }
    std::fs::create_dir_all(&config.data_dir)?;
    ops::backup::sweep(&config.data_dir);
    let (log, cluster_events) = event_log(&config, &registry).await?;
    let _ticker = EpochTicker::start(registry.engine());
    let control = Arc::new(Control::new(Arc::clone(&registry), config.clone(), overrides));
    let (stop, stopped) = watch::channel(false);
    let cluster: Arc<OnceLock<Arc<Cluster>>> = Arc::default();

    let mut background = Vec::new();
    if let Some(listener) = listeners.admin {
        background.push(serve_admin(
            &config,
            listener,
            &control,
            &cluster,
            &metrics,
            &log,
            until(&stopped),
        )?);
    }
    // Why the host stops on its own: its cluster refused it after it
    // started serving.
    let failed: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let fail = Arc::new(Notify::new());
    // The cluster's tasks, once it joins.
    let cluster_tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let started = async {
        registry.load_all(&config).await?;
        if let Some(settings) = &config.cluster {
            let public = listeners.public.local_addr()?;
            // What has a database waits for the cluster to say who owns it.
            registry.placement.wait_for_cluster("it is joining".into());
            let events = cluster_events.clone().expect("a cluster has its event log");
            let joining = join(&config, settings, public, &registry, &events, &cluster, &cluster_tasks);
            let mut joining = tokio::spawn(joining);
            match tokio::time::timeout(JOIN_WAIT, &mut joining).await {
                Ok(joined) => joined??,
                Err(_) => {
                    let why = format!("NATS at {} does not answer", settings.nats.join(", "));
                    tracing::warn!("{why}: serving what has no database until this host joins");
                    registry.placement.still_waiting(why);
                    let (failed, fail) = (Arc::clone(&failed), Arc::clone(&fail));
                    background.push(tokio::spawn(async move {
                        // Aborted with the other background tasks, it stops the join too.
                        let _abort = AbortOnDrop(joining.abort_handle());
                        let error = match (&mut joining).await {
                            Ok(Ok(())) => return,
                            Ok(Err(e)) => e,
                            Err(e) => anyhow::anyhow!("joining the cluster stopped: {e}"),
                        };
                        *failed.lock().expect("failure lock") = Some(error);
                        fail.notify_one();
                    }));
                }
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = started.await {
        let _ = stop.send(true);
        return Err(e);
    }
    background.extend(start_events(&registry, &metrics, log, relay_wake));
    background.push(tokio::spawn(evict_idle_clients(Arc::clone(&registry))));
    background.push(tokio::spawn(Arc::clone(&control).watch()));
    background.push(tokio::spawn(reload_on_hangup(Arc::clone(&control))));

    let shared_limits = match &config.server.rate_limit_store {
        Some(store) => {
            let limits = SharedLimits::new(&store.url, config.server.settings.max_rate_limit_clients)?;
            Some(Arc::new(limits))
        }
        None => None,
    };
    if let Some(limits) = &shared_limits {
        background.push(tokio::spawn(evict_idle_fallbacks(Arc::clone(limits))));
    }
    let gateway = Gateway {
        registry: Arc::clone(&registry),
        trusted_proxies: config.server.trusted_proxies.clone(),
        stats: Arc::clone(&metrics.serving),
        body_pace: body_pace(&config),
        cluster: config
            .cluster
            .is_some()
            .then(|| (Arc::clone(&cluster), Forwarder::default())),
        shared_limits,
    };
    let stopping = async {
        tokio::select! {
            () = shutdown => {}
            () = fail.notified() => {}
        }
    };
    serve_public(&config, listeners.public, gateway, &metrics, stopping).await?;
    let _ = stop.send(true);
    let cluster_tasks = std::mem::take(&mut *cluster_tasks.lock().expect("cluster tasks lock"));
    for task in background.into_iter().chain(cluster_tasks) {
        task.abort();
        let _ = task.await;
    }
    if let Some(cluster) = cluster.get() {
        cluster.leave().await;
    }
    drop(cluster);
    if let Some(error) = failed.lock().expect("failure lock").take() {
        close(registry);
        return Err(error);
    }
    drop(control);
    close(registry);
    Ok(())
}

/// Joins the cluster (waiting for NATS as long as it takes, and trying
/// again after errors that may pass, such as JetStream not answering yet),
/// then makes the cluster known to the admin API and the gateway, and what
/// waited for it placed. Fails only when the cluster refuses this host.
fn join(
    config: &Config,
    settings: &crate::config::cluster::ClusterConfig,
    public: std::net::SocketAddr,
    registry: &Arc<Registry>,
    events: &Arc<cluster::events::StreamEvents>,
    cluster: &Arc<OnceLock<Arc<Cluster>>>,
    tasks: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) -> impl Future<Output = anyhow::Result<()>> + use<> {
    let (config, settings, registry, events, cluster, tasks) = (
        config.clone(),
        settings.clone(),
        Arc::clone(registry),
        Arc::clone(events),
        Arc::clone(cluster),
        Arc::clone(tasks),
    );
    async move {
        let mut pause = Duration::from_millis(500);
        let (joined, started) = loop {
            match Cluster::join(&config, &settings, public, Arc::clone(&registry), &events).await {
                Ok(joined) => break joined,
                Err(e) if e.downcast_ref::<cluster::JoinRefused>().is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!("cannot join the cluster yet, trying again in {pause:?}: {e:#}");
                    registry.placement.still_waiting(format!("{e:#}"));
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        };
        tasks.lock().expect("cluster tasks lock").extend(started);
        let _ = cluster.set(joined);
        registry.placement.joined();
        Ok(())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The event log: the embedded one on one host; in a cluster, the
/// cluster's on JetStream (see `cluster::events`), also returned to be
/// joined. A host that joins a cluster with deliveries left in its
/// embedded log says so: they wait there.
async fn event_log(
    config: &Config,
    registry: &Registry,
) -> anyhow::Result<(Arc<dyn events::EventLog>, Option<Arc<cluster::events::StreamEvents>>)> {
    let path = config.data_dir.join(EVENT_LOG_FILE);
    let threads = Arc::clone(registry.sql_threads());
    if config.cluster.is_none() {
        return Ok((Arc::new(events::SqliteLog::open(&path, threads)?), None));
    }
    if path.exists() {
        use events::EventLog;
        let local = events::SqliteLog::open(&path, threads)?;
        let waiting: u64 = local
            .backlogs()
            .await?
            .iter()
            .map(|b| b.ready + b.in_flight + b.dead)
            .sum();
        if waiting > 0 {
            tracing::warn!(
                deliveries = waiting,
                file = %path.display(),
                "deliveries from before this host was in a cluster wait in its own event log: \
                 start it once without [cluster] to deliver them"
            );
        }
    }
    let joined = Arc::new(cluster::events::StreamEvents::default());
    Ok((Arc::clone(&joined) as Arc<dyn events::EventLog>, Some(joined)))
}

/// The relay and dispatcher tasks of events.
fn start_events(
    registry: &Arc<Registry>,
    metrics: &Metrics,
    log: Arc<dyn events::EventLog>,
    relay_wake: Arc<Notify>,
) -> Vec<JoinHandle<()>> {
    let dispatch_wake = Arc::new(Notify::new());
    vec![
        tokio::spawn(events::relay::run(
            Arc::clone(registry),
            Arc::clone(&log),
            relay_wake,
            Arc::clone(&dispatch_wake),
            Arc::clone(&metrics.events),
        )),
        tokio::spawn(events::dispatch::run(
            Arc::clone(registry),
            log,
            dispatch_wake,
            Arc::clone(&metrics.events),
        )),
    ]
}

/// Resolves once `stopped` says so.
fn until(stopped: &watch::Receiver<bool>) -> impl Future<Output = ()> + use<> {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }
}

fn body_pace(config: &Config) -> BodyPace {
    BodyPace {
        timeout: config.server.settings.body_timeout,
        min_bytes_per_sec: config.server.settings.body_min_bytes_per_sec as u64,
    }
}

/// Starts the admin listener, with its token.
fn serve_admin(
    config: &Config,
    listener: TcpListener,
    control: &Arc<Control>,
    cluster: &Arc<OnceLock<Arc<Cluster>>>,
    metrics: &Arc<Metrics>,
    log: &Arc<dyn events::EventLog>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let admin = config
        .admin
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("an admin listener without an [admin] section"))?;
    if admin.allow_remote && !admin.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %admin.listen,
            "the admin API is reachable from other machines (allow_remote = true): \
             anyone with the token can replace every component"
        );
    }
    let token = config::tokens::resolve_token(&admin.token, config::tokens::TokenFile::Create)?;
    tracing::info!("admin listening on http://{}", listener.local_addr()?);
    let handler = Arc::new(Admin::new(
        Arc::clone(control),
        config.cluster.is_some().then(|| Arc::clone(cluster)),
        Arc::clone(metrics),
        Arc::clone(log),
        token,
        admin.max_upload_bytes,
        body_pace(config),
    ));
    Ok(tokio::spawn(serving::server::run(
        listener,
        handler,
        config.server.settings.clone(),
        TrustedProxies::default(),
        metrics.serving.connections("admin"),
        stopped,
    )))
}

/// Serves the components until `shutdown` (or the listener fails), then
/// drains the connections.
async fn serve_public(
    config: &Config,
    listener: TcpListener,
    gateway: Gateway,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Counted from before it is announced, so whoever reads the metrics
    // once it is finds the gauge there.
    let open_connections = metrics.serving.connections("public");
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let gateway = Arc::new(gateway);
    gateway
        .registry
        .serve_internal(Arc::new(Internal(Arc::downgrade(&gateway))));
    gateway
        .registry
        .call_elsewhere(Arc::new(Elsewhere(Arc::downgrade(&gateway))));
    let (stop_public, public_stopped) = tokio::sync::oneshot::channel::<()>();
    let public = serving::server::run(
        listener,
        gateway,
        config.server.settings.clone(),
        config.server.trusted_proxies.clone(),
        open_connections,
        async move {
            let _ = public_stopped.await;
        },
    );
    tokio::pin!(public);
    tokio::select! {
        () = shutdown => {}
        () = &mut public => return Ok(()),
    }
    let _ = stop_public.send(());
    public.await;
    Ok(())
}

/// Drops the last reference to the registry, which closes every database
/// and so checkpoints its WAL into the main file.
fn close(registry: Arc<Registry>) {
    match Arc::try_unwrap(registry) {
        Ok(registry) => {
            drop(registry);
            tracing::info!("databases closed");
        }
        Err(_) => tracing::warn!("requests still running at exit; their databases close with the process"),
    }
}

/// SIGHUP reloads the config file, as `POST /reload` does.
async fn reload_on_hangup(control: Arc<Control>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    while hangups.recv().await.is_some() {
        match control.reload().await {
            Ok(reloaded) => tracing::info!(components = reloaded.components.len(), "SIGHUP: reloaded the config"),
            Err(e) => tracing::warn!("SIGHUP: the config was not reloaded: {e}"),
        }
    }
}

/// Keeps rate limiter memory bounded: clients whose buckets are full again
/// are forgotten.
async fn evict_idle_clients(registry: Arc<Registry>) {
    let mut every = tokio::time::interval(EVICTION_INTERVAL);
    loop {
        every.tick().await;
        for entry in &registry.snapshot().entries {
            entry.shared.rate_limits.evict_idle();
        }
    }
}

/// Keeps the local stand-ins of shared rate limits bounded.
async fn evict_idle_fallbacks(limits: Arc<SharedLimits>) {
    let mut every = tokio::time::interval(EVICTION_INTERVAL);
    loop {
        every.tick().await;
        limits.evict_idle();
    }
}

/// The host interfaces a component imports, for `corral check`, by
/// package: `wasi:io@0.2.6 {poll, error, streams}`.
fn imports_list(imports: &[String]) -> String {
    if imports.is_empty() {
        return "nothing from the host".to_string();
    }
    let mut packages: indexmap::IndexMap<String, Vec<&str>> = indexmap::IndexMap::new();
    for import in imports {
        let (path, version) = import.split_once('@').unwrap_or((import, ""));
        let (package, interface) = path.split_once('/').unwrap_or((path, path));
        let key = if version.is_empty() {
            package.to_string()
        } else {
            format!("{package}@{version}")
        };
        packages.entry(key).or_default().push(interface);
    }
    let groups: Vec<String> = packages
        .iter()
        .map(|(package, names)| format!("{package} {{{}}}", names.join(", ")))
        .collect();
    groups.join(", ")
}

/// Validates the components of `config`: each is a component that compiles
/// and links, and every interface one imports from another has a provider
/// with matching types. Nothing runs and no database is touched.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let registry = registry(config, Arc::new(ComponentStats::default()), Arc::default())?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    let mut failures = Vec::new();
    let mut compiled = Vec::new();
    for component in &config.components {
        let (wasm, _) = registry.read(&component.wasm).await?;
        let short = digest(&wasm)[..12].to_string();
        match registry.compiler().compile(&component.name, wasm).await {
            Ok(version) => {
                println!(
                    "{}: {} ({}), imports {}",
                    component.name,
                    short,
                    version.entrypoint.world(),
                    imports_list(&version.host_imports)
                );
                compiled.push((component, short, version.peers));
            }
            Err(e) => failures.push(format!(
                "{}: {} is not a component corral can serve: {e:#}",
                component.name, component.wasm
            )),
        }
    }
    let nodes: Vec<interfaces::Node<'_>> = compiled
        .iter()
        .map(|(component, short, peers)| interfaces::Node {
            name: &component.name,
            named: &component.imports,
            versions: vec![(short.as_str(), peers)],
        })
        .collect();
    if let Err(problems) = interfaces::resolve(&nodes) {
        failures.extend(problems);
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
