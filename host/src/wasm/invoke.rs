//! One call into a component: a fresh store with the component's limits
//! (see [`state`](super::state)), an instance from its pre-instantiated form,
//! the call, and what went wrong if it did. Every call, whatever it does,
//! goes through [`run`]. A `Store` never outlives the call it was made for.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::oneshot;
use wasmtime::component::{ComponentExportIndex, InstancePre, Val};
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::state::{OwnedTarget, RequestState, Target, new_store};
use crate::capabilities::bindings::ServicePre;
use crate::capabilities::bindings::corral::service::types::{Request, Response};
use crate::capabilities::bindings::exports::corral::service::handler::GuestIndices as HandlerIndices;
use crate::capabilities::bindings::subscriber::SubscriberServicePre;
use crate::capabilities::bindings::subscriber::exports::corral::service::subscriber::{Delivery, Outcome};
use crate::capabilities::sqlite::AppendError;
use crate::capabilities::sqlite::{self, Conn};
use crate::clock::now_ms;
use crate::limits::store::LimitExceeded;

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
    /// Its database's replicated log did not take a commit.
    #[error("{0}")]
    Unwritten(AppendError),
    #[error("the component answered with an error: {0}")]
    Answered(String),
    #[error("the component returned without a response")]
    NoResponse,
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
            InvokeError::Unwritten(_) => "unwritten",
            InvokeError::Answered(_) => "error-code",
            InvokeError::NoResponse => "no-response",
        }
    }
}

/// Runs `call` in `store` until the store's deadline (`target`'s
/// wall-clock timeout, or less), and tells apart the ways it can fail.
async fn run<R>(
    target: &Target<'_>,
    store: &mut Store<RequestState>,
    call: impl AsyncFnOnce(&mut Store<RequestState>) -> wasmtime::Result<R>,
) -> Result<R, InvokeError> {
    let (deadline, timeout) = (store.data().deadline(), store.data().timeout());
    match tokio::time::timeout_at(deadline.into(), call(store)).await {
        Err(_) => Err(InvokeError::Timeout(timeout)),
        Ok(Ok(result)) => Ok(result),
        Ok(Err(e)) => Err(classify(e, store.data(), target)),
    }
}

/// A component of corral's world, pre-instantiated, with where its
/// `handle` export is: a request's instance looks up and type-checks that
/// one export, not `lifecycle`'s too.
#[derive(Clone)]
pub struct Service {
    pub pre: ServicePre<RequestState>,
    handler: HandlerIndices,
}

impl Service {
    /// Fails if the component does not export corral's world.
    pub fn new(instance_pre: InstancePre<RequestState>) -> wasmtime::Result<Service> {
        let pre = ServicePre::new(instance_pre)?;
        let handler = HandlerIndices::new(pre.instance_pre())?;
        Ok(Service { pre, handler })
    }
}

/// Handles one HTTP request in a fresh instance of `target`, a component
/// of corral's world.
pub async fn handle(
    target: Target<'_>,
    service: &Service,
    request: Request,
    request_id: Arc<str>,
    depth: u32,
) -> Result<Response, InvokeError> {
    let mut store = new_store(&target, request_id, depth, target.limits.timeout);
    run(&target, &mut store, async |store| {
        let instance = service.pre.instance_pre().instantiate_async(&mut *store).await?;
        let handler = service.handler.load(&mut *store, &instance)?;
        handler.call_handle(store, &request).await
    })
    .await
}

/// Calls the exported function `export` in a fresh instance of `target`, on
/// behalf of another component: in the callee's own store, with its own
/// limits and database, `depth` calls deep, within its timeout or `within`
/// (what its caller has left), whichever is less.
pub async fn call_export(
    target: Target<'_>,
    export: ComponentExportIndex,
    params: &[Val],
    results: &mut [Val],
    request_id: Arc<str>,
    depth: u32,
    within: Duration,
) -> Result<(), InvokeError> {
    let mut store = new_store(&target, request_id, depth, within.min(target.limits.timeout));
    run(&target, &mut store, async |store| {
        let instance = target.instance.instantiate_async(&mut *store).await?;
        let func = instance
            .get_func(&mut *store, export)
            .ok_or_else(|| wasmtime::Error::msg("the export is not a function"))?;
        func.call_async(store, params, results).await
    })
    .await
}

/// A `wasi:http` component's response, its body still streaming.
pub struct Streaming {
    pub response: http::Response<HyperOutgoingBody>,
    /// How the instance ended, once it has.
    pub ended: oneshot::Receiver<Result<(), InvokeError>>,
}

