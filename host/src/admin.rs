//! The admin listener: a separate address, every route behind a bearer token
//! except the health probes. It shows the components and changes them while
//! they serve: upload a new version (or a canary), roll back, promote,
//! reload the config. It never serves component traffic.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::TokenSource;
use crate::control::Control;
use crate::gateway::{BodyPace, read_body, refuse};
use crate::limits::ComponentLimits;
use crate::metrics::Metrics;
use crate::problem;
use crate::registry::{ChangeError, Entry, Origin, Snapshot, Version};
use crate::server::Handler;

/// The admin listener's handler.
pub struct Admin {
    pub control: Arc<Control>,
    metrics: Arc<Metrics>,
    token: String,
    max_upload_bytes: usize,
    body_pace: BodyPace,
}

impl Admin {
    pub fn new(
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        token: String,
        max_upload_bytes: usize,
        body_pace: BodyPace,
    ) -> Self {
        Admin {
            control,
            metrics,
            token,
            max_upload_bytes,
            body_pace,
        }
    }

    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or_default();
        given.as_bytes().ct_eq(self.token.as_bytes()).into()
    }
}

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let response = match (&parts.method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({ "status": "alive" })),
            (&Method::GET, ["readyz"]) => self.readiness(),
            _ if !self.authorized(&parts.headers) => {
                let mut response = problem::response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unauthorized",
                    "a valid bearer token is required",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"corral\""),
                );
                response
            }
            (&Method::PUT, ["components", name]) => return self.upload(name, &parts, body).await,
            (method, route) => self.act(method, route, &path).await,
        };
        // Only uploads read the body; every other route drops it unread.
        refuse(body, response).await
    }
}

impl Admin {
    /// `PUT /components/{name}[?canary=N]` with a `.wasm` body.
    async fn upload(&self, name: &str, parts: &http::request::Parts, body: Incoming) -> Response<Full<Bytes>> {
        let canary = match canary_percent(parts.uri.query()) {
            Ok(canary) => canary,
            Err(detail) => {
                let response = problem::response(StatusCode::BAD_REQUEST, "bad-canary", "Bad canary", detail);
                return refuse(body, response).await;
            }
        };
        let wasm = match read_body(body, &parts.headers, self.max_upload_bytes, self.body_pace).await {
            Ok(wasm) => wasm,
            Err(refusal) => return refusal.into_response(),
        };
        respond(
            self.control
                .registry
                .swap(name, wasm.to_vec(), canary, Origin::upload_now())
                .await
                .map(|c| json!(c)),
        )
    }

    /// The routes without a body.
    async fn act(&self, method: &Method, route: &[&str], path: &str) -> Response<Full<Bytes>> {
        let registry = &self.control.registry;
        match (method, route) {
            (&Method::GET, ["components"]) => {
                let snapshot = registry.snapshot();
                let components: Vec<Value> = snapshot.entries.iter().map(|e| describe(e, &snapshot)).collect();
                json_response(StatusCode::OK, &json!({ "components": components }))
            }
            (&Method::POST, ["components", name, "rollback"]) => {
                respond(registry.rollback(name).await.map(|c| json!(c)))
            }
            (&Method::POST, ["components", name, "promote"]) => respond(registry.promote(name).await.map(|c| json!(c))),
            (&Method::POST, ["reload"]) => respond(self.control.reload().await.map(|r| json!(r))),
            (&Method::GET, ["metrics"]) => {
                let text = self.metrics.encode(&registry.snapshot());
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (_, ["components"] | ["components", _] | ["components", _, "rollback" | "promote"] | ["reload"]) => {
                let detail = format!("{method} is not allowed on {path}");
                problem::response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method not allowed",
                    detail,
                )
            }
            _ => problem::response(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no admin route {path}"),
            ),
        }
    }

    /// Ready once every component is loaded and initialized.
    fn readiness(&self) -> Response<Full<Bytes>> {
        if self.control.registry.is_ready() {
            json_response(StatusCode::OK, &json!({ "status": "ready" }))
        } else {
            problem::response(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                "components are still loading",
            )
        }
    }
}

fn respond(outcome: Result<Value, ChangeError>) -> Response<Full<Bytes>> {
    match outcome {
        Ok(json) => json_response(StatusCode::OK, &json),
        Err(error) => change_refused(error),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `?canary=N` with N from 1 to 99.
fn canary_percent(query: Option<&str>) -> Result<Option<u8>, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("canary="))
    else {
        return Ok(None);
    };
    match value.parse::<u8>() {
        Ok(percent) if (1..=99).contains(&percent) => Ok(Some(percent)),
        _ => Err(format!("canary={value} is not a percentage from 1 to 99")),
    }
}

