//! The loaded components: each version compiled, linked, pre-instantiated and
//! initialized once, and the set of them published as one [`Snapshot`] that
//! requests read without locks and that is replaced atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::ServicePre;
use crate::config::{ComponentConfig, Config};
use crate::invoke::{self, RequestState};
use crate::limits::{ComponentLimits, ConcurrencyGate};
use crate::ratelimit::{RateLimitConfig, RateLimits};
use crate::router::Router;
use crate::sqlite::Database;

/// One version of one component, ready to serve.
pub struct LoadedComponent {
    pub name: Arc<str>,
    /// The sha256 of the `.wasm`, in hex.
    pub version: Arc<str>,
    /// The first 12 hex digits of `version`, for logs and headers.
    pub short_version: Arc<str>,
    pub wasm_path: PathBuf,
    pub routes: Vec<String>,
    pub loaded_at: SystemTime,
    pub limits: ComponentLimits,
    pub pre: ServicePre<RequestState>,
    pub shared: Arc<ComponentShared>,
}

/// What every version of a component shares: its database, its concurrency
/// gate and its rate limiters, so a new version starts with the old one's
/// in-flight count and clients' buckets.
pub struct ComponentShared {
    pub db: Arc<Database>,
    pub gate: ConcurrencyGate,
    pub rate_limits: RateLimits,
    /// What the above were built from, to tell whether a new config changes them.
    limits: ComponentLimits,
    rate_config: RateLimitConfig,
}

/// The components being served, and the router to them.
#[derive(Default)]
pub struct Snapshot {
    pub components: Vec<Arc<LoadedComponent>>,
    router: Router,
}

impl Snapshot {
    pub fn new(components: Vec<Arc<LoadedComponent>>) -> Self {
        let router = Router::new(
            components
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.routes.iter().map(move |r| (r.clone(), i))),
        );
        Snapshot { components, router }
    }

    /// The component that owns `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<LoadedComponent>> {
        self.router.lookup(path).map(|i| &self.components[i])
    }
}

/// Compiles and loads components, and holds the current [`Snapshot`].
pub struct Registry {
    engine: Engine,
    linker: Linker<RequestState>,
    data_dir: PathBuf,
    /// Client addresses one rate limit tracks.
    max_rate_limit_clients: usize,
    /// One per component name, kept across versions.
    shared: Mutex<HashMap<String, Arc<ComponentShared>>>,
    current: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new(engine: Engine, data_dir: PathBuf, max_rate_limit_clients: usize) -> anyhow::Result<Registry> {
        let linker = crate::engine::linker(&engine)?;
        Ok(Registry {
            engine,
            linker,
            data_dir,
            max_rate_limit_clients,
            shared: Mutex::new(HashMap::new()),
            current: ArcSwap::from_pointee(Snapshot::default()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What is being served right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Loads every component of `config` and publishes them together; fails
    /// with every component's problem if any cannot load.
    pub async fn load_all(&self, config: &Config) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create the data folder {}", self.data_dir.display()))?;
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        for component in &config.components {
            match self.load(component).await {
                Ok(c) => loaded.push(Arc::new(c)),
                Err(e) => failures.push(format!("{}: {e:#}", component.name)),
            }
        }
        if !failures.is_empty() {
            bail!("cannot load components:\n  {}", failures.join("\n  "));
        }
        self.current.store(Arc::new(Snapshot::new(loaded)));
        Ok(())
    }

    /// Compiles, links, opens the database of and initializes one component.
    pub async fn load(&self, config: &ComponentConfig) -> anyhow::Result<LoadedComponent> {
        let wasm = tokio::fs::read(&config.wasm)
            .await
            .with_context(|| format!("cannot read {}", config.wasm.display()))?;
        let version: Arc<str> = hex(&Sha256::digest(&wasm)).into();
        let pre = self.compile(wasm, &config.wasm).await?;
        let shared = self.shared(config).await?;
        let component = LoadedComponent {
            name: config.name.as_str().into(),
            short_version: version[..12].into(),
            version,
            wasm_path: config.wasm.clone(),
            routes: config.routes.clone(),
            loaded_at: SystemTime::now(),
            limits: config.limits.clone(),
            pre,
            shared,
        };
        invoke::init(&component).await.context("init failed")?;
        tracing::info!(
            component = %component.name,
            version = %component.short_version,
            routes = ?component.routes,
            "loaded"
        );
        Ok(component)
    }

    /// Checks that `wasm` is a component, compiles it off the async workers,
    /// and links it: every import satisfied, the service exports present.
    pub async fn compile(&self, wasm: Vec<u8>, path: &Path) -> anyhow::Result<ServicePre<RequestState>> {
        check_header(&wasm).with_context(|| format!("{} is not a component", path.display()))?;
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &wasm))
            .await?
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile {}", path.display()))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("cannot link the component: it imports something corral does not provide")?;
        ServicePre::new(instance_pre).map_err(anyhow::Error::from).context(
            "the component does not export the corral:service/handler and corral:service/lifecycle interfaces \
             (build it against wit/service.wit)",
        )
    }

    /// The shared parts of a component: kept from its previous version, or
    /// rebuilt where the config changed them. The database stays open
    /// unless its own limits change.
    async fn shared(&self, config: &ComponentConfig) -> anyhow::Result<Arc<ComponentShared>> {
        let previous = self.shared.lock().expect("shared lock").get(&config.name).cloned();
        if let Some(previous) = &previous
            && previous.limits == config.limits
            && previous.rate_config == config.rate_limits
        {
            return Ok(Arc::clone(previous));
        }
        let db = match &previous {
            Some(previous) if previous.limits.db == config.limits.db => Arc::clone(&previous.db),
            _ => {
                let path = self.data_dir.join(format!("{}.sqlite3", config.name));
                let db_limits = config.limits.db.clone();
                tokio::task::spawn_blocking(move || Database::open(path, db_limits)).await??
            }
        };
        let shared = Arc::new(ComponentShared {
            db,
            gate: ConcurrencyGate::new(&config.limits),
            rate_limits: RateLimits::new(&config.rate_limits, self.max_rate_limit_clients),
            limits: config.limits.clone(),
            rate_config: config.rate_limits.clone(),
        });
        self.shared
            .lock()
            .expect("shared lock")
            .insert(config.name.clone(), Arc::clone(&shared));
        Ok(shared)
    }
}

/// Tells a component from a core module or from anything else, because
/// wasmtime's own message for those is less direct.
fn check_header(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [1, 0];
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) && header[6..8] == COMPONENT_LAYER => Ok(()),
        Some(header) if header.starts_with(MAGIC) => {
            bail!("it is a core wasm module; build it for wasm32-wasip2 to get a component")
        }
        _ => bail!("it is not WebAssembly"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
