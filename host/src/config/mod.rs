//! The TOML config file: what the user wrote (`raw`, checked only for
//! shape) resolved into what the host runs with ([`Config`], `resolve`),
//! with every problem in the file reported at once. The lowest layer: the
//! types it resolves into ([`ComponentLimits`], [`ServerSettings`], rates,
//! routes, token sources) are its own, and the rest of the host reads them.
//!
//! - [`settings`]: every numeric setting, declared once.
//! - [`routes`]: route prefixes and patterns.
//! - [`rates`]: rate limits as written.
//! - [`events`]: topics a component publishes, and its subscription.
//! - [`outbound`]: where a component may send HTTP requests.
//! - [`tokens`]: where the admin token comes from.
//! - `problems`: what is wrong with a file, each under its dotted key.

#[macro_use]
pub mod settings;
pub mod cluster;
pub mod events;
pub mod outbound;
mod problems;
pub mod rates;
mod raw;
pub(crate) mod resolve;
pub use resolve::{check_name, unheard_topics};
pub mod routes;
pub mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use cluster::{Durability, ReadFrom};
pub use events::{EventsConfig, Subscription, TopicPattern};
pub use problems::{Problem, Problems};
pub use rates::{Rate, RateLimit, RateLimitConfig, Scope};
pub use routes::RoutePattern;
pub use settings::{ComponentLimits, ServerSettings};
pub use tokens::TokenSource;

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
    /// Many hosts as one; none for a host on its own.
    pub cluster: Option<cluster::ClusterConfig>,
    /// How components are fetched from OCI registries.
    pub registries: RegistriesConfig,
    /// Where traces go, if anywhere.
    pub telemetry: TelemetryConfig,
    pub components: Vec<ComponentConfig>,
    /// Things worth saying that do not stop the host, such as a
    /// subscription no component publishes to.
    pub warnings: Vec<String>,
}

/// Host-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub settings: ServerSettings,
    pub trusted_proxies: TrustedProxies,
    /// Where rate limits shared by every host are kept; each host counts
    /// on its own when none.
    pub rate_limit_store: Option<cluster::RateLimitStore>,
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

/// How the host reaches OCI registries, for components whose `wasm` is an
/// `oci://` reference and for `corral push` and `pull`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistriesConfig {
    /// Registries (`host[:port]`) reached over plain HTTP; every other one
    /// over HTTPS, its certificate verified.
    pub insecure: Vec<String>,
    /// Certificate authorities to trust besides the system's, in one PEM file.
    pub ca_file: Option<PathBuf>,
    /// The largest component downloaded.
    pub max_download_bytes: u64,
    /// Where downloaded components are kept, by digest.
    pub cache_dir: PathBuf,
}

/// Traces of requests, exported over OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector's base URL (`/v1/traces` is added); none
    /// exports nothing.
    pub otlp_endpoint: Option<String>,
    /// The share of traces this host starts that are kept (a trace a
    /// caller started is kept as the caller decided).
    pub sample_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
}

/// The scheme of a component in an OCI registry.
pub const OCI_SCHEME: &str = "oci://";

/// Where a component's code comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum WasmSource {
    /// A `.wasm` file.
    File(PathBuf),
    /// An artifact in an OCI registry: `registry/repository:tag` or
    /// `registry/repository@sha256:<digest>`, without the scheme.
    Oci(String),
}

impl WasmSource {
    /// The source `text` names: an `oci://` reference or a path, relative
    /// paths taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<WasmSource, String> {
        let Some(reference) = text.strip_prefix(OCI_SCHEME) else {
            return Ok(WasmSource::File(base.join(text)));
        };
        reference.parse::<oci_client::Reference>().map_err(|e| {
            format!("{text:?} is not a reference such as \"oci://registry.example.com/shop/users:1.4.0\": {e}")
        })?;
        Ok(WasmSource::Oci(reference.to_string()))
    }

    /// The file, if the code is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            WasmSource::File(path) => Some(path),
            WasmSource::Oci(_) => None,
        }
    }
}

impl fmt::Display for WasmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WasmSource::File(path) => write!(f, "{}", path.display()),
            WasmSource::Oci(reference) => write!(f, "{OCI_SCHEME}{reference}"),
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentConfig {
    pub name: String,
    pub wasm: WasmSource,
    /// Path prefixes this component owns, such as `/users`.
    pub routes: Vec<String>,
    pub limits: ComponentLimits,
    pub rate_limits: RateLimitConfig,
    /// Reload the component when its `.wasm` file changes.
    pub watch: bool,
    /// Which component provides an imported interface, where several export it.
    pub imports: BTreeMap<String, String>,
    pub events: EventsConfig,
    /// Where it may send HTTP requests; nowhere when empty.
    pub allowed_outbound_hosts: Vec<outbound::HostPattern>,
    /// In a cluster, the host that owns its database, if the config says.
    pub owner: Option<String>,
    /// In a cluster, whether its database's commits go to the replicated log.
    pub durability: Durability,
    /// In a cluster, which copy of its database reads are served from.
    pub read_from: ReadFrom,
    /// How long ago a replica must have held its whole log to serve a read.
    pub max_replica_lag: std::time::Duration,
}

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn trusts(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Watch every component's file.
    pub watch: bool,
}

/// Everything wrong with a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
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
        let raw: raw::RawConfig = serde_ignored::deserialize(deserializer, |path| {
            problems.add(path.to_string().replace(".?", ""), "unknown key")
        })
        .map_err(shape_error)?;
        // Absolute, so that paths mean the same wherever they are used from.
        // A bare file name's parent is "": the current folder.
        let parent = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_default();
        let config = resolve::config(raw, file, &base, overrides, &mut problems);
        match problems.is_empty() {
            true => Ok(config),
            false => Err(ConfigError {
                file: file.to_path_buf(),
                problems: problems.into_vec(),
            }),
        }
    }
}
