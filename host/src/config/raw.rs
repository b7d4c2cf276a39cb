//! The config file as written: every field optional, so that a missing one
//! is reported with the others instead of stopping the parse.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Deserialize;

use super::cluster::RawCluster;
use super::events::RawSubscription;
use super::settings::{RawLimits, RawServer};

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub cache_dir: Option<String>,
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub registries: RawRegistries,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Defaults for every component.
    #[serde(default)]
    pub limits: RawLimits,
    /// In file order, so problems and routes keep the order the user wrote.
    #[serde(default)]
    pub components: IndexMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    pub max_upload_mib: Option<u64>,
    pub allow_remote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRegistries {
    #[serde(default)]
    pub insecure: Vec<String>,
    pub ca_file: Option<String>,
    pub max_download_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawComponent {
    pub wasm: Option<String>,
    pub routes: Option<Vec<String>>,
    pub watch: Option<bool>,
    #[serde(default)]
    pub imports: BTreeMap<String, String>,
    pub limits: Option<RawLimits>,
    pub rate_limit: Option<RawRateLimit>,
    /// Topics it may publish to.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// Where it may send HTTP requests.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    pub subscription: Option<RawSubscription>,
    /// In a cluster, the host that owns its database.
    pub owner: Option<String>,
    /// In a cluster, where its committed writes are kept first.
    pub durability: Option<super::cluster::Durability>,
    /// In a cluster, which copy of its database reads are served from.
    pub read_from: Option<super::cluster::ReadFrom>,
    /// How far behind its owner a replica that serves reads may be.
    pub max_replica_lag_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct RawRateLimit {
    pub rate: Option<String>,
    pub burst: Option<u64>,
    pub per: Option<String>,
    #[serde(default)]
    pub routes: Vec<RawRouteLimit>,
}

#[derive(Debug, Deserialize)]
pub struct RawRouteLimit {
    pub route: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<u64>,
    pub per: Option<String>,
}
