//! Calls between components, for any interface: the host functions that
//! carry a call into a fresh instance of the provider `interfaces` resolved,
//! in its own store, with its own limits and database.
//!
//! A call that cannot complete (the provider traps, runs out of time, is
//! overloaded, or the chain is too deep) returns the `unavailable(string)`
//! error that every function a component offers its peers must declare; it
//! never traps the caller.

use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use wasmtime::component::{Linker, Val};

use super::interfaces::{LinkPeers, PeerInterfaces, UNAVAILABLE};
use super::placement::Placement;
use super::snapshot::Snapshot;
use super::stats::{CallLabels, ComponentStats};
use crate::wasm::invoke;
use crate::wasm::state::RequestState;

/// At most this many calls deep; past it a call is `unavailable`, so that
/// cycles between components end.
pub const MAX_CALL_DEPTH: u32 = 8;

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
impl LinkPeers for Dispatch {
    fn link(&self, linker: &mut Linker<RequestState>, importer: &str, peers: &PeerInterfaces) -> anyhow::Result<()> {
        for (interface, funcs) in &peers.imports {
            let mut instance = linker.instance(interface)?;
            for func in funcs {
                let call = Call {
                    importer: importer.into(),
                    interface: interface.as_str().into(),
                    func: func.name.as_str().into(),
                    dispatch: self.clone(),
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
        if let Some(refusal) = self.dispatch.placement.refuse_call(entry) {
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
