//! corral serves HTTP microservices as sandboxed WebAssembly components.
//!
//! Modules in reading order:
//! - [`config`]: the TOML file, validated into a [`config::Config`].
//! - [`engine`]: the wasmtime engine, pooling allocator, epoch ticker, linker.
//! - [`bindings`]: host-side types and traits generated from `wit/`.
//! - [`sqlite`]: each component's private database (`corral:service/sqlite`).
//! - [`guest_log`]: guest logs and stdout/stderr into the host log.
//! - [`limits`]: what one component may use.
//! - [`invoke`]: one call into a component in a fresh store.
//! - [`registry`]: loaded components, published as an atomic snapshot.
//! - [`router`]: which component owns a path.
//! - [`gateway`]: one public HTTP request, from route to response.
//! - [`problem`]: problem+json error responses.
//! - [`server`]: the accept loop and graceful shutdown.

pub mod bindings;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod guest_log;
pub mod invoke;
pub mod limits;
pub mod problem;
pub mod registry;
pub mod router;
pub mod server;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::{EngineSettings, EpochTicker};
use crate::gateway::Gateway;
use crate::registry::Registry;
use crate::server::ServerSettings;

/// Builds the engine and the registry the config describes, compiling every
/// component without running any.
pub fn registry(config: &Config) -> anyhow::Result<Registry> {
    let limits = limits::ComponentLimits::default();
    let engine = engine::build(&EngineSettings {
        max_instances: 1000,
        max_memory_bytes: limits.memory_bytes,
        cache_dir: config.cache_dir.clone(),
    })?;
    Registry::new(engine, config.data_dir.clone())
}

/// Loads the components of `config` and serves them on `listener` until
/// `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let registry = Arc::new(registry(&config)?);
    let _ticker = EpochTicker::start(registry.engine());
    registry.load_all(&config).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let gateway = Arc::new(Gateway { registry });
    server::run(listener, gateway, ServerSettings::default(), shutdown).await;
    Ok(())
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
