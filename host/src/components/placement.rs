//! Which components this host serves, in a cluster. A component with a
//! database is served by its owner only, so a call to it from a component
//! on this host goes to its owner rather than to a second copy of its
//! database. Until the host has joined its cluster (NATS unreachable at
//! start), no component with a database is served here at all: the host
//! cannot know who owns it. Outside a cluster, every component is served here.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::Entry;

#[derive(Default)]
pub struct Placement {
    /// Component name to the host that owns it, for those owned elsewhere.
    elsewhere: ArcSwap<HashMap<String, String>>,
    /// While this host has not joined its cluster: why.
    unjoined: ArcSwap<Option<String>>,
}

impl Placement {
    /// The host that owns `component`, if not this one.
    pub fn owner_elsewhere(&self, component: &str) -> Option<String> {
        self.elsewhere.load().get(component).cloned()
    }

    /// Why `entry` is not served here until this host joins its cluster:
    /// decided as it is asked, so that a component that gains a database
    /// meanwhile (a reload, a watched file) waits too.
    pub fn waiting(&self, entry: &Entry) -> Option<String> {
        let unjoined = self.unjoined.load();
        let why = unjoined.as_ref().as_ref()?;
        entry.has_database().then(|| {
            format!(
                "{} has a database, and this host has not joined its cluster to learn its owner: {why}",
                entry.name
            )
        })
    }

    /// Whether `entry` runs on this host: neither owned elsewhere nor
    /// waiting for the cluster.
    pub fn serves_here(&self, entry: &Entry) -> bool {
        self.owner_elsewhere(&entry.name).is_none() && self.waiting(entry).is_none()
    }

    pub fn set(&self, elsewhere: HashMap<String, String>) {
        if **self.elsewhere.load() != elsewhere {
            self.elsewhere.store(Arc::new(elsewhere));
        }
    }

    /// Holds back what has a database until [`Placement::joined`].
    pub fn wait_for_cluster(&self, why: String) {
        self.unjoined.store(Arc::new(Some(why)));
    }

    /// Says why again, if the host still waits; never undoes `joined`.
    pub fn still_waiting(&self, why: String) {
        self.unjoined.rcu(|old| match old.as_ref() {
            Some(_) => Arc::new(Some(why.clone())),
            None => Arc::clone(old),
        });
    }

    /// The host joined its cluster: what waited is placed by `set` now.
    pub fn joined(&self) {
        self.unjoined.store(Arc::new(None));
    }

    /// Why this host has not joined its cluster, if it has not.
    pub fn unjoined(&self) -> Option<String> {
        self.unjoined.load().as_ref().clone()
    }
}
