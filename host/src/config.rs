//! The TOML config file: what the user wrote ([`RawConfig`], checked only for
//! shape) resolved into what the host runs with ([`Config`]), with every
//! problem in the file reported at once.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::client::TrustedProxies;
use crate::limits::ComponentLimits;
use crate::ratelimit::{RateLimit, RateLimitConfig, Scope};
use crate::router::RoutePattern;
use crate::server::ServerSettings;

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
    pub server: ServerConfig,
    /// The admin listener; none when the file has no `[admin]`.
    pub admin: Option<AdminConfig>,
    pub components: Vec<ComponentConfig>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: TokenSource,
    /// The largest `.wasm` an upload may carry.
    pub max_upload_bytes: usize,
    /// Serve the admin API on an address other machines can reach.
    pub allow_remote: bool,
}

/// Where the admin token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// Written in the config.
    Literal(String),
    /// Read from this environment variable.
    Env(String),
    /// Read from this file, which the host creates with a random token when
    /// it does not exist.
    File(PathBuf),
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Shorter tokens are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// Host-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub settings: ServerSettings,
    pub trusted_proxies: TrustedProxies,
    /// Component instances alive at once across the host.
    pub max_instances: u32,
    /// Client addresses one rate limit tracks before they share a bucket.
    pub max_rate_limit_clients: usize,
    /// Threads that run SQL for every component together.
    pub sql_threads: usize,
    /// The most memory SQLite may allocate, for every database together.
    pub sqlite_heap_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentConfig {
    pub name: String,
    pub wasm: PathBuf,
    /// Path prefixes this component owns, such as `/users`.
    pub routes: Vec<String>,
    pub limits: ComponentLimits,
    pub rate_limits: RateLimitConfig,
    /// Reload the component when its `.wasm` changes on disk.
    pub watch: bool,
    /// Which component provides an imported interface, where several export it.
    pub imports: BTreeMap<String, String>,
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Watch every component's file.
    pub watch: bool,
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
        let plural = if n == 1 { "" } else { "s" };
        write!(f, "{}: {n} problem{plural}", self.file.display())?;
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
    #[serde(default)]
    server: RawServer,
    admin: Option<RawAdmin>,
    /// Defaults for every component.
    #[serde(default)]
    limits: RawLimits,
    /// In file order, so problems and routes keep the order the user wrote.
    #[serde(default)]
    components: IndexMap<String, RawComponent>,
}

#[derive(Debug, Default, Deserialize)]
struct RawServer {
    max_connections: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    max_headers: Option<u64>,
    max_header_kib: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    max_instances: Option<u64>,
    max_rate_limit_clients: Option<u64>,
    max_connections_per_client: Option<u64>,
    body_timeout_ms: Option<u64>,
    body_min_bytes_per_sec: Option<u64>,
    write_timeout_ms: Option<u64>,
    sql_threads: Option<u64>,
    sqlite_heap_mib: Option<u64>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RawLimits {
    memory_mib: Option<u64>,
    table_elements: Option<u64>,
    instances: Option<u64>,
    cpu_time_ms: Option<u64>,
    timeout_ms: Option<u64>,
    max_concurrent: Option<u64>,
    max_queued: Option<u64>,
    queue_timeout_ms: Option<u64>,
    request_body_kib: Option<u64>,
    response_body_kib: Option<u64>,
    call_payload_kib: Option<u64>,
    db_size_mib: Option<u64>,
    db_statement_timeout_ms: Option<u64>,
    db_max_rows: Option<u64>,
    db_max_result_kib: Option<u64>,
    db_max_value_kib: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
    max_upload_mib: Option<u64>,
    allow_remote: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    wasm: Option<String>,
    routes: Option<Vec<String>>,
    watch: Option<bool>,
    #[serde(default)]
    imports: BTreeMap<String, String>,
    limits: Option<RawLimits>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
struct RawRateLimit {
    rate: Option<String>,
    burst: Option<u64>,
    per: Option<String>,
    #[serde(default)]
    routes: Vec<RawRouteLimit>,
}

#[derive(Debug, Deserialize)]
struct RawRouteLimit {
    route: Option<String>,
    rate: Option<String>,
    burst: Option<u64>,
    per: Option<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::single(file, format!("cannot read: {e}")))?;
        Self::parse(&text, file, overrides)
    }

