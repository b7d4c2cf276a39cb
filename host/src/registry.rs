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
use crate::limits::ComponentLimits;
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
    /// Shared by every version of the component.
    pub db: Arc<Database>,
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
    /// One per component name, kept across versions.
    databases: Mutex<HashMap<String, Arc<Database>>>,
    current: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new(engine: Engine, data_dir: PathBuf) -> anyhow::Result<Registry> {
        let linker = crate::engine::linker(&engine)?;
        Ok(Registry {
            engine,
            linker,
            data_dir,
            databases: Mutex::new(HashMap::new()),
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
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!("cannot create the data folder {}", self.data_dir.display())
        })?;
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
        let pre = self.compile(wasm.clone(), &config.wasm).await?;
        let version: Arc<str> = hex(&Sha256::digest(&wasm)).into();
        let limits = ComponentLimits::default();
        let db = self.database(&config.name, &limits).await?;
        let component = LoadedComponent {
            name: config.name.as_str().into(),
            short_version: version[..12].into(),
            version,
            wasm_path: config.wasm.clone(),
            routes: config.routes.clone(),
            loaded_at: SystemTime::now(),
            limits,
            pre,
            db,
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
    pub async fn compile(
        &self,
        wasm: Vec<u8>,
        path: &Path,
    ) -> anyhow::Result<ServicePre<RequestState>> {
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

    async fn database(
        &self,
        name: &str,
        limits: &ComponentLimits,
    ) -> anyhow::Result<Arc<Database>> {
        if let Some(db) = self.databases.lock().expect("databases lock").get(name) {
            return Ok(Arc::clone(db));
        }
        let path = self.data_dir.join(format!("{name}.sqlite3"));
        let db_limits = limits.db.clone();
        let db = tokio::task::spawn_blocking(move || Database::open(path, db_limits)).await??;
        let mut databases = self.databases.lock().expect("databases lock");
        Ok(Arc::clone(databases.entry(name.to_string()).or_insert(db)))
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
