//! Which components this host serves, in a cluster. A component with a
//! database is served by its owner only, so a call to it from a component
//! on this host is refused rather than answered from a second copy of its
//! database. Until the host has joined its cluster (NATS unreachable at
//! start), no component with a database is served here at all: the host
//! cannot know who owns it. Outside a cluster, every component is served here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

#[derive(Default)]
pub struct Placement {
    /// Component name to the host that owns it, for those owned elsewhere.
    elsewhere: ArcSwap<HashMap<String, String>>,
    /// Set while this host has not joined its cluster.
    unjoined: ArcSwap<Option<Unjoined>>,
}

/// Why this host has not joined its cluster, and the components that wait
/// for it.
pub struct Unjoined {
    pub why: String,
    pub waiting: HashSet<String>,
}

impl Placement {
    /// The host that owns `component`, if not this one.
    pub fn owner_elsewhere(&self, component: &str) -> Option<String> {
        self.elsewhere.load().get(component).cloned()
    }

    /// Why `component` is not served here until this host joins its
    /// cluster, if it waits for that.
    pub fn waiting(&self, component: &str) -> Option<String> {
        let unjoined = self.unjoined.load();
        let unjoined = unjoined.as_ref().as_ref()?;
        unjoined.waiting.contains(component).then(|| {
            format!(
                "{component} has a database, and this host has not joined its cluster to learn its owner: {}",
                unjoined.why
            )
        })
    }

    /// Whether `component` runs on this host: neither owned elsewhere nor
    /// waiting for the cluster.
    pub fn serves_here(&self, component: &str) -> bool {
        self.owner_elsewhere(component).is_none() && self.waiting(component).is_none()
    }

    /// Why a call to `component` from this host is refused, if it is owned
    /// elsewhere or waits for the cluster.
    pub fn refuse_call(&self, component: &str) -> Option<String> {
        if let Some(why) = self.waiting(component) {
            return Some(why);
        }
        let owner = self.owner_elsewhere(component)?;
        Some(format!(
            "{component} is served by host {owner}, which owns its database; \
             calls between components are served on one host"
        ))
    }

    pub fn set(&self, elsewhere: HashMap<String, String>) {
        if **self.elsewhere.load() != elsewhere {
            self.elsewhere.store(Arc::new(elsewhere));
        }
    }

    /// Holds back `waiting` until [`Placement::joined`], for `why`.
    pub fn wait_for_cluster(&self, why: String, waiting: HashSet<String>) {
        self.unjoined.store(Arc::new(Some(Unjoined { why, waiting })));
    }

    /// The host joined its cluster: what waited is placed by `set` now.
    pub fn joined(&self) {
        self.unjoined.store(Arc::new(None));
    }

    /// What waits for the cluster, if the host has not joined it.
    pub fn unjoined(&self) -> Option<(String, Vec<String>)> {
        let unjoined = self.unjoined.load();
        let unjoined = unjoined.as_ref().as_ref()?;
        let mut waiting: Vec<String> = unjoined.waiting.iter().cloned().collect();
        waiting.sort();
        Some((unjoined.why.clone(), waiting))
    }
}
