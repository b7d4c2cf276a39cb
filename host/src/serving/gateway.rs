//! One public HTTP request from arrival to response, in order of cost so a
//! refused request costs little: [`Gateway::admit`] finds the component
//! that owns the path and applies its rate limits; the body is read within
//! its limit and deadline; a slot in the component's gate is taken; then
//! [`Gateway::serve`] calls a fresh instance and turns its response, or its
//! failure, into HTTP. Every request ends in one log line and its metrics.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use tokio::sync::oneshot::error::TryRecvError;
use tracing::Instrument;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as WasiError, WasiBody};

use super::body::{BodyPace, read_body, refuse};
use super::charged::{Charged, Held};
use super::client::client_addr;
use super::forward::{ANSWER_GRACE, Forwarder, SIGNATURE, cluster_unavailable, unreachable_owner};
use super::headers::{self, CLIENT_ADDR, NODE, REQUEST_ID, VERSION};
use super::server::{Connection, Handler};
use super::stats::{
    ForwardLabels, Method as MetricMethod, RejectionLabels, RequestLabels, ServingStats, TrapLabels, VersionLabels,
    status_class,
};
use super::{BoxError, HttpResponse, full, problem};
use crate::capabilities::bindings::corral::service::types;
use crate::capabilities::http::{BoxFuture, InternalHttp};
use crate::capabilities::sqlite::AppendError;
use crate::cluster::Cluster;
use crate::cluster::trust::{self, Claim, Refused};
use crate::components::registry::Registry;
use crate::components::snapshot::Entry;
use crate::components::stats::ComponentLabels;
use crate::components::version::Entrypoint;
use crate::config::outbound::INTERNAL_SUFFIX;
use crate::config::routes::is_hosts;
use crate::config::{ComponentLimits, ReadFrom, TrustedProxies};
use crate::limits::body::BodyCap;
use crate::limits::gate::{Overloaded, Slot};
use crate::limits::rates::Verdict;
use crate::limits::shared::{Decided, SharedLimits};
use crate::telemetry;
use crate::wasm::invoke::{self, InvokeError, Streaming};
use crate::wasm::state::{OwnedTarget, Target};

/// The longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;
/// The route of requests between components, in metrics.
const INTERNAL_ROUTE: &str = "(internal)";

/// The public listener's handler.
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub trusted_proxies: TrustedProxies,
    pub stats: Arc<ServingStats>,
    /// How fast request bodies must arrive.
    pub body_pace: BodyPace,
    /// The cluster this host is part of, if any (set once it has joined),
    /// and how it forwards requests to the owners of components.
    pub cluster: Option<(Arc<OnceLock<Arc<Cluster>>>, Forwarder)>,
    /// Rate limits shared by every host, when configured.
    pub shared_limits: Option<Arc<SharedLimits>>,
}

/// What the gateway learned about one request, for its log line and metrics.
pub(super) struct Trace {
    client: IpAddr,
    /// The component that sent it, for a request to `<component>.internal`.
    caller: Option<Arc<str>>,
    pub(super) component: Option<Arc<str>>,
    pub(super) route: Option<Arc<str>>,
    version: Option<Arc<str>>,
    pub(super) bytes_in: usize,
    /// Why the request was refused before reaching the component.
    pub(super) rejected: Option<&'static str>,
    /// Why the component failed it.
    pub(super) failed: Option<&'static str>,
    /// Its share of the budget for responses clients have not read.
    held: Option<Held>,
}

impl Trace {
    pub(super) fn new(client: IpAddr, caller: Option<Arc<str>>) -> Self {
        Trace {
            client,
            caller,
            component: None,
            route: None,
            version: None,
            bytes_in: 0,
            rejected: None,
            failed: None,
            held: None,
        }
    }
}

/// A request the gateway answers without calling a component.
struct Refusal {
    response: HttpResponse,
    reason: Option<&'static str>,
}