fn change_refused(error: ChangeError) -> Response<Full<Bytes>> {
    let (status, kind, title) = match &error {
        ChangeError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        ChangeError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
        ChangeError::Invalid(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-component",
            "Invalid component",
        ),
        ChangeError::InitFailed(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "init-failed",
            "The component's init failed",
        ),
        ChangeError::Config(_) => (StatusCode::BAD_REQUEST, "invalid-config", "Invalid config"),
        ChangeError::Storage(_) => (
            StatusCode::INSUFFICIENT_STORAGE,
            "storage",
            "The change cannot be kept under data_dir",
        ),
    };
    tracing::warn!("change refused: {error}");
    problem::response(status, kind, title, format!("nothing changed: {error}"))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// One component as `GET /components` shows it.
fn describe(entry: &Entry, snapshot: &Snapshot) -> Value {
    let imports: serde_json::Map<String, Value> = entry
        .current
        .peers
        .imports
        .keys()
        .map(|interface| {
            let provider = snapshot.peers().provider(&entry.name, interface).map(|p| p.to_string());
            (interface.clone(), json!(provider))
        })
        .collect();
    let exports: Vec<&String> = entry.current.peers.exports.keys().collect();
    json!({
        "name": &*entry.name,
        "routes": entry.config.routes,
        "version": describe_version(&entry.current),
        "previous": entry.previous.as_deref().map(describe_version),
        "canary": entry.canary.as_ref().map(|c| json!({ "percent": c.percent, "version": describe_version(&c.version) })),
        "in_flight": entry.shared.gate.in_flight(),
        "queued": entry.shared.gate.waiting(),
        "watch": entry.config.watch,
        "imports": imports,
        "exports": exports,
        "limits": describe_limits(entry.limits()),
        "rate_limit": {
            "component": entry.config.rate_limits.component.map(|l| l.to_string()),
            "routes": entry.config.rate_limits.routes.iter().map(|(p, l)| json!({ "route": p.to_string(), "limit": l.to_string() })).collect::<Vec<_>>(),
        },
    })
}

fn describe_version(version: &Version) -> Value {
    json!({
        "digest": &*version.digest,
        "short": &*version.short,
        "loaded_at": humantime::format_rfc3339_millis(version.loaded_at).to_string(),
        "origin": version.origin.to_string(),
    })
}

/// The limits under the names the config file uses.
fn describe_limits(limits: &ComponentLimits) -> Value {
    json!({
        "memory_mib": limits.memory_bytes >> 20,
        "table_elements": limits.table_elements,
        "instances": limits.instances,
        "cpu_time_ms": limits.cpu_time.as_millis() as u64,
        "timeout_ms": limits.timeout.as_millis() as u64,
        "max_concurrent": limits.max_concurrent,
        "max_queued": limits.max_queued,
        "queue_timeout_ms": limits.queue_timeout.as_millis() as u64,
        "request_body_kib": limits.max_request_body_bytes >> 10,
        "response_body_kib": limits.max_response_body_bytes >> 10,
        "call_payload_kib": limits.max_call_bytes >> 10,
        "db_size_mib": limits.db.max_size_bytes >> 20,
        "db_statement_timeout_ms": limits.db.statement_timeout.as_millis() as u64,
        "db_max_rows": limits.db.max_result_rows,
        "db_max_result_kib": limits.db.max_result_bytes >> 10,
        "db_max_value_kib": limits.db.max_value_bytes >> 10,
    })
}

/// Whether resolving a token may create its file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TokenFile {
    /// The host creates the file with a random token when it is missing.
    Create,
    /// Clients only read it.
    ReadOnly,
}

/// The admin token: from the config, the environment, or a file, which the
/// host (never a client) creates with a random token on first use.
pub fn resolve_token(source: &TokenSource, file: TokenFile) -> anyhow::Result<String> {
    match source {
        TokenSource::Literal(token) => Ok(token.clone()),
        TokenSource::Env(var) => {
            let token = std::env::var(var).with_context(|| format!("the admin token variable {var} is not set"))?;
            anyhow::ensure!(
                token.len() >= 16,
                "the admin token in {var} is shorter than 16 characters"
            );
            Ok(token)
        }
        TokenSource::File(path) => {
            if let Ok(token) = std::fs::read_to_string(path) {
                let token = token.trim().to_string();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the admin token in {} is shorter than 16 characters",
                    path.display()
                );
                return Ok(token);
            }
            anyhow::ensure!(
                file == TokenFile::Create,
                "no admin token in {}: start the host once to create it, or pass --token",
                path.display()
            );
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            let mut file = file
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{token}")?;
            tracing::info!(path = %path.display(), "wrote a new admin token");
            Ok(token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn clients_never_create_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let source = TokenSource::File(path.clone());
        assert!(resolve_token(&source, TokenFile::ReadOnly).is_err());
        assert!(!path.exists());
        let token = resolve_token(&source, TokenFile::Create).unwrap();
        assert_eq!(resolve_token(&source, TokenFile::ReadOnly).unwrap(), token);
    }
}
