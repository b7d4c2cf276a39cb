//! The components being served. Each version of a component's code is
//! compiled, linked, pre-instantiated and initialized once ([`Version`]); the
//! set of components ([`Entry`] each, with its current, previous and canary
//! versions) is published as one immutable [`Snapshot`] that requests read
//! without locks and that every change replaces atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::ServicePre;
use crate::config::{ComponentConfig, Config};
use crate::invoke::{self, RequestState, Target};
use crate::limits::{ComponentLimits, ConcurrencyGate};
use crate::metrics::Metrics;
use crate::peers::{Dispatch, PeerInterfaces, PeerTable};
use crate::ratelimit::{RateLimitConfig, RateLimits};
use crate::router::Router;
use crate::sqlite::{Database, SqliteStats};

/// One version of a component's code, ready to instantiate.
pub struct Version {
    /// The sha256 of the `.wasm`, in hex.
    pub digest: Arc<str>,
    /// The first 12 hex digits of `digest`, for logs and headers.
    pub short: Arc<str>,
    pub loaded_at: SystemTime,
    /// Where the code came from.
    pub origin: Origin,
    pub pre: ServicePre<RequestState>,
    /// The interfaces it offers other components and needs from them.
    pub peers: PeerInterfaces,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File(PathBuf),
    Upload,
}

/// A version serving a share of a component's requests.
#[derive(Clone)]
pub struct Canary {
    pub version: Arc<Version>,
    /// Percent of requests, 1 to 99.
    pub percent: u8,
}

/// A component as served by one snapshot.
#[derive(Clone)]
pub struct Entry {
    pub name: Arc<str>,
    pub config: ComponentConfig,
    pub shared: Arc<ComponentShared>,
    pub current: Arc<Version>,
    /// Where a rollback goes.
    pub previous: Option<Arc<Version>>,
    pub canary: Option<Canary>,
    /// The digest of the config's `.wasm` when it was last loaded, so that a
    /// reload or a file watch only reloads code that changed on disk.
    pub file_digest: Arc<str>,
}

impl Entry {
    /// The version to serve a request: the canary for `percent` of the
    /// rolls, the current version otherwise.
    pub fn pick(&self, roll: u64) -> &Arc<Version> {
        match &self.canary {
            Some(canary) if roll % 100 < u64::from(canary.percent) => &canary.version,
            _ => &self.current,
        }
    }

    pub fn limits(&self) -> &ComponentLimits {
        &self.config.limits
    }

    /// What a call into `version` of this component needs.
    pub fn target<'a>(&'a self, version: &'a Version) -> Target<'a> {
        Target {
            name: &self.name,
            version,
            limits: &self.config.limits,
            shared: &self.shared,
        }
    }
}

/// What every version of a component shares: its database, its concurrency
/// gate and its rate limiters, so a new version starts with the old one's
/// in-flight count and clients' buckets.
pub struct ComponentShared {
    pub db: Arc<Database>,
    pub sqlite_stats: SqliteStats,
    pub gate: ConcurrencyGate,
    pub rate_limits: RateLimits,
    /// What the above were built from, to tell whether a new config changes them.
    limits: ComponentLimits,
    rate_config: RateLimitConfig,
}

/// The components being served, the router to them, and which of them
/// provides the interfaces each imports.
#[derive(Default)]
pub struct Snapshot {
    pub entries: Vec<Arc<Entry>>,
    router: Router,
    peers: PeerTable,
}

impl Snapshot {
    /// A snapshot of `entries`, if every interface any of them imports has
    /// exactly one provider among them, with matching types.
    pub fn build(entries: Vec<Arc<Entry>>) -> Result<Self, ChangeError> {
        let peers = PeerTable::resolve(&entries)
            .map_err(|problems| ChangeError::Invalid(anyhow::anyhow!("{}", problems.join("\n"))))?;
        let router = Router::new(
            entries
                .iter()
                .enumerate()
                .flat_map(|(i, e)| e.config.routes.iter().map(move |r| (r.clone(), i))),
        );
        Ok(Snapshot { entries, router, peers })
    }