/// A request on its way to a component, its body read.
struct Call<'a> {
    parts: &'a http::request::Parts,
    body: Bytes,
    /// Who sent it: the client's address, or `<component>.internal`.
    client: String,
    id: &'a Arc<str>,
    /// How many calls between components led to it.
    depth: u32,
}

impl Call<'_> {
    /// The request as corral's world takes it.
    fn for_service(self) -> types::Request {
        let parts = self.parts;
        types::Request {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| !headers::is_hosts(name) && !telemetry::is_trace_header(name))
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: self.body.to_vec(),
            client_addr: self.client,
            request_id: self.id.to_string(),
        }
    }

    /// The request as `wasi:http` takes it: an absolute URI, the client's
    /// address and the request id in headers of the host's, and the trace
    /// context of `span`, the component's, as the only one.
    fn for_http(self, span: &tracing::Span) -> Request<Full<Bytes>> {
        let parts = self.parts;
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .filter(|host| http::uri::Authority::try_from(*host).is_ok())
            .unwrap_or("localhost");
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = http::Uri::try_from(format!("http://{authority}{path}"))
            .unwrap_or_else(|_| http::Uri::from_static("http://localhost/"));
        let mut request = Request::new(Full::new(self.body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let out = request.headers_mut();
        for (name, value) in &parts.headers {
            if !headers::is_hosts(name) && name != REQUEST_ID {
                out.append(name, value.clone());
            }
        }
        if let Ok(client) = HeaderValue::from_str(&self.client) {
            out.insert(CLIENT_ADDR, client);
        }
        if let Ok(id) = HeaderValue::from_str(self.id) {
            out.insert(REQUEST_ID, id);
        }
        telemetry::carry(span, out);
        out.remove(telemetry::TRACESTATE);
        request
    }
}

/// Why a call gave no valid response.
enum Failed {
    Invoke(InvokeError),
    /// It answered, but not with valid HTTP.
    Invalid(String),
}

/// The sender of a request, for the access log.
struct Client<'a>(&'a Trace);

impl std::fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.caller {
            Some(caller) => write!(f, "{caller}{INTERNAL_SUFFIX}"),
            None => write!(f, "{}", self.0.client),
        }
    }
}

impl Handler for Gateway {
    async fn handle(&self, request: Request<Incoming>, connection: &Connection) -> HttpResponse {
        let started = Instant::now();
        let request_id = request_id(&request);
        let (parts, body) = request.into_parts();
        // A request another host of the cluster sent on was limited there,
        // and says who its client is, if its signature holds.
        let forwarded = self.forwarded(&parts).await;
        let span = tracing::info_span!(
            "request",
            otel.kind = "server",
            request_id = %request_id,
            http.request.method = %parts.method,
            url.path = parts.uri.path(),
            component = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        // The trace a request continues is believed from another host or a
        // trusted proxy; any other client's request starts one. (Its
        // parent is set before the span is first entered, or not at all.)
        if matches!(forwarded, Ok(Some(_))) || self.trusted_proxies.trusts(connection.peer.ip()) {
            telemetry::continue_from(&span, &parts.headers);
        }
        let arrived = Arrived {
            parts,
            body,
            request_id,
            started,
        };
        self.answer_request(arrived, forwarded, connection)
            .instrument(span)
            .await
    }
}

/// A request as it arrived, its head read.
struct Arrived {
    parts: http::request::Parts,
    body: Incoming,
    request_id: Arc<str>,
    started: Instant,
}

impl Gateway {
    /// [`Handler::handle`], in the request's span.
    async fn answer_request(
        &self,
        arrived: Arrived,
        forwarded: Result<Option<Claim>, Refused>,
        connection: &Connection,
    ) -> HttpResponse {
        let Arrived {
            parts,
            body,
            request_id,
            started,
        } = arrived;
        let peer = connection.peer;
        let forwarded = match forwarded {
            Ok(claim) => claim,
            Err(refused) => {
                let mut trace = Trace::new(peer.ip(), None);
                trace.rejected = Some("forward_signature");
                let snapshot = self.registry.snapshot();
                trace.component = snapshot
                    .route(parts.uri.path())
                    .filter(|_| !is_hosts(parts.uri.path()))
                    .map(|(entry, _)| Arc::clone(&entry.name));
                let response = refuse(body, forward_refused(&refused)).await;
                self.record(&parts, &response, &trace, started.elapsed(), &request_id);
                return response;
            }
        };
        if let Some(claim) = &forwarded
            && is_hosts(parts.uri.path())
        {
            return self.answer_host(&parts, body, claim, &request_id).await;
        }
        let client = match &forwarded {
            Some(claim) => claim.client,
            None => client_addr(&self.trusted_proxies, peer.ip(), &parts.headers),
        };
        let mut trace = Trace::new(client, None);
        let mut response = self
            .respond(&parts, body, &request_id, forwarded.as_ref(), connection, &mut trace)
            .await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        // In a cluster, the host that answered, unless another host did.
        if let Some((cluster, _)) = self.joined()
            && !response.headers().contains_key(NODE)
            && let Ok(value) = HeaderValue::from_str(cluster.node())
        {
            response.headers_mut().insert(NODE, value);
        }
        self.record(&parts, &response, &trace, started.elapsed(), &request_id);
        let (owed, held) = (Arc::clone(&connection.owed), trace.held.take());
        response.map(|body| Charged::new(body, owed, held).boxed_unsync())
    }

