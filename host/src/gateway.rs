//! One public HTTP request from arrival to response: find the component that
//! owns the path, apply its rate limits and concurrency gate, read the body
//! within its limit, call the component, turn its response, or its failure,
//! into HTTP, and record the request in the log and the metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};

use crate::bindings::corral::service::types;
use crate::client::TrustedProxies;
use crate::invoke::{self, InvokeError, Target};
use crate::limits::ComponentLimits;
use crate::metrics::{
    Method as MetricMethod, Metrics, RejectionLabels, RequestLabels, TrapLabels, VersionLabels, status_class,
};
use crate::problem;
use crate::ratelimit::Verdict;
use crate::registry::Registry;
use crate::server::Handler;

/// Most headers a component's response may carry.
const MAX_RESPONSE_HEADERS: usize = 100;
/// How much of a refused body is read, so the client can read the refusal,
/// before the connection is closed instead.
const MAX_DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the version of the component that served a response.
const VERSION: HeaderName = HeaderName::from_static("corral-version");

/// The public listener's handler.
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub trusted_proxies: TrustedProxies,
    pub metrics: Arc<Metrics>,
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

impl Handler for Gateway {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_id = request_id(&request);
        let (parts, body) = request.into_parts();
        let mut trace = Trace {
            client: self.trusted_proxies.client_addr(peer.ip(), &parts.headers),
            component: None,
            route: None,
            version: None,
            bytes_in: 0,
            rejected: None,
            failed: None,
        };
        let mut response = self.route(&parts, body, &request_id, &mut trace).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        self.record(&parts, &response, &trace, started.elapsed(), &request_id);
        response
    }
}

impl Gateway {
    /// Everything is checked in order of cost, so that a refused request
    /// costs as little as possible: route, rate limit, a free instance slot,
    /// the body, and only then an instance.
    async fn route(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        request_id: &Arc<str>,
        trace: &mut Trace,
    ) -> Response<Full<Bytes>> {
        let snapshot = self.registry.snapshot();
        let Some((entry, route)) = snapshot.route(parts.uri.path()) else {
            let detail = format!("no component serves {}", parts.uri.path());
            return refuse(
                body,
                problem::response(StatusCode::NOT_FOUND, "no-route", "No route", detail),
            )
            .await;
        };
        let entry = Arc::clone(entry);
        trace.component = Some(Arc::clone(&entry.name));
        trace.route = Some(route.into());
        drop(snapshot);

        let client = trace.client;
        let verdict = entry
            .shared
            .rate_limits
            .check(parts.method.as_str(), parts.uri.path(), client);
        if let Some(verdict) = verdict.filter(|v| !v.allowed) {
            trace.rejected = Some("rate_limit");
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
            return refuse(body, response).await;
        }
        // The body is read before an instance slot is taken, so a slow
        // client never holds a slot while it sends.
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
        let waiting = Instant::now();
        let slot = entry.shared.gate.enter().await;
        self.metrics.observe_queue_wait(&entry.name, waiting.elapsed());
        let _slot = match slot {
            Ok(slot) => slot,
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
                return response;
            }
        };
        trace.bytes_in = body.len();
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
            client_addr: client.to_string(),
            request_id: request_id.to_string(),
        };
        // The version is chosen once and held to the end: a swap meanwhile
        // does not change what serves this request.
        let version = Arc::clone(entry.pick(crate::random::u64()));
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
        if let Some(verdict) = &verdict {
            rate_limit_headers(&mut response, verdict);
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
        let m = &self.metrics;
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
    format!("{:016x}", crate::random::u64())
}

/// How fast a request body must arrive: whole within `timeout`, and after
/// a grace period at no less than `min_bytes_per_sec` on average.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub timeout: Duration,
    pub min_bytes_per_sec: u64,
}

/// Time a client gets before its body's pace is held against it.
const BODY_GRACE: Duration = Duration::from_secs(2);

impl BodyPace {
    /// When a body that started at `started` and has `received` bytes so
    /// far must have sent more.
    fn deadline(&self, started: Instant, received: usize) -> Instant {
        let whole = started + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return whole;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        whole.min(started + BODY_GRACE + earned)
    }
}

/// Why a body was not read.
pub enum BodyRefusal {
    TooLarge(Response<Full<Bytes>>),
    TooSlow(Response<Full<Bytes>>),
    Broken(Response<Full<Bytes>>),
}

impl BodyRefusal {
    /// The rejection reason for metrics.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            BodyRefusal::TooLarge(_) => Some("body_size"),
            BodyRefusal::TooSlow(_) => Some("body_timeout"),
            BodyRefusal::Broken(_) => None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            BodyRefusal::TooLarge(r) | BodyRefusal::TooSlow(r) | BodyRefusal::Broken(r) => r,
        }
    }
}

/// Reads the whole body within `pace`, refusing with 413 one longer than
/// `limit` and with 408 one that arrives too slowly.
pub async fn read_body(
    mut body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
    pace: BodyPace,
) -> Result<Bytes, BodyRefusal> {
    let too_large = || {
        problem::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the request body is larger than this service's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit + MAX_DRAIN_BYTES) as u64) {
        // Too much to read just to refuse it: answer, and close the connection.
        return Err(BodyRefusal::TooLarge(closing(too_large())));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge(refuse(body, too_large()).await));
    }
    let started = Instant::now();
    let mut collected = BytesMut::new();
    loop {
        let deadline = pace.deadline(started, collected.len());
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                let detail = format!(
                    "the request body did not arrive in time: {} bytes in {} ms",
                    collected.len(),
                    started.elapsed().as_millis()
                );
                let response = problem::response(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request body too slow",
                    detail,
                );
                return Err(BodyRefusal::TooSlow(closing(response)));
            }
        };
        let frame = frame.map_err(|e| {
            BodyRefusal::Broken(closing(problem::response(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Cannot read the request body",
                e.to_string(),
            )))
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            return Err(BodyRefusal::TooLarge(refuse(body, too_large()).await));
        }
        collected.extend_from_slice(data);
    }
    Ok(collected.freeze())
}

/// `response`, with the connection closed after it.
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers `response` without serving the request. What is left of the
/// body is read and dropped first, up to [`MAX_DRAIN_BYTES`] and
/// [`DRAIN_TIMEOUT`], so that a client still sending it gets to read the
/// answer; past those bounds the connection is closed instead.
pub async fn refuse(mut body: Incoming, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > MAX_DRAIN_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    if !matches!(drained, Ok(true)) {
        return closing(response);
    }
    response
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
    tracing::warn!(component = %target.name, version = %target.version.short, request_id, "invalid response: {detail}");
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
        component = %target.name,
        version = %target.version.short,
        request_id,
        cause = error.cause(),
        "request failed: {error}"
    );
    let (status, title) = match error {
        InvokeError::CpuTime(_) | InvokeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "The service took too long"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "The service failed"),
    };
    let detail = format!("{} failed this request: {}", target.name, error.public());
    problem::response(status, error.cause(), title, detail)
}
