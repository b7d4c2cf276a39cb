//! What is served at one moment: each component ([`Entry`]) with its
//! current, previous and canary versions and the parts every version shares
//! ([`ComponentShared`]), gathered in an immutable [`Snapshot`] that requests
//! read without locks: which component owns a path, which provides an
//! interface another imports.

use std::sync::Arc;

use super::interfaces::{Node, PeerTable};
use super::version::Version;
use super::versions::Versions;
use crate::capabilities::Components;
use crate::config::routes::owns;
use crate::config::{ComponentConfig, ComponentLimits, RateLimitConfig};
use crate::limits::gate::ConcurrencyGate;
use crate::limits::rates::RateLimits;
use crate::limits::responses::ResponseSize;
use crate::wasm::state::Target;

/// A component as served by one snapshot.
#[derive(Clone)]
pub struct Entry {
    pub name: Arc<str>,
    pub config: ComponentConfig,
    pub shared: Arc<ComponentShared>,
    pub versions: Versions<Arc<Version>>,
    /// The digest of the config's `.wasm` when it was last loaded, so that a
    /// reload or a file watch only reloads code that changed on disk.
    pub file_digest: Arc<str>,
}

impl Entry {
    /// The version to serve a request: the canary for `percent` of the
    /// rolls, the current version otherwise.
    pub fn pick(&self, roll: u64) -> &Arc<Version> {
        self.versions.pick(roll)
    }

    /// The version every request gets but the canary's share.
    pub fn current(&self) -> &Arc<Version> {
        &self.versions.current
    }

    /// Whether a version it serves (current or canary) has a database.
    pub fn has_database(&self) -> bool {
        self.current().has_database() || self.versions.canary.as_ref().is_some_and(|c| c.version.has_database())
    }

    pub fn limits(&self) -> &ComponentLimits {
        &self.config.limits
    }

    /// What a call into `version` of this component needs.
    pub fn target<'a>(&'a self, version: &'a Version) -> Target<'a> {
        self.shared.target(version, &self.config.limits)
    }
}

/// What every version of a component shares: what each capability keeps
/// for it (its database among them), its concurrency gate and its rate
/// limiters, so a new version starts with the old one's in-flight count and
/// clients' buckets.
pub struct ComponentShared {
    pub name: Arc<str>,
    pub capabilities: Components,
    /// Kept across every change, resized in place to `limits` when published.
    pub gate: Arc<ConcurrencyGate>,
    pub limits: ComponentLimits,
    /// Kept unless the rate limits change, so clients keep their buckets.
    pub rate_limits: Arc<RateLimits>,
    /// What `rate_limits` were built from.
    pub rate_config: RateLimitConfig,
    /// How large its responses have been lately, kept across every change:
    /// what a request is expected to add to the bytes clients leave unread.
    pub response_size: Arc<ResponseSize>,
}

impl ComponentShared {
    /// What a call into `version` needs, within `limits`.
    pub fn target<'a>(&'a self, version: &'a Version, limits: &'a ComponentLimits) -> Target<'a> {
        Target {
            component: &self.name,
            version: &version.short,
            instance: version.instance_pre(),
            limits,
            capabilities: &self.capabilities,
        }
    }
}

/// The components being served, the router to them, and which of them
/// provides the interfaces each imports.
#[derive(Default)]
pub struct Snapshot {
    pub entries: Vec<Arc<Entry>>,
    /// Route prefixes and the entry each belongs to. The config has refused
    /// overlapping prefixes, so at most one owns a path.
    routes: Vec<(String, usize)>,
    peers: PeerTable,
}

impl Snapshot {
    /// A snapshot of `entries`, if every interface any of them imports has
    /// exactly one provider among them, with matching types.
    pub fn build(entries: Vec<Arc<Entry>>) -> Result<Self, Vec<String>> {
        let nodes: Vec<Node<'_>> = entries
            .iter()
            .map(|e| Node {
                name: &e.name,
                named: &e.config.imports,
                versions: std::iter::once(e.current())
                    .chain(e.versions.canary.as_ref().map(|c| &c.version))
                    .map(|v| (&*v.short, &v.peers))
                    .collect(),
            })
            .collect();
        let peers = PeerTable::resolve(&nodes)?;
        let routes = entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.config.routes.iter().map(move |r| (r.clone(), i)))
            .collect();
        Ok(Snapshot { entries, routes, peers })
    }

    /// The component that owns `path`, and the route prefix that matched.
    pub fn route(&self, path: &str) -> Option<(&Arc<Entry>, &str)> {
        self.routes
            .iter()
            .find(|(prefix, _)| owns(prefix, path))
            .map(|(prefix, i)| (&self.entries[*i], prefix.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| &*e.name == name)
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// A snapshot with `entry` in place of the component of the same name.
    pub fn with(&self, entry: Entry) -> Result<Snapshot, Vec<String>> {
        let entry = Arc::new(entry);
        let entries = self
            .entries
            .iter()
            .map(|e| {
                if e.name == entry.name {
                    Arc::clone(&entry)
                } else {
                    Arc::clone(e)
                }
            })
            .collect();
        Snapshot::build(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::owns;

    #[test]
    fn a_prefix_owns_its_path_and_what_is_under_it() {
        let routes = [("/users", 0), ("/api/orders", 1)];
        let lookup = |path: &str| routes.iter().find(|(p, _)| owns(p, path)).map(|(_, c)| *c);
        assert_eq!(lookup("/users"), Some(0));
        assert_eq!(lookup("/users/7"), Some(0));
        assert_eq!(lookup("/usersx"), None);
        assert_eq!(lookup("/api/orders/1"), Some(1));
        assert_eq!(lookup("/api"), None);
    }
}
