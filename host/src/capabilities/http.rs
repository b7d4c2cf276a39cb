//! `wasi:http` for guests: a component may send HTTP requests only to the
//! destinations its config allows (`allowed_outbound_hosts`), within a
//! connect timeout, a total timeout and a response size cap; anything else
//! fails in the guest with `HTTP-request-denied`, logged and counted. A
//! request to `http://<component>.internal/...` is served in process by that
//! component, through [`InternalHttp`], without touching the network.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as Prometheus;
use tokio::time::{Instant, Sleep};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::p2::bindings::{LinkOptions, http as wit};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttp, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use super::{Call, Capability, Host, StoreData};
use crate::config::ComponentConfig;
use crate::config::outbound::{HostPattern, INTERNAL_SUFFIX, default_port};
use crate::limits::body::BodyCap;

/// How deep requests to `.internal` components may nest, so that loops end.
pub const MAX_INTERNAL_DEPTH: u32 = 8;

/// A future of the boxed kind `wasi:http` hooks return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves requests to `http://<component>.internal` in process: the
/// serving layer implements it.
pub trait InternalHttp: Send + Sync {
    /// `request` for `component` from `caller`, `depth` requests deep, on
    /// behalf of request `request_id`.
    fn call(
        &self,
        component: String,
        request: http::Request<WasiBody>,
        caller: Arc<str>,
        depth: u32,
        request_id: Arc<str>,
    ) -> BoxFuture<Result<http::Response<WasiBody>, Error>>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub component: Arc<str>,
    /// `ok`, `internal`, `denied`, `timeout` or `failed`.
    pub outcome: &'static str,
}

/// Outgoing requests through `wasi:http`. A `wasi:http` component's
/// incoming request uses the same context (see [`view`]).
pub struct Http;

/// What one store holds for `wasi:http`.
pub struct OutgoingHttp {
    ctx: WasiHttpCtx,
    hooks: OutboundHooks,
}

/// `wasi:http` as the store of `instance` and `table` sees it.
pub fn view<'a>(instance: &'a mut OutgoingHttp, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
    WasiHttpCtxView {
        ctx: &mut instance.ctx,
        table,
        hooks: &mut instance.hooks,
    }
}

/// Outgoing requests, by component and outcome.
pub type Metrics = Family<OutboundLabels, Counter>;

impl Capability for Http {
    type Component = Outbound;
    type Instance = OutgoingHttp;
    type Metrics = Metrics;

    fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn get<T: StoreData>(data: &mut T) -> WasiHttpCtxView<'_> {
            let (capabilities, table) = data.capabilities();
            view(&mut capabilities.http, table)
        }
        wit::outgoing_handler::add_to_linker::<T, WasiHttp>(linker, get)?;
        wit::types::add_to_linker::<T, WasiHttp>(linker, &LinkOptions::default().into(), get)?;
        Ok(())
    }

    async fn configure(
        host: &Host,
        counts: &Metrics,
        config: &ComponentConfig,
        _: Option<&Arc<Outbound>>,
        _: &mut Vec<std::path::PathBuf>,
    ) -> anyhow::Result<Arc<Outbound>> {
        Ok(Arc::new(Outbound {
            component: config.name.as_str().into(),
            allowed: config.allowed_outbound_hosts.clone(),
            connect_timeout: config.limits.outbound_connect_timeout,
            timeout: config.limits.outbound_timeout,
            max_response_bytes: config.limits.max_outbound_response_bytes,
            internal: Arc::clone(&host.internal),
            counts: counts.clone(),
        }))
    }

    fn prepare(outbound: &Arc<Outbound>, call: &Call<'_>) -> OutgoingHttp {
        OutgoingHttp {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                outbound: Arc::clone(outbound),
                depth: call.depth,
                request_id: Arc::clone(call.request_id),
            },
        }
    }

    fn register(counts: &Metrics, prometheus: &mut Prometheus) {
        prometheus.register(
            "outbound_requests",
            "Outgoing HTTP requests, by component and outcome",
            counts.clone(),
        );
    }
}

/// Where one component may send requests, and within what.
pub struct Outbound {
    pub component: Arc<str>,
    pub allowed: Vec<HostPattern>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// Set once the serving layer is up.
    pub internal: Arc<OnceLock<Arc<dyn InternalHttp>>>,
    pub counts: Family<OutboundLabels, Counter>,
}

impl Outbound {
    fn count(&self, outcome: &'static str) {
        let labels = OutboundLabels {
            component: Arc::clone(&self.component),
            outcome,
        };
        self.counts.get_or_create(&labels).inc();
    }
}

