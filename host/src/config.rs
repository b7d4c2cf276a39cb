//! The TOML config file: what the user wrote ([`RawConfig`], checked only for
//! shape) resolved into what the host runs with ([`Config`]), with every
//! problem in the file reported at once.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

/// The host's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths in it are relative to its folder.
    pub source: PathBuf,
    pub listen: SocketAddr,
    /// Where each component's `<name>.sqlite3` lives.
    pub data_dir: PathBuf,
    /// Where compiled components are cached between runs; none when absent.
    pub cache_dir: Option<PathBuf>,
    pub components: Vec<ComponentConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentConfig {
    pub name: String,
    pub wasm: PathBuf,
    /// Path prefixes this component owns, such as `/users`.
    pub routes: Vec<String>,
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const MAX_NAME_LEN: usize = 64;

/// Everything wrong with a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One thing wrong, at a dotted key such as `components.users.wasm`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            if problem.key.is_empty() {
                write!(f, "\n  {}", problem.message)?;
            } else {
                write!(f, "\n  {}: {}", problem.key, problem.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The file as written. Every field is optional here so that a missing one is
/// reported with the others instead of stopping the parse.
#[derive(Debug, Deserialize)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<String>,
    cache_dir: Option<String>,
    /// In file order, so problems and routes keep the order the user wrote.
    #[serde(default)]
    components: IndexMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    wasm: Option<String>,
    routes: Option<Vec<String>>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                message,
            }],
        };
        let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text, file, overrides)
    }

    /// Validates config text as if read from `file`.
    pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                message: e.to_string().trim_end().into(),
            }],
        })?;
        let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
            problems.add(path.to_string(), "unknown key")
        })
        .map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                message: e.to_string().trim_end().into(),
            }],
        })?;
        // Absolute, so that paths mean the same wherever they are used from.
        let base = std::path::absolute(file.parent().unwrap_or(Path::new("."))).unwrap_or_default();
        let config = resolve(raw, file, &base, overrides, &mut problems);
        match problems.0.is_empty() {
            true => Ok(config),
            false => Err(ConfigError {
                file: file.to_path_buf(),
                problems: problems.0,
            }),
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn resolve(
    raw: RawConfig,
    file: &Path,
    base: &Path,
    overrides: &Overrides,
    problems: &mut Problems,
) -> Config {
    let listen = overrides.listen.unwrap_or_else(|| {
        let text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        text.parse().unwrap_or_else(|_| {
            problems.add(
                "listen",
                format!("{text:?} is not an address such as {DEFAULT_LISTEN}"),
            );
            DEFAULT_LISTEN.parse().expect("the default address parses")
        })
    });
    let data_dir = match (&overrides.data_dir, &raw.data_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => base.join(dir),
        (None, None) => {
            problems.add(
                "data_dir",
                "is required: the folder where each component's database lives",
            );
            PathBuf::new()
        }
    };
    if data_dir.exists() && !data_dir.is_dir() {
        problems.add(
            "data_dir",
            format!("{} exists and is not a folder", data_dir.display()),
        );
    }
    let cache_dir = raw.cache_dir.map(|dir| base.join(dir));

    if raw.components.is_empty() {
        problems.add("components", "at least one component is required");
    }
    let mut components = Vec::new();
    for (name, component) in raw.components {
        let key = format!("components.{name}");
        if let Err(message) = check_name(&name) {
            problems.add(&key, message);
        }
        let wasm = match component.wasm {
            Some(path) => {
                let path = base.join(path);
                if !path.is_file() {
                    problems.add(
                        format!("{key}.wasm"),
                        format!(
                            "no such file: {} (run `just build` to build the components)",
                            path.display()
                        ),
                    );
                }
                path
            }
            None => {
                problems.add(
                    format!("{key}.wasm"),
                    "is required: the path of the component's .wasm file",
                );
                PathBuf::new()
            }
        };
        let routes = component.routes.unwrap_or_else(|| {
            problems.add(
                format!("{key}.routes"),
                "is required: the path prefixes the component serves",
            );
            Vec::new()
        });
        for (i, route) in routes.iter().enumerate() {
            if let Err(message) = check_route(route) {
                problems.add(format!("{key}.routes[{i}]"), message);
            }
        }
        components.push(ComponentConfig { name, wasm, routes });
    }
    check_overlaps(&components, problems);
    Config {
        source: file.to_path_buf(),
        listen,
        data_dir,
        cache_dir,
        components,
    }
}

/// Names become file names, log fields and metric labels, so they stay plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let starts_well = name.starts_with(|c: char| c.is_ascii_lowercase());
    if name.len() > MAX_NAME_LEN || !plain || !starts_well {
        return Err(format!(
            "{name:?} is not a valid component name: use 1 to {MAX_NAME_LEN} lowercase letters, digits, `-` or `_`, starting with a letter"
        ));
    }
    Ok(())
}

/// A route is `/` or a path prefix of plain segments without a trailing slash.
fn check_route(route: &str) -> Result<(), String> {
    if route == "/" {
        return Ok(());
    }
    let plain_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    };
    match route.strip_prefix('/') {
        Some(rest) if rest.split('/').all(plain_segment) => Ok(()),
        _ => Err(format!(
            "{route:?} is not a route: use a path prefix such as \"/users\" (a leading `/`, no trailing `/`, no query)"
        )),
    }
}

/// Whether a request under `a` could also be under `b`: one is `b` itself or
/// a prefix of the other at a segment boundary.
pub fn routes_overlap(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        short == "/"
            || long == short
            || long
                .strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    under(a, b) || under(b, a)
}

fn check_overlaps(components: &[ComponentConfig], problems: &mut Problems) {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let mut reported = HashSet::new();
    for component in components {
        for (i, route) in component.routes.iter().enumerate() {
            if check_route(route).is_err() {
                continue;
            }
            for (other_name, other_route) in &seen {
                if routes_overlap(route, other_route)
                    && reported.insert((component.name.as_str(), i))
                {
                    let owner = if *other_name == component.name {
                        "another route of this component".to_string()
                    } else {
                        format!("component {other_name}")
                    };
                    problems.add(
                        format!("components.{}.routes[{i}]", component.name),
                        format!("{route:?} overlaps {other_route:?} of {owner}"),
                    );
                }
            }
            seen.push((&component.name, route));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_at_segment_boundaries() {
        assert!(routes_overlap("/users", "/users"));
        assert!(routes_overlap("/users", "/users/admin"));
        assert!(routes_overlap("/", "/orders"));
        assert!(!routes_overlap("/users", "/usersx"));
        assert!(!routes_overlap("/users", "/orders"));
    }

    #[test]
    fn routes_are_plain_prefixes() {
        for good in ["/", "/users", "/api/v1/users", "/a-b_c.d~e"] {
            assert!(check_route(good).is_ok(), "{good}");
        }
        for bad in [
            "", "users", "/users/", "//x", "/a/../b", "/a?b", "/a b", "/ä",
        ] {
            assert!(check_route(bad).is_err(), "{bad}");
        }
    }
}
