//! The admin API's answers as types: the server writes them and the CLI
//! reads them, so the two cannot drift apart unnoticed. (`GET /components`
//! is still described as JSON by the server and read by field.)

use serde::{Deserialize, Serialize};

pub use crate::cluster::Changed as ClusterChange;
pub use crate::components::control::Reloaded;
pub use crate::components::registry::Change;
pub use crate::events::DeadLetter;

/// What a swap, rollback or promote did: on this host, or on every host of
/// a cluster.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Changed {
    Cluster(ClusterChange),
    Host(Change),
}

/// `GET /events`: who publishes what, and where each subscriber stands.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Events {
    pub publishers: Vec<Publisher>,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Publisher {
    pub component: String,
    /// The topic patterns its config allows.
    pub topics: Vec<String>,
}

/// A subscriber and its backlog. One no longer subscribed (a reload
/// removed its subscription) is `removed`, with what still waits for it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Subscription {
    pub subscriber: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    #[serde(default)]
    pub topics: Vec<String>,
    /// `key` or `none`.
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default)]
    pub exactly_once: Option<bool>,
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// Waiting, including those waiting to be retried.
    pub backlog: u64,
    #[serde(default)]
    pub retrying: u64,
    #[serde(default)]
    pub in_flight: u64,
    pub dead: u64,
    /// Milliseconds since the oldest undelivered message was published.
    pub oldest_age_ms: Option<u64>,
}

/// `GET /events/dead-letters`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

/// `POST /events/{dead-letters,pending}/{redrive,purge}`: how many messages.
#[derive(Debug, Serialize, Deserialize)]
pub struct Settled {
    pub subscriber: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge: Option<u64>,
}
