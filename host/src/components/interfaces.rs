//! What components offer each other and need from each other: each
//! version's peer imports and exports with their types ([`PeerInterfaces`]),
//! which component provides each import ([`resolve`], [`PeerTable`]), and
//! the [`LinkPeers`] step that defines those imports in a version's linker
//! (implemented by `peers`, which carries the calls).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, Linker};

use crate::wasm::state::RequestState;

/// The error case the host answers with when a call does not complete.
pub const UNAVAILABLE: &str = "unavailable";

/// Defines a version's peer imports in its linker.
pub trait LinkPeers: Send + Sync {
    fn link(&self, linker: &mut Linker<RequestState>, importer: &str, peers: &PeerInterfaces) -> anyhow::Result<()>;
}

/// Interfaces the host provides itself; the rest are resolved among components.
pub fn host_provided(name: &str) -> bool {
    name.starts_with("wasi:") || name.starts_with("corral:service/")
}

/// A function of an interface, with its type.
#[derive(Clone)]
pub struct PeerFunc {
    pub name: String,
    pub ty: ComponentFunc,
}

/// What one compiled version offers its peers and needs from them.
#[derive(Clone, Default)]
pub struct PeerInterfaces {
    /// Interfaces other components must provide, with their functions.
    pub imports: BTreeMap<String, Vec<PeerFunc>>,
    /// Interfaces this version offers: function name, type and export index.
    pub exports: BTreeMap<String, BTreeMap<String, (ComponentFunc, ComponentExportIndex)>>,
}

impl PeerInterfaces {
    /// Reads a compiled component's imports and exports.
    pub fn of(component: &Component, engine: &Engine) -> anyhow::Result<Self> {
        let ty = component.component_type();
        let mut peers = PeerInterfaces::default();
        for (name, item) in ty.imports(engine) {
            if host_provided(name) {
                continue;
            }
            let ComponentItem::ComponentInstance(instance) = item.ty else {
                anyhow::bail!("it imports {name}, which is not an interface; components can only import interfaces");
            };
            let funcs = instance
                .exports(engine)
                .filter_map(|(func, item)| match item.ty {
                    ComponentItem::ComponentFunc(ty) => Some(PeerFunc {
                        name: func.to_string(),
                        ty,
                    }),
                    _ => None,
                })
                .collect();
            peers.imports.insert(name.to_string(), funcs);
        }
        for (name, item) in ty.exports(engine) {
            let ComponentItem::ComponentInstance(instance) = item.ty else {
                continue;
            };
            if name.starts_with("corral:service/") {
                continue;
            }
            let Some(interface) = component.get_export_index(None, name) else {
                continue;
            };
            let mut funcs = BTreeMap::new();
            for (func, item) in instance.exports(engine) {
                if let ComponentItem::ComponentFunc(ty) = item.ty
                    && let Some(index) = component.get_export_index(Some(&interface), func)
                {
                    funcs.insert(func.to_string(), (ty, index));
                }
            }
            peers.exports.insert(name.to_string(), funcs);
        }
        Ok(peers)
    }
}

/// Which component provides each interface each component imports:
/// importer, then interface, to provider. Looked up on every call, without
/// allocating.
#[derive(Default)]
pub struct PeerTable(HashMap<Arc<str>, HashMap<String, Arc<str>>>);

impl PeerTable {
    pub fn provider(&self, importer: &str, interface: &str) -> Option<&Arc<str>> {
        self.0.get(importer)?.get(interface)
    }

    /// Resolves every import of every version of `nodes`, or says what is wrong.
    pub fn resolve(nodes: &[Node<'_>]) -> Result<PeerTable, Vec<String>> {
        let mut table: HashMap<Arc<str>, HashMap<String, Arc<str>>> = HashMap::new();
        for ((importer, interface), provider) in resolve(nodes)? {
            table
                .entry(importer.into())
                .or_default()
                .insert(interface, provider.into());
        }
        Ok(PeerTable(table))
    }
}

/// One component as resolution sees it: its name, the providers its config
/// names, and the interfaces of each version it serves (by short digest).
pub struct Node<'a> {
    pub name: &'a str,
    pub named: &'a BTreeMap<String, String>,
    pub versions: Vec<(&'a str, &'a PeerInterfaces)>,
}

