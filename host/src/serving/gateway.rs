//! One public HTTP request from arrival to response, in order of cost so a
//! refused request costs little: [`Gateway::admit`] finds the component
//! that owns the path and applies its rate limits; the body is read within
//! its limit and deadline; a slot in the component's gate is taken; then
//! [`Gateway::serve`] calls a fresh instance and turns its response, or its
//! failure, into HTTP. Every request ends in one log line and its metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};

use super::body::{BodyPace, read_body, refuse};
use super::client::client_addr;
use super::problem;
use super::server::Handler;
use super::stats::{
    Method as MetricMethod, RejectionLabels, RequestLabels, ServingStats, TrapLabels, VersionLabels, status_class,
};
use crate::capabilities::bindings::corral::service::types;
use crate::components::registry::Registry;
use crate::components::snapshot::Entry;
use crate::config::{ComponentLimits, TrustedProxies};
use crate::limits::rates::Verdict;
use crate::wasm::invoke::{self, InvokeError, Target};

/// Most headers a component's response may carry.
const MAX_RESPONSE_HEADERS: usize = 100;
/// The longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the version of the component that served a response.
const VERSION: HeaderName = HeaderName::from_static("corral-version");

/// The public listener's handler.
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub trusted_proxies: TrustedProxies,
    pub stats: Arc<ServingStats>,
    /// How fast request bodies must arrive.
    pub body_pace: BodyPace,
}

/// What the gateway learned about one request, for its log line and metrics.
struct Trace {
    client: IpAddr,
    component: Option<Arc<str>>,
    route: Option<Arc<str>>,
    version: Option<Arc<str>>,
    bytes_in: usize,
    /// Why the request was refused before reaching the component.
    rejected: Option<&'static str>,
    /// Why the component failed it.
    failed: Option<&'static str>,
}

/// A request the gateway answers without calling a component.
struct Refusal {
    response: Response<Full<Bytes>>,
    reason: Option<&'static str>,
}

impl Handler for Gateway {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_id = request_id(&request);
        let (parts, body) = request.into_parts();
        let mut trace = Trace {
            client: client_addr(&self.trusted_proxies, peer.ip(), &parts.headers),
            component: None,
            route: None,
            version: None,
            bytes_in: 0,
            rejected: None,
            failed: None,
        };
        let mut response = self.respond(&parts, body, &request_id, &mut trace).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        self.record(&parts, &response, &trace, started.elapsed(), &request_id);
        response
    }
}