    /// The component that owns `path`, and the route prefix that matched.
    pub fn route(&self, path: &str) -> Option<(&Arc<Entry>, &str)> {
        self.router.lookup(path).map(|(prefix, i)| (&self.entries[i], prefix))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| &*e.name == name)
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// A snapshot with `entry` in place of the component of the same name.
    fn with(&self, entry: Entry) -> Result<Snapshot, ChangeError> {
        let entry = Arc::new(entry);
        let entries = self
            .entries
            .iter()
            .map(|e| {
                if e.name == entry.name {
                    Arc::clone(&entry)
                } else {
                    Arc::clone(e)
                }
            })
            .collect();
        Snapshot::build(entries)
    }
}

/// Why a change to the served components was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no component named {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The code is not a component corral can serve.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// The code compiled but its `init` failed; its database is as it was.
    #[error("{0:#}")]
    InitFailed(anyhow::Error),
    #[error("{0}")]
    Config(crate::config::ConfigError),
}

/// The outcome of a change, for the operator.
#[derive(Debug, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub canary_percent: Option<u8>,
}

/// Compiles and loads components, and holds the current [`Snapshot`].
pub struct Registry {
    engine: Engine,
    linker: Linker<RequestState>,
    data_dir: PathBuf,
    /// Client addresses one rate limit tracks.
    max_rate_limit_clients: usize,
    /// One per component name, kept across versions and reloads.
    shared: Mutex<HashMap<String, Arc<ComponentShared>>>,
    /// Shared with the host functions that carry calls between components.
    current: Arc<ArcSwap<Snapshot>>,
    /// Changes happen one at a time; requests never wait for this.
    changing: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(
        engine: Engine,
        data_dir: PathBuf,
        max_rate_limit_clients: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Registry> {
        let linker = crate::engine::linker(&engine)?;
        Ok(Registry {
            engine,
            linker,
            data_dir,
            max_rate_limit_clients,
            shared: Mutex::new(HashMap::new()),
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            changing: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What is being served right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether the first load has published the components.
    pub fn is_ready(&self) -> bool {
        !self.current.load().entries.is_empty()
    }

    /// Loads every component of `config` and publishes them together; fails
    /// with every component's problem if any cannot load.
    pub async fn load_all(&self, config: &Config) -> anyhow::Result<()> {
        let _changing = self.changing.lock().await;
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create the data folder {}", self.data_dir.display()))?;
        let snapshot = self.snapshot_for(config, &Snapshot::default()).await?;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }

    /// Applies a new config as one change: components added, removed, their
    /// routes, limits and (where the file changed) code. Nothing changes
    /// unless every component loads.
    pub async fn reload(&self, config: &Config) -> Result<Vec<Change>, ChangeError> {
        let _changing = self.changing.lock().await;
        let before = self.snapshot();
        let after = self.snapshot_for(config, &before).await?;
        let changes = after
            .entries
            .iter()
            .map(|e| Change {
                name: e.name.to_string(),
                version: e.current.digest.to_string(),
                previous_version: before.get(&e.name).map(|b| b.current.digest.to_string()),
                canary_percent: e.canary.as_ref().map(|c| c.percent),
            })
            .collect();
        for entry in &after.entries {
            self.metrics.count_change(&entry.name, "reload");
        }
        self.current.store(Arc::new(after));
        tracing::info!(components = config.components.len(), "reloaded the config");
        Ok(changes)
    }

    /// The snapshot `config` describes, reusing what `before` already has:
    /// new code is compiled, the whole is checked (routes, peers), and only
    /// then do the new versions run their `init`.
    async fn snapshot_for(&self, config: &Config, before: &Snapshot) -> Result<Snapshot, ChangeError> {
        let mut entries = Vec::new();
        let mut fresh = Vec::new();
        let mut failures = Vec::new();
        for component in &config.components {
            match self.entry_for(component, before.get(&component.name)).await {
                Ok((entry, is_new)) => {
                    if is_new {
                        fresh.push(Arc::clone(&entry));
                    }
                    entries.push(entry);
                }
                Err(e) => failures.push(format!("{}: {e:#}", component.name)),
            }
        }
        if !failures.is_empty() {
            return Err(ChangeError::Invalid(anyhow::anyhow!(
                "cannot load components:\n  {}",
                failures.join("\n  ")
            )));
        }
        let snapshot = Snapshot::build(entries)?;
        for entry in fresh {
            self.init(&entry.name, &entry.shared, &entry.current).await?;
        }
        Ok(snapshot)
    }

    /// The entry for `config`, and whether its current version is new code.
    async fn entry_for(
        &self,
        config: &ComponentConfig,
        before: Option<&Arc<Entry>>,
    ) -> anyhow::Result<(Arc<Entry>, bool)> {
        let wasm = read_wasm(&config.wasm).await?;
        let file_digest = digest(&wasm);
        let shared = self.shared(config).await?;
        if let Some(before) = before.filter(|b| b.file_digest == file_digest) {
            // The code on disk is what was loaded last: keep the versions,
            // uploads and canary included, under the new routes and limits.
            return Ok((
                Arc::new(Entry {
                    config: config.clone(),
                    shared,
                    ..Entry::clone(before)
                }),
                false,
            ));
        }
        let version = self
            .compile_version(&config.name, wasm, Origin::File(config.wasm.clone()))
            .await?;
        let entry = Entry {
            name: config.name.as_str().into(),
            config: config.clone(),
            shared,
            previous: before.map(|b| Arc::clone(&b.current)),
            current: version,
            canary: None,
            file_digest,
        };
        Ok((Arc::new(entry), true))
    }

    /// Installs new code for component `name`: for every request, or for
    /// `canary` percent of them. It is compiled, checked against the other
    /// components and initialized first; on any failure the component is
    /// left as it was.
    pub async fn swap(
        &self,
        name: &str,
        wasm: Vec<u8>,
        canary: Option<u8>,
        origin: Origin,
    ) -> Result<Change, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let version = self
            .compile_version(name, wasm, origin)
            .await
            .map_err(ChangeError::Invalid)?;
        let mut next = Entry::clone(entry);
        match canary {
            Some(percent) => {
                next.canary = Some(Canary {
                    version: Arc::clone(&version),
                    percent,
                })
            }
            None => {
                next.previous = Some(Arc::clone(&entry.current));
                next.current = Arc::clone(&version);
                next.canary = None;
            }
        }
        if let Origin::File(_) = version.origin {
            next.file_digest = Arc::clone(&version.digest);
        }
        // Refuse code that breaks a peer before running any of it.
        snapshot.with(next.clone())?;
        self.init(&entry.name, &entry.shared, &version).await?;
        let kind = if canary.is_some() { "canary" } else { "swap" };
        self.publish(&snapshot, next, kind)
    }

    /// Back to the previous version, or, with a canary out, drops the canary.
    pub async fn rollback(&self, name: &str) -> Result<Change, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let mut next = Entry::clone(entry);
        if next.canary.take().is_none() {
            let previous = next
                .previous
                .replace(Arc::clone(&entry.current))
                .ok_or_else(|| ChangeError::Conflict(format!("{name} has no previous version to roll back to")))?;
            next.current = previous;
        }
        self.publish(&snapshot, next, "rollback")
    }

    /// Makes the canary the current version for every request.
    pub async fn promote(&self, name: &str) -> Result<Change, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let mut next = Entry::clone(entry);
        let canary = next
            .canary
            .take()
            .ok_or_else(|| ChangeError::Conflict(format!("{name} has no canary to promote")))?;
        next.previous = Some(Arc::clone(&entry.current));
        next.current = canary.version;
        self.publish(&snapshot, next, "promote")
    }

    /// Publishes `next` in place of its component: from here on, new
    /// requests see it; requests in flight finish on what they started with.
    /// `kind` names the change in the log and the metrics.
    fn publish(&self, snapshot: &Snapshot, next: Entry, kind: &'static str) -> Result<Change, ChangeError> {
        let change = Change {
            name: next.name.to_string(),
            version: next
                .canary
                .as_ref()
                .map_or(&next.current, |c| &c.version)
                .digest
                .to_string(),
            previous_version: snapshot.get(&next.name).map(|e| e.current.digest.to_string()),
            canary_percent: next.canary.as_ref().map(|c| c.percent),
        };
        let (name, short, canary) = (
            Arc::clone(&next.name),
            Arc::clone(&next.current.short),
            next.canary.as_ref().map(|c| (c.version.short.to_string(), c.percent)),
        );
        let published = snapshot.with(next)?;
        self.current.store(Arc::new(published));
        tracing::info!(component = %name, version = %short, canary = ?canary, "{kind}");
        self.metrics.count_change(&name, kind);
        Ok(change)
    }

    /// Compiles `wasm` into a version of component `name`, linked to the
    /// host and to its peers.
    async fn compile_version(&self, name: &str, wasm: Vec<u8>, origin: Origin) -> anyhow::Result<Arc<Version>> {
        let digest = digest(&wasm);
        let (pre, peers) = self
            .compile(name, wasm)
            .await
            .inspect_err(|_| self.metrics.count_change(&name.into(), "load_failed"))?;
        Ok(Arc::new(Version {
            short: digest[..12].into(),
            digest,
            loaded_at: SystemTime::now(),
            origin,
            pre,
            peers,
        }))
    }

    /// Runs a new version's `init` against the component's database.
    async fn init(&self, name: &Arc<str>, shared: &Arc<ComponentShared>, version: &Version) -> Result<(), ChangeError> {
        let target = Target {
            name,
            version,
            limits: &shared.limits,
            shared,
        };
        if let Err(e) = invoke::init(target).await {
            self.metrics.count_change(name, "load_failed");
            return Err(ChangeError::InitFailed(anyhow::Error::from(e).context("init failed")));
        }
        self.metrics.count_change(name, "load");
        tracing::info!(component = %name, version = %version.short, "loaded");
        Ok(())
    }

    /// Checks that `wasm` is a component, compiles it off the async workers,
    /// and links it: the host's interfaces, its peers' interfaces (resolved
    /// when it is published), and the service exports present.
    pub async fn compile(
        &self,
        name: &str,
        wasm: Vec<u8>,
    ) -> anyhow::Result<(ServicePre<RequestState>, PeerInterfaces)> {
        check_header(&wasm)?;
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &wasm))
            .await?
            .map_err(anyhow::Error::from)
            .context("cannot compile it")?;
        let peers = PeerInterfaces::of(&component, &self.engine)?;
        let instance_pre = if peers.imports.is_empty() {
            self.linker.instantiate_pre(&component)
        } else {
            let mut linker = self.linker.clone();
            let dispatch = Dispatch {
                snapshot: Arc::downgrade(&self.current),
                metrics: Arc::clone(&self.metrics),
            };
            crate::peers::link(&mut linker, name, &peers, &dispatch)?;
            linker.instantiate_pre(&component)
        };
        let instance_pre = instance_pre
            .map_err(anyhow::Error::from)
            .context("cannot link it: it imports something corral does not provide")?;
        let pre = ServicePre::new(instance_pre).map_err(anyhow::Error::from).context(
            "it does not export the corral:service/handler and corral:service/lifecycle interfaces \
             (build it against wit/service.wit)",
        )?;
        Ok((pre, peers))
    }

    /// The shared parts of a component: kept from before, or rebuilt where
    /// the config changed them. The database stays open unless its own
    /// limits change.
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
            sqlite_stats: self.metrics.sqlite_stats(&config.name.as_str().into()),
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

async fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))
}

/// The sha256 of `wasm` in hex: a version's identity.
pub fn digest(wasm: &[u8]) -> Arc<str> {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Tells a component from a core module or from anything else, because
/// wasmtime's own message for those is less direct.
fn check_header(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [1, 0];
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) && header[6..8] == COMPONENT_LAYER => Ok(()),
        Some(header) if header.starts_with(MAGIC) => {
            anyhow::bail!("it is a core wasm module, not a component; build it for wasm32-wasip2")
        }
        _ => anyhow::bail!("it is not WebAssembly"),
    }
}
