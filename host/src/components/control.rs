//! What an operator changes while the host serves: the config file, reloaded
//! on `POST /reload` or SIGHUP, and components whose `.wasm` changed on disk,
//! reloaded when watched.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::registry::{Change, ChangeError, Registry};
use super::version::Origin;
use super::version::digest;
use crate::config::{Config, Overrides};

/// How often watched files are looked at. A file is loaded once it has
/// stayed the same for one interval, so a file still being written is not.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The operator's levers on a running host.
pub struct Control {
    pub registry: Arc<Registry>,
    source: PathBuf,
    overrides: Overrides,
    /// The config being served, to tell what a reload cannot change.
    running: Mutex<Config>,
}

/// What a reload did.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub components: Vec<Change>,
    /// Settings that changed in the file but take a restart to apply.
    pub needs_restart: Vec<String>,
}

impl Control {
    pub fn new(registry: Arc<Registry>, config: Config, overrides: Overrides) -> Self {
        Control {
            registry,
            source: config.source.clone(),
            overrides,
            running: Mutex::new(config),
        }
    }

    /// Re-reads the config file and applies it as one change. An invalid
    /// file, or a component that cannot load, changes nothing.
    pub async fn reload(&self) -> Result<Reloaded, ChangeError> {
        let config = Config::load(&self.source, &self.overrides).map_err(ChangeError::Config)?;
        let needs_restart = {
            let running = self.running.lock().expect("running config lock");
            let mut keys = Vec::new();
            if running.listen != config.listen {
                keys.push("listen");
            }
            if running.data_dir != config.data_dir {
                keys.push("data_dir");
            }
            if running.cache_dir != config.cache_dir {
                keys.push("cache_dir");
            }
            if running.server != config.server {
                keys.push("server");
            }
            if running.registries != config.registries {
                keys.push("registries");
            }
            if running.admin != config.admin {
                keys.push("admin");
            }
            keys
        };
        let components = self.registry.reload(&config).await?;
        if !needs_restart.is_empty() {
            tracing::warn!(?needs_restart, "these settings changed but apply only after a restart");
        }
        let mut running = self.running.lock().expect("running config lock");
        running.components = config.components;
        Ok(Reloaded {
            components,
            needs_restart: needs_restart.into_iter().map(String::from).collect(),
        })
    }

    /// Reloads watched components when their file changes, until the task
    /// is dropped. A file that does not load is logged and skipped; the
    /// version before it keeps serving.
    pub async fn watch(self: Arc<Self>) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut every = tokio::time::interval(WATCH_INTERVAL);
        loop {
            every.tick().await;
            for entry in self.registry.snapshot().entries.iter().filter(|e| e.config.watch) {
                // Only files are watched; a registry's tag is read again at a reload.
                let Some(path) = entry.config.wasm.file() else {
                    continue;
                };
                let Ok(meta) = tokio::fs::metadata(path).await else {
                    continue;
                };
                let stamp = (meta.modified().ok(), meta.len());
                let seen = seen
                    .entry(entry.name.to_string())
                    .or_insert(Seen { stamp, settled: false });
                if seen.stamp != stamp {
                    *seen = Seen { stamp, settled: false };
                    continue;
                }
                if seen.settled {
                    continue;
                }
                seen.settled = true;
                let Ok(wasm) = tokio::fs::read(path).await else {
                    continue;
                };
                if digest(&wasm) == entry.file_digest {
                    continue;
                }
                match self
                    .registry
                    .swap(
                        &entry.name,
                        wasm,
                        None,
                        Origin::File {
                            path: path.to_path_buf(),
                        },
                    )
                    .await
                {
                    Ok(change) => {
                        tracing::info!(component = %entry.name, version = %change.version, "reloaded a changed file")
                    }
                    Err(e) => {
                        tracing::warn!(component = %entry.name, path = %path.display(), "the changed file was not loaded: {e}")
                    }
                }
            }
        }
    }
}

/// The last look at a watched file.
struct Seen {
    stamp: (Option<SystemTime>, u64),
    /// Whether the file has been handled since it last changed.
    settled: bool,
}
