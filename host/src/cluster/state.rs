//! What the cluster keeps in NATS JetStream: for each component, the
//! versions every host should serve ([`Desired`], in the `corral_desired`
//! key-value bucket); for each host, what it serves ([`NodeReport`], in
//! `corral_nodes`, expiring when the host stops reporting); and the code
//! of every version, by sha256, in the `corral_versions` object store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::components::versions::{Canary, Versions};

pub const DESIRED_BUCKET: &str = "corral_desired";
pub const NODES_BUCKET: &str = "corral_nodes";
pub const VERSIONS_BUCKET: &str = "corral_versions";

/// What every host should serve for one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Desired {
    /// The versions, by digest.
    #[serde(flatten)]
    pub versions: Versions<String>,
    /// The host that owns the component's database, for a component that
    /// has one; the others forward its requests there.
    #[serde(default)]
    pub owner: Option<String>,
    /// Which host made the last change, and which change it was.
    pub changed_by: String,
    pub change: String,
}

/// A change the cluster made: what every host now serves, and the
/// reports of the hosts that took it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Changed {
    pub component: String,
    pub desired: Desired,
    pub nodes: Vec<NodeReport>,
}

/// The cluster as one host sees it: what every host should serve, and
/// what each live host reports.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The host that answered.
    pub node: String,
    /// It serves what the cluster wants.
    pub converged: bool,
    pub desired: BTreeMap<String, Desired>,
    pub nodes: Vec<NodeReport>,
}

/// The ids of the keys the cluster's key ring holds, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyIds {
    pub keys: Vec<String>,
}

/// What one host serves, reported every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeReport {
    pub node: String,
    /// The process reporting: a host restarted under the same name is
    /// another instance.
    #[serde(default)]
    pub instance: String,
    /// Where other hosts forward requests for the components it owns.
    pub public_url: Option<String>,
    /// It has converged to the cluster's state at least once.
    pub ready: bool,
    /// Its share of requests sent on by others (`cluster.weight`).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
    pub components: BTreeMap<String, ComponentReport>,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ComponentReport {
    /// The version it serves.
    pub current: String,
    #[serde(default)]
    pub canary: Option<Canary<String>>,
    /// The owner this host sends the component's requests to, if it has a
    /// database.
    #[serde(default)]
    pub owner: Option<String>,
    /// Why it does not serve what the cluster wants, with what that was.
    #[serde(default)]
    pub error: Option<ConvergeError>,
    /// How far into the component's replicated log its copy is, if the
    /// component's database is replicated.
    #[serde(default)]
    pub place: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConvergeError {
    pub wanted: String,
    pub wanted_canary: Option<String>,
    pub message: String,
}

impl ComponentReport {
    /// Whether it serves what `desired` asks for.
    pub fn serves(&self, desired: &Desired) -> bool {
        self.current == desired.versions.current
            && self.canary == desired.versions.canary
            && self.owner == desired.owner
    }

    /// Whether it tried `desired` and could not take it.
    pub fn refused(&self, desired: &Desired) -> Option<&str> {
        let error = self.error.as_ref()?;
        let wanted_canary = desired.versions.canary.as_ref().map(|c| &c.version);
        (error.wanted == desired.versions.current && error.wanted_canary.as_ref() == wanted_canary)
            .then_some(&error.message)
    }
}
