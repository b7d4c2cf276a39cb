//! `[cluster]`: many hosts sharing their components' versions through NATS
//! JetStream, and `server.rate_limit_store`: rate limits shared through
//! Redis. Only the shape and its checks live here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::problems::Problems;
use super::tokens::TokenSource;

/// Many hosts as one: where the cluster's state is kept and who this host is.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// NATS servers with JetStream, `nats://host:port`.
    pub nats: Vec<String>,
    /// This host's name in the cluster, unique among its hosts.
    pub node: String,
    pub auth: NatsAuth,
    /// The URL other hosts reach this host's public listener at, to
    /// forward requests for the components it owns.
    pub advertise: Option<String>,
    /// How long a host that stops reporting is still counted as live.
    pub node_ttl: std::time::Duration,
    /// How this host picks another when it sends a request on.
    pub balance: Balance,
    /// This host's share of the requests others send on, against the
    /// other hosts' weights, with `balance = "weighted-random"`.
    pub weight: u32,
    /// How long a key that signs requests sent on between hosts is used
    /// before a new one replaces it.
    pub key_rotation: std::time::Duration,
    /// How many NATS servers keep each of the cluster's streams (its state,
    /// versions, and each replicated database's log): 3 survives the loss
    /// of one server.
    pub replicas: usize,
    /// The owner of a replicated database snapshots it every this many
    /// entries of its log, and trims the log to the entries after the
    /// snapshot before.
    pub snapshot_every: u64,
}

/// Where a component's committed writes are kept before a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// In a cluster, in the replicated log first, then in the owner's file.
    #[default]
    Replicated,
    /// In the owner's file only: lost with its disk.
    Local,
}

/// Which copy of a component's database its reads are served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFrom {
    /// The owner's: every read sees every acknowledged write.
    #[default]
    Owner,
    /// Any host's that follows the log within `max_replica_lag_ms`: a
    /// `GET` or `HEAD` is served by the host it reaches, and may miss
    /// writes acknowledged within that lag.
    Replica,
}

/// How a host picks among the other hosts that serve a component, when
/// all of its own slots for it are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    RoundRobin,
    Random,
    WeightedRandom,
}

/// How this host authenticates to NATS.
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    None,
    /// A `.creds` file (a JWT and an nkey seed).
    CredentialsFile(PathBuf),
    /// A token, from the config, the environment or a file.
    Token(TokenSource),
}

#[derive(Debug, Deserialize)]
pub struct RawCluster {
    /// One URL, as NATS clients take, or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub nats: Vec<String>,
    pub node: Option<String>,
    pub credentials_file: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    pub advertise: Option<String>,
    pub node_ttl_ms: Option<u64>,
    pub balance: Option<Balance>,
    pub weight: Option<u64>,
    pub key_rotation_ms: Option<u64>,
    pub replicas: Option<u64>,
    pub snapshot_every: Option<u64>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let servers = OneOrMany::deserialize(deserializer).map_err(|_| {
        serde::de::Error::custom("expected a NATS server URL, such as \"nats://127.0.0.1:4222\", or a list of them")
    })?;
    Ok(match servers {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// Where shared rate limits are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitStore {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...`.
    pub url: String,
}

pub fn resolve_cluster(raw: &RawCluster, base: &Path, problems: &mut Problems) -> ClusterConfig {
    if raw.nats.is_empty() {
        problems.add(
            "cluster.nats",
            "is required: the NATS servers, such as \"nats://127.0.0.1:4222\" or a list of them",
        );
    }
    for (i, url) in raw.nats.iter().enumerate() {
        let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
        if !scheme_ok || url.len() <= "nats://".len() {
            problems.add(
                format!("cluster.nats[{i}]"),
                format!("{url:?} is not a NATS server such as \"nats://127.0.0.1:4222\""),
            );
        }
    }
    let node = match &raw.node {
        Some(node) => {
            if let Err(why) = super::check_name(node) {
                problems.add("cluster.node", why.replace("component name", "node name"));
            }
            node.clone()
        }
        None => {
            problems.add("cluster.node", "is required: this host's name in the cluster");
            String::new()
        }
    };
    let auth = match (&raw.credentials_file, &raw.token, &raw.token_env, &raw.token_file) {
        (None, None, None, None) => NatsAuth::None,
        (Some(file), None, None, None) => NatsAuth::CredentialsFile(base.join(file)),
        (None, Some(token), None, None) => NatsAuth::Token(TokenSource::Literal(token.clone())),
        (None, None, Some(var), None) => NatsAuth::Token(TokenSource::Env(var.clone())),
        (None, None, None, Some(file)) => NatsAuth::Token(TokenSource::File(base.join(file))),
        _ => {
            problems.add(
                "cluster",
                "give at most one of credentials_file, token, token_env and token_file",
            );
            NatsAuth::None
        }
    };
    // Requests are sent on to the advertised address with their own path,
    // so it is a scheme, host and port and nothing else.
    let bare_origin = |url: &str| {
        url.parse::<http::Uri>().is_ok_and(|uri| {
            uri.scheme_str() == Some("http")
                && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none()
        })
    };
    if let Some(advertise) = &raw.advertise
        && !bare_origin(advertise)
    {
        problems.add(
            "cluster.advertise",
            format!("{advertise:?} is not a URL such as \"http://10.0.0.5:8080\""),
        );
    }
    let ttl_ms = problems
        .ranged("cluster.node_ttl_ms", raw.node_ttl_ms, 1_000, 600_000)
        .unwrap_or(15_000);
    ClusterConfig {
        nats: raw.nats.clone(),
        node,
        auth,
        advertise: raw.advertise.clone(),
        node_ttl: std::time::Duration::from_millis(ttl_ms),
        balance: raw.balance.unwrap_or(Balance::RoundRobin),
        weight: problems.ranged("cluster.weight", raw.weight, 1, 1_000).unwrap_or(100) as u32,
        key_rotation: std::time::Duration::from_millis(
            problems
                .ranged(
                    "cluster.key_rotation_ms",
                    raw.key_rotation_ms,
                    10_000,
                    30 * 24 * 3_600_000,
                )
                .unwrap_or(3_600_000),
        ),
        replicas: problems.ranged("cluster.replicas", raw.replicas, 1, 5).unwrap_or(3) as usize,
        snapshot_every: problems
            .ranged("cluster.snapshot_every", raw.snapshot_every, 10, 10_000_000)
            .unwrap_or(5_000),
    }
}

pub fn resolve_rate_limit_store(url: &str, problems: &mut Problems) -> Option<RateLimitStore> {
    let valid = ["redis://", "rediss://"].iter().any(|s| url.starts_with(s)) && url.len() > "redis://".len();
    if !valid {
        problems.add(
            "server.rate_limit_store",
            format!("{url:?} is not a Redis URL such as \"redis://127.0.0.1:6379\""),
        );
        return None;
    }
    Some(RateLimitStore { url: url.to_string() })
}
