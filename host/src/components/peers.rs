//! Calls between components, for any interface: the host functions that
//! carry a call into a fresh instance of the provider `interfaces` resolved,
//! in its own store, with its own limits and database. In a cluster, a
//! provider another host owns is called on that host ([`CallElsewhere`],
//! whose values travel as [`remote`](super::remote) says).
//!
//! A call that cannot complete (the provider traps, runs out of time, is
//! overloaded, its owner is unreachable, or the chain is too deep) returns
//! the `unavailable(string)` error that every function a component offers
//! its peers must declare; it never traps the caller.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::Instrument;
use wasmtime::component::types::ComponentFunc;
use wasmtime::component::{Linker, Val};

use super::interfaces::{LinkPeers, PeerInterfaces, UNAVAILABLE};
use super::placement::Placement;
use super::snapshot::{Entry, Snapshot};
use super::stats::{CallLabels, ComponentStats};
use crate::capabilities::http::BoxFuture;
use crate::wasm::invoke;
use crate::wasm::state::RequestState;

/// At most this many calls deep; past it a call is `unavailable`, so that
/// cycles between components end, across hosts too.
pub const MAX_CALL_DEPTH: u32 = 8;

/// Calls a component that another host owns, on that host: set by the
/// serving layer, which holds the cluster and the connections between hosts.
pub trait CallElsewhere: Send + Sync {
    /// The results of `call` on the host `owner`, or why there are none.
    fn call(&self, owner: String, call: Outgoing) -> BoxFuture<Result<Vec<Val>, String>>;
}

/// A call on its way to another host.
pub struct Outgoing {
    pub caller: Arc<str>,
    pub callee: Arc<str>,
    pub interface: Arc<str>,
    pub func: Arc<str>,
    pub params: Vec<Val>,
    /// The caller's view of the function, to read the results with.
    pub ty: ComponentFunc,
    /// The callee gets no more than what is left of the caller's time.
    pub chain: Chain,
    /// The callee's `max_call_bytes`, which the answer is held to before
    /// it is read.
    pub max_call_bytes: usize,
}

/// What a call's host function needs; shared by all the functions of one
/// importer's linker.
#[derive(Clone)]
pub struct Dispatch {
    /// Weak, because the snapshot holds the linker that holds this.
    pub snapshot: Weak<ArcSwap<Snapshot>>,
    pub placement: Arc<Placement>,
    pub stats: Arc<ComponentStats>,
    /// Calls to components owned elsewhere, once the serving layer is up.
    pub elsewhere: Arc<OnceLock<Arc<dyn CallElsewhere>>>,
}

/// Defines every peer import of `importer` in `linker` as a host function
/// that calls the provider the snapshot names at the time of the call, so a
/// swap of the provider takes effect on the next call.
impl LinkPeers for Dispatch {
    fn link(&self, linker: &mut Linker<RequestState>, importer: &str, peers: &PeerInterfaces) -> anyhow::Result<()> {
        for (interface, funcs) in &peers.imports {
            let mut instance = linker.instance(interface)?;
            for func in funcs {
                let call = Call {
                    importer: importer.into(),
                    interface: interface.as_str().into(),
                    func: func.name.as_str().into(),
                    ty: func.ty.clone(),
                    dispatch: self.clone(),
                };
                instance.func_new_async(&func.name, move |store, _ty, params, results| {
                    let call = call.clone();
                    Box::new(async move {
                        let state = store.data();
                        let within = state.deadline().saturating_duration_since(Instant::now());
                        let from = Chain {
                            depth: state.depth() + 1,
                            request_id: state.request_id(),
                            within,
                        };
                        call.run(from, params, results).await;
                        Ok(())
                    })
                })?;
            }
        }
        Ok(())
    }
}

/// Where a call is in its chain: how deep, for which request, and how
/// long its caller may still wait.
#[derive(Clone)]
pub struct Chain {
    pub depth: u32,
    pub request_id: Arc<str>,
    pub within: Duration,
}

/// One function of one importer, ready to be called.
#[derive(Clone)]
struct Call {
    importer: Arc<str>,
    interface: Arc<str>,
    func: Arc<str>,
    ty: ComponentFunc,
    dispatch: Dispatch,
}

/// Who answered a call, for its metrics.
struct Callee {
    name: Arc<str>,
    version: Arc<str>,
}

impl Call {
    /// Calls the provider; on any failure, answers `unavailable` instead.
    async fn run(&self, from: Chain, params: &[Val], results: &mut [Val]) {
        let started = Instant::now();
        let mut callee = Callee {
            name: "-".into(),
            version: "-".into(),
        };
        let span = tracing::info_span!(
            "call",
            otel.kind = "client",
            caller = %self.importer,
            interface = %self.interface,
            func = %self.func,
        );
        let outcome = self.forward(from, params, results, &mut callee).instrument(span).await;
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(reason) => {
                tracing::warn!(
                    caller = %self.importer,
                    callee = %callee.name,
                    interface = %self.interface,
                    func = %self.func,
                    "a call between components did not complete: {reason}"
                );
                if let Some(result) = results.first_mut() {
                    *result = unavailable(reason);
                }
                UNAVAILABLE
            }
        };
        let labels = CallLabels {
            caller: Arc::clone(&self.importer),
            callee: callee.name,
            version: callee.version,
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
        from: Chain,
        params: &[Val],
        results: &mut [Val],
        callee: &mut Callee,
    ) -> Result<(), String> {
        check_depth(from.depth)?;
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
        let placement = &self.dispatch.placement;
        if let Some(why) = placement.waiting(entry) {
            return Err(why);
        }
        callee.name = Arc::clone(&entry.name);
        if let Some(owner) = placement.owner_elsewhere(&entry.name) {
            return self.elsewhere(entry, owner, from, params, results).await;
        }
        let served = serve(entry, &self.interface, &self.func, from, params, results).await?;
        callee.version = served;
        Ok(())
    }

