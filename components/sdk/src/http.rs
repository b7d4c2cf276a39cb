//! Requests, responses, problem+json errors, and pages of lists.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::bindings::corral::service::types;

pub(crate) type WitResponse = types::Response;

/// The `type` URIs of problems share this prefix, so clients can match on them.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:corral:problem:";

/// One HTTP request, read in full by the host.
pub struct Request {
    inner: types::Request,
}

impl From<types::Request> for Request {
    fn from(inner: types::Request) -> Self {
        Request { inner }
    }
}

impl Request {
    /// The method in uppercase.
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The path split on `/`, without the leading empty segment:
    /// `/users/7` gives `["users", "7"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.inner.path.split('/').skip(1).collect()
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        self.inner
            .query
            .split('&')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == name).then(|| percent_decode(value))
            })
            .next()
    }

    /// The first value of a header; names are matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every header, in the order the client sent them.
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    pub fn client_addr(&self) -> &str {
        &self.inner.client_addr
    }

    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }
}

/// Decodes `%XX` escapes and `+` (as space) in a query string component.
/// Invalid escapes are kept as they are.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The response a component returns.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `value` serialized as JSON.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        Self::with_content_type(
            status,
            "application/json",
            serde_json::to_vec(value).expect("JSON values always serialize"),
        )
    }

    pub fn text(status: u16, text: &str) -> Self {
        Self::with_content_type(status, "text/plain; charset=utf-8", text.as_bytes().to_vec())
    }

    /// A response with no body, such as 204.
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn with_content_type(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

impl From<Response> for WitResponse {
    fn from(response: Response) -> Self {
        WitResponse {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }
}

/// An error on one field of a request body or query.
#[derive(Debug, Clone, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem: the error responses of every corral service.
#[derive(Debug)]
pub struct Problem {
    pub status: u16,
    /// The stable last part of the `type` URI, such as `not-found`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Members added to the problem object, such as the field errors.
    pub extensions: Map<String, Value>,
    pub headers: Vec<(String, String)>,
}

impl Problem {
    pub fn new(status: u16, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(400, kind, "Bad request", detail)
    }

    /// 400 with the list of fields that are wrong.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::new(400, "validation", "Invalid request", detail).with("errors", json!(errors))
    }

    /// 400 with one field at fault.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, "conflict", "Conflict", detail)
    }

    /// 405 with the `Allow` header listing what the resource accepts.
    pub fn method_not_allowed(method: &str, allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        let mut problem = Self::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed here; allowed: {allow}"),
        );
        problem.headers.push(("allow".into(), allow));
        problem
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "internal", "Internal error", detail)
    }

    /// Adds a member to the problem object.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extensions.insert(key.into(), value);
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// The problem object as it is written, members in the RFC's order.
#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(flatten)]
    extensions: &'a Map<String, Value>,
}

impl From<Problem> for Response {
    fn from(problem: Problem) -> Self {
        let body = ProblemBody {
            kind: format!("{PROBLEM_TYPE_PREFIX}{}", problem.kind),
            title: problem.title,
            status: problem.status,
            detail: &problem.detail,
            extensions: &problem.extensions,
        };
        let mut response = Response::with_content_type(
            problem.status,
            "application/problem+json",
            serde_json::to_vec(&body).expect("JSON values always serialize"),
        );
        response.headers.extend(problem.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
