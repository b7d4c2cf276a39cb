//! Which headers belong to whom. Headers about one connection belong to the
//! host, and so does every `corral-*` header: the host sets them (the
//! version that answered, the host that answered, a forwarded request's
//! signature) and believes them only from itself. None that a client
//! sends reaches a component, none that a component sends reaches a
//! client, and none the host sets reaches a component, except
//! [`CLIENT_ADDR`], which the host sets for `wasi:http` components.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// The prefix of the host's own headers.
const HOSTS_PREFIX: &str = "corral-";

/// Tells a `wasi:http` component who sent the request.
pub const CLIENT_ADDR: HeaderName = HeaderName::from_static("corral-client-addr");
/// Names the version of the component that served a response.
pub const VERSION: HeaderName = HeaderName::from_static("corral-version");
/// In a cluster, the host that answered a request.
pub const NODE: HeaderName = HeaderName::from_static("corral-node");
/// The request's id, in every response and log line: the client's own if
/// it sent a well-formed one, else one the host makes.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `name` is one of the host's own headers.
pub fn is_hosts(name: &HeaderName) -> bool {
    name.as_str().starts_with(HOSTS_PREFIX)
}

/// Whether `name` is about the connection, or the body's framing, which
/// the host sets for each hop.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    )
}

/// Whether a component may set `name` on its response. `content-length`
/// is the host's: it frames the body the host sends.
pub fn component_may_set(name: &HeaderName) -> bool {
    !is_hosts(name) && !is_hop_by_hop(name) && *name != header::CONTENT_LENGTH
}

/// Whether `name` goes from a client to its component as sent: about
/// neither the connection nor the body's framing, nor the host's own.
pub fn is_end_to_end(name: &HeaderName) -> bool {
    !is_hop_by_hop(name) && !is_hosts(name) && *name != header::HOST && *name != header::CONTENT_LENGTH
}

/// The SHA-256 of the end-to-end headers, which the signature of a request
/// sent on to another host covers.
pub fn end_to_end_sha256(headers: &HeaderMap) -> [u8; 32] {
    // Values as the receiving side parses them: without the spaces and
    // tabs around them, which a header a guest set may have.
    let end_to_end = headers
        .iter()
        .filter(|(name, _)| is_end_to_end(name))
        .map(|(name, value)| (name.as_str(), value.as_bytes().trim_ascii()));
    crate::cluster::trust::headers_sha256(end_to_end)
}

/// Removes the host's own headers from `headers`.
pub fn remove_hosts(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_hosts(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_hash_as_the_receiving_side_parses_them() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-note", http::HeaderValue::from_static(value));
            headers.insert("corral-node", http::HeaderValue::from_static("n1"));
            headers
        };
        // A guest's header may carry spaces that hyper trims on arrival.
        assert_eq!(end_to_end_sha256(&headers(" v\t")), end_to_end_sha256(&headers("v")));
        assert_ne!(end_to_end_sha256(&headers("v")), end_to_end_sha256(&headers("w")));
    }

    #[test]
    fn every_corral_header_is_the_hosts() {
        for name in [
            "corral-node",
            "corral-forwarded",
            "corral-forward-key",
            "corral-anything",
        ] {
            assert!(is_hosts(&HeaderName::from_static(name)), "{name}");
            assert!(!component_may_set(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["content-type", "x-corral", "corralx", "location"] {
            assert!(!is_hosts(&HeaderName::from_static(name)), "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("corral-node", "evil".parse().unwrap());
        headers.append("corral-node", "more".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        remove_hosts(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
