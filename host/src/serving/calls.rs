//! Calls between components on two hosts of a cluster, typed ones and
//! requests to `<component>.internal`, over the same signed requests as
//! forwarding: the caller's host sends the call ([`Elsewhere`],
//! [`Gateway::internal_elsewhere`]) to the owner of the callee, found as a
//! forwarded request is, at one of the host's own paths; the owner answers
//! it ([`Gateway::answer_host`]) only if it still owns the callee and the
//! signature holds, as it serves a call from one of its own components.
//! What a typed call carries is [`remote`]'s.
//!
//! Every way a call can fail ends as the caller's `unavailable`, saying
//! why: the owner not live or unreachable, refusing (not the owner any
//! more, overloaded, the callee failed), or silent past what the caller
//! had left of its time.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use wasmtime::component::Val;

use super::body::{BodyPace, BodyRefusal, read_body};
use super::forward::{ANSWER_GRACE, cluster_unavailable, unreachable_owner};
use super::gateway::{Gateway, Trace};
use super::headers::{NODE, REQUEST_ID};
use super::{HttpResponse, full, problem};
use crate::capabilities::http::BoxFuture;
use crate::cluster::trust::{self, Claim, Refused};
use crate::components::peers::{CallElsewhere, Chain, Outgoing};
use crate::components::remote::{self, Answer, Message, wire_limit};
use crate::components::snapshot::Entry;

/// Where a host takes requests to `<component>.internal` from other hosts:
/// `/.corral/internal/<caller>/<depth>/<component><path>`, signed as a call is.
pub const INTERNAL_PATH: &str = "/.corral/internal/";
/// Where a host takes calls from other hosts: `/.corral/call/<component>`,
/// answered only when signed by a host of the cluster (a client's request
/// to it is never sent on, as no route owns the host's paths).
pub const CALL_PATH: &str = "/.corral/call/";
/// The route of calls from other hosts, in logs and metrics.
const CALL_ROUTE: &str = "(call)";
/// How much sooner than its caller's a call's deadline is on the callee's
/// host: the time its answer takes to come back.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);
/// The client address a call between hosts claims: it has no client of its own.
const NO_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Carries calls to components other hosts own, for the components layer.
pub struct Elsewhere(pub Weak<Gateway>);

impl CallElsewhere for Elsewhere {
    fn call(&self, owner: String, call: Outgoing) -> BoxFuture<Result<Vec<Val>, String>> {
        let gateway = self.0.upgrade();
        Box::pin(async move {
            let gateway = gateway.ok_or("the host is shutting down")?;
            gateway.call_elsewhere(&owner, call).await
        })
    }
}