/// Handles one HTTP request in a fresh instance of a `wasi:http` component.
/// The instance runs in a task of its own, holding `slot`, so that it can
/// stream the response body after the response's head has been returned;
/// the task ends with the instance, at the latest at the timeout.
pub async fn handle_http<S: Send + 'static>(
    owned: OwnedTarget,
    pre: ProxyPre<RequestState>,
    request: http::Request<Full<Bytes>>,
    request_id: Arc<str>,
    depth: u32,
    slot: S,
) -> Result<Streaming, InvokeError> {
    let mut store = new_store(&owned.target(), request_id, depth, owned.limits.timeout);
    let (sender, receiver) = oneshot::channel();
    let (request, out) = {
        let mut http = store.data_mut().http();
        let request = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(InvokeError::Trap)?;
        (request, http.new_response_outparam(sender).map_err(InvokeError::Trap)?)
    };
    let (done, mut ended) = oneshot::channel();
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let target = owned.target();
            let outcome = run(&target, &mut store, async |store| {
                let proxy = pre.instantiate_async(&mut *store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(store, request, out)
                    .await
            })
            .await;
            // Sent before the store is dropped, which ends the body: whoever
            // sees the body end can tell whether the instance failed.
            let _ = done.send(outcome);
            drop((store, slot));
        },
        span,
    ));
    match receiver.await {
        Ok(Ok(response)) => Ok(Streaming { response, ended }),
        Ok(Err(code)) => Err(InvokeError::Answered(format!("{code:?}"))),
        Err(_) => match (&mut ended).await {
            Ok(Ok(())) => Err(InvokeError::NoResponse),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(InvokeError::NoResponse),
        },
    }
}

/// Why a delivery got no outcome from the subscriber.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Failed(#[from] InvokeError),
    #[error("database: {0}")]
    Database(String),
}

/// Hands `delivery` to a fresh instance of `target`'s subscriber. With
/// `exactly_once`, the handler runs in a transaction of the host's that
/// also records the delivery's id, committed only if the handler acks; a
/// delivery already recorded is acked without running the handler.
pub async fn deliver(
    target: Target<'_>,
    pre: &SubscriberServicePre<RequestState>,
    delivery: Delivery,
    exactly_once: bool,
) -> Result<Outcome, DeliverError> {
    let mut store = new_store(&target, Arc::from(delivery.id.as_str()), 0, target.limits.timeout);
    if exactly_once {
        let id = delivery.id.clone();
        let first = store
            .data_mut()
            .capabilities
            .sqlite
            .with_writer(move |conn| {
                conn.begin_host_transaction()?;
                conn.first_processing(&id, now_ms())
            })
            .await
            .map_err(|e| DeliverError::Database(format!("{e:?}")))?
            .map_err(|e| DeliverError::Database(format!("{e:?}")))?;
        if !first {
            let conn = store.data_mut().capabilities.sqlite.take_conn();
            if let Some(conn) = conn {
                let _ = sqlite::end_host_transaction(conn, false).await;
            }
            return Ok(Outcome::Ack);
        }
    }
    let outcome = run(&target, &mut store, async |store| {
        let subscriber = pre.instantiate_async(&mut *store).await?;
        subscriber
            .corral_service_subscriber()
            .call_handle(store, &delivery)
            .await
    })
    .await;
    if exactly_once && let Some(conn) = store.data_mut().capabilities.sqlite.take_conn() {
        let commit = matches!(outcome, Ok(Outcome::Ack));
        if let Err(e) = sqlite::end_host_transaction(conn, commit).await
            && commit
        {
            return Err(DeliverError::Database(format!(
                "cannot commit what the handler did: {e:?}"
            )));
        }
    }
    Ok(outcome?)
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
pub async fn init(target: Target<'_>, pre: &ServicePre<RequestState>, conn: Option<Conn>) -> Result<Conn, InitError> {
    let mut store = new_store(&target, Arc::from("init"), 0, target.limits.timeout);
    let sqlite = &mut store.data_mut().capabilities.sqlite;
    match conn {
        Some(conn) => sqlite.put_conn(conn),
        None => sqlite
            .with_writer(|conn| conn.begin_host_transaction())
            .await
            .map_err(|e| InitError::Database(format!("{e:?}")))?
            .map_err(|e| InitError::Database(format!("cannot begin the init transaction: {e:?}")))?,
    }
    let outcome = run(&target, &mut store, async |store| {
        let service = pre.instantiate_async(&mut *store).await?;
        service.corral_service_lifecycle().call_init(store).await
    })
    .await;
    let conn = store.data_mut().capabilities.sqlite.take_conn();
    drop(store);
    let outcome = match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(InitError::Refused(message)),
        Err(e) => Err(InitError::Failed(e)),
    };
    match (outcome, conn) {
        (Ok(()), Some(conn)) => Ok(conn),
        (Ok(()), None) => Err(InitError::Database("the init transaction was lost".into())),
        (Err(e), conn) => {
            if let Some(conn) = conn {
                let _ = sqlite::end_host_transaction(conn, false).await;
            }
            Err(e)
        }
    }
}

/// Tells apart the ways a call can trap.
fn classify(error: wasmtime::Error, state: &RequestState, target: &Target<'_>) -> InvokeError {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return InvokeError::Limit(*limit);
    }
    if let Some(unwritten) = error.downcast_ref::<AppendError>() {
        return InvokeError::Unwritten(unwritten.clone());
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