    /// The cluster, once this host has joined it, and the forwarder.
    pub(super) fn joined(&self) -> Option<(&Arc<Cluster>, &Forwarder)> {
        let (cluster, forwarder) = self.cluster.as_ref()?;
        Some((cluster.get()?, forwarder))
    }

    /// What a request another host of the cluster sent on claims, if it
    /// carries a signature; an error if the signature does not hold. Off a
    /// cluster, the header means nothing (and never reaches a component).
    async fn forwarded(&self, parts: &http::request::Parts) -> Result<Option<Claim>, Refused> {
        let (Some((cluster, _)), Some(header)) = (self.joined(), parts.headers.get(SIGNATURE)) else {
            return Ok(None);
        };
        let header = header.to_str().map_err(|_| Refused::Malformed("not text"))?;
        let target = trust::Target {
            method: parts.method.as_str(),
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            to: cluster.node(),
            headers_sha256: headers::end_to_end_sha256(&parts.headers),
        };
        cluster.verify(header, &target).await.map(Some)
    }

    /// Admits the request, reads its body (before a slot is taken, so a
    /// slow client never holds one while it sends), takes a slot, serves.
    async fn respond(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        request_id: &Arc<str>,
        forwarded: Option<&Claim>,
        connection: &Connection,
        trace: &mut Trace,
    ) -> HttpResponse {
        let (entry, verdict) = match self.admit(parts, forwarded.is_some(), trace).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                trace.rejected = refusal.reason;
                return refuse(body, refusal.response).await;
            }
        };
        // Refused early, before the body is read, if the response would
        // not fit now; the room is set aside once it is about to be made.
        // A request another host sent on was held to its client's share there.
        let shared = forwarded.is_none();
        if let Err(full) = connection.owed.fits(entry.shared.response_size.expected(), shared) {
            trace.rejected = Some("response_budget");
            return refuse(body, unread_responses(&entry.name, &full)).await;
        }
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
                // No connection to close: the caller is in this process.
                let mut response = refusal.into_response();
                response.headers_mut().remove(http::header::CONNECTION);
                return response;
            }
        };
        trace.bytes_in = body.len();
        if let Some(claim) = forwarded
            && trust::body_sha256(&body) != claim.body_sha256
        {
            trace.rejected = Some("forward_signature");
            return forward_refused(&Refused::BodyChanged);
        }
        let reads = matches!(parts.method, Method::GET | Method::HEAD);
        let mut response = match self.place(&entry, forwarded.is_some(), reads).await {
            Placed::Here(slot) => {
                let slot = match slot {
                    Some(slot) => Ok(slot),
                    None => self.wait_for_slot(&entry).await,
                };
                match slot {
                    Ok(slot) => {
                        if let Some(refused) = self.hold(&entry, connection, shared, trace) {
                            return refused;
                        }
                        let client = trace.client.to_string();
                        let call = Call {
                            parts,
                            body,
                            client,
                            id: request_id,
                            depth: 0,
                        };
                        self.serve(&entry, call, slot, trace).await
                    }
                    Err(overloaded) => self.overloaded(&entry, overloaded, trace),
                }
            }
            Placed::There { to, url, why } => {
                if let Some(refused) = self.hold(&entry, connection, shared, trace) {
                    return refused;
                }
                let labels = ForwardLabels {
                    component: Arc::clone(&entry.name),
                    to: to.clone(),
                    why,
                };
                self.stats.forwarded.get_or_create(&labels).inc();
                let (cluster, forwarder) = self.joined().expect("placed in a cluster");
                // The owner answers within its queue wait and its timeout.
                let limits = entry.limits();
                let wait = limits.queue_timeout + limits.timeout + ANSWER_GRACE;
                forwarder
                    .forward(cluster, &to, &url, parts, body, trace.client, wait)
                    .await
            }
            Placed::Nowhere(response) => response,
        };
        if let Some(verdict) = &verdict {
            rate_limit_headers(&mut response, verdict);
        }
        response
    }

    /// Sets aside room in the budget for responses clients have not read,
    /// for the response this request is about to get, as large as the
    /// component's recent ones; the 503 to answer if it does not fit.
    fn hold(&self, entry: &Entry, connection: &Connection, shared: bool, trace: &mut Trace) -> Option<HttpResponse> {
        let size = &entry.shared.response_size;
        match connection.owed.admit(size.expected(), shared) {
            Ok(reservation) => {
                trace.held = Some(Held {
                    reservation,
                    size: Arc::clone(size),
                });
                None
            }
            Err(full) => {
                trace.rejected = Some("response_budget");
                Some(unread_responses(&entry.name, &full))
            }
        }
    }

    /// A slot of `entry`'s gate, once one is free; the wait is measured.
    async fn wait_for_slot(&self, entry: &Entry) -> Result<Slot, Overloaded> {
        let waiting = Instant::now();
        let slot = entry.shared.gate.enter().await;
        self.stats.observe_queue_wait(&entry.name, waiting.elapsed());
        slot
    }

    /// Where a request for `entry` is served. In a cluster, a component
    /// with a database is served by its owner only (but for reads that may
    /// come from a fresh enough replica); one without is served
    /// here while a slot is free, else by another host with a free one,
    /// else here after a wait. A forwarded request is never sent on again.
    /// A read (`reads`) of a component whose reads may come from a replica
    /// is served here when this host's copy is fresh enough.
    async fn place(&self, entry: &Entry, forwarded: bool, reads: bool) -> Placed {
        if let Some(why) = self.registry.placement.waiting(entry) {
            return Placed::Nowhere(cluster_unavailable(&why));
        }
        let Some((cluster, _)) = self.joined() else {
            return Placed::Here(None);
        };
        if let Some(owner) = self.registry.placement.owner_elsewhere(&entry.name) {
            let config = &entry.config;
            if reads && config.read_from == ReadFrom::Replica && cluster.reads_here(&entry.name, config.max_replica_lag)
            {
                return Placed::Here(None);
            }
            if forwarded {
                // Ownership moved while the request was on its way.
                let why = "it moved while this request was forwarded; retry";
                return Placed::Nowhere(unreachable_owner(&owner, why));
            }
            return match cluster.url_of(&owner).await {
                Some(url) => Placed::There {
                    to: owner,
                    url,
                    why: "owner",
                },
                None => Placed::Nowhere(unreachable_owner(&owner, "it is not live")),
            };
        }
        if forwarded {
            return Placed::Here(None);
        }
        if let Some(slot) = entry.shared.gate.try_enter() {
            return Placed::Here(Some(slot));
        }
        match cluster.pick_peer(&entry.name) {
            Some((to, url)) => Placed::There { to, url, why: "busy" },
            None => Placed::Here(None),
        }
    }

    /// The component that owns the path, if the request is within its rate
    /// limits; the verdict of the strictest limit that applies. A request
    /// another host forwarded was limited there.
    async fn admit(
        &self,
        parts: &http::request::Parts,
        forwarded: bool,
        trace: &mut Trace,
    ) -> Result<(Arc<Entry>, Option<Verdict>), Box<Refusal>> {
        let snapshot = self.registry.snapshot();
        // The host's own paths are never a component's, so a client's
        // request to one is never sent on, signed, to another host.
        let route = match is_hosts(parts.uri.path()) {
            true => None,
            false => snapshot.route(parts.uri.path()),
        };
        let Some((entry, route)) = route else {
            let detail = format!("no component serves {}", parts.uri.path());
            return Err(Box::new(Refusal {
                response: problem::response(StatusCode::NOT_FOUND, "no-route", "No route", detail),
                reason: None,
            }));
        };
        trace.component = Some(Arc::clone(&entry.name));
        trace.route = Some(route.into());
        let client = trace.client;
        let (method, path) = (parts.method.as_str(), parts.uri.path());
        let verdict = match &self.shared_limits {
            _ if forwarded => None,
            Some(shared) => {
                let hosts = self.joined().map_or(1, |(c, _)| c.live_hosts());
                let limits = &entry.config.rate_limits;
                let (verdict, decided) = shared.check(&entry.name, limits, method, path, client, hosts).await;
                if decided == Decided::Local {
                    let labels = ComponentLabels {
                        component: Arc::clone(&entry.name),
                    };
                    self.stats.rate_limit_fallbacks.get_or_create(&labels).inc();
                }
                verdict
            }
            None => entry.shared.rate_limits.check(method, path, client),
        };
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
    /// turns what it answered into HTTP. The slot is held until the
    /// instance is done: for a `wasi:http` component, until its body is.
    async fn serve(&self, entry: &Entry, call: Call<'_>, slot: Slot, trace: &mut Trace) -> HttpResponse {
        // The version is chosen once and held to the end: a swap meanwhile
        // does not change what serves this request.
        let version = Arc::clone(entry.pick(crate::components::random::u64()));
        trace.version = Some(Arc::clone(&version.short));
        let target = entry.target(&version);
        let (id, request_id, depth) = (Arc::clone(call.id), call.id, call.depth);
        let span = tracing::info_span!("component", component = %entry.name, version = %version.short);
        let served = match &version.entrypoint {
            Entrypoint::Service(service) => {
                let answer = invoke::handle(target, service, call.for_service(), id, depth)
                    .instrument(span)
                    .await;
                drop(slot);
                answer
                    .map_err(Failed::Invoke)
                    .and_then(|response| into_http(response, target.limits).map_err(Failed::Invalid))
            }
            Entrypoint::Http(pre) => {
                let request = call.for_http(&span);
                let owned = OwnedTarget::of(&target);
                let answer = invoke::handle_http(owned, pre.clone(), request, id, depth, slot)
                    .instrument(span)
                    .await;
                let cut = self.cut_short(entry, &version.short, request_id);
                answer
                    .map_err(Failed::Invoke)
                    .and_then(|streaming| streamed(streaming, target.limits, cut).map_err(Failed::Invalid))
            }
        };
        let mut response = match served {
            Ok(response) => response,
            Err(Failed::Invalid(detail)) => {
                trace.failed = Some("invalid-response");
                invalid_response(target, request_id, detail)
            }
            Err(Failed::Invoke(error)) => {
                trace.failed = Some(error.cause());
                failure(target, request_id, error)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&version.short) {
            response.headers_mut().insert(VERSION, value);
        }
        response
    }

    /// What reports a streamed body cut short, after its response's log
    /// line was written: a log line of its own, and the failure counted.
    fn cut_short(&self, entry: &Entry, version: &Arc<str>, request_id: &Arc<str>) -> CutShort {
        let stats = Arc::clone(&self.stats);
        let (component, version, id) = (Arc::clone(&entry.name), Arc::clone(version), Arc::clone(request_id));
        Box::new(move |cause, detail| {
            tracing::warn!(%component, %version, request_id = %id, cause, "response body cut short: {detail}");
            let labels = TrapLabels {
                component,
                version,
                cause,
            };
            stats.traps.get_or_create(&labels).inc();
        })
    }

    /// Serves a request one component sent to `http://<component>.internal`:
    /// like a public one, within the callee's body limit and concurrency
    /// gate, but without the rate limits, which are for clients.
    async fn internal(
        &self,
        component: &str,
        request: Request<WasiBody>,
        caller: Arc<str>,
        depth: u32,
        request_id: Arc<str>,
    ) -> HttpResponse {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let mut trace = Trace::new(IpAddr::from([127, 0, 0, 1]), Some(caller));
        let response = self
            .serve_internal(component, &parts, body, depth, &request_id, &mut trace, None)
            .await;
        self.record(&parts, &response, &trace, started.elapsed(), &request_id);
        response
    }

    /// Serves a request to `<component>.internal`, here or, if another host
    /// owns `component`, there. One another host sent on (`claim`) is
    /// served only here, and only if its body is the one it was signed with.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn serve_internal<B>(
        &self,
        component: &str,
        parts: &http::request::Parts,
        body: B,
        depth: u32,
        request_id: &Arc<str>,
        trace: &mut Trace,
        claim: Option<&Claim>,
    ) -> HttpResponse
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let snapshot = self.registry.snapshot();
        let Some(entry) = snapshot.get(component) else {
            let detail = format!("no component is named {component}");
            return problem::response(StatusCode::NOT_FOUND, "no-component", "No such component", detail);
        };
        trace.component = Some(Arc::clone(&entry.name));
        trace.route = Some(INTERNAL_ROUTE.into());
        let placement = &self.registry.placement;
        let elsewhere = placement.owner_elsewhere(&entry.name);
        let moved = || {
            let owner = claim.and(elsewhere.as_ref())?;
            Some(format!(
                "{component} moved to host {owner} while this request was on its way"
            ))
        };
        if let Some(detail) = placement.waiting(entry).or_else(moved) {
            return problem::response(
                StatusCode::BAD_GATEWAY,
                "owned-elsewhere",
                "Owned by another host",
                detail,
            );
        }
        let limits = entry.limits();
        // A guest's body comes from its own instance, which its timeout
        // bounds: no minimum pace.
        let pace = BodyPace {
            timeout: limits.timeout,
            min_bytes_per_sec: 0,
        };
        let body = match read_body(body, &parts.headers, limits.max_request_body_bytes, pace).await {
            Ok(body) => body,
            Err(refusal) => {
                trace.rejected = refusal.reason();
                return refusal.into_response();
            }
        };
        trace.bytes_in = body.len();
        if let Some(claim) = claim
            && trust::body_sha256(&body) != claim.body_sha256
        {
            trace.rejected = Some("forward_signature");
            return forward_refused(&Refused::BodyChanged);
        }
        if let Some(owner) = elsewhere {
            let caller = trace.caller.clone().unwrap_or_else(|| "-".into());
            return self
                .internal_elsewhere(entry, &owner, parts, body, &caller, depth, request_id)
                .await;
        }
        let slot = match entry.shared.gate.enter().await {
            Ok(slot) => slot,
            Err(overloaded) => return self.overloaded(entry, overloaded, trace),
        };
        let client = format!("{}{INTERNAL_SUFFIX}", trace.caller.as_deref().unwrap_or_default());
        let call = Call {
            parts,
            body,
            client,
            id: request_id,
            depth,
        };
        self.serve(entry, call, slot, trace).await
    }

    /// The answer to a request the component has no room for.
    fn overloaded(&self, entry: &Entry, overloaded: Overloaded, trace: &mut Trace) -> HttpResponse {
        trace.rejected = Some("concurrency");
        let detail = format!("{} is at capacity: {overloaded}", entry.name);
        problem::unavailable("overloaded", "Service overloaded", detail)
    }

    /// One log line and the metrics of a finished request.
    pub(super) fn record(
        &self,
        parts: &http::request::Parts,
        response: &HttpResponse,
        trace: &Trace,
        elapsed: Duration,
        request_id: &str,
    ) {
        let status = response.status();
        let bytes_out = response.body().size_hint().exact().unwrap_or(0);
        let none: &str = "-";
        let span = tracing::Span::current();
        span.record("http.response.status_code", status.as_u16());
        if let Some(component) = &trace.component {
            span.record("component", &**component);
        }
        tracing::info!(
            target: "corral::access",
            request_id,
            client = %Client(trace),
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
fn rate_limit_headers(response: &mut HttpResponse, verdict: &Verdict) {
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

/// A component's response as HTTP, or why it is not a valid one.
pub(crate) fn into_http(response: types::Response, limits: &ComponentLimits) -> Result<HttpResponse, String> {
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
    if response.headers.len() > limits.max_response_headers {
        return Err(format!(
            "{} headers is more than {}",
            response.headers.len(),
            limits.max_response_headers
        ));
    }
    let mut http = Response::new(full(Bytes::from(response.body)));
    *http.status_mut() = status;
    for (name, value) in response.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) else {
            return Err(format!("header {name:?} is not a valid HTTP header"));
        };
        if headers::component_may_set(&name) {
            http.headers_mut().append(name, value);
        }
    }
    Ok(http)
}

/// A `wasi:http` component's response as HTTP, or why it is not a valid
/// one. Its body streams on, capped at the response limit and ended with
/// an error if the instance fails before finishing it.
fn streamed(streaming: Streaming, limits: &ComponentLimits, cut_short: CutShort) -> Result<HttpResponse, String> {
    let (mut parts, body) = streaming.response.into_parts();
    if parts.status.as_u16() < 200 {
        return Err(format!("status {} is not a final HTTP status", parts.status));
    }
    if parts.headers.len() > limits.max_response_headers {
        return Err(format!(
            "{} headers is more than {}",
            parts.headers.len(),
            limits.max_response_headers
        ));
    }
    let limit = limits.max_response_body_bytes;
    let length = parts.headers.get(header::CONTENT_LENGTH);
    if let Some(length) = length.map(|l| l.to_str().ok().and_then(|l| l.parse::<u64>().ok())) {
        match length {
            Some(n) if n <= limit as u64 => {}
            Some(n) => {
                return Err(format!(
                    "the body of {n} bytes is larger than the limit of {limit} bytes"
                ));
            }
            None => return Err("its content-length is not a number".to_string()),
        }
    }
    // The length, when given, frames the stream: it stays.
    let names: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| headers::is_hosts(n) || headers::is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in names {
        parts.headers.remove(name);
    }
    let body = Streamed {
        inner: body,
        cap: BodyCap::new(limit),
        ended: streaming.ended,
        cut_short: Some(cut_short),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// Reports why a streamed body was cut short: a cause, as in metrics, and
/// the detail.
type CutShort = Box<dyn FnOnce(&'static str, String) + Send>;

/// A component's streamed body, cut off past the response limit, and
/// ended with an error if the instance failed before finishing it (its
/// store is then gone, and the body would otherwise just end).
struct Streamed {
    inner: HyperOutgoingBody,
    cap: BodyCap,
    ended: tokio::sync::oneshot::Receiver<Result<(), InvokeError>>,
    cut_short: Option<CutShort>,
}

impl Streamed {
    fn cut(&mut self, cause: &'static str, detail: String) -> Option<Result<hyper::body::Frame<Bytes>, BoxError>> {
        if let Some(report) = self.cut_short.take() {
            report(cause, detail.clone());
        }
        Some(Err(detail.into()))
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        std::task::Poll::Ready(match frame {
            Some(Ok(frame)) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                match self.cap.take(size) {
                    Ok(()) => Some(Ok(frame)),
                    Err(limit) => {
                        let detail = format!("the body is larger than the limit of {limit} bytes");
                        self.cut("response-size", detail)
                    }
                }
            }
            Some(Err(e)) => self.cut("trap", e.to_string()),
            // Still running means it finished the body; ended means it
            // finished the body or failed.
            None => match self.ended.try_recv() {
                Ok(Ok(())) | Err(TryRecvError::Empty) => None,
                Ok(Err(e)) => self.cut(e.cause(), e.public()),
                Err(TryRecvError::Closed) => self.cut("trap", "the instance ended without finishing its body".into()),
            },
        })
    }
}

/// The answer to a request refused because its response would not fit in
/// the budget for responses clients have not read.
fn unread_responses(component: &str, full: &crate::limits::responses::Full) -> HttpResponse {
    problem::unavailable(
        "responses-unread",
        "Too many responses unread",
        format!("{component} is not called now: {full}; retry once they are read"),
    )
}

/// The answer to a request whose forwarding signature does not hold.
pub(super) fn forward_refused(refused: &Refused) -> HttpResponse {
    tracing::warn!(
        reason = refused.reason(),
        "a request signed as sent on by another host was refused: {refused}"
    );
    problem::response(
        StatusCode::FORBIDDEN,
        "forward-refused",
        "Not sent on by a host of this cluster",
        format!("the request is refused: {refused}"),
    )
}

/// The response to a component's invalid response: 500, logged.
fn invalid_response(target: Target<'_>, request_id: &str, detail: String) -> HttpResponse {
    tracing::warn!(component = %target.component, version = %target.version, request_id, "invalid response: {detail}");
    problem::response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "invalid-response",
        "The service returned an invalid response",
        detail,
    )
}

/// The response to a call that failed; the host and other requests carry on.
fn failure(target: Target<'_>, request_id: &str, error: InvokeError) -> HttpResponse {
    tracing::warn!(
        component = %target.component,
        version = %target.version,
        request_id,
        cause = error.cause(),
        "request failed: {error}"
    );
    let (status, title) = match error {
        // Nothing of the request was written: a retry is safe.
        InvokeError::Unwritten(AppendError::Fenced | AppendError::NotOwner(_) | AppendError::Refused(_)) => {
            let detail = format!("{} cannot write here now: {error}; try again", target.component);
            return problem::unavailable("not-writable", "The service cannot write now", detail);
        }
        // The log may hold the write: a retry could make it twice.
        InvokeError::Unwritten(AppendError::Unavailable(_)) => {
            let detail = format!("{} may or may not have written this request: {error}", target.component);
            return problem::response(StatusCode::BAD_GATEWAY, "outcome-unknown", "Outcome unknown", detail);
        }
        InvokeError::CpuTime(_) | InvokeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "The service took too long"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "The service failed"),
    };
    let detail = format!("{} failed this request: {}", target.component, error.public());
    problem::response(status, error.cause(), title, detail)
}

/// Where a request is served.
enum Placed {
    /// Here, in this slot, or in one to wait for.
    Here(Option<Slot>),
    /// On another host of the cluster.
    There { to: String, url: String, why: &'static str },
    /// Nowhere: the owner cannot be reached.
    Nowhere(HttpResponse),
}

/// Serves requests between components, for the `wasi:http` capability.
pub struct Internal(pub std::sync::Weak<Gateway>);

impl InternalHttp for Internal {
    fn call(
        &self,
        component: String,
        request: Request<WasiBody>,
        caller: Arc<str>,
        depth: u32,
        request_id: Arc<str>,
    ) -> BoxFuture<Result<Response<WasiBody>, WasiError>> {
        let gateway = self.0.upgrade();
        Box::pin(async move {
            let gateway = gateway.ok_or(WasiError::DestinationUnavailable)?;
            let mut response = gateway.internal(&component, request, caller, depth, request_id).await;
            // The caller is a guest: the host's headers stay with the host.
            headers::remove_hosts(response.headers_mut());
            Ok(response.map(|body| {
                body.map_err(|e| WasiError::InternalError(Some(e.to_string())))
                    .boxed_unsync()
            }))
        })
    }
}