impl Gateway {
    /// Sends `call` to `owner` and reads its results, within what the
    /// caller has left of its time.
    async fn call_elsewhere(&self, owner: &str, call: Outgoing) -> Result<Vec<Val>, String> {
        let started = Instant::now();
        let (cluster, forwarder) = self.joined().ok_or("this host has not joined its cluster")?;
        let url = cluster
            .url_of(owner)
            .await
            .ok_or_else(|| format!("{} is owned by host {owner}, which is not live", call.callee))?;
        // The callee's host is told a little less time than the caller
        // has, so that its answer, even a timeout, arrives in time.
        let within = call.chain.within;
        let chain = Chain {
            within: within.saturating_sub(ANSWER_MARGIN),
            ..call.chain.clone()
        };
        if chain.within.is_zero() {
            return Err(format!("no time was left to call {}", call.callee));
        }
        let message = Message::new(&call.caller, &call.interface, &call.func, &call.params, &chain)?;
        let body = serde_json::to_vec(&message).map_err(|e| format!("the call cannot be written: {e}"))?;
        let limit = wire_limit(call.max_call_bytes);
        if body.len() > limit {
            return Err(format!(
                "the call takes {} bytes to send to another host, more than {}'s limit of {limit} there",
                body.len(),
                call.callee
            ));
        }
        let (parts, ()) = Request::post(format!("{CALL_PATH}{}", call.callee))
            .header(CONTENT_TYPE, "application/json")
            .header(REQUEST_ID, &*chain.request_id)
            .body(())
            .map_err(|e| format!("the call cannot be sent: {e}"))?
            .into_parts();
        let response = forwarder
            .forward(cluster, owner, &url, &parts, Bytes::from(body), NO_CLIENT, within)
            .await;
        let status = response.status();
        // The owner's own answers say who answered; the forwarder's say
        // that the owner could not be reached, or did not answer.
        let answered = response.headers().contains_key(NODE);
        let pace = BodyPace {
            timeout: within.saturating_sub(started.elapsed()),
            min_bytes_per_sec: 0,
        };
        let (head, body) = response.into_parts();
        let bytes = match read_body(body, &head.headers, limit, pace).await {
            Ok(bytes) => bytes,
            Err(BodyRefusal::TooSlow(_)) => {
                return Err(format!("host {owner} did not finish answering within {within:?}"));
            }
            Err(BodyRefusal::TooLarge(_)) => {
                return Err(format!(
                    "host {owner} answered with more than the limit of {limit} bytes"
                ));
            }
            Err(BodyRefusal::Broken(_)) => {
                return Err(format!("host {owner} answered with a body that cannot be read"));
            }
        };
        if status != StatusCode::OK {
            let detail = detail(&bytes);
            return Err(match answered {
                true => format!("host {owner} answered {}: {detail}", status.as_u16()),
                false => detail,
            });
        }
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|e| format!("host {owner} answered with no results: {e}"))?;
        remote::read_answer(&answer, &call.ty).map_err(|e| format!("host {owner} answered with {e}"))
    }

    /// Answers a request another host sent to one of the host's own paths,
    /// signed as `claim`: a call, or a request to `<component>.internal`.
    pub(super) async fn answer_host(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        claim: &Claim,
        request_id: &Arc<str>,
    ) -> HttpResponse {
        let path = parts.uri.path();
        let mut response = if path.starts_with(CALL_PATH) {
            self.answer_call(parts, body, claim, request_id).await
        } else if path.starts_with(INTERNAL_PATH) {
            self.answer_internal(parts, body, claim, request_id).await
        } else {
            let detail = format!("this host serves nothing at {path}");
            problem::response(StatusCode::NOT_FOUND, "no-route", "No route", detail)
        };
        if let Some((cluster, _)) = self.joined()
            && let Ok(value) = HeaderValue::from_str(cluster.node())
        {
            response.headers_mut().insert(NODE, value);
        }
        response
    }

    /// Sends a request to `<component>.internal` from `caller`, `depth`
    /// deep, on to `owner`, which owns `component`: signed, its body read,
    /// answered with the owner's answer as a forwarded request is.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn internal_elsewhere(
        &self,
        entry: &Entry,
        owner: &str,
        parts: &http::request::Parts,
        body: Bytes,
        caller: &str,
        depth: u32,
        request_id: &str,
    ) -> HttpResponse {
        let Some((cluster, forwarder)) = self.joined() else {
            return cluster_unavailable("this host has not joined its cluster");
        };
        let Some(url) = cluster.url_of(owner).await else {
            return unreachable_owner(owner, "it is not live");
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{INTERNAL_PATH}{caller}/{depth}/{}{path}", entry.name);
        let Ok(mut sent) = on_path(parts, &target) else {
            return unreachable_owner(owner, "the request's path cannot be sent on");
        };
        // The request's id, not one the guest set, as on one host.
        if let Ok(id) = HeaderValue::from_str(request_id) {
            sent.headers.insert(REQUEST_ID, id);
        }
        let limits = entry.limits();
        let wait = limits.queue_timeout + limits.timeout + ANSWER_GRACE;
        forwarder
            .forward(cluster, owner, &url, &sent, body, NO_CLIENT, wait)
            .await
    }

    /// Serves a request to `<component>.internal` that another host sent on
    /// to `/.corral/internal/<caller>/<depth>/<component><path>`.
    async fn answer_internal(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        claim: &Claim,
        request_id: &Arc<str>,
    ) -> HttpResponse {
        let started = Instant::now();
        let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
        let mut fields = target[INTERNAL_PATH.len()..].splitn(4, '/');
        let (Some(caller), Some(depth), Some(component), rest) = (
            fields.next(),
            fields.next().and_then(|d| d.parse::<u32>().ok()),
            fields.next(),
            fields.next(),
        ) else {
            let detail = format!("{target} does not name a caller, a depth and a component");
            return problem::response(StatusCode::BAD_REQUEST, "bad-call", "Bad call", detail);
        };
        let Ok(inner) = on_path(parts, &format!("/{}", rest.unwrap_or_default())) else {
            let detail = format!("{target} does not end with a path");
            return problem::response(StatusCode::BAD_REQUEST, "bad-call", "Bad call", detail);
        };
        let mut trace = Trace::new(claim.client, Some(caller.into()));
        let response = self
            .serve_internal(component, &inner, body, depth, request_id, &mut trace, Some(claim))
            .await;
        self.record(&inner, &response, &trace, started.elapsed(), request_id);
        response
    }

    /// Answers a call another host sent to `/.corral/call/<component>`,
    /// signed as `claim`: in one log line and the metrics of a request.
    async fn answer_call(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        claim: &Claim,
        request_id: &Arc<str>,
    ) -> HttpResponse {
        let started = Instant::now();
        let mut trace = Trace::new(claim.client, None);
        trace.route = Some(CALL_ROUTE.into());
        let response = self.answer(parts, body, claim, &mut trace).await;
        self.record(parts, &response, &trace, started.elapsed(), request_id);
        response
    }

    async fn answer(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        claim: &Claim,
        trace: &mut Trace,
    ) -> HttpResponse {
        let component = &parts.uri.path()[CALL_PATH.len()..];
        let snapshot = self.registry.snapshot();
        let Some(entry) = snapshot.get(component) else {
            let detail = format!("no component is named {component}");
            return problem::response(StatusCode::NOT_FOUND, "no-component", "No such component", detail);
        };
        trace.component = Some(Arc::clone(&entry.name));
        if !self.registry.placement.serves_here(entry) {
            let detail = match self.registry.placement.owner_elsewhere(component) {
                Some(owner) => format!("{component} moved to host {owner} while the call was on its way"),
                None => format!("this host does not serve {component} yet"),
            };
            return problem::unavailable("not-owner", "This host does not serve the component", detail);
        }
        let limit = wire_limit(entry.limits().max_call_bytes);
        let body = match read_body(body, &parts.headers, limit, self.body_pace).await {
            Ok(body) => body,
            Err(refusal) => {
                trace.rejected = refusal.reason();
                return refusal.into_response();
            }
        };
        trace.bytes_in = body.len();
        if trust::body_sha256(&body) != claim.body_sha256 {
            trace.rejected = Some("forward_signature");
            return super::gateway::forward_refused(&Refused::BodyChanged);
        }
        let message: Message = match serde_json::from_slice(&body) {
            Ok(message) => message,
            Err(e) => {
                let detail = format!("the call cannot be read: {e}");
                return problem::response(StatusCode::BAD_REQUEST, "bad-call", "Bad call", detail);
            }
        };
        match remote::answer(entry, message).await {
            Ok(answer) => match serde_json::to_vec(&answer) {
                Ok(json) => {
                    let mut response = http::Response::new(full(json));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                Err(e) => problem::unavailable("unavailable", "The call did not complete", e.to_string()),
            },
            Err(reason) => {
                trace.failed = Some("call");
                problem::unavailable("unavailable", "The call did not complete", reason)
            }
        }
    }
}

/// `parts` with `target` as their path and query.
fn on_path(parts: &http::request::Parts, target: &str) -> Result<http::request::Parts, http::Error> {
    let mut request = Request::builder().method(parts.method.clone()).uri(target).body(())?;
    *request.headers_mut() = parts.headers.clone();
    Ok(request.into_parts().0)
}

/// What a problem+json `body` says happened.
fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}