    /// Validates config text as if read from `file`.
    pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let shape_error = |e: toml::de::Error| ConfigError::single(file, e.to_string().trim_end());
        let mut problems = Problems::default();
        let deserializer = toml::Deserializer::parse(text).map_err(shape_error)?;
        // serde_ignored writes `?` for the inside of an Option; keys read better without it.
        let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
            problems.add(path.to_string().replace(".?", ""), "unknown key")
        })
        .map_err(shape_error)?;
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

impl ConfigError {
    fn single(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                message: message.into(),
            }],
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

    /// `value` if it lies in `min..=max`, else a problem and `None`.
    fn ranged(&mut self, key: impl Into<String>, value: Option<u64>, min: u64, max: u64) -> Option<u64> {
        let value = value?;
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.add(key, format!("{value} is out of range: use {min} to {max}"));
            None
        }
    }
}

fn resolve(raw: RawConfig, file: &Path, base: &Path, overrides: &Overrides, problems: &mut Problems) -> Config {
    let listen = overrides.listen.unwrap_or_else(|| {
        let text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        text.parse().unwrap_or_else(|_| {
            problems.add("listen", format!("{text:?} is not an address such as {DEFAULT_LISTEN}"));
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
        problems.add("data_dir", format!("{} exists and is not a folder", data_dir.display()));
    }
    let cache_dir = raw.cache_dir.map(|dir| base.join(dir));
    let server = resolve_server(&raw.server, problems);
    let admin = raw
        .admin
        .as_ref()
        .map(|admin| resolve_admin(admin, base, &data_dir, problems));
    let defaults = resolve_limits(&raw.limits, &ComponentLimits::default(), "limits", problems);

    if raw.components.is_empty() {
        problems.add("components", "at least one component is required");
    }
    let mut components = Vec::new();
    for (name, component) in raw.components {
        components.push(resolve_component(
            name,
            component,
            base,
            &defaults,
            overrides.watch,
            problems,
        ));
    }
    check_overlaps(&components, problems);
    for component in &components {
        for (interface, provider) in &component.imports {
            if !components.iter().any(|c| &c.name == provider) {
                problems.add(
                    format!("components.{}.imports.\"{interface}\"", component.name),
                    format!("{provider:?} is not a configured component"),
                );
            }
        }
    }
    let concurrent: u64 = components.iter().map(|c| c.limits.max_concurrent as u64).sum();
    if concurrent > u64::from(server.max_instances) {
        problems.add(
            "server.max_instances",
            format!(
                "{} is less than the components' max_concurrent added up ({concurrent})",
                server.max_instances
            ),
        );
    }
    Config {
        source: file.to_path_buf(),
        listen,
        data_dir,
        cache_dir,
        server,
        admin,
        components,
    }
}

fn resolve_admin(raw: &RawAdmin, base: &Path, data_dir: &Path, problems: &mut Problems) -> AdminConfig {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen: SocketAddr = text.parse().unwrap_or_else(|_| {
        problems.add(
            "admin.listen",
            format!("{text:?} is not an address such as {DEFAULT_ADMIN_LISTEN}"),
        );
        DEFAULT_ADMIN_LISTEN.parse().expect("the default address parses")
    });
    let token = match (&raw.token, &raw.token_env, &raw.token_file) {
        (Some(token), None, None) => {
            if token.len() < MIN_TOKEN_LEN {
                problems.add("admin.token", format!("is shorter than {MIN_TOKEN_LEN} characters"));
            }
            TokenSource::Literal(token.clone())
        }
        (None, Some(var), None) => TokenSource::Env(var.clone()),
        (None, None, Some(file)) => TokenSource::File(base.join(file)),
        (None, None, None) => TokenSource::File(data_dir.join("admin.token")),
        _ => {
            problems.add("admin", "give at most one of token, token_env and token_file");
            TokenSource::File(data_dir.join("admin.token"))
        }
    };
    let max_upload_mib = problems
        .ranged("admin.max_upload_mib", raw.max_upload_mib, 1, 1024)
        .unwrap_or(64);
    let allow_remote = raw.allow_remote.unwrap_or(false);
    if !listen.ip().is_loopback() && !allow_remote {
        problems.add(
            "admin.listen",
            format!(
                "{listen} is reachable from other machines: the admin API can replace every component; \
                 use a loopback address, or set admin.allow_remote = true behind a firewall"
            ),
        );
    }
    AdminConfig {
        listen,
        token,
        max_upload_bytes: (max_upload_mib << 20) as usize,
        allow_remote,
    }
}

fn resolve_server(raw: &RawServer, problems: &mut Problems) -> ServerConfig {
    let defaults = ServerSettings::default();
    let ms = |v: u64| Duration::from_millis(v);
    let mut settings = defaults.clone();
    if let Some(v) = problems.ranged("server.max_connections", raw.max_connections, 1, 1_000_000) {
        settings.max_connections = v as usize;
    }
    if let Some(v) = problems.ranged(
        "server.header_read_timeout_ms",
        raw.header_read_timeout_ms,
        1,
        3_600_000,
    ) {
        settings.header_read_timeout = ms(v);
    }
    if let Some(v) = problems.ranged("server.max_headers", raw.max_headers, 1, 10_000) {
        settings.max_headers = v as usize;
    }
    if let Some(v) = problems.ranged("server.max_header_kib", raw.max_header_kib, 1, 1024) {
        settings.max_header_bytes = (v << 10) as usize;
    }
    if let Some(v) = problems.ranged("server.shutdown_grace_ms", raw.shutdown_grace_ms, 0, 3_600_000) {
        settings.shutdown_grace = ms(v);
    }
    if let Some(v) = problems.ranged(
        "server.max_connections_per_client",
        raw.max_connections_per_client,
        1,
        1_000_000,
    ) {
        settings.max_connections_per_client = v as usize;
    }
    if let Some(v) = problems.ranged("server.body_timeout_ms", raw.body_timeout_ms, 1, 3_600_000) {
        settings.body_timeout = ms(v);
    }
    if let Some(v) = problems.ranged("server.body_min_bytes_per_sec", raw.body_min_bytes_per_sec, 0, 1 << 30) {
        settings.body_min_bytes_per_sec = v;
    }
    if let Some(v) = problems.ranged("server.write_timeout_ms", raw.write_timeout_ms, 1, 3_600_000) {
        settings.write_timeout = ms(v);
    }
    let max_instances = problems
        .ranged("server.max_instances", raw.max_instances, 1, 100_000)
        .unwrap_or(1000);
    let max_rate_limit_clients = problems
        .ranged(
            "server.max_rate_limit_clients",
            raw.max_rate_limit_clients,
            1,
            100_000_000,
        )
        .unwrap_or(1_000_000);
    let sql_threads = problems
        .ranged("server.sql_threads", raw.sql_threads, 1, 1024)
        .unwrap_or(8);
    let sqlite_heap_mib = problems
        .ranged("server.sqlite_heap_mib", raw.sqlite_heap_mib, 16, 1 << 20)
        .unwrap_or(256);
    let mut proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => proxies.push(net),
            Err(_) => problems.add(
                format!("server.trusted_proxies[{i}]"),
                format!("{text:?} is not an address or network such as \"10.0.0.0/8\""),
            ),
        }
    }
    ServerConfig {
        settings,
        trusted_proxies: TrustedProxies(proxies),
        max_instances: max_instances as u32,
        max_rate_limit_clients: max_rate_limit_clients as usize,
        sql_threads: sql_threads as usize,
        sqlite_heap_bytes: sqlite_heap_mib << 20,
    }
}

/// Limits written under `key`, over `defaults`.
fn resolve_limits(raw: &RawLimits, defaults: &ComponentLimits, key: &str, problems: &mut Problems) -> ComponentLimits {
    const HOUR_MS: u64 = 3_600_000;
    const GIB_IN_KIB: u64 = 1 << 20;
    let mut limits = defaults.clone();
    let mut get = |field: &str, value: Option<u64>, min: u64, max: u64| {
        problems.ranged(format!("{key}.{field}"), value, min, max)
    };
    let ms = Duration::from_millis;
    if let Some(v) = get("memory_mib", raw.memory_mib, 1, 4096) {
        limits.memory_bytes = (v << 20) as usize;
    }
    if let Some(v) = get("table_elements", raw.table_elements, 1, 10_000_000) {
        limits.table_elements = v as usize;
    }
    if let Some(v) = get("instances", raw.instances, 1, 10_000) {
        limits.instances = v as usize;
    }
    if let Some(v) = get("cpu_time_ms", raw.cpu_time_ms, 1, HOUR_MS) {
        limits.cpu_time = ms(v);
    }
    if let Some(v) = get("timeout_ms", raw.timeout_ms, 1, HOUR_MS) {
        limits.timeout = ms(v);
    }
    if let Some(v) = get("max_concurrent", raw.max_concurrent, 1, 100_000) {
        limits.max_concurrent = v as usize;
    }
    if let Some(v) = get("max_queued", raw.max_queued, 0, 1_000_000) {
        limits.max_queued = v as usize;
    }
    if let Some(v) = get("queue_timeout_ms", raw.queue_timeout_ms, 0, HOUR_MS) {
        limits.queue_timeout = ms(v);
    }
    if let Some(v) = get("request_body_kib", raw.request_body_kib, 0, GIB_IN_KIB) {
        limits.max_request_body_bytes = (v << 10) as usize;
    }
    if let Some(v) = get("response_body_kib", raw.response_body_kib, 1, GIB_IN_KIB) {
        limits.max_response_body_bytes = (v << 10) as usize;
    }
    if let Some(v) = get("call_payload_kib", raw.call_payload_kib, 1, GIB_IN_KIB) {
        limits.max_call_bytes = (v << 10) as usize;
    }
    if let Some(v) = get("db_size_mib", raw.db_size_mib, 1, GIB_IN_KIB) {
        limits.db.max_size_bytes = v << 20;
    }
    if let Some(v) = get("db_statement_timeout_ms", raw.db_statement_timeout_ms, 1, HOUR_MS) {
        limits.db.statement_timeout = ms(v);
    }
    if let Some(v) = get("db_max_rows", raw.db_max_rows, 1, 100_000_000) {
        limits.db.max_result_rows = v as usize;
    }
    if let Some(v) = get("db_max_result_kib", raw.db_max_result_kib, 1, GIB_IN_KIB) {
        limits.db.max_result_bytes = (v << 10) as usize;
    }
    if let Some(v) = get("db_max_value_kib", raw.db_max_value_kib, 1, 256 << 10) {
        limits.db.max_value_bytes = (v << 10) as usize;
    }
    limits
}

fn resolve_component(
    name: String,
    raw: RawComponent,
    base: &Path,
    defaults: &ComponentLimits,
    watch_all: bool,
    problems: &mut Problems,
) -> ComponentConfig {
    let key = format!("components.{name}");
    if let Err(message) = check_name(&name) {
        problems.add(&key, message);
    }
    let wasm = match raw.wasm {
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
    let routes = raw.routes.unwrap_or_else(|| {
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
    let limits = match &raw.limits {
        Some(own) => resolve_limits(own, defaults, &format!("{key}.limits"), problems),
        None => defaults.clone(),
    };
    let rate_limits = match raw.rate_limit {
        Some(raw) => resolve_rate_limits(raw, &routes, &format!("{key}.rate_limit"), problems),
        None => RateLimitConfig::default(),
    };
    ComponentConfig {
        name,
        wasm,
        routes,
        limits,
        rate_limits,
        watch: raw.watch.unwrap_or(false) || watch_all,
        imports: raw.imports,
    }
}

fn resolve_rate_limits(raw: RawRateLimit, routes: &[String], key: &str, problems: &mut Problems) -> RateLimitConfig {
    let component = match &raw.rate {
        Some(_) => rate_limit(raw.rate.as_deref(), raw.burst, raw.per.as_deref(), key, problems),
        None => {
            if raw.burst.is_some() || raw.per.is_some() {
                problems.add(format!("{key}.rate"), "is required with burst or per");
            } else if raw.routes.is_empty() {
                problems.add(format!("{key}.rate"), "is required: a rate such as \"10/minute\"");
            }
            None
        }
    };
    let mut route_limits = Vec::new();
    for (i, route) in raw.routes.into_iter().enumerate() {
        let key = format!("{key}.routes[{i}]");
        let pattern = match route.route.as_deref().map(str::parse::<RoutePattern>) {
            Some(Ok(pattern)) if routes.iter().any(|prefix| pattern.is_under(prefix)) => Some(pattern),
            Some(Ok(pattern)) => {
                problems.add(
                    format!("{key}.route"),
                    format!("{pattern} is not under any of this component's routes"),
                );
                None
            }
            Some(Err(message)) => {
                problems.add(format!("{key}.route"), message);
                None
            }
            None => {
                problems.add(
                    format!("{key}.route"),
                    "is required: a method and path such as \"GET /users/{id}\"",
                );
                None
            }
        };
        let limit = rate_limit(route.rate.as_deref(), route.burst, route.per.as_deref(), &key, problems);
        if let (Some(pattern), Some(limit)) = (pattern, limit) {
            route_limits.push((pattern, limit));
        }
    }
    RateLimitConfig {
        component,
        routes: route_limits,
    }
}

fn rate_limit(
    rate: Option<&str>,
    burst: Option<u64>,
    per: Option<&str>,
    key: &str,
    problems: &mut Problems,
) -> Option<RateLimit> {
    let rate = match rate.map(str::parse::<crate::ratelimit::Rate>) {
        Some(Ok(rate)) => Some(rate),
        Some(Err(message)) => {
            problems.add(format!("{key}.rate"), message);
            None
        }
        None => {
            problems.add(format!("{key}.rate"), "is required: a rate such as \"10/minute\"");
            None
        }
    };
    let burst = problems.ranged(format!("{key}.burst"), burst, 1, u64::from(u32::MAX));
    let scope = match per {
        None | Some("client") => Some(Scope::Client),
        Some("global") => Some(Scope::Global),
        Some(other) => {
            problems.add(
                format!("{key}.per"),
                format!("{other:?} is not \"client\" or \"global\""),
            );
            None
        }
    };
    let rate = rate?;
    let burst = burst.map_or(rate.count, |b| NonZeroU32::new(b as u32).expect("burst is at least 1"));
    Some(RateLimit {
        rate,
        burst,
        scope: scope?,
    })
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
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
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
        short == "/" || long == short || long.strip_prefix(short).is_some_and(|rest| rest.starts_with('/'))
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
                if routes_overlap(route, other_route) && reported.insert((component.name.as_str(), i)) {
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
        for bad in ["", "users", "/users/", "//x", "/a/../b", "/a?b", "/a b", "/ä"] {
            assert!(check_route(bad).is_err(), "{bad}");
        }
    }
}