    /// Calls `entry` on its owner, another host: within the callee's
    /// payload limit both ways, as on one host.
    async fn elsewhere(
        &self,
        entry: &Entry,
        owner: String,
        from: Chain,
        params: &[Val],
        results: &mut [Val],
    ) -> Result<(), String> {
        let limit = entry.limits().max_call_bytes;
        check_payload(&entry.name, "would be passed", params, limit)?;
        let elsewhere = self
            .dispatch
            .elsewhere
            .get()
            .ok_or("this host cannot call other hosts yet")?;
        let outgoing = Outgoing {
            caller: Arc::clone(&self.importer),
            callee: Arc::clone(&entry.name),
            interface: Arc::clone(&self.interface),
            func: Arc::clone(&self.func),
            params: params.to_vec(),
            ty: self.ty.clone(),
            chain: from,
            max_call_bytes: limit,
        };
        let answered = elsewhere.call(owner, outgoing).await?;
        if answered.len() != results.len() {
            return Err(format!(
                "{} answered with {} results where the function has {}",
                entry.name,
                answered.len(),
                results.len()
            ));
        }
        check_payload(&entry.name, "answered with", &answered, limit)?;
        for (slot, value) in results.iter_mut().zip(answered) {
            *slot = value;
        }
        Ok(())
    }
}

/// The `unavailable` error a call that did not complete returns.
fn unavailable(reason: String) -> Val {
    let error = Val::Variant(UNAVAILABLE.into(), Some(Box::new(Val::String(reason))));
    Val::Result(Err(Some(Box::new(error))))
}

/// Refuses a call `depth` calls deep, past [`MAX_CALL_DEPTH`].
pub fn check_depth(depth: u32) -> Result<(), String> {
    if depth > MAX_CALL_DEPTH {
        return Err(format!(
            "the call would be {depth} calls deep, past the limit of {MAX_CALL_DEPTH}"
        ));
    }
    Ok(())
}

/// Refuses `values` if they are more than `component`'s `limit` of bytes.
fn check_payload(component: &str, what: &str, values: &[Val], limit: usize) -> Result<(), String> {
    let bytes = payload_bytes(values);
    if bytes > limit {
        return Err(format!(
            "{component} {what} {bytes} bytes, more than its call limit of {limit}"
        ));
    }
    Ok(())
}

/// The exported function `func` of `interface` in the version of `entry`
/// a call gets, with its type.
pub struct Export {
    pub version: Arc<super::version::Version>,
    pub index: wasmtime::component::ComponentExportIndex,
    pub ty: ComponentFunc,
}

impl Export {
    pub fn find(entry: &Entry, interface: &str, func: &str) -> Result<Export, String> {
        let version = Arc::clone(entry.pick(super::random::u64()));
        let export = version.peers.exports.get(interface).and_then(|funcs| funcs.get(func));
        let Some((ty, index)) = export else {
            return Err(format!(
                "version {} of {} does not export {interface}#{func}",
                version.short, entry.name
            ));
        };
        let (ty, index) = (ty.clone(), *index);
        Ok(Export { version, index, ty })
    }
}

/// Serves a call to `entry`, on this host: in a fresh instance of the
/// version picked for it, within its payload limit both ways, its
/// concurrency gate, and its timeout or what the caller has left, if less.
/// The short digest of the version that answered.
pub async fn serve(
    entry: &Entry,
    interface: &str,
    func: &str,
    from: Chain,
    params: &[Val],
    results: &mut [Val],
) -> Result<Arc<str>, String> {
    let export = Export::find(entry, interface, func)?;
    serve_export(entry, &export, from, params, results).await?;
    Ok(Arc::clone(&export.version.short))
}

/// [`serve`], the export found.
pub async fn serve_export(
    entry: &Entry,
    export: &Export,
    from: Chain,
    params: &[Val],
    results: &mut [Val],
) -> Result<(), String> {
    let limit = entry.limits().max_call_bytes;
    check_payload(&entry.name, "was passed", params, limit)?;
    // The wait for a slot counts against what the caller has left.
    let deadline = Instant::now() + from.within;
    let no_time = || format!("no time was left to call {}", entry.name);
    let _slot = tokio::time::timeout_at(deadline.into(), entry.shared.gate.enter())
        .await
        .map_err(|_| no_time())?
        .map_err(|e| format!("{} is overloaded: {e}", entry.name))?;
    let within = deadline.saturating_duration_since(Instant::now());
    if within.is_zero() {
        return Err(no_time());
    }
    let target = entry.target(&export.version);
    invoke::call_export(
        target,
        export.index,
        params,
        results,
        from.request_id,
        from.depth,
        within,
    )
    .instrument(tracing::info_span!("component", component = %entry.name, version = %export.version.short))
    .await
    .map_err(|e| format!("{}: {}", entry.name, e.public()))?;
    check_payload(&entry.name, "answered with", results, limit)
}

/// The data in `values`, counted as the canonical ABI lays it out (a byte
/// of a `list<u8>` is one byte), not as the host holds it.
pub fn payload_bytes(values: &[Val]) -> usize {
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
