//! The components being served and every change to them. Each change
//! (load, swap, canary, promote, rollback, reload) is prepared in full
//! (compiled, checked against the others, its `init`s run in transactions
//! left open), then published as one new [`Snapshot`] (transactions
//! committed, shared parts installed, gates resized), or abandoned, leaving
//! everything as it was.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Notify;
use wasmtime::Engine;

use super::oci::{self, Registries};
use super::peers::{CallElsewhere, Dispatch};
use super::placement::Placement;
use super::saved::{SavedState, SavedVersion, VersionStore};
use super::snapshot::{ComponentShared, Entry, Snapshot};
use super::stats::ComponentStats;
use super::version::{Compiler, Entrypoint, Origin, Version, digest};
use super::versions::{Canary, Versions};
use crate::capabilities::http::InternalHttp;
use crate::capabilities::sqlite::{self, Conn, SqlThreads};
use crate::capabilities::{Components, Host};
use crate::config::{ComponentConfig, Config, WasmSource};
use crate::limits::gate::ConcurrencyGate;
use crate::limits::rates::RateLimits;
use crate::wasm::invoke;

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
    /// The change could not be kept under `data_dir`.
    #[error("{0:#}")]
    Storage(anyhow::Error),
}

impl ChangeError {
    /// Imports between components that do not resolve.
    fn peers(problems: Vec<String>) -> Self {
        ChangeError::Invalid(anyhow::anyhow!("{}", problems.join("\n")))
    }
}

/// The outcome of a change, for the operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub name: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub canary_percent: Option<u8>,
}

/// Compiles and loads components, and holds the current [`Snapshot`].
pub struct Registry {
    compiler: Compiler,
    /// Client addresses one rate limit tracks.
    max_rate_limit_clients: usize,
    /// What capabilities share host-wide, `data_dir` among it.
    host: Host,
    /// In a cluster, the components another host owns.
    pub placement: Arc<Placement>,
    /// What carries calls to them, once the serving layer is up.
    elsewhere: Arc<OnceLock<Arc<dyn CallElsewhere>>>,
    /// One per component name, kept across versions and reloads.
    shared: Mutex<HashMap<String, Arc<ComponentShared>>>,
    /// Versions installed by changes, kept across restarts.
    versions: VersionStore,
    /// Where components named by an `oci://` reference come from.
    registries: Arc<Registries>,
    /// Shared with the host functions that carry calls between components.
    current: Arc<ArcSwap<Snapshot>>,
    /// Changes happen one at a time; requests never wait for this.
    changing: tokio::sync::Mutex<()>,
    stats: Arc<ComponentStats>,
}

/// A change ready to publish. Nothing it did is visible yet: its new
/// versions' `init`s wait in open transactions, its shared parts are not
/// installed, its database files are new ones only.
struct Prepared {
    snapshot: Snapshot,
    shared: Vec<Arc<ComponentShared>>,
    inits: Vec<Conn>,
    /// Database files the change created, removed if it is abandoned.
    created: Vec<PathBuf>,
}

/// One component as a change plans it.
struct Planned {
    entry: Arc<Entry>,
    /// Versions new to this component, whose `init` must run.
    fresh: Vec<Arc<Version>>,
    created: Vec<PathBuf>,
}

impl Registry {
    pub fn new(
        engine: Engine,
        data_dir: PathBuf,
        max_rate_limit_clients: usize,
        sql_threads: Arc<SqlThreads>,
        relay: Arc<Notify>,
        stats: Arc<ComponentStats>,
        registries: Arc<Registries>,
    ) -> anyhow::Result<Registry> {
        let current = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let placement = Arc::new(Placement::default());
        let elsewhere = Arc::new(OnceLock::new());
        let dispatch = Dispatch {
            snapshot: Arc::downgrade(&current),
            placement: Arc::clone(&placement),
            stats: Arc::clone(&stats),
            elsewhere: Arc::clone(&elsewhere),
        };
        Ok(Registry {
            compiler: Compiler::new(engine, Arc::new(dispatch))?,
            versions: VersionStore::new(&data_dir),
            registries,
            max_rate_limit_clients,
            host: Host {
                data_dir,
                sql_threads,
                relay,
                internal: Arc::default(),
            },
            placement,
            elsewhere,
            shared: Mutex::new(HashMap::new()),
            current,
            changing: tokio::sync::Mutex::new(()),
            stats,
        })
    }

