//! The shape of the code, as ARCHITECTURE.md states it: layers only look
//! up, and inside a folder files do not import each other in circles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host's layers, lowest first.
const LAYERS: [&str; 9] = [
    "config",
    "limits",
    "capabilities",
    "wasm",
    "components",
    "events",
    "cluster",
    "serving",
    "ops",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The code of a file, without its tests, comments and string literals.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut code = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut in_string = false;
        for c in line.chars() {
            if c == '"' {
                in_string = !in_string;
            } else if !in_string {
                code.push(c);
            }
        }
        code.push('\n');
    }
    code
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Whether `code` names the module `name` under `prefix` (`super::name`,
/// `crate::layer::name`, or inside a `{...}` group after the prefix).
fn names(code: &str, prefix: &str, name: &str) -> bool {
    code.match_indices(prefix).any(|(at, _)| {
        let rest = &code[at + prefix.len()..];
        let word =
            |s: &str| s.starts_with(name) && !s[name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if word(rest) {
            return true;
        }
        rest.strip_prefix('{')
            .and_then(|group| group.split('}').next())
            .is_some_and(|group| group.split(',').any(|item| word(item.trim())))
    })
}

#[test]
fn layers_only_look_up() {
    let src = root().join("host/src");
    let mut wrong = Vec::new();
    for (level, layer) in LAYERS.iter().enumerate() {
        for file in rust_files(&src.join(layer)) {
            let code = code(&file);
            for higher in &LAYERS[level + 1..] {
                if names(&code, "crate::", higher) {
                    wrong.push(format!("{} uses {higher}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run upward:\n{}", wrong.join("\n"));
}

/// Each module of `dir` (a file, or a folder as one) and the files it holds.
fn modules(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            modules.insert(name, rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "mod" && name != "lib" {
            modules.insert(name, vec![path]);
        }
    }
    modules
}

/// Pairs of modules of `dir` that import each other.
fn circles(dir: &Path, prefix: &str) -> Vec<String> {
    let modules = modules(dir);
    let mut edges = BTreeSet::new();
    for (module, files) in &modules {
        let code: String = files.iter().map(|f| code(f)).collect();
        for other in modules.keys().filter(|o| *o != module) {
            if names(&code, "super::", other) || names(&code, prefix, other) {
                edges.insert((module.clone(), other.clone()));
            }
        }
    }
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{}: {a} <-> {b}", dir.display()))
        .collect()
}

#[test]
fn files_in_a_folder_import_no_circle() {
    let mut found = Vec::new();
    for layer in LAYERS {
        found.extend(circles(
            &root().join("host/src").join(layer),
            &format!("crate::{layer}::"),
        ));
    }
    // Not yet inside `capabilities/sqlite/`, whose pool, connection,
    // statement and group-commit files still need each other.
    found.extend(circles(&root().join("components/sdk/src"), "crate::"));
    assert!(found.is_empty(), "files that import each other:\n{}", found.join("\n"));
}

#[test]
fn the_checks_see_an_import() {
    assert!(names("use super::{a, version::Origin};", "super::", "version"));
    assert!(names("use crate::wasm::state::Target;", "crate::", "wasm"));
    assert!(!names("use crate::wasmtime_thing;", "crate::", "wasm"));
}
