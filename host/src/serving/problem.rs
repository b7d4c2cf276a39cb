//! Errors the host itself answers with, as `application/problem+json`
//! (RFC 9457) with a stable `type` that clients can match on.

use http::{HeaderValue, Response, StatusCode, header};

use super::{HttpResponse, full};

/// The prefix of every problem `type`; the same one components use.
pub const TYPE_PREFIX: &str = "urn:corral:problem:";

/// A problem response: `kind` is the stable last part of the `type`.
pub fn response(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> HttpResponse {
    let body = serde_json::json!({
        "type": format!("{TYPE_PREFIX}{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
