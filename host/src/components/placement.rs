//! Which components another host of the cluster owns. A component with a
//! database is served by its owner only, so a call to it from a component
//! on this host is refused rather than answered from a second copy of its
//! database. Outside a cluster, every component is served here.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Component name to the host that owns it, for those owned elsewhere.
#[derive(Default)]
pub struct Placement(ArcSwap<HashMap<String, String>>);

impl Placement {
    /// The host that owns `component`, if not this one.
    pub fn owner_elsewhere(&self, component: &str) -> Option<String> {
        self.0.load().get(component).cloned()
    }

    /// Why a call to `component` from this host is refused, if it is owned
    /// elsewhere.
    pub fn refuse_call(&self, component: &str) -> Option<String> {
        let owner = self.owner_elsewhere(component)?;
        Some(format!(
            "{component} is served by host {owner}, which owns its database; \
             calls between components are served on one host"
        ))
    }

    pub fn set(&self, elsewhere: HashMap<String, String>) {
        if **self.0.load() != elsewhere {
            self.0.store(Arc::new(elsewhere));
        }
    }
}
