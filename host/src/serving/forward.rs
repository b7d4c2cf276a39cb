//! In a cluster, requests for a component whose database lives on another
//! host go to that host, its owner. The receiving host has already applied
//! the rate limits and read the body; the owner believes it about who the
//! client is only if the request's signature holds (see
//! [`crate::cluster::trust`]).
//!
//! The answer is the owner's, never a guess: the forwarding host waits as
//! long as the owner may take to answer (its queue and its timeout, which
//! it enforces itself), and says 503 with `Retry-After` only when the
//! request never reached the owner. One that reached it and got no answer
//! (the owner died, or hung past its own deadlines) may or may not have
//! taken effect: that is said as it is, 502 `outcome-unknown`, without an
//! invitation to retry.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{BoxError, HttpResponse, headers, problem};
use crate::cluster::Cluster;
use crate::cluster::trust::{self, Target};
use crate::telemetry;

/// How much longer than the owner's own deadlines a forwarding host waits
/// for its answer: the time to send the request and its answer between hosts.
pub const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// Signs a request sent on between hosts.
pub const SIGNATURE: HeaderName = HeaderName::from_static(trust::HEADER);

/// Sends requests on to their owners.
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Forwarder {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Forwarder {
    /// Sends the request to `owner` at `base_url`, signed by `cluster`, and
    /// streams its answer back, waiting `wait` for the answer's head: as
    /// long as the owner may take to answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        cluster: &Cluster,
        owner: &str,
        base_url: &str,
        parts: &http::request::Parts,
        body: Bytes,
        client: IpAddr,
        wait: Duration,
    ) -> HttpResponse {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("{}{path}", base_url.trim_end_matches('/')).parse::<http::Uri>() else {
            return unreachable_owner(owner, "its address is not a URL");
        };
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let out = request.headers_mut();
        for (name, value) in &parts.headers {
            if headers::is_end_to_end(name) {
                out.append(name, value.clone());
            }
        }
        // The trace goes on from here, and is signed with the rest.
        telemetry::carry(&tracing::Span::current(), out);
        let target = Target {
            method: parts.method.as_str(),
            target: path,
            to: owner,
            headers_sha256: headers::end_to_end_sha256(out),
        };
        let signature = match cluster.sign(&target, client, &body) {
            Ok(signature) => signature,
            Err(e) => return unreachable_owner(owner, &format!("cannot sign the request: {e:#}")),
        };
        let out = request.headers_mut();
        match HeaderValue::from_str(&signature) {
            Ok(value) => out.insert(SIGNATURE, value),
            Err(_) => return unreachable_owner(owner, "its signature is not a header value"),
        };
        match tokio::time::timeout(wait, self.client.request(request)).await {
            Ok(Ok(response)) => response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            // Not connected: the request never left this host.
            Ok(Err(e)) if e.is_connect() => unreachable_owner(owner, &e.to_string()),
            Ok(Err(e)) => outcome_unknown(owner, &format!("the connection failed: {e}")),
            Err(_) => outcome_unknown(owner, &format!("no answer within {wait:?}")),
        }
    }
}

/// The answer when the owner took the request and did not answer.
fn outcome_unknown(owner: &str, why: &str) -> HttpResponse {
    problem::response(
        StatusCode::BAD_GATEWAY,
        "outcome-unknown",
        "The host that owns this service took the request and did not answer",
        format!(
            "host {owner} owns this service and received the request, which may or may not have taken effect: {why}"
        ),
    )
}

/// The answer when the owner of a component cannot be reached.
pub fn unreachable_owner(owner: &str, why: &str) -> HttpResponse {
    problem::unavailable(
        "owner-unreachable",
        "The host that owns this service is unreachable",
        format!("host {owner} owns this service and cannot be reached: {why}"),
    )
}

/// The answer about a component with a database (a request, an admin
/// call) while this host has not joined its cluster: `why`.
pub fn cluster_unavailable(why: &str) -> HttpResponse {
    problem::unavailable("cluster-unavailable", "This host has not joined its cluster yet", why)
}
