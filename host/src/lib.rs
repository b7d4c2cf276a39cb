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
//! - [`registry`]: loaded components, published as an atomic snapshot.
//! - [`router`]: which component owns a path; route patterns.
//! - [`client`]: the client's address, behind trusted proxies too.
//! - [`ratelimit`]: request rates per client, with governor.
//! - [`gateway`]: one public HTTP request, from route to response.
//! - [`problem`]: problem+json error responses.
//! - [`server`]: the accept loop and graceful shutdown.

pub mod bindings;
pub mod client;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod guest_log;
pub mod invoke;
pub mod limits;
pub mod problem;
pub mod ratelimit;
pub mod registry;
pub mod router;
pub mod server;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::{EngineSettings, EpochTicker};
use crate::gateway::Gateway;
use crate::registry::Registry;

/// How often rate limiters forget idle clients.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

/// Builds the engine and the (empty) registry the config describes.
pub fn registry(config: &Config) -> anyhow::Result<Registry> {
    let engine = engine::build(&EngineSettings {
        max_instances: config.server.max_instances,
        cache_dir: config.cache_dir.clone(),
    })?;
    Registry::new(engine, config.data_dir.clone(), config.server.max_rate_limit_clients)
}

/// Loads the components of `config` and serves them on `listener` until
/// `shutdown` resolves; then lets requests in flight finish and closes the
/// databases.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let registry = Arc::new(registry(&config)?);
    let _ticker = EpochTicker::start(registry.engine());
    registry.load_all(&config).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let eviction = tokio::spawn(evict_idle_clients(Arc::clone(&registry)));
    let gateway = Gateway {
        registry: Arc::clone(&registry),
        trusted_proxies: config.server.trusted_proxies.clone(),
    };
    server::run(listener, Arc::new(gateway), config.server.settings.clone(), shutdown).await;
    eviction.abort();
    let _ = eviction.await;
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

/// Keeps rate limiter memory bounded: clients whose buckets are full again
/// are forgotten.
async fn evict_idle_clients(registry: Arc<Registry>) {
    let mut every = tokio::time::interval(EVICTION_INTERVAL);
    loop {
        every.tick().await;
        for component in &registry.snapshot().components {
            component.shared.rate_limits.evict_idle();
        }
    }
}

/// Validates the components of `config`: each is a component that compiles
/// and links. Nothing runs and no database is touched.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let registry = registry(config)?;
    let mut failures = Vec::new();
    for component in &config.components {
        let wasm = std::fs::read(&component.wasm)?;
        if let Err(e) = registry.compile(wasm, &component.wasm).await {
            failures.push(format!("{}: {e:#}", component.name));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