    pub fn engine(&self) -> &Engine {
        self.compiler.engine()
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    pub fn sql_threads(&self) -> &Arc<SqlThreads> {
        &self.host.sql_threads
    }

    /// Sets what serves requests to `http://<component>.internal`.
    pub fn serve_internal(&self, internal: Arc<dyn InternalHttp>) {
        let _ = self.host.internal.set(internal);
    }

    /// Sets what carries calls to components owned by other hosts.
    pub fn call_elsewhere(&self, elsewhere: Arc<dyn CallElsewhere>) {
        let _ = self.elsewhere.set(elsewhere);
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
    /// with every component's problem if any cannot load. A component whose
    /// versions were changed while the host last ran serves those again,
    /// unless the config's file changed since.
    pub async fn load_all(&self, config: &Config) -> anyhow::Result<()> {
        let _changing = self.changing.lock().await;
        std::fs::create_dir_all(&self.host.data_dir)
            .with_context(|| format!("cannot create the data folder {}", self.host.data_dir.display()))?;
        let prepared = self.prepare(config, &Snapshot::default()).await?;
        let after = prepared.snapshot.entries.clone();
        let after: Vec<&Entry> = after.iter().map(|e| &**e).collect();
        if let Err(e) = self.save_states(&after, None).await {
            self.abandon(prepared).await;
            return Err(e.into());
        }
        self.publish(prepared).await?;
        self.forget_unnamed(&after).await;
        Ok(())
    }

    /// Applies a new config as one change: components added, removed, their
    /// routes, limits and (where the file changed) code. Every new version
    /// compiles, links and runs its `init` before any of it is committed;
    /// if anything fails, nothing changes: databases, rate limit buckets,
    /// gates and limits stay exactly as they were.
    pub async fn reload(&self, config: &Config) -> Result<Vec<Change>, ChangeError> {
        let _changing = self.changing.lock().await;
        let before = self.snapshot();
        let prepared = self.prepare(config, &before).await?;
        let entries = prepared.snapshot.entries.clone();
        let entries: Vec<&Entry> = entries.iter().map(|e| &**e).collect();
        if let Err(e) = self.save_states(&entries, Some(&before)).await {
            self.abandon(prepared).await;
            return Err(e);
        }
        let after = match self.publish(prepared).await {
            Ok(after) => after,
            Err(e) => {
                let old: Vec<&Entry> = before.entries.iter().map(|e| &**e).collect();
                let _ = self.save_states(&old, None).await;
                return Err(e);
            }
        };
        self.forget_unnamed(&entries).await;
        let mut changes = Vec::new();
        for entry in &after.entries {
            self.stats.count_change(&entry.name, "reload");
            changes.push(Change {
                name: entry.name.to_string(),
                version: entry.current().digest.to_string(),
                previous_version: before.get(&entry.name).map(|b| b.current().digest.to_string()),
                canary_percent: entry.versions.canary.as_ref().map(|c| c.percent),
            });
        }
        tracing::info!(components = config.components.len(), "reloaded the config");
        Ok(changes)
    }

    /// Plans every component of `config`, reusing what `before` has: new
    /// code is compiled, the whole is checked (routes, peers), and only then
    /// do the new versions run their `init`, each in a transaction left open.
    async fn prepare(&self, config: &Config, before: &Snapshot) -> Result<Prepared, ChangeError> {
        let mut entries = Vec::new();
        let mut fresh = Vec::new();
        let mut created = Vec::new();
        let mut failures = Vec::new();
        for component in &config.components {
            let planned = self.plan(component, before.get(&component.name)).await;
            let planned = planned.and_then(|p| {
                let versions = &p.entry.versions;
                let served = std::iter::once(&versions.current).chain(versions.canary.as_ref().map(|c| &c.version));
                for version in served {
                    check_subscriber(component, version)?;
                }
                Ok(p)
            });
            match planned {
                Ok(planned) => {
                    created.extend(planned.created);
                    fresh.extend(planned.fresh.into_iter().map(|v| (Arc::clone(&planned.entry), v)));
                    entries.push(planned.entry);
                }
                Err(e) => failures.push(format!("{}: {e:#}", component.name)),
            }
        }
        if !failures.is_empty() {
            drop((entries, fresh));
            remove_databases(&created);
            return Err(ChangeError::Invalid(anyhow::anyhow!(
                "cannot load components:\n  {}",
                failures.join("\n  ")
            )));
        }
        let shared = entries.iter().map(|e| Arc::clone(&e.shared)).collect();
        let snapshot = match Snapshot::build(entries) {
            Ok(snapshot) => snapshot,
            Err(problems) => {
                drop((shared, fresh));
                remove_databases(&created);
                return Err(ChangeError::peers(problems));
            }
        };
        let mut prepared = Prepared {
            snapshot,
            shared,
            inits: Vec::new(),
            created,
        };
        // The versions of one component run their inits in one transaction.
        let mut open: HashMap<Arc<str>, Conn> = HashMap::new();
        for (entry, version) in fresh {
            let conn = open.remove(&entry.name);
            match self.init(&entry.shared, &version, conn).await {
                Ok(conn) => {
                    if let Some(conn) = conn {
                        open.insert(Arc::clone(&entry.name), conn);
                    }
                }
                Err(e) => {
                    prepared.inits.extend(open.into_values());
                    drop(entry);
                    self.abandon(prepared).await;
                    return Err(e);
                }
            }
        }
        prepared.inits.extend(open.into_values());
        Ok(prepared)
    }

    /// The entry `config` describes, and which of its versions are new.
    async fn plan(&self, config: &ComponentConfig, before: Option<&Arc<Entry>>) -> anyhow::Result<Planned> {
        let (wasm, origin) = self.read(&config.wasm).await?;
        let file_digest = digest(&wasm);
        let (shared, created) = self.prepare_shared(config).await?;
        let entry = |versions, file_digest| Entry {
            name: config.name.as_str().into(),
            config: config.clone(),
            shared: Arc::clone(&shared),
            versions,
            file_digest,
        };
        if let Some(before) = before {
            if before.file_digest == file_digest {
                // The code on disk is what was loaded last: keep the versions,
                // uploads and canary included, under the new routes and limits.
                let kept = Entry {
                    config: config.clone(),
                    shared: Arc::clone(&shared),
                    ..Entry::clone(before)
                };
                return Ok(Planned {
                    entry: Arc::new(kept),
                    fresh: Vec::new(),
                    created,
                });
            }
            let version = self.compile_version(&config.name, wasm, origin).await?;
            let planned = entry(
                Versions::new(Arc::clone(before.current())).swap(Arc::clone(&version), None),
                file_digest,
            );
            return Ok(Planned {
                entry: Arc::new(planned),
                fresh: vec![version],
                created,
            });
        }
        let saved = self.saved_state(&config.name).await;
        if let Some(saved) = saved.as_ref().filter(|s| *s.file_digest == *file_digest)
            && let Some(versions) = self.restore(&config.name, saved).await
        {
            let mut fresh = vec![Arc::clone(&versions.current)];
            fresh.extend(versions.canary.as_ref().map(|c| Arc::clone(&c.version)));
            tracing::info!(component = %config.name, version = %versions.current.short, "serving the version saved by the last change");
            return Ok(Planned {
                entry: Arc::new(entry(versions, file_digest)),
                fresh,
                created,
            });
        }
        let previous = match &saved {
            Some(saved) => {
                tracing::info!(
                    component = %config.name,
                    swapped = %saved.versions.current.digest,
                    "the config's file changed since the last run; it replaces the version a change installed"
                );
                self.saved_version(&config.name, &saved.versions.current).await.ok()
            }
            None => None,
        };
        let version = self.compile_version(&config.name, wasm, origin).await?;
        let versions = Versions {
            previous,
            ..Versions::new(Arc::clone(&version))
        };
        Ok(Planned {
            entry: Arc::new(entry(versions, file_digest)),
            fresh: vec![version],
            created,
        })
    }

    /// The versions a saved state names, compiled; `None` if the current
    /// one cannot be restored (then the config's file serves).
    async fn restore(&self, name: &str, saved: &SavedState) -> Option<Versions<Arc<Version>>> {
        let saved = &saved.versions;
        let current = match self.saved_version(name, &saved.current).await {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!(component = %name, "cannot restore the saved version, serving the config's file: {e:#}");
                return None;
            }
        };
        let previous = match &saved.previous {
            Some(previous) => self.saved_version(name, previous).await.ok(),
            None => None,
        };
        let canary = match &saved.canary {
            Some(canary) => self
                .saved_version(name, &canary.version)
                .await
                .ok()
                .map(|version| Canary {
                    version,
                    percent: canary.percent,
                }),
            None => None,
        };
        Some(Versions {
            current,
            previous,
            canary,
        })
    }

    async fn saved_version(&self, name: &str, saved: &SavedVersion) -> anyhow::Result<Arc<Version>> {
        let (store, owned, digest) = (self.versions.clone(), name.to_string(), saved.digest.clone());
        let wasm = tokio::task::spawn_blocking(move || store.read(&owned, &digest)).await??;
        Ok(self.compile_version(name, wasm, saved.origin.clone()).await?)
    }

    /// What the last change of component `name` saved, read off the async
    /// workers; none if nothing was saved or it cannot be read (said in the log).
    async fn saved_state(&self, name: &str) -> Option<SavedState> {
        let (store, owned) = (self.versions.clone(), name.to_string());
        match tokio::task::spawn_blocking(move || store.load(&owned)).await {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => {
                tracing::warn!(component = %name, "ignoring the saved versions: {e:#}");
                None
            }
            Err(e) => {
                tracing::warn!(component = %name, "ignoring the saved versions: {e}");
                None
            }
        }
    }

    /// The code `source` names, and where it came from.
    pub async fn read(&self, source: &WasmSource) -> anyhow::Result<(Vec<u8>, Origin)> {
        match source {
            WasmSource::File(path) => {
                let wasm = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok((wasm, Origin::File { path: path.clone() }))
            }
            WasmSource::Oci(reference) => {
                let pulled = self.registries.pull(reference, &oci::Quiet).await?;
                Ok((
                    pulled.wasm,
                    Origin::Registry {
                        reference: pulled.pinned,
                    },
                ))
            }
        }
    }

    /// Where components named by an `oci://` reference come from.
    pub fn registries(&self) -> &Registries {
        &self.registries
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
        let version = self.compile_version(name, wasm, origin).await?;
        check_subscriber(&entry.config, &version).map_err(ChangeError::Invalid)?;
        let mut next = Entry::clone(entry);
        next.versions = entry.versions.swap(Arc::clone(&version), canary);
        if let Origin::File { .. } = version.origin {
            next.file_digest = Arc::clone(&version.digest);
        }
        // Refuse code that breaks a peer before running any of it.
        let published = snapshot.with(next.clone()).map_err(ChangeError::peers)?;
        let conn = self.init(&entry.shared, &version, None).await?;
        let kind = if canary.is_some() { "canary" } else { "swap" };
        let prepared = Prepared {
            snapshot: published,
            shared: Vec::new(),
            inits: conn.into_iter().collect(),
            created: Vec::new(),
        };
        self.publish_change(&snapshot, prepared, &next, kind).await
    }

    /// The code of component `name`'s version `digest`, as kept on disk.
    pub fn wasm_of(&self, name: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        self.versions.read(name, digest)
    }

    /// Checks that `wasm` could become component `name`: it compiles, links,
    /// exports what its config needs and breaks no peer. Nothing runs and
    /// nothing changes; a cluster checks a version this way before any host
    /// takes it.
    pub async fn validate(&self, name: &str, wasm: Vec<u8>) -> Result<Arc<Version>, ChangeError> {
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let compiled = self
            .compiler
            .compile(name, wasm.clone())
            .await
            .map_err(ChangeError::Invalid)?;
        let version = Version {
            digest: digest(&wasm),
            short: digest(&wasm)[..12].into(),
            loaded_at: SystemTime::now(),
            origin: Origin::upload_now(),
            entrypoint: compiled.entrypoint,
            subscriber: compiled.subscriber,
            peers: compiled.peers,
            host_imports: compiled.host_imports,
        };
        check_subscriber(&entry.config, &version).map_err(ChangeError::Invalid)?;
        let version = Arc::new(version);
        let mut next = Entry::clone(entry);
        next.versions.current = Arc::clone(&version);
        snapshot.with(next).map_err(ChangeError::peers)?;
        Ok(version)
    }

    /// Makes component `name` serve the versions `want` names by digest
    /// (its current one, and its canary), fetching with `fetch` the code
    /// of any version it does not have; `None` when it already does. The
    /// same checks as a swap apply, and on any failure nothing changes.
    pub async fn converge(
        &self,
        name: &str,
        want: &Versions<String>,
        origin: &Origin,
        fetch: impl Fn(String) -> futures::future::BoxFuture<'static, anyhow::Result<Vec<u8>>>,
    ) -> Result<Option<Change>, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let serving = entry.versions.map(|v| v.digest.to_string());
        if serving.current == want.current && serving.canary == want.canary {
            return Ok(None);
        }
        let known = |digest: &str| entry.versions.all().find(|v| &*v.digest == digest).cloned();
        let mut fresh = Vec::new();
        let mut version_of = async |digest: &str| -> Result<Arc<Version>, ChangeError> {
            if let Some(version) = known(digest) {
                return Ok(version);
            }
            let wasm = fetch(digest.to_string()).await.map_err(ChangeError::Storage)?;
            let version = self.compile_version(name, wasm, origin.clone()).await?;
            check_subscriber(&entry.config, &version).map_err(ChangeError::Invalid)?;
            fresh.push(Arc::clone(&version));
            Ok(version)
        };
        let current = version_of(&want.current).await?;
        let canary = match &want.canary {
            Some(canary) => Some(Canary {
                version: version_of(&canary.version).await?,
                percent: canary.percent,
            }),
            None => None,
        };
        let mut next = Entry::clone(entry);
        next.versions = entry.versions.converge(current, canary, |a, b| a.digest == b.digest);
        let published = snapshot.with(next.clone()).map_err(ChangeError::peers)?;
        // New versions' inits run in one transaction, committed on publish.
        let mut conn = None;
        for version in &fresh {
            conn = self.init(&entry.shared, version, conn).await?;
        }
        let prepared = Prepared {
            snapshot: published,
            shared: Vec::new(),
            inits: conn.into_iter().collect(),
            created: Vec::new(),
        };
        self.publish_change(&snapshot, prepared, &next, "converge")
            .await
            .map(Some)
    }

