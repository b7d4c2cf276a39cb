//! The admin listener: a separate address, every route behind a bearer token
//! except the health probes. It shows the components and changes them while
//! they serve: upload a new version (or a canary), roll back, promote,
//! reload the config. It never serves component traffic.

use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::api::{self, json_response};
use super::backup;
use super::metrics::Metrics;
use crate::capabilities::sqlite::Database;
use crate::cluster::{Cluster, ClusterError};
use crate::components::control::Control;
use crate::components::oci::{self, OciError};
use crate::components::registry::ChangeError;
use crate::components::snapshot::{Entry, Snapshot};
use crate::components::version::Origin;
use crate::components::version::Version;
use crate::config::OCI_SCHEME;
use crate::events::{EventLog, Selection};
use crate::serving::body::{BodyPace, read_body, refuse};
use crate::serving::forward::cluster_unavailable;
use crate::serving::server::{Connection, Handler};
use crate::serving::{HttpResponse, full, problem};

/// Runs a change to its end even if the client goes away meanwhile: a
/// change dropped halfway through, its state saved but not published, is
/// one no operator could reason about.
async fn to_the_end<T: Send + 'static>(change: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(change).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a change was cancelled: {e}"),
    }
}

/// The admin listener's handler.
pub struct Admin {
    pub control: Arc<Control>,
    /// `Some` if the config has a `[cluster]`, set once the host has joined
    /// it: changes then go to every host, and the host is not ready before.
    cluster: Option<Arc<OnceLock<Arc<Cluster>>>>,
    metrics: Arc<Metrics>,
    events: Arc<dyn EventLog>,
    token: String,
    max_upload_bytes: usize,
    body_pace: BodyPace,
}

impl Admin {
    pub fn new(
        control: Arc<Control>,
        cluster: Option<Arc<OnceLock<Arc<Cluster>>>>,
        metrics: Arc<Metrics>,
        events: Arc<dyn EventLog>,
        token: String,
        max_upload_bytes: usize,
        body_pace: BodyPace,
    ) -> Self {
        Admin {
            control,
            cluster,
            metrics,
            events,
            token,
            max_upload_bytes,
            body_pace,
        }
    }

    fn joined(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().and_then(|c| c.get())
    }

    /// The refusal of a change to the versions while this host of a cluster
    /// has not joined it: such changes go through the cluster.
    fn change_waits(&self) -> Option<HttpResponse> {
        (self.cluster.is_some() && self.joined().is_none()).then(|| {
            cluster_unavailable("this host has not joined its cluster yet, and version changes go through the cluster")
        })
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
    async fn handle(&self, request: Request<Incoming>, _connection: &Connection) -> HttpResponse {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        // Only `/healthz`, `/readyz` and `/openapi.json` answer without the
        // token; to anyone else, every path is unauthorized, even one that
        // is no route.
        let found = api::find(parts.method.as_str(), &path);
        let open = matches!(found, api::Found::Route(route) if !route.token);
        if !open && !self.authorized(&parts.headers) {
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
            return refuse(body, response).await;
        }
        let response = match found {
            api::Found::OtherMethods(methods) => method_not_allowed(&parts.method, &path, &methods),
            api::Found::NoRoute => problem::response(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no admin route {path}: GET /openapi.json lists them"),
            ),
            api::Found::Route(_) => match (&parts.method, segments.as_slice()) {
                (&Method::GET, ["healthz"]) => json_response(
                    StatusCode::OK,
                    &api::Health {
                        status: "alive".into(),
                        detail: None,
                    },
                ),
                (&Method::GET, ["readyz"]) => self.readiness(),
                (&Method::GET, ["openapi.json"]) => json_response(StatusCode::OK, &api::openapi()),
                (&Method::PUT, ["components", name]) => return self.upload(name, &parts, body).await,
                (&Method::PUT, ["components", name, "backup"]) => return self.restore(name, &parts, body).await,
                (&Method::GET, ["components", name, "backup"]) => self.backup(name).await,
                (method, ["events", ..]) => self.events(method, &segments[1..], parts.uri.query(), &path).await,
                (method, route) => self.act(method, route, &path).await,
            },
        };
        // Only uploads read the body; every other route drops it unread.
        refuse(body, response).await
    }
}

impl Admin {
    /// `PUT /components/{name}[?canary=N]` with a `.wasm` body.
    async fn upload(&self, name: &str, parts: &http::request::Parts, body: Incoming) -> HttpResponse {
        if let Some(refused) = self.change_waits() {
            return refuse(body, refused).await;
        }
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
        let name = name.to_string();
        let registry = self.control.registry.clone();
        let (wasm, origin) = match reference_in(&wasm).map(str::to_string) {
            Some(reference) => {
                let registry = registry.clone();
                let pulled = to_the_end(async move { registry.registries().pull(&reference, &oci::Quiet).await });
                match pulled.await {
                    Ok(pulled) => (
                        pulled.wasm,
                        Origin::Registry {
                            reference: pulled.pinned,
                        },
                    ),
                    Err(e) => return fetch_failed(e),
                }
            }
            None => (wasm.to_vec(), Origin::upload_now()),
        };
        if let Some(cluster) = self.joined().cloned() {
            return cluster_respond(to_the_end(async move { cluster.swap(&name, wasm, canary).await }).await);
        }
        respond(
            to_the_end(async move { registry.swap(&name, wasm, canary, origin).await })
                .await
                .map(|c| json!(c)),
        )
    }

