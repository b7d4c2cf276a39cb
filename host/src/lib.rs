//! corral serves HTTP microservices as sandboxed WebAssembly components.
//!
//! Modules in reading order:
//! - [`config`]: the TOML file, validated into a [`config::Config`].
//! - [`engine`]: the wasmtime engine, pooling allocator, epoch ticker, linker.
//! - [`bindings`]: host-side types and traits generated from `wit/`.
//! - [`sqlite`]: each component's private database (`corral:service/sqlite`).
//! - [`guest_log`]: guest logs and stdout/stderr into the host log.
//! - [`limits`]: what one component may use, and how many may run at once.
//! - [`invoke`]: one call into a component in a fresh store.
//! - [`peers`]: calls between components, for any interface.
//! - [`registry`]: components and their versions, published as an atomic snapshot.
//! - [`versions`]: versions installed by changes, kept across restarts.
//! - [`router`]: which component owns a path; route patterns.
//! - [`client`]: the client's address, behind trusted proxies too.
//! - [`ratelimit`]: request rates per client, with governor.
//! - [`gateway`]: one public HTTP request, from route to response.
//! - [`problem`]: problem+json error responses.
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: the accept loop and graceful shutdown.
//! - [`control`]: reloading the config (admin API, SIGHUP) and watched files.
//! - [`admin`]: the admin listener: status, swaps, canaries, rollbacks, reloads.
//! - [`remote`]: the admin API's client, for the CLI.

pub mod admin;
pub mod bindings;
pub mod client;
pub mod config;
pub mod control;
pub mod engine;
pub mod gateway;
pub mod guest_log;
pub mod invoke;
pub mod limits;
pub mod metrics;
pub mod peers;
pub mod problem;
pub mod random;
pub mod ratelimit;
pub mod registry;
pub mod remote;
pub mod router;
pub mod server;
pub mod sqlite;
pub mod versions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::client::TrustedProxies;
use crate::config::{Config, Overrides};
use crate::control::Control;
use crate::engine::{EngineSettings, EpochTicker};
use crate::gateway::Gateway;
use crate::metrics::{ListenerLabels, Metrics};
use crate::registry::Registry;

/// How often rate limiters forget idle clients.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

/// Builds the engine and the (empty) registry the config describes.
pub fn registry(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Registry> {
    let engine = engine::build(&EngineSettings {
        max_instances: config.server.max_instances,
        cache_dir: config.cache_dir.clone(),
    })?;
    sqlite::limit_heap(config.server.sqlite_heap_bytes)?;
    Registry::new(
        engine,
        config.data_dir.clone(),
        config.server.max_rate_limit_clients,
        sqlite::SqlThreads::start(config.server.sql_threads)?,
        metrics,
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
    let registry = Arc::new(registry(&config, Arc::clone(&metrics))?);
    let _ticker = EpochTicker::start(registry.engine());
    let settings = config.server.settings.clone();
    let body_pace = gateway::BodyPace {
        timeout: settings.body_timeout,
        min_bytes_per_sec: settings.body_min_bytes_per_sec,
    };
    let trusted_proxies = config.server.trusted_proxies.clone();
    let admin = match (&config.admin, listeners.admin) {
        (Some(admin), Some(listener)) => {
            if admin.allow_remote && !admin.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %admin.listen,
                    "the admin API is reachable from other machines (allow_remote = true): \
                     anyone with the token can replace every component"
                );
            }
            let token = admin::resolve_token(&admin.token, admin::TokenFile::Create)?;
            Some((token, admin.max_upload_bytes, listener))
        }
        _ => None,
    };
    let control = Arc::new(Control::new(Arc::clone(&registry), config.clone(), overrides));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut background = Vec::new();
    if let Some((token, max_upload_bytes, listener)) = admin {
        tracing::info!("admin listening on http://{}", listener.local_addr()?);
        let handler = Arc::new(Admin::new(
            Arc::clone(&control),
            Arc::clone(&metrics),
            token,
            max_upload_bytes,
            body_pace,
        ));
        let connections = metrics
            .open_connections
            .get_or_create_owned(&ListenerLabels { listener: "admin" });
        background.push(tokio::spawn(server::run(
            listener,
            handler,
            settings.clone(),
            TrustedProxies::default(),
            connections,
            until_stopped(),
        )));
    }
    let loaded = registry.load_all(&config).await;
    if let Err(e) = loaded {
        let _ = stop.send(true);
        return Err(e);
    }
    background.push(tokio::spawn(evict_idle_clients(Arc::clone(&registry))));
    background.push(tokio::spawn(Arc::clone(&control).watch()));
    background.push(tokio::spawn(reload_on_hangup(Arc::clone(&control))));

    tracing::info!("listening on http://{}", listeners.public.local_addr()?);
    let gateway = Arc::new(Gateway {
        registry: Arc::clone(&registry),
        trusted_proxies: trusted_proxies.clone(),
        metrics: Arc::clone(&metrics),
        body_pace,
    });
    let connections = metrics
        .open_connections
        .get_or_create_owned(&ListenerLabels { listener: "public" });
    let public = server::run(
        listeners.public,
        gateway,
        settings,
        trusted_proxies,
        connections,
        until_stopped(),
    );
    tokio::pin!(public);
    tokio::select! {
        () = shutdown => {}
        () = &mut public => {}
    }
    let _ = stop.send(true);
    public.await;
    for task in background {
        task.abort();
        let _ = task.await;
    }
    drop(control);
    // The last reference closes every database, which checkpoints its WAL
    // into the main file.
    match Arc::try_unwrap(registry) {
        Ok(registry) => {
            drop(registry);
            tracing::info!("databases closed");
        }
        Err(_) => tracing::warn!("requests still running at exit; their databases close with the process"),
    }
    Ok(())
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

/// Validates the components of `config`: each is a component that compiles
/// and links, and every interface one imports from another has a provider
/// with matching types. Nothing runs and no database is touched.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let registry = registry(config, Arc::new(Metrics::new()))?;
    let mut failures = Vec::new();
    let mut compiled = Vec::new();
    for component in &config.components {
        let wasm = std::fs::read(&component.wasm)?;
        let short = registry::digest(&wasm)[..12].to_string();
        match registry.compile(&component.name, wasm).await {
            Ok((_, peers)) => compiled.push((component, short, peers)),
            Err(e) => failures.push(format!(
                "{}: {} is not a component corral can serve: {e:#}",
                component.name,
                component.wasm.display()
            )),
        }
    }
    let nodes: Vec<peers::Node<'_>> = compiled
        .iter()
        .map(|(component, short, peers)| peers::Node {
            name: &component.name,
            named: &component.imports,
            versions: vec![(short.as_str(), peers)],
        })
        .collect();
    if let Err(problems) = peers::resolve(&nodes) {
        failures.extend(problems);
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
