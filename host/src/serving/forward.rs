//! In a cluster, requests for a component whose database lives on another
//! host go to that host, its owner. The receiving host has already applied
//! the rate limits and read the body; the owner believes it about who the
//! client is only if the request carries the cluster's forwarding key.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use subtle::ConstantTimeEq;

use super::{BoxError, HttpResponse, problem};

/// Marks a forwarded request, with the cluster's forwarding key.
pub const FORWARD_KEY: HeaderName = HeaderName::from_static("corral-forward-key");
/// The host that forwarded a request.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("corral-forwarded-by");
/// The client a forwarded request came from.
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Sends requests on to their owners.
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Proves to the owner that a request comes from a host of the cluster.
    key: String,
    node: String,
}

impl Forwarder {
    pub fn new(key: String, node: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Forwarder {
            client: Client::builder(TokioExecutor::new()).build(connector),
            key,
            node,
        }
    }

    /// Whether `headers` carry this cluster's forwarding key.
    pub fn is_forwarded(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get(FORWARD_KEY)
            .is_some_and(|key| key.as_bytes().ct_eq(self.key.as_bytes()).into())
    }

    /// The client of a request another host forwarded.
    pub fn forwarded_client(headers: &http::HeaderMap) -> Option<IpAddr> {
        headers.get(FORWARDED_FOR)?.to_str().ok()?.trim().parse().ok()
    }

    /// Sends the request to `owner` at `base_url` and streams its answer
    /// back, within `timeout` for the answer's head.
    pub async fn forward(
        &self,
        owner: &str,
        base_url: &str,
        parts: &http::request::Parts,
        body: Bytes,
        client: IpAddr,
        timeout: Duration,
    ) -> HttpResponse {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("{}{path}", base_url.trim_end_matches('/')).parse::<http::Uri>() else {
            return unreachable_owner(owner, "its address is not a URL");
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                headers.append(name, value.clone());
            }
        }
        if let Ok(key) = HeaderValue::from_str(&self.key) {
            headers.insert(FORWARD_KEY, key);
        }
        if let Ok(node) = HeaderValue::from_str(&self.node) {
            headers.insert(FORWARDED_BY, node);
        }
        if let Ok(client) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(FORWARDED_FOR, client);
        }
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Ok(Err(e)) => unreachable_owner(owner, &e.to_string()),
            Err(_) => unreachable_owner(owner, &format!("no answer within {timeout:?}")),
        }
    }
}

/// Headers about one connection, and the ones the forwarder sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "host"
    ) || *name == FORWARD_KEY
        || *name == FORWARDED_BY
        || *name == FORWARDED_FOR
        || *name == header::CONTENT_LENGTH
}

/// The answer when the owner of a component cannot be reached.
pub fn unreachable_owner(owner: &str, why: &str) -> HttpResponse {
    let mut response = problem::response(
        StatusCode::SERVICE_UNAVAILABLE,
        "owner-unreachable",
        "The host that owns this service is unreachable",
        format!("host {owner} owns this service and cannot be reached: {why}"),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}
