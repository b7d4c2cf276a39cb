//! Calls between components, for any interface: what each version offers its
//! peers and needs from them, which component provides each needed interface,
//! and the host functions that carry a call into a fresh instance of the
//! provider, in its own store, with its own limits and database.
//!
//! A call that cannot complete (the provider traps, runs out of time, is
//! overloaded, or the chain is too deep) returns the `unavailable(string)`
//! error that every function a component offers its peers must declare; it
//! never traps the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, Linker, Val};

use super::placement::Placement;
use super::snapshot::{Entry, Snapshot};
use super::stats::{CallLabels, ComponentStats};
use crate::wasm::invoke;
use crate::wasm::state::RequestState;

/// At most this many calls deep; past it a call is `unavailable`, so that
/// cycles between components end.
pub const MAX_CALL_DEPTH: u32 = 8;

/// The error case the host answers with when a call does not complete.
const UNAVAILABLE: &str = "unavailable";

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

    /// Resolves every import of every version served, or says what is wrong.
    pub fn resolve(entries: &[Arc<Entry>]) -> Result<PeerTable, Vec<String>> {
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
        let mut table: HashMap<Arc<str>, HashMap<String, Arc<str>>> = HashMap::new();
        for ((importer, interface), provider) in resolve(&nodes)? {
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

/// What a call's host function needs; shared by all the functions of one
/// importer's linker.
#[derive(Clone)]
pub struct Dispatch {
    /// Weak, because the snapshot holds the linker that holds this.
    pub snapshot: Weak<ArcSwap<Snapshot>>,
    pub placement: Arc<Placement>,
    pub stats: Arc<ComponentStats>,
}

/// Defines every peer import of `importer` in `linker` as a host function
/// that calls the provider the snapshot names at the time of the call, so a
/// swap of the provider takes effect on the next call.
pub fn link(
    linker: &mut Linker<RequestState>,
    importer: &str,
    peers: &PeerInterfaces,
    dispatch: &Dispatch,
) -> anyhow::Result<()> {
    for (interface, funcs) in &peers.imports {
        let mut instance = linker.instance(interface)?;
        for func in funcs {
            let call = Call {
                importer: importer.into(),
                interface: interface.as_str().into(),
                func: func.name.as_str().into(),
                dispatch: dispatch.clone(),
            };
            instance.func_new_async(&func.name, move |store, _ty, params, results| {
                let call = call.clone();
                Box::new(async move {
                    let (depth, request_id) = (store.data().depth() + 1, store.data().request_id());
                    call.run(depth, request_id, params, results).await;
                    Ok(())
                })
            })?;
        }
    }
    Ok(())
}

/// One function of one importer, ready to be called.
#[derive(Clone)]
struct Call {
    importer: Arc<str>,
    interface: Arc<str>,
    func: Arc<str>,
    dispatch: Dispatch,
}

impl Call {
    /// Calls the provider; on any failure, answers `unavailable` instead.
    async fn run(&self, depth: u32, request_id: Arc<str>, params: &[Val], results: &mut [Val]) {
        let started = Instant::now();
        let (mut callee, mut version): (Arc<str>, Arc<str>) = ("-".into(), "-".into());
        let outcome = self
            .forward(depth, request_id, params, results, (&mut callee, &mut version))
            .await;
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(reason) => {
                tracing::warn!(
                    caller = %self.importer,
                    callee = %callee,
                    interface = %self.interface,
                    func = %self.func,
                    "a call between components did not complete: {reason}"
                );
                if let Some(result) = results.first_mut() {
                    let error = Val::Variant(UNAVAILABLE.into(), Some(Box::new(Val::String(reason))));
                    *result = Val::Result(Err(Some(Box::new(error))));
                }
                UNAVAILABLE
            }
        };
        let labels = CallLabels {
            caller: Arc::clone(&self.importer),
            callee,
            version,
            interface: Arc::clone(&self.interface),
            outcome,
        };
        self.dispatch.stats.calls.get_or_create(&labels).inc();
        self.dispatch
            .stats
            .call_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    async fn forward(
        &self,
        depth: u32,
        request_id: Arc<str>,
        params: &[Val],
        results: &mut [Val],
        (callee, callee_version): (&mut Arc<str>, &mut Arc<str>),
    ) -> Result<(), String> {
        if depth > MAX_CALL_DEPTH {
            return Err(format!(
                "the call would be {depth} calls deep, past the limit of {MAX_CALL_DEPTH}"
            ));
        }
        let snapshot = self
            .dispatch
            .snapshot
            .upgrade()
            .ok_or("the host is shutting down")?
            .load_full();
        let provider = snapshot
            .peers()
            .provider(&self.importer, &self.interface)
            .ok_or("no component provides it now")?;
        let entry = snapshot.get(provider).ok_or("its provider is not serving")?;
        if let Some(refusal) = self.dispatch.placement.refuse_call(&entry.name) {
            return Err(refusal);
        }
        *callee = Arc::clone(&entry.name);
        let version = Arc::clone(entry.pick(super::random::u64()));
        *callee_version = Arc::clone(&version.short);
        let export = version
            .peers
            .exports
            .get(&*self.interface)
            .and_then(|funcs| funcs.get(&*self.func));
        let Some((_, export)) = export else {
            return Err(format!(
                "version {} of {} does not export it",
                version.short, entry.name
            ));
        };
        let limit = entry.limits().max_call_bytes;
        let sent = payload_bytes(params);
        if sent > limit {
            return Err(format!(
                "the call passes {sent} bytes, more than {}'s limit of {limit}",
                entry.name
            ));
        }
        let _slot = entry
            .shared
            .gate
            .enter()
            .await
            .map_err(|e| format!("{} is overloaded: {e}", entry.name))?;
        invoke::call_export(entry.target(&version), *export, params, results, request_id, depth)
            .await
            .map_err(|e| format!("{}: {}", entry.name, e.public()))?;
        let answered = payload_bytes(results);
        if answered > limit {
            return Err(format!(
                "{} answered with {answered} bytes, more than its limit of {limit}",
                entry.name
            ));
        }
        Ok(())
    }
}

/// The data in `values`, counted as the canonical ABI lays it out (a byte
/// of a `list<u8>` is one byte), not as the host holds it.
fn payload_bytes(values: &[Val]) -> usize {
    values.iter().map(val_bytes).sum()
}

fn val_bytes(value: &Val) -> usize {
    match value {
        Val::Bool(_) | Val::S8(_) | Val::U8(_) => 1,
        Val::S16(_) | Val::U16(_) => 2,
        Val::S32(_) | Val::U32(_) | Val::Float32(_) | Val::Char(_) | Val::Enum(_) | Val::Flags(_) => 4,
        Val::S64(_) | Val::U64(_) | Val::Float64(_) => 8,
        Val::String(s) => 8 + s.len(),
        Val::List(items) | Val::Tuple(items) => 8 + payload_bytes(items),
        Val::Record(fields) => fields.iter().map(|(_, v)| val_bytes(v)).sum(),
        Val::Variant(_, payload) | Val::Option(payload) => 4 + payload.as_deref().map_or(0, val_bytes),
        Val::Result(result) => {
            4 + match result {
                Ok(v) | Err(v) => v.as_deref().map_or(0, val_bytes),
            }
        }
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_count_bytes_as_sent() {
        let bytes = Val::List(vec![Val::U8(7); 1000]);
        assert_eq!(val_bytes(&bytes), 1008);
        let record = Val::Record(vec![
            ("name".into(), Val::String("ada".into())),
            ("id".into(), Val::U64(1)),
        ]);
        assert_eq!(val_bytes(&record), 19);
        assert_eq!(
            payload_bytes(&[Val::Option(Some(Box::new(Val::U32(1)))), Val::Bool(true)]),
            9
        );
    }
}
