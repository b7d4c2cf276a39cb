//! Versions that changes installed while the host ran (swaps, canaries,
//! promotions, rollbacks, reloads) kept under `<data_dir>/versions/`, so
//! that a restart serves what was serving before it. Each component has a
//! folder of `.wasm` files named by their sha256 and a `state.json` that
//! names its current, previous and canary versions.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::version::Origin;
use super::versions::Versions;

/// One version as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedVersion {
    pub digest: String,
    pub origin: Origin,
}

/// What a component served when it last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// The digest of the config's file at the time: when the file still
    /// has it, the saved versions win; when it changed, the file wins.
    pub file_digest: String,
    #[serde(flatten)]
    pub versions: Versions<SavedVersion>,
}

impl SavedState {
    fn digests(&self) -> impl Iterator<Item = &str> {
        self.versions.all().map(|v| v.digest.as_str())
    }
}

/// The folder of saved versions.
#[derive(Clone)]
pub struct VersionStore {
    dir: PathBuf,
}

impl VersionStore {
    pub fn new(data_dir: &Path) -> Self {
        VersionStore {
            dir: data_dir.join("versions"),
        }
    }

    fn component_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn wasm_path(&self, name: &str, digest: &str) -> PathBuf {
        self.component_dir(name).join(format!("{digest}.wasm"))
    }

    /// Keeps a version's code, once per digest.
    pub fn keep(&self, name: &str, digest: &str, wasm: &[u8]) -> anyhow::Result<()> {
        let path = self.wasm_path(name, digest);
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, wasm).with_context(|| format!("cannot keep version {digest} of {name}"))
    }

    /// A kept version's code, checked against its digest.
    pub fn read(&self, name: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.wasm_path(name, digest);
        let wasm = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(
            *super::version::digest(&wasm) == *digest,
            "{} does not hold the version it is named after",
            path.display()
        );
        Ok(wasm)
    }

    /// What `name` served when it last changed, if it ever did.
    pub fn load(&self, name: &str) -> anyhow::Result<Option<SavedState>> {
        let path = self.component_dir(name).join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state = serde_json::from_str(&text).with_context(|| format!("{} is not a saved state", path.display()))?;
        Ok(Some(state))
    }

    /// Records what `name` serves now.
    pub fn save(&self, name: &str, state: &SavedState) -> anyhow::Result<()> {
        let path = self.component_dir(name).join("state.json");
        let json = serde_json::to_vec_pretty(state)?;
        write_atomically(&path, &json).with_context(|| format!("cannot record {}", path.display()))
    }

    /// Forgets the versions of `name` that `state` does not name, once it
    /// serves them no more.
    pub fn forget_unnamed(&self, name: &str, state: &SavedState) -> anyhow::Result<()> {
        let dir = self.component_dir(name);
        for file in std::fs::read_dir(&dir)?.flatten() {
            let file_name = file.file_name();
            let Some(digest) = file_name.to_str().and_then(|n| n.strip_suffix(".wasm")) else {
                continue;
            };
            if !state.digests().any(|d| d == digest) {
                let _ = std::fs::remove_file(file.path());
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` so that it holds either its old content or all
/// of the new one, across crashes.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = path.with_extension("partial");
    let mut file =
        std::fs::File::create(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unnamed_versions_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = VersionStore::new(dir.path());
        let (a, b, c) = (b"a".as_slice(), b"b".as_slice(), b"c".as_slice());
        let digest = |w: &[u8]| crate::components::version::digest(w).to_string();
        for wasm in [a, b, c] {
            store.keep("users", &digest(wasm), wasm).unwrap();
        }
        let version = |w: &[u8]| SavedVersion {
            digest: digest(w),
            origin: Origin::upload_now(),
        };
        let state = SavedState {
            file_digest: digest(a),
            versions: Versions::new(version(a)).swap(version(b), None),
        };
        store.save("users", &state).unwrap();
        let loaded = store.load("users").unwrap().unwrap();
        assert_eq!(loaded, state);
        assert!(store.read("users", &digest(c)).is_ok(), "kept until forgotten");
        store.forget_unnamed("users", &state).unwrap();
        assert_eq!(store.read("users", &digest(b)).unwrap(), b);
        assert!(store.read("users", &digest(c)).is_err(), "c is named by nothing");
        assert!(store.load("orders").unwrap().is_none());
        std::fs::write(store.wasm_path("users", &digest(a)), b"tampered").unwrap();
        assert!(store.read("users", &digest(a)).is_err());
    }
}