/// The `wasi:http` hooks of one store.
pub struct OutboundHooks {
    pub outbound: Arc<Outbound>,
    /// How many requests or calls led here.
    pub depth: u32,
    pub request_id: Arc<str>,
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let outbound = Arc::clone(&self.outbound);
        let (depth, request_id) = (self.depth, Arc::clone(&self.request_id));
        // In the caller's span, wherever the request is sent from.
        let sent = async move { send(outbound, request, options, depth, request_id).await };
        Box::new(tracing::Instrument::in_current_span(sent))
    }
}

/// Sends a guest's request: refused unless the allow-list names its
/// destination; to `<component>.internal` through the host, never the
/// network; anywhere else within the timeouts and the response cap.
async fn send(
    outbound: Arc<Outbound>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    depth: u32,
    request_id: Arc<str>,
) -> Sent {
    let host = allowed_host(&outbound, request.uri(), &request_id)?;
    match host.strip_suffix(INTERNAL_SUFFIX) {
        Some(component) => send_internal(&outbound, component, request, depth, request_id).await,
        None => send_out(&outbound, request, options, &request_id).await,
    }
}

/// The request's host, lowercase, if `allowed_outbound_hosts` allows its
/// scheme, host and port.
fn allowed_host(outbound: &Outbound, uri: &http::Uri, request_id: &str) -> Result<String, Error> {
    let scheme = uri.scheme_str().unwrap_or("https").to_string();
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
    if !outbound.allowed.iter().any(|p| p.allows(&scheme, &host, port)) {
        outbound.count("denied");
        tracing::warn!(
            component = %outbound.component,
            request_id = %request_id,
            "an outgoing request to {scheme}://{host}:{port} was denied: not in allowed_outbound_hosts"
        );
        return Err(Error::HttpRequestDenied);
    }
    Ok(host)
}

/// A request to `<component>.internal`, served by the host in process, at
/// most [`MAX_INTERNAL_DEPTH`] calls deep.
async fn send_internal(
    outbound: &Outbound,
    component: &str,
    request: http::Request<WasiBody>,
    depth: u32,
    request_id: Arc<str>,
) -> Sent {
    if depth >= MAX_INTERNAL_DEPTH {
        outbound.count("denied");
        return Err(Error::LoopDetected);
    }
    let internal = outbound.internal.get().ok_or(Error::DestinationUnavailable)?;
    let response = internal
        .call(
            component.to_string(),
            request,
            Arc::clone(&outbound.component),
            depth + 1,
            request_id,
        )
        .await?;
    outbound.count("internal");
    let done: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
    Ok((response, done))
}

/// A request over the network: connected within the component's connect
/// timeout (or the guest's, if shorter), answered in full within its
/// timeout, its body cut off past the response cap.
async fn send_out(
    outbound: &Outbound,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    request_id: &str,
) -> Sent {
    let connect = options
        .and_then(|o| o.connect_timeout)
        .map_or(outbound.connect_timeout, |t| t.min(outbound.connect_timeout));
    let options = RequestOptions {
        connect_timeout: Some(connect),
        first_byte_timeout: Some(outbound.timeout),
        between_bytes_timeout: Some(outbound.timeout),
    };
    let deadline = Instant::now() + outbound.timeout;
    let sent = tokio::time::timeout_at(
        deadline,
        wasmtime_wasi_http::default_send_request(request, Some(options)),
    )
    .await;
    let (response, io) = match sent {
        Err(_) => {
            outbound.count("timeout");
            return Err(Error::ConnectionTimeout);
        }
        Ok(Err(e)) => {
            let timed_out = matches!(
                e,
                Error::DnsTimeout
                    | Error::ConnectionTimeout
                    | Error::ConnectionReadTimeout
                    | Error::ConnectionWriteTimeout
                    | Error::HttpResponseTimeout
            );
            outbound.count(if timed_out { "timeout" } else { "failed" });
            tracing::info!(component = %outbound.component, request_id = %request_id, "an outgoing request failed: {e}");
            return Err(e);
        }
        Ok(Ok(sent)) => sent,
    };
    outbound.count("ok");
    let limit = outbound.max_response_bytes;
    if response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(Error::HttpResponseBodySize(Some(limit as u64)));
    }
    let response = response.map(|body| Capped::new(body.boxed_unsync(), limit, deadline).boxed_unsync());
    Ok((response, Box::new(io)))
}

/// A response body cut off past `limit` bytes or past `deadline`.
struct Capped<B> {
    inner: B,
    cap: BodyCap,
    deadline: Pin<Box<Sleep>>,
}

impl<B> Capped<B> {
    fn new(inner: B, limit: usize, deadline: Instant) -> Self {
        Capped {
            inner,
            cap: BodyCap::new(limit),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for Capped<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                match self.cap.take(size) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(limit) => Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(limit as u64))))),
                }
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