    /// Back to the previous version, or, with a canary out, drops the canary.
    pub async fn rollback(&self, name: &str) -> Result<Change, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let mut next = Entry::clone(entry);
        next.versions = entry
            .versions
            .rollback()
            .map_err(|e| ChangeError::Conflict(format!("{name}: {e}")))?;
        let prepared = Prepared {
            snapshot: snapshot.with(next.clone()).map_err(ChangeError::peers)?,
            shared: Vec::new(),
            inits: Vec::new(),
            created: Vec::new(),
        };
        self.publish_change(&snapshot, prepared, &next, "rollback").await
    }

    /// Makes the canary the current version for every request.
    pub async fn promote(&self, name: &str) -> Result<Change, ChangeError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| ChangeError::NotFound(name.into()))?;
        let mut next = Entry::clone(entry);
        next.versions = entry
            .versions
            .promote()
            .map_err(|e| ChangeError::Conflict(format!("{name}: {e}")))?;
        let prepared = Prepared {
            snapshot: snapshot.with(next.clone()).map_err(ChangeError::peers)?,
            shared: Vec::new(),
            inits: Vec::new(),
            created: Vec::new(),
        };
        self.publish_change(&snapshot, prepared, &next, "promote").await
    }

    /// Publishes a change to one component, `next`, and says what changed.
    /// `kind` names the change in the log and the metrics.
    async fn publish_change(
        &self,
        before: &Snapshot,
        prepared: Prepared,
        next: &Entry,
        kind: &'static str,
    ) -> Result<Change, ChangeError> {
        let versions = &next.versions;
        let change = Change {
            name: next.name.to_string(),
            version: versions
                .canary
                .as_ref()
                .map_or(&versions.current, |c| &c.version)
                .digest
                .to_string(),
            previous_version: before.get(&next.name).map(|e| e.current().digest.to_string()),
            canary_percent: versions.canary.as_ref().map(|c| c.percent),
        };
        if let Err(e) = self.save_states(&[next], Some(before)).await {
            self.abandon(prepared).await;
            return Err(e);
        }
        if let Err(e) = self.publish(prepared).await {
            if let Some(old) = before.get(&next.name) {
                let _ = self.save_states(&[old], None).await;
            }
            return Err(e);
        }
        self.forget_unnamed(&[next]).await;
        let canary = versions
            .canary
            .as_ref()
            .map(|c| (c.version.short.to_string(), c.percent));
        tracing::info!(component = %next.name, version = %versions.current.short, canary = ?canary, "{kind}");
        self.stats.count_change(&next.name, kind);
        Ok(change)
    }

    /// Makes a prepared change visible: commits its `init`s, installs its
    /// shared parts (resizing gates in place), then publishes its snapshot.
    /// From here on new requests see it; requests in flight finish on what
    /// they started with.
    async fn publish(&self, mut prepared: Prepared) -> Result<Arc<Snapshot>, ChangeError> {
        while let Some(conn) = prepared.inits.pop() {
            if let Err(e) = sqlite::end_init_transaction(conn).await {
                self.abandon(prepared).await;
                return Err(ChangeError::InitFailed(anyhow::anyhow!(
                    "cannot commit what init did: {e:?}"
                )));
            }
        }
        {
            let mut installed = self.shared.lock().expect("shared lock");
            for shared in prepared.shared {
                shared.gate.resize(&shared.limits);
                installed.insert(shared.name.to_string(), shared);
            }
        }
        let snapshot = Arc::new(prepared.snapshot);
        self.current.store(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// Undoes a prepared change that will not be published: rolls back its
    /// `init`s and removes the database files it created.
    async fn abandon(&self, prepared: Prepared) {
        let Prepared {
            snapshot,
            shared,
            inits,
            created,
        } = prepared;
        for conn in inits {
            let _ = sqlite::end_host_transaction(conn, false).await;
        }
        drop((snapshot, shared));
        remove_databases(&created);
    }

    /// Records what each of `entries` will serve, so a restart serves it
    /// again, before the change is published: a change that cannot be
    /// recorded is not made. If one cannot be recorded, the states already
    /// written are put back as `before` had them.
    async fn save_states(&self, entries: &[&Entry], before: Option<&Snapshot>) -> Result<(), ChangeError> {
        for (i, entry) in entries.iter().enumerate() {
            if let Err(e) = self.write_state(entry).await {
                for written in &entries[..i] {
                    if let Some(old) = before.and_then(|b| b.get(&written.name)) {
                        let _ = self.write_state(old).await;
                    }
                }
                tracing::error!(component = %entry.name, "cannot record the versions it would serve: {e:#}");
                return Err(ChangeError::Storage(e.context("the change was not made")));
            }
        }
        Ok(())
    }

    async fn write_state(&self, entry: &Entry) -> anyhow::Result<()> {
        let (name, state) = (entry.name.to_string(), saved_state(entry));
        let versions = VersionStore::new(&self.host.data_dir);
        tokio::task::spawn_blocking(move || versions.save(&name, &state)).await?
    }

    /// Forgets the kept versions that nothing served names any more.
    async fn forget_unnamed(&self, entries: &[&Entry]) {
        let states: Vec<(String, SavedState)> = entries.iter().map(|e| (e.name.to_string(), saved_state(e))).collect();
        let versions = VersionStore::new(&self.host.data_dir);
        let forgotten = tokio::task::spawn_blocking(move || {
            for (name, state) in &states {
                versions.forget_unnamed(name, state)?;
            }
            anyhow::Ok(())
        })
        .await;
        if let Err(e) = forgotten.map_err(anyhow::Error::from).and_then(|r| r) {
            tracing::warn!("cannot forget versions no longer served: {e:#}");
        }
    }

    /// Compiles `wasm` into a version of component `name`, linked to the
    /// host and to its peers, and keeps its code for later restarts.
    async fn compile_version(&self, name: &str, wasm: Vec<u8>, origin: Origin) -> Result<Arc<Version>, ChangeError> {
        let digest = digest(&wasm);
        let versions = VersionStore::new(&self.host.data_dir);
        let compiled = self.compiler.compile(name, wasm.clone()).await.map_err(|e| {
            self.stats.count_change(&name.into(), "load_failed");
            ChangeError::Invalid(e)
        })?;
        let (owner, kept) = (name.to_string(), Arc::clone(&digest));
        tokio::task::spawn_blocking(move || versions.keep(&owner, &kept, &wasm))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|kept| kept)
            .map_err(ChangeError::Storage)?;
        Ok(Arc::new(Version {
            short: digest[..12].into(),
            digest,
            loaded_at: SystemTime::now(),
            origin,
            entrypoint: compiled.entrypoint,
            subscriber: compiled.subscriber,
            peers: compiled.peers,
            host_imports: compiled.host_imports,
        }))
    }

    /// Runs a new version's `init` against the component's database, in a
    /// transaction left open for [`Registry::publish`] to commit (the one on
    /// `conn`, if given). A `wasi:http` component has no `init`.
    async fn init(
        &self,
        shared: &Arc<ComponentShared>,
        version: &Version,
        conn: Option<Conn>,
    ) -> Result<Option<Conn>, ChangeError> {
        let name = &shared.name;
        let target = shared.target(version, &shared.limits);
        let initialized = match &version.entrypoint {
            Entrypoint::Service(service) => invoke::init(target, &service.pre, conn).await.map(Some),
            Entrypoint::Http(_) => Ok(conn),
        };
        match initialized {
            Ok(conn) => {
                self.stats.count_change(name, "load");
                tracing::info!(component = %name, version = %version.short, world = version.entrypoint.world(), "loaded");
                Ok(conn)
            }
            Err(e) => {
                self.stats.count_change(name, "load_failed");
                Err(ChangeError::InitFailed(anyhow::Error::from(e).context("init failed")))
            }
        }
    }

    /// The shared parts of a component for `config`: kept from before, or
    /// rebuilt where the config changed them. The gate is always kept (a
    /// publish resizes it), the rate limiters unless their config changed;
    /// each capability keeps what it can (see `Capability::configure`). Also
    /// says which files this created.
    async fn prepare_shared(&self, config: &ComponentConfig) -> anyhow::Result<(Arc<ComponentShared>, Vec<PathBuf>)> {
        let previous = self.shared.lock().expect("shared lock").get(&config.name).cloned();
        let mut created = Vec::new();
        let capabilities = Components::configure(
            &self.host,
            &self.stats.capabilities,
            config,
            previous.as_ref().map(|p| &p.capabilities),
            &mut created,
        )
        .await;
        let capabilities = match capabilities {
            Ok(capabilities) => capabilities,
            Err(e) => {
                remove_databases(&created);
                return Err(e);
            }
        };
        let shared = Arc::new(ComponentShared {
            name: config.name.as_str().into(),
            capabilities,
            gate: match &previous {
                Some(previous) => Arc::clone(&previous.gate),
                None => Arc::new(ConcurrencyGate::new(&config.limits)),
            },
            limits: config.limits.clone(),
            rate_limits: match &previous {
                Some(previous) if previous.rate_config == config.rate_limits => Arc::clone(&previous.rate_limits),
                _ => Arc::new(RateLimits::new(&config.rate_limits, self.max_rate_limit_clients)),
            },
            rate_config: config.rate_limits.clone(),
            response_size: previous
                .as_ref()
                .map_or_else(Arc::default, |previous| Arc::clone(&previous.response_size)),
        });
        Ok((shared, created))
    }
}

/// What `entry` serves, as kept under `data_dir`.
fn saved_state(entry: &Entry) -> SavedState {
    let saved = |v: &Version| SavedVersion {
        digest: v.digest.to_string(),
        origin: v.origin.clone(),
    };
    SavedState {
        file_digest: entry.file_digest.to_string(),
        versions: entry.versions.map(|v| saved(v)),
    }
}

/// A component that subscribes must have code that can receive.
fn check_subscriber(config: &ComponentConfig, version: &Version) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.events.subscription.is_none() || version.subscriber.is_some(),
        "version {} does not export corral:service/subscriber, and components.{}.subscription needs it",
        version.short,
        config.name
    );
    Ok(())
}

/// Removes database files an abandoned change created, with their journals.
fn remove_databases(created: &[PathBuf]) {
    for path in created {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}
