//! One call into a component: a fresh [`Store`] with the component's limits,
//! an instance from its pre-instantiated form, the call, and what went wrong
//! if it did. A `Store` never outlives the call it was made for.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{ComponentExportIndex, Val};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::corral::service::log::Level;
use crate::bindings::corral::service::types::{Request, Response};
use crate::engine::TICK;
use crate::guest_log::GuestLog;
use crate::limits::{LimitExceeded, StoreLimiter};

use crate::limits::ComponentLimits;
use crate::registry::{ComponentShared, Version};
use crate::sqlite::{Conn, SqliteCtx};

/// Everything one store holds for one call.
pub struct RequestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub sqlite: SqliteCtx,
    pub log: GuestLog,
    limiter: StoreLimiter,
    /// Epoch ticks the guest may still compute for.
    cpu_ticks_left: u64,
    /// Set when the CPU budget ran out, to tell that interrupt from others.
    cpu_exhausted: bool,
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

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Why a call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the component used more than its {0:?} of CPU time")]
    CpuTime(Duration),
    #[error("the component took longer than its {0:?} timeout")]
    Timeout(Duration),
    #[error("{0}")]
    Limit(LimitExceeded),
    #[error("the component overflowed its stack")]
    StackOverflow,
    #[error("the component panicked")]
    Panic,
    #[error("the component accessed memory out of bounds (a shadow stack overflow, for one)")]
    MemoryFault,
    #[error("the component trapped: {0:#}")]
    Trap(wasmtime::Error),
}

impl InvokeError {
    /// What a client may be told: a trap's message holds the guest's
    /// backtrace, which goes to the log only.
    pub fn public(&self) -> String {
        match self {
            InvokeError::Trap(_) => "the component trapped".to_string(),
            other => other.to_string(),
        }
    }

    /// A short stable name for logs and metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            InvokeError::CpuTime(_) => "cpu-time",
            InvokeError::Timeout(_) => "timeout",
            InvokeError::Limit(LimitExceeded::Memory(_)) => "memory",
            InvokeError::Limit(LimitExceeded::Table(_)) => "table",
            InvokeError::StackOverflow => "stack-overflow",
            InvokeError::Panic => "panic",
            InvokeError::MemoryFault => "memory-fault",
            InvokeError::Trap(_) => "trap",
        }
    }
}

/// What one call needs: which version of which component, within which
/// limits, with which database.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a Arc<str>,
    pub version: &'a Version,
    pub limits: &'a ComponentLimits,
    pub shared: &'a ComponentShared,
}

/// A store for one call into `target`, with its limits installed and a
/// sandbox that shows the guest nothing of the machine: no files, no
/// sockets, no environment, no arguments; stdout and stderr go to the log.
fn new_store(target: Target<'_>, request_id: Arc<str>, depth: u32) -> Store<RequestState> {
    let log = GuestLog::new(
        Arc::clone(target.name),
        Arc::clone(&target.version.short),
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
        sqlite: SqliteCtx::new(Arc::clone(&target.shared.db), target.shared.sqlite_stats.clone()),
        log,
        limiter: StoreLimiter::new(limits),
        cpu_ticks_left: (limits.cpu_time.as_nanos() / TICK.as_nanos()).max(1) as u64,
        cpu_exhausted: false,
        request_id,
        depth,
    };
    let mut store = Store::new(target.version.pre.engine(), state);
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

/// Handles one HTTP request in a fresh instance of `target`.
pub async fn handle(target: Target<'_>, request: Request, request_id: Arc<str>) -> Result<Response, InvokeError> {
    let timeout = target.limits.timeout;
    let mut store = new_store(target, request_id, 0);
    let call = async {
        let service = target.version.pre.instantiate_async(&mut store).await?;
        service.corral_service_handler().call_handle(&mut store, &request).await
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(InvokeError::Timeout(timeout)),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(classify(e, store.data(), target)),
    }
}

/// Calls the exported function `export` in a fresh instance of `target`, on
/// behalf of another component: in the callee's own store, with its own
/// limits and database, `depth` calls deep.
pub async fn call_export(
    target: Target<'_>,
    export: ComponentExportIndex,
    params: &[Val],
    results: &mut [Val],
    request_id: Arc<str>,
    depth: u32,
) -> Result<(), InvokeError> {
    let timeout = target.limits.timeout;
    let mut store = new_store(target, request_id, depth);
    let call = async {
        let instance = target.version.pre.instance_pre().instantiate_async(&mut store).await?;
        let func = instance
            .get_func(&mut store, export)
            .ok_or_else(|| wasmtime::Error::msg("the export is not a function"))?;
        func.call_async(&mut store, params, results).await
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(InvokeError::Timeout(timeout)),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(classify(e, store.data(), target)),
    }
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("init returned an error: {0}")]
    Refused(String),
    #[error(transparent)]
    Failed(#[from] InvokeError),
    #[error("database: {0}")]
    Database(String),
}

/// Runs the component's `init` inside a transaction of the host's: the
/// one open on `conn` if given (another version's init ran in it), else a
/// new one. On success the transaction is still open, in the connection
/// returned, for the caller to commit once everything else that goes with
/// it is ready; on failure it is rolled back, so a failed migration leaves
/// the database as it was.
pub async fn init(target: Target<'_>, conn: Option<Conn>) -> Result<Conn, InitError> {
    let timeout = target.limits.timeout;
    let mut store = new_store(target, Arc::from("init"), 0);
    let sqlite = &mut store.data_mut().sqlite;
    match conn {
        Some(conn) => sqlite.put_conn(conn),
        None => sqlite
            .with_conn(|conn| conn.begin_host_transaction())
            .await
            .map_err(|e| InitError::Database(format!("{e:?}")))?
            .map_err(|e| InitError::Database(format!("cannot begin the init transaction: {e:?}")))?,
    }
    let call = async {
        let service = target.version.pre.instantiate_async(&mut store).await?;
        service.corral_service_lifecycle().call_init(&mut store).await
    };
    let outcome = match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(InvokeError::Timeout(timeout).into()),
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(message))) => Err(InitError::Refused(message)),
        Ok(Err(e)) => Err(classify(e, store.data(), target).into()),
    };
    let conn = store.data_mut().sqlite.take_conn();
    drop(store);
    match (outcome, conn) {
        (Ok(()), Some(conn)) => Ok(conn),
        (Ok(()), None) => Err(InitError::Database("the init transaction was lost".into())),
        (Err(e), conn) => {
            if let Some(conn) = conn {
                let _ = crate::sqlite::end_host_transaction(conn, false).await;
            }
            Err(e)
        }
    }
}

/// Tells apart the ways a call can trap.
fn classify(error: wasmtime::Error, state: &RequestState, target: Target<'_>) -> InvokeError {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return InvokeError::Limit(*limit);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) if state.cpu_exhausted => InvokeError::CpuTime(target.limits.cpu_time),
        Some(Trap::StackOverflow) => InvokeError::StackOverflow,
        // Rust guests abort on panic, which traps as `unreachable`.
        Some(Trap::UnreachableCodeReached) => InvokeError::Panic,
        Some(Trap::MemoryOutOfBounds) => InvokeError::MemoryFault,
        _ => InvokeError::Trap(error),
    }
}
