//! Errors the host itself answers with, as `application/problem+json`
//! (RFC 9457) with a stable `type` that clients can match on.

use http::{HeaderValue, Response, StatusCode, header};

use super::{HttpResponse, full};

/// The prefix of every problem `type`; the same one components use.
pub const TYPE_PREFIX: &str = "urn:corral:problem:";

/// The body of a problem response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:corral:problem:<kind>`, stable for clients to match on.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// A problem response: `kind` is the stable last part of the `type`.
pub fn response(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> HttpResponse {
    let body = Problem {
        kind: format!("{TYPE_PREFIX}{kind}"),
        title: title.into(),
        status: status.as_u16(),
        detail: detail.into(),
    };
    let body = serde_json::to_string(&body).expect("a problem serializes");
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// `response`, telling the client to try again in a second.
pub fn retry_soon(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}

/// A 503 the client may retry in a second: the host cannot serve the
/// request now, and did nothing with it.
pub fn unavailable(kind: &str, title: &str, detail: impl Into<String>) -> HttpResponse {
    retry_soon(response(StatusCode::SERVICE_UNAVAILABLE, kind, title, detail))
}
