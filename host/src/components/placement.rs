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

    pub fn set(&self, elsewhere: HashMap<String, String>) {
        if **self.0.load() != elsewhere {
            self.0.store(Arc::new(elsewhere));
        }
    }
}