/// For each (importer, interface), its provider; or every problem found.
pub fn resolve(nodes: &[Node<'_>]) -> Result<HashMap<(String, String), String>, Vec<String>> {
    let mut table = HashMap::new();
    let mut problems = Vec::new();
    for node in nodes {
        for (_, peers) in &node.versions {
            for (interface, funcs) in &peers.imports {
                match provider_of(node, interface, nodes) {
                    Ok(provider) => {
                        check_provider(node, interface, funcs, provider, &mut problems);
                        table.insert((node.name.to_string(), interface.clone()), provider.name.to_string());
                    }
                    Err(problem) => problems.push(problem),
                }
            }
        }
    }
    problems.dedup();
    if problems.is_empty() { Ok(table) } else { Err(problems) }
}

/// The provider the config names, or the one component that exports the interface.
fn provider_of<'a>(importer: &Node<'_>, interface: &str, nodes: &'a [Node<'a>]) -> Result<&'a Node<'a>, String> {
    let name = importer.name;
    if let Some(provider) = importer.named.get(interface) {
        return nodes
            .iter()
            .find(|n| n.name == provider)
            .ok_or_else(|| format!("{name} imports {interface} from {provider}, which is not a configured component"));
    }
    let candidates: Vec<&Node<'_>> = nodes
        .iter()
        .filter(|n| {
            n.name != name
                && n.versions
                    .first()
                    .is_some_and(|(_, p)| p.exports.contains_key(interface))
        })
        .collect();
    match candidates.as_slice() {
        [provider] => Ok(provider),
        [] => Err(format!(
            "{name} imports {interface}, which no configured component exports"
        )),
        several => {
            let names: Vec<&str> = several.iter().map(|n| n.name).collect();
            Err(format!(
                "{name} imports {interface}, which {} all export: name one in components.{name}.imports",
                names.join(", ")
            ))
        }
    }
}

/// Every version of `provider` exports every function `importer` needs,
/// with the same types, and in a form a call between components can carry.
fn check_provider(
    importer: &Node<'_>,
    interface: &str,
    funcs: &[PeerFunc],
    provider: &Node<'_>,
    problems: &mut Vec<String>,
) {
    for (short, peers) in &provider.versions {
        let exported = peers.exports.get(interface);
        for func in funcs {
            let at = format!(
                "{} imports {interface}#{} from {}",
                importer.name, func.name, provider.name
            );
            match exported.and_then(|f| f.get(&func.name)) {
                None => problems.push(format!("{at}, whose version {short} does not export it")),
                Some((ty, _)) if !same_type(ty, &func.ty) => {
                    problems.push(format!("{at}, whose version {short} exports it with another type"))
                }
                Some(_) => {
                    if let Err(why) = callable(&func.ty) {
                        problems.push(format!("{at}: {why}"));
                    }
                }
            }
        }
    }
}

fn same_type(a: &ComponentFunc, b: &ComponentFunc) -> bool {
    a.params().map(|(_, t)| t).eq(b.params().map(|(_, t)| t)) && a.results().eq(b.results())
}

/// A function can be called across components when its result can say
/// `unavailable` and nothing in it is tied to one store.
fn callable(func: &ComponentFunc) -> Result<(), String> {
    let results: Vec<Type> = func.results().collect();
    let says_unavailable = match results.as_slice() {
        [Type::Result(result)] => matches!(
            result.err(),
            Some(Type::Variant(error)) if error.cases().any(|c| c.name == UNAVAILABLE && matches!(c.ty, Some(Type::String)))
        ),
        _ => false,
    };
    if !says_unavailable {
        return Err(format!(
            "it must return result<_, e> where the variant e has a case {UNAVAILABLE}(string), for the host to report a call that does not complete"
        ));
    }
    if func.params().any(|(_, t)| holds_handles(&t)) || results.iter().any(holds_handles) {
        return Err("resources, streams and futures cannot cross between components".into());
    }
    Ok(())
}

/// Whether values of this type refer to something inside one store.
fn holds_handles(ty: &Type) -> bool {
    match ty {
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => true,
        Type::List(list) => holds_handles(&list.ty()),
        Type::Record(record) => record.fields().any(|f| holds_handles(&f.ty)),
        Type::Tuple(tuple) => tuple.types().any(|t| holds_handles(&t)),
        Type::Variant(variant) => variant.cases().any(|c| c.ty.as_ref().is_some_and(holds_handles)),
        Type::Option(option) => holds_handles(&option.ty()),
        Type::Result(result) => {
            result.ok().as_ref().is_some_and(holds_handles) || result.err().as_ref().is_some_and(holds_handles)
        }
        _ => false,
    }
}