impl Gateway {
    /// Admits the request, reads its body (before a slot is taken, so a
    /// slow client never holds one while it sends), takes a slot, serves.
    async fn respond(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        request_id: &Arc<str>,
        trace: &mut Trace,
    ) -> Response<Full<Bytes>> {
        let (entry, verdict) = match self.admit(parts, trace) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                trace.rejected = refusal.reason;
                return refuse(body, refusal.response).await;
            }
        };
        let body = match read_body(
            body,
            &parts.headers,
            entry.limits().max_request_body_bytes,
            self.body_pace,
        )
        .await
        {
            Ok(body) => body,
            Err(refusal) => {
                trace.rejected = refusal.reason();
                return refusal.into_response();
            }
        };
        trace.bytes_in = body.len();
        let waiting = Instant::now();
        let slot = entry.shared.gate.enter().await;
        self.stats.observe_queue_wait(&entry.name, waiting.elapsed());
        let mut response = match slot {
            Ok(_slot) => self.serve(&entry, parts, body, request_id, trace).await,
            Err(overloaded) => {
                trace.rejected = Some("concurrency");
                let detail = format!("{} is at capacity: {overloaded}", entry.name);
                let mut response = problem::response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "Service overloaded",
                    detail,
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                response
            }
        };
        if let Some(verdict) = &verdict {
            rate_limit_headers(&mut response, verdict);
        }
        response
    }

    /// The component that owns the path, if the request is within its rate
    /// limits; the verdict of the strictest limit that applies.
    fn admit(
        &self,
        parts: &http::request::Parts,
        trace: &mut Trace,
    ) -> Result<(Arc<Entry>, Option<Verdict>), Box<Refusal>> {
        let snapshot = self.registry.snapshot();
        let Some((entry, route)) = snapshot.route(parts.uri.path()) else {
            let detail = format!("no component serves {}", parts.uri.path());
            return Err(Box::new(Refusal {
                response: problem::response(StatusCode::NOT_FOUND, "no-route", "No route", detail),
                reason: None,
            }));
        };
        trace.component = Some(Arc::clone(&entry.name));
        trace.route = Some(route.into());
        let client = trace.client;
        let verdict = entry
            .shared
            .rate_limits
            .check(parts.method.as_str(), parts.uri.path(), client);
        if let Some(verdict) = verdict.filter(|v| !v.allowed) {
            let detail = format!(
                "{client} has made too many requests to {}; retry in {} s",
                entry.name, verdict.retry_after_secs
            );
            let mut response = problem::response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                detail,
            );
            rate_limit_headers(&mut response, &verdict);
            return Err(Box::new(Refusal {
                response,
                reason: Some("rate_limit"),
            }));
        }
        Ok((Arc::clone(entry), verdict))
    }

    /// Calls a fresh instance of the version picked for this request and
    /// turns what it answered into HTTP.
    async fn serve(
        &self,
        entry: &Entry,
        parts: &http::request::Parts,
        body: Bytes,
        request_id: &Arc<str>,
        trace: &mut Trace,
    ) -> Response<Full<Bytes>> {
        let guest_request = types::Request {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            client_addr: trace.client.to_string(),
            request_id: request_id.to_string(),
        };
        // The version is chosen once and held to the end: a swap meanwhile
        // does not change what serves this request.
        let version = Arc::clone(entry.pick(crate::components::random::u64()));
        trace.version = Some(Arc::clone(&version.short));
        let target = entry.target(&version);
        let mut response = match invoke::handle(target, guest_request, Arc::clone(request_id)).await {
            Ok(response) => into_http(response, target.limits).unwrap_or_else(|detail| {
                trace.failed = Some("invalid-response");
                invalid_response(target, request_id, detail)
            }),
            Err(error) => {
                trace.failed = Some(error.cause());
                failure(target, request_id, error)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&version.short) {
            response.headers_mut().insert(VERSION, value);
        }
        response
    }

    /// One log line and the metrics of a finished request.
    fn record(
        &self,
        parts: &http::request::Parts,
        response: &Response<Full<Bytes>>,
        trace: &Trace,
        elapsed: Duration,
        request_id: &str,
    ) {
        let status = response.status();
        let bytes_out = response.body().size_hint().exact().unwrap_or(0);
        let none: &str = "-";
        tracing::info!(
            target: "corral::access",
            request_id,
            client = %trace.client,
            method = %parts.method,
            path = parts.uri.path(),
            component = trace.component.as_deref().unwrap_or(none),
            version = trace.version.as_deref().unwrap_or(none),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes_in = trace.bytes_in,
            bytes_out,
            "request"
        );
        let Some(component) = &trace.component else { return };
        let m = &self.stats;
        if let Some(reason) = trace.rejected {
            m.rejected
                .get_or_create(&RejectionLabels {
                    component: Arc::clone(component),
                    reason,
                })
                .inc();
        }
        let version: Arc<str> = trace.version.clone().unwrap_or_else(|| none.into());
        if let Some(cause) = trace.failed {
            m.traps
                .get_or_create(&TrapLabels {
                    component: Arc::clone(component),
                    version: Arc::clone(&version),
                    cause,
                })
                .inc();
        }
        m.requests
            .get_or_create(&RequestLabels {
                component: Arc::clone(component),
                version: Arc::clone(&version),
                method: MetricMethod::of(&parts.method),
                route: trace.route.clone().unwrap_or_else(|| none.into()),
                status: status_class(status),
            })
            .inc();
        m.request_duration
            .get_or_create(&VersionLabels {
                component: Arc::clone(component),
                version,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, and
/// `Retry-After` on a refusal.
fn rate_limit_headers(response: &mut Response<Full<Bytes>>, verdict: &Verdict) {
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(verdict.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(verdict.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(verdict.reset_secs));
    if !verdict.allowed {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(verdict.retry_after_secs));
    }
}

/// The client's `X-Request-Id` when it is a sane token, or a new one.
fn request_id(request: &Request<Incoming>) -> Arc<str> {
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => id.into(),
        None => new_request_id().into(),
    }
}

/// 16 hex digits, unique within the process and unpredictable across runs.
fn new_request_id() -> String {
    format!("{:016x}", crate::components::random::u64())
}

/// Hop-by-hop and framing headers belong to the host, not to a component.
fn reserved_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

/// A component's response as HTTP, or why it is not a valid one.
fn into_http(response: types::Response, limits: &ComponentLimits) -> Result<Response<Full<Bytes>>, String> {
    let status = match StatusCode::from_u16(response.status) {
        Ok(status) if status.as_u16() >= 200 => status,
        _ => return Err(format!("status {} is not a final HTTP status", response.status)),
    };
    let limit = limits.max_response_body_bytes;
    if response.body.len() > limit {
        return Err(format!(
            "the body of {} bytes is larger than the limit of {limit} bytes",
            response.body.len()
        ));
    }
    if response.headers.len() > MAX_RESPONSE_HEADERS {
        return Err(format!(
            "{} headers is more than {MAX_RESPONSE_HEADERS}",
            response.headers.len()
        ));
    }
    let mut http = Response::new(Full::new(Bytes::from(response.body)));
    *http.status_mut() = status;
    for (name, value) in response.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) else {
            return Err(format!("header {name:?} is not a valid HTTP header"));
        };
        if !reserved_header(&name) {
            http.headers_mut().append(name, value);
        }
    }
    Ok(http)
}

/// The response to a component's invalid response: 500, logged.
fn invalid_response(target: Target<'_>, request_id: &str, detail: String) -> Response<Full<Bytes>> {
    tracing::warn!(component = %target.component, version = %target.version, request_id, "invalid response: {detail}");
    problem::response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "invalid-response",
        "The service returned an invalid response",
        detail,
    )
}

/// The response to a call that failed; the host and other requests carry on.
fn failure(target: Target<'_>, request_id: &str, error: InvokeError) -> Response<Full<Bytes>> {
    tracing::warn!(
        component = %target.component,
        version = %target.version,
        request_id,
        cause = error.cause(),
        "request failed: {error}"
    );
    let (status, title) = match error {
        InvokeError::CpuTime(_) | InvokeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "The service took too long"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "The service failed"),
    };
    let detail = format!("{} failed this request: {}", target.component, error.public());
    problem::response(status, error.cause(), title, detail)
}