    /// The database of component `name` and its size cap, if this host
    /// holds it: in a cluster, a component's database is on its owner.
    fn database(&self, name: &str) -> Result<(Arc<Database>, usize), Box<HttpResponse>> {
        let registry = &self.control.registry;
        if let Some(owner) = registry.placement.owner_elsewhere(name) {
            return Err(Box::new(problem::response(
                StatusCode::CONFLICT,
                "owned-elsewhere",
                "Owned by another host",
                format!("{name}'s database is on host {owner}, which owns it: ask that host"),
            )));
        }
        let snapshot = registry.snapshot();
        let entry = snapshot.get(name).ok_or_else(|| {
            Box::new(problem::response(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no component named {name}"),
            ))
        })?;
        if let Some(why) = registry.placement.waiting(entry) {
            return Err(Box::new(cluster_unavailable(&why)));
        }
        let db = Arc::clone(&entry.shared.capabilities.sqlite.db);
        Ok((db, entry.limits().db_max_size_bytes))
    }

    /// `GET /components/{name}/backup`.
    async fn backup(&self, name: &str) -> HttpResponse {
        match self.database(name) {
            Ok((db, _)) => backup::download(db, name).await,
            Err(refused) => *refused,
        }
    }

    /// `PUT /components/{name}/backup` with an SQLite file.
    async fn restore(&self, name: &str, parts: &http::request::Parts, body: Incoming) -> HttpResponse {
        let (db, limit) = match self.database(name) {
            Ok(found) => found,
            Err(refused) => return refuse(body, *refused).await,
        };
        let scratch = match backup::receive(&db, &parts.headers, body, limit, self.body_pace).await {
            Ok(scratch) => scratch,
            Err(refused) => return refused,
        };
        let restored = to_the_end(async move {
            // A replicated database's restore goes through its log.
            let restored = db.restore_through_log(scratch.path()).await;
            drop(scratch);
            restored
        });
        backup::restored(name, restored.await)
    }

