//! `corral new <name>`: writes a component crate that builds and serves as
//! it is: a Cargo.toml, a small CRUD service over its own table, and the
//! config section that serves it. Inside corral's own `components/` folder
//! the crate joins the workspace (so `just build` builds it); anywhere else
//! it is a workspace of its own that uses the SDK at `sdk`.

use std::path::{Path, PathBuf};

use anyhow::Context;

const LIB: &str = include_str!("../../templates/component/lib.rs");
const WORKSPACE_MANIFEST: &str = include_str!("../../templates/component/Cargo.workspace.toml");
const STANDALONE_MANIFEST: &str = include_str!("../../templates/component/Cargo.standalone.toml");
const CONFIG: &str = include_str!("../../templates/component/component.toml");

/// What `corral new` wrote.
pub struct Scaffolded {
    pub dir: PathBuf,
    /// The config section that serves the component.
    pub config: String,
}

/// The SDK next to the sources this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/sdk")
}

/// Writes component `name` into `parent/name`, which must not exist yet.
pub fn new_component(name: &str, parent: &Path, sdk: &Path) -> anyhow::Result<Scaffolded> {
    crate::config::check_name(name).map_err(anyhow::Error::msg)?;
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let module = name.replace('-', "_");
    let in_workspace = is_corral_workspace(parent);
    let (manifest, wasm) = if in_workspace {
        (
            WORKSPACE_MANIFEST,
            format!("../target/wasm32-wasip2/release/{module}.wasm"),
        )
    } else {
        let wasm = std::path::absolute(dir.join("target/wasm32-wasip2/release"))?.join(format!("{module}.wasm"));
        (STANDALONE_MANIFEST, wasm.display().to_string())
    };
    let sdk = std::path::absolute(sdk)?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{table}}", &module)
            .replace("{{sdk}}", &sdk.display().to_string())
            .replace("{{wasm}}", &wasm)
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(manifest))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB))?;
    let config = fill(CONFIG);
    std::fs::write(dir.join("component.toml"), &config)?;
    Ok(Scaffolded { dir, config })
}

/// Whether `parent` is the `components/` folder of corral's workspace.
fn is_corral_workspace(parent: &Path) -> bool {
    let Some(root) = std::path::absolute(parent)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return false;
    };
    parent.file_name().is_some_and(|n| n == "components")
        && std::fs::read_to_string(root.join("Cargo.toml")).is_ok_and(|t| t.contains("\"components/*\""))
        && root.join("components/sdk").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(new_component("Bad Name", dir.path(), &default_sdk()).is_err());
        let made = new_component("to-do", dir.path(), &default_sdk()).unwrap();
        let lib = std::fs::read_to_string(made.dir.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("CREATE TABLE to_do") && lib.contains("\"/to-do/{id}\""),
            "{lib}"
        );
        assert!(made.config.contains("[components.to-do]") && made.config.contains("to_do.wasm"));
        assert!(
            new_component("to-do", dir.path(), &default_sdk()).is_err(),
            "exists already"
        );
    }
}
