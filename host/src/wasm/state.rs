//! What one store holds for one call ([`RequestState`]), what it is made
//! for ([`Target`]), how a fresh store is made with the component's limits and a sandbox that shows the guest
//! nothing of the machine ([`new_store`]), and the [`linker`] that offers
//! guests WASI and every capability.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::engine::TICK;
use crate::capabilities::{self, Call, Components, Instances, StoreData};
use crate::config::ComponentLimits;
use crate::limits::store::StoreLimiter;

/// Everything one store holds for one call.
pub struct RequestState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// What each capability holds for this call.
    pub capabilities: Instances,
    limiter: StoreLimiter,
    /// Epoch ticks the guest may still compute for.
    cpu_ticks_left: u64,
    /// Set when the CPU budget ran out, to tell that interrupt from others.
    pub(super) cpu_exhausted: bool,
    /// The request this call serves, also in calls it makes to other components.
    request_id: Arc<str>,
    /// How many calls between components led here; 0 for an HTTP request.
    depth: u32,
    /// How long the call this store serves may take, and when it times
    /// out: what is left bounds the calls it makes to components on other hosts.
    timeout: Duration,
    deadline: Instant,
}

impl RequestState {
    pub fn request_id(&self) -> Arc<str> {
        Arc::clone(&self.request_id)
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl StoreData for RequestState {
    fn capabilities(&mut self) -> (&mut Instances, &mut ResourceTable) {
        (&mut self.capabilities, &mut self.table)
    }
}

/// For a `wasi:http` component's incoming request, which shares the
/// context of its outgoing ones.
impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        capabilities::http::view(&mut self.capabilities.http, &mut self.table)
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

/// What one call needs: which code, under which names, within which
/// limits, with what each capability keeps for the component.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub component: &'a Arc<str>,
    /// The version's short digest, for logs.
    pub version: &'a Arc<str>,
    pub instance: &'a InstancePre<RequestState>,
    pub limits: &'a ComponentLimits,
    pub capabilities: &'a Components,
}

/// A [`Target`] that owns what it names, for a call that outlives the
/// request's future (a `wasi:http` response streams after it returns).
pub struct OwnedTarget {
    pub component: Arc<str>,
    pub version: Arc<str>,
    pub instance: InstancePre<RequestState>,
    pub limits: ComponentLimits,
    pub capabilities: Components,
}

impl OwnedTarget {
    pub fn of(target: &Target<'_>) -> OwnedTarget {
        OwnedTarget {
            component: Arc::clone(target.component),
            version: Arc::clone(target.version),
            instance: target.instance.clone(),
            limits: target.limits.clone(),
            capabilities: target.capabilities.clone(),
        }
    }

    pub fn target(&self) -> Target<'_> {
        Target {
            component: &self.component,
            version: &self.version,
            instance: &self.instance,
            limits: &self.limits,
            capabilities: &self.capabilities,
        }
    }
}

/// Adds everything a guest may import: WASI (with nothing of the machine
/// behind it; see [`new_store`]) and every capability.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<RequestState>> {
    let mut linker = Linker::<RequestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capabilities::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// A store for one call into `target` that may take `within`, with its limits installed and a
/// sandbox that shows the guest nothing of the machine: no files, no
/// sockets, no environment, no arguments; what capabilities add (stdout
/// and stderr go to the log).
pub fn new_store(target: &Target<'_>, request_id: Arc<str>, depth: u32, within: Duration) -> Store<RequestState> {
    let mut wasi = WasiCtx::builder();
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    let call = Call {
        component: target.component,
        version: target.version,
        request_id: &request_id,
        depth,
    };
    let capabilities = target.capabilities.prepare(&call, &mut wasi);
    let limits = target.limits;
    let state = RequestState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        capabilities,
        limiter: StoreLimiter::new(limits),
        cpu_ticks_left: (limits.cpu_time.as_nanos() / TICK.as_nanos()).max(1) as u64,
        cpu_exhausted: false,
        request_id,
        depth,
        timeout: within,
        deadline: Instant::now() + within,
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