    /// The routes without a body.
    async fn act(&self, method: &Method, route: &[&str], path: &str) -> HttpResponse {
        let registry = &self.control.registry;
        let cluster = self.joined();
        match (method, route) {
            (&Method::GET, ["components"]) => {
                let snapshot = registry.snapshot();
                let components = snapshot.entries.iter().map(|e| describe(e, &snapshot)).collect();
                let cluster = match cluster {
                    Some(cluster) => Some(cluster.describe().await),
                    None => None,
                };
                let unjoined = registry.placement.unjoined().map(|why| api::Unjoined {
                    why,
                    waiting: waiting_for_cluster(&snapshot),
                });
                json_response(
                    StatusCode::OK,
                    &api::Components {
                        components,
                        cluster,
                        unjoined,
                    },
                )
            }
            (&Method::GET, ["cluster"]) => match cluster {
                Some(cluster) => json_response(StatusCode::OK, &cluster.describe().await),
                None => not_in_a_cluster(),
            },
            (&Method::POST, ["cluster", "rotate-key"]) => match cluster.cloned() {
                Some(cluster) => cluster_respond(to_the_end(async move { cluster.rotate_key(None).await }).await),
                None => not_in_a_cluster(),
            },
            (&Method::POST, ["cluster", "components", name, "owner", node]) => match cluster.cloned() {
                Some(cluster) => {
                    let (name, node) = (name.to_string(), node.to_string());
                    cluster_respond(to_the_end(async move { cluster.set_owner(&name, &node).await }).await)
                }
                None => not_in_a_cluster(),
            },
            (&Method::POST, ["components", _, "rollback" | "promote"]) if let Some(refused) = self.change_waits() => {
                refused
            }
            (&Method::POST, ["components", name, change @ ("rollback" | "promote")]) => {
                let (name, rollback) = (name.to_string(), *change == "rollback");
                match cluster.cloned() {
                    Some(cluster) => cluster_respond(
                        to_the_end(async move {
                            match rollback {
                                true => cluster.rollback(&name).await,
                                false => cluster.promote(&name).await,
                            }
                        })
                        .await,
                    ),
                    None => {
                        let registry = registry.clone();
                        let changed = to_the_end(async move {
                            match rollback {
                                true => registry.rollback(&name).await,
                                false => registry.promote(&name).await,
                            }
                        });
                        respond(changed.await.map(|c| json!(c)))
                    }
                }
            }
            (&Method::POST, ["reload"]) => {
                let control = self.control.clone();
                respond(
                    to_the_end(async move { control.reload().await })
                        .await
                        .map(|r| json!(r)),
                )
            }
            (&Method::GET, ["metrics"]) => {
                let text = self.metrics.encode(&registry.snapshot());
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            _ => problem::response(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no admin route {path}"),
            ),
        }
    }

    /// `GET /events`, `GET /events/dead-letters[?subscriber=S]`,
    /// `POST /events/dead-letters/{redrive,purge}?subscriber=S[&id=..]`, and
    /// `POST /events/pending/purge?subscriber=S`, which drops what still
    /// waits for a subscriber too (one removed by a reload, say).
    async fn events(&self, method: &Method, route: &[&str], query: Option<&str>, path: &str) -> HttpResponse {
        let params: Vec<(&str, &str)> = query
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let ids: Vec<String> = params
            .iter()
            .filter(|(k, _)| *k == "id")
            .map(|(_, v)| v.to_string())
            .collect();
        let which = if ids.is_empty() {
            Selection::All
        } else {
            Selection::Ids(ids)
        };
        let outcome = match (method, route) {
            (&Method::GET, []) => self.describe_events().await.map(|events| json!(events)),
            (&Method::GET, ["dead-letters"]) => {
                let limit = param("limit").and_then(|l| l.parse().ok()).unwrap_or(100).min(1000);
                self.events
                    .dead_letters(param("subscriber"), limit)
                    .await
                    .map(|dead_letters| json!(api::DeadLetters { dead_letters }))
            }
            (&Method::POST, [kind @ ("dead-letters" | "pending"), action @ ("redrive" | "purge")]) => {
                let Some(subscriber) = param("subscriber") else {
                    return problem::response(
                        StatusCode::BAD_REQUEST,
                        "bad-request",
                        "Bad request",
                        "name the subscriber: ?subscriber=<component>",
                    );
                };
                let done = match (*kind, *action) {
                    ("dead-letters", "redrive") => self.events.redrive(subscriber.clone(), which).await,
                    (kind, "purge") => self.events.purge(subscriber.clone(), which, kind == "pending").await,
                    _ => {
                        return problem::response(
                            StatusCode::NOT_FOUND,
                            "not-found",
                            "Not found",
                            "only dead letters are redriven",
                        );
                    }
                };
                if let Ok(n) = &done {
                    tracing::info!(subscriber, count = n, "dead letters {action}d");
                }
                done.map(|n| {
                    json!(api::Settled {
                        subscriber,
                        redrive: (*action == "redrive").then_some(n),
                        purge: (*action == "purge").then_some(n),
                    })
                })
            }
            _ => {
                return problem::response(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "Not found",
                    format!("no admin route {method} {path}"),
                );
            }
        };
        match outcome {
            Ok(json) => json_response(StatusCode::OK, &json),
            Err(e) => problem::response(
                StatusCode::SERVICE_UNAVAILABLE,
                "events-unavailable",
                "The event log cannot answer",
                format!("{e:#}"),
            ),
        }
    }

    /// Who publishes what, and each subscription with its backlog.
    async fn describe_events(&self) -> anyhow::Result<api::Events> {
        let snapshot = self.control.registry.snapshot();
        let backlogs = self.events.backlogs().await?;
        let publishers = snapshot
            .entries
            .iter()
            .filter(|e| !e.config.events.publishes.is_empty())
            .map(|e| api::Publisher {
                component: e.name.to_string(),
                topics: strings(&e.config.events.publishes),
            })
            .collect();
        let mut subscriptions = Vec::new();
        for entry in &snapshot.entries {
            let Some(subscription) = &entry.config.events.subscription else {
                continue;
            };
            let backlog = backlogs
                .iter()
                .find(|b| b.subscriber == *entry.name)
                .cloned()
                .unwrap_or_default();
            let ordering = match subscription.ordering {
                crate::config::events::Ordering::Key => "key",
                crate::config::events::Ordering::None => "none",
            };
            subscriptions.push(api::Subscription {
                subscriber: entry.name.to_string(),
                removed: false,
                topics: strings(&subscription.topics),
                ordering: Some(ordering.into()),
                exactly_once: Some(subscription.exactly_once),
                settings: Some(subscription.settings.describe()),
                backlog: backlog.ready,
                retrying: backlog.retrying,
                in_flight: backlog.in_flight,
                dead: backlog.dead,
                oldest_age_ms: backlog.oldest_age_ms,
            });
        }
        // Deliveries waiting for a component no longer subscribed.
        for backlog in backlogs.into_iter().filter(|b| {
            snapshot
                .get(&b.subscriber)
                .is_none_or(|e| e.config.events.subscription.is_none())
        }) {
            subscriptions.push(api::Subscription {
                subscriber: backlog.subscriber,
                removed: true,
                backlog: backlog.ready,
                retrying: backlog.retrying,
                in_flight: backlog.in_flight,
                dead: backlog.dead,
                oldest_age_ms: backlog.oldest_age_ms,
                ..api::Subscription::default()
            });
        }
        Ok(api::Events {
            publishers,
            subscriptions,
        })
    }

    /// Ready once every component is loaded and initialized, and in a
    /// cluster, once the host serves what the cluster wants.
    fn readiness(&self) -> HttpResponse {
        // A host that could not reach its cluster at start serves what needs
        // no owner meanwhile: ready, saying what waits.
        let registry = &self.control.registry;
        let unjoined = registry.placement.unjoined();
        let clustered = match &self.cluster {
            Some(joining) => joining.get().is_some_and(|c| c.is_converged()) || unjoined.is_some(),
            None => true,
        };
        if registry.is_ready() && clustered {
            let detail = unjoined.map(|why| {
                format!(
                    "not in the cluster yet ({why}); serving what has no database; waiting: {}",
                    waiting_for_cluster(&registry.snapshot()).join(", ")
                )
            });
            let health = api::Health {
                status: "ready".into(),
                detail,
            };
            json_response(StatusCode::OK, &health)
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

fn respond(outcome: Result<Value, ChangeError>) -> HttpResponse {
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

/// A body that names a component in a registry, `oci://...`, instead of
/// carrying one (a component starts with `\0asm`).
fn reference_in(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?.trim();
    text.starts_with(OCI_SCHEME).then_some(text)
}

fn fetch_failed(error: OciError) -> HttpResponse {
    let (status, kind, title) = match &error {
        OciError::Unreachable { .. } | OciError::Unauthorized { .. } | OciError::Other { .. } => (
            StatusCode::BAD_GATEWAY,
            "registry-failed",
            "The registry did not give the component",
        ),
        OciError::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        OciError::BadReference(_)
        | OciError::WrongMediaType { .. }
        | OciError::TooLarge { .. }
        | OciError::DigestMismatch { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-artifact",
            "Not a component corral can fetch",
        ),
    };
    tracing::warn!("change refused: {error}");
    problem::response(status, kind, title, format!("nothing changed: {error}"))
}

fn change_refused(error: ChangeError) -> HttpResponse {
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

fn cluster_respond<T: serde::Serialize>(outcome: Result<T, ClusterError>) -> HttpResponse {
    let error = match outcome {
        Ok(answer) => return json_response(StatusCode::OK, &json!(answer)),
        Err(ClusterError::Local(error)) => return change_refused(error),
        Err(error) => error,
    };
    let (status, kind, title) = match &error {
        ClusterError::Local(_) => unreachable!("answered above"),
        ClusterError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        ClusterError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
        ClusterError::Refused { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused-by-host",
            "A host refused the change",
        ),
        ClusterError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "cluster-timeout", "Hosts did not converge"),
        ClusterError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster-unavailable",
            "The cluster is unavailable",
        ),
    };
    tracing::warn!("cluster change refused: {error}");
    problem::response(status, kind, title, error.to_string())
}

/// The components a host that has not joined its cluster holds back.
fn waiting_for_cluster(snapshot: &Snapshot) -> Vec<String> {
    let entries = snapshot.entries.iter();
    entries
        .filter(|e| e.has_database())
        .map(|e| e.name.to_string())
        .collect()
}

fn not_in_a_cluster() -> HttpResponse {
    problem::response(
        StatusCode::NOT_FOUND,
        "not-in-a-cluster",
        "Not in a cluster",
        "this host has no [cluster] section",
    )
}

/// Answers `route` as the method it has not, naming those it has.
fn method_not_allowed(method: &Method, path: &str, methods: &[&str]) -> HttpResponse {
    let detail = format!("{method} is not allowed on {path}");
    let mut response = problem::response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        detail,
    );
    if let Ok(allow) = HeaderValue::from_str(&methods.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// One component as `GET /components` shows it.
fn describe(entry: &Entry, snapshot: &Snapshot) -> api::Component {
    let current = entry.current();
    let imports = current
        .peers
        .imports
        .keys()
        .map(|interface| {
            let provider = snapshot.peers().provider(&entry.name, interface).map(|p| p.to_string());
            (interface.clone(), provider)
        })
        .collect();
    let events = &entry.config.events;
    let rates = &entry.config.rate_limits;
    api::Component {
        name: entry.name.to_string(),
        routes: entry.config.routes.clone(),
        version: describe_version(current),
        previous: entry.versions.previous.as_deref().map(describe_version),
        canary: entry.versions.canary.as_ref().map(|c| api::CanaryInfo {
            percent: c.percent,
            version: describe_version(&c.version),
        }),
        in_flight: entry.shared.gate.in_flight(),
        queued: entry.shared.gate.waiting(),
        watch: entry.config.watch,
        imports,
        exports: current.peers.exports.keys().cloned().collect(),
        subscriber: current.subscriber.is_some(),
        publishes: strings(&events.publishes),
        subscribes: events.subscription.as_ref().map(|s| strings(&s.topics)),
        limits: entry.limits().describe(),
        rate_limit: api::RateLimits {
            component: rates.component.map(|l| l.to_string()),
            routes: rates
                .routes
                .iter()
                .map(|(p, l)| api::RouteLimit {
                    route: p.to_string(),
                    limit: l.to_string(),
                })
                .collect(),
        },
    }
}

/// Topic patterns as the config writes them.
fn strings(patterns: &[crate::config::TopicPattern]) -> Vec<String> {
    patterns.iter().map(ToString::to_string).collect()
}

fn describe_version(version: &Version) -> api::VersionInfo {
    api::VersionInfo {
        digest: version.digest.to_string(),
        short: version.short.to_string(),
        loaded_at: humantime::format_rfc3339_millis(version.loaded_at).to_string(),
        origin: version.origin.to_string(),
        world: version.entrypoint.world().into(),
        host_imports: version.host_imports.clone(),
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
}
