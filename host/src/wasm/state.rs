//! What one store holds for one call ([`RequestState`]), how a fresh store
//! is made with the component's limits and a sandbox that shows the guest
//! nothing of the machine ([`new_store`]), and the [`linker`] that offers
//! guests WASI, their database and their log.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::engine::TICK;
use super::invoke::Target;
use crate::capabilities::bindings::corral::service::log::Level;
use crate::capabilities::events::{Events, PublishView, Publisher};
use crate::capabilities::http::OutboundHooks;
use crate::capabilities::log::GuestLog;
use crate::capabilities::sqlite::SqliteCtx;
use crate::limits::store::StoreLimiter;

/// Everything one store holds for one call.
pub struct RequestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub sqlite: SqliteCtx,
    pub log: GuestLog,
    publisher: Arc<Publisher>,
    http: WasiHttpCtx,
    outbound: OutboundHooks,
    limiter: StoreLimiter,
    /// Epoch ticks the guest may still compute for.
    cpu_ticks_left: u64,
    /// Set when the CPU budget ran out, to tell that interrupt from others.
    pub(super) cpu_exhausted: bool,
    /// The request this call serves, also in calls it makes to other components.
    request_id: Arc<str>,
    /// How many calls between components led here; 0 for an HTTP request.
    depth: u32,
}

impl RequestState {
    pub fn request_id(&self) -> Arc<str> {
        Arc::clone(&self.request_id)
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds everything a guest may import: WASI (with nothing of the machine
/// behind it; see [`new_store`]), `wasi:http` (outgoing requests only where
/// allowed), its database, its log and its events.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<RequestState>> {
    let mut linker = Linker::<RequestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::capabilities::sqlite::add_to_linker(&mut linker, |state| &mut state.sqlite)?;
    crate::capabilities::bindings::corral::service::log::add_to_linker::<_, HasSelf<GuestLog>>(&mut linker, |state| {
        &mut state.log
    })?;
    crate::capabilities::bindings::corral::service::events::add_to_linker::<_, Events>(&mut linker, |state| {
        PublishView {
            sqlite: &mut state.sqlite,
            publisher: &state.publisher,
        }
    })?;
    Ok(linker)
}

/// A store for one call into `target`, with its limits installed and a
/// sandbox that shows the guest nothing of the machine: no files, no
/// sockets, no environment, no arguments; stdout and stderr go to the log.
pub fn new_store(target: &Target<'_>, request_id: Arc<str>, depth: u32) -> Store<RequestState> {
    let log = GuestLog::new(
        Arc::clone(target.component),
        Arc::clone(target.version),
        Arc::clone(&request_id),
    );
    let wasi = WasiCtx::builder()
        .stdout(log.output("stdout", Level::Info))
        .stderr(log.output("stderr", Level::Warn))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let limits = target.limits;
    let state = RequestState {
        wasi,
        table: ResourceTable::new(),
        sqlite: SqliteCtx::new(Arc::clone(target.db), target.sqlite_stats.clone()),
        log,
        publisher: Arc::clone(target.publisher),
        http: WasiHttpCtx::new(),
        outbound: OutboundHooks {
            outbound: Arc::clone(target.outbound),
            depth,
            request_id: Arc::clone(&request_id),
        },
        limiter: StoreLimiter::new(limits),
        cpu_ticks_left: (limits.cpu_time.as_nanos() / TICK.as_nanos()).max(1) as u64,
        cpu_exhausted: false,
        request_id,
        depth,
    };
    let mut store = Store::new(target.instance.engine(), state);
    store.limiter(|state| &mut state.limiter);
    // Every tick the guest runs, it yields to other tasks and spends a tick
    // of its CPU budget; when none is left, it is interrupted.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if state.cpu_ticks_left == 0 {
            state.cpu_exhausted = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        state.cpu_ticks_left -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
    store
}
