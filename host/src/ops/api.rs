//! The admin API as types: its routes ([`ROUTES`], which the server
//! answers and nothing else) and its answers, which the server writes and
//! the CLI reads, so the two cannot drift apart unnoticed; and the OpenAPI
//! document generated from both ([`openapi`]), served at
//! `GET /openapi.json`.

use std::collections::BTreeMap;

use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, ResponseBuilder,
    Schema,
};

pub use crate::cluster::Changed as ClusterChange;
pub use crate::cluster::{KeyIds, Status as ClusterStatus};
pub use crate::components::control::Reloaded;
pub use crate::components::registry::Change;
pub use crate::events::DeadLetter;
/// An error the host answers with, as `application/problem+json` (RFC 9457).
pub use crate::serving::problem::Problem;
use crate::serving::{HttpResponse, full};

/// What a swap, rollback or promote did: on this host, or on every host of
/// a cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Changed {
    Cluster(ClusterChange),
    Host(Change),
}

/// `GET /events`: who publishes what, and where each subscriber stands.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Events {
    pub publishers: Vec<Publisher>,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Publisher {
    pub component: String,
    /// The topic patterns its config allows.
    pub topics: Vec<String>,
}

/// A subscriber and its backlog. One no longer subscribed (a reload
/// removed its subscription) is `removed`, with what still waits for it.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub subscriber: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    #[serde(default)]
    pub topics: Vec<String>,
    /// `key` or `none`.
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default)]
    pub exactly_once: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// Waiting, including those waiting to be retried.
    pub backlog: u64,
    #[serde(default)]
    pub retrying: u64,
    #[serde(default)]
    pub in_flight: u64,
    pub dead: u64,
    /// Milliseconds since the oldest undelivered message was published.
    pub oldest_age_ms: Option<u64>,
}

/// `GET /events/dead-letters`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

/// `POST /events/{dead-letters,pending}/{redrive,purge}`: how many messages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Settled {
    pub subscriber: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge: Option<u64>,
}

/// `PUT /components/{name}/backup`: what the restore put in place.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Restored {
    pub component: String,
    /// The size of the database restored.
    pub bytes: u64,
    /// Its tables, besides SQLite's and the host's own.
    pub tables: u64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `alive` or `ready`.
    pub status: String,
    /// What a ready host does not serve yet, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /components`: what this host serves, and in a cluster, the cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Components {
    pub components: Vec<Component>,
    pub cluster: Option<ClusterStatus>,
    /// Set while this host of a cluster has not joined it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unjoined: Option<Unjoined>,
}

/// A host of a cluster that could not join it yet serves what needs no
/// owner; these wait.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Unjoined {
    pub why: String,
    /// The components with a database, not served here until it joins.
    pub waiting: Vec<String>,
}

/// One component as this host serves it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Component {
    pub name: String,
    pub routes: Vec<String>,
    pub version: VersionInfo,
    pub previous: Option<VersionInfo>,
    pub canary: Option<CanaryInfo>,
    /// Instances running now.
    pub in_flight: usize,
    /// Requests waiting for an instance.
    pub queued: usize,
    /// Its file is reloaded when it changes.
    pub watch: bool,
    /// Each interface it imports from another component, and which one.
    pub imports: BTreeMap<String, Option<String>>,
    pub exports: Vec<String>,
    pub subscriber: bool,
    pub publishes: Vec<String>,
    pub subscribes: Option<Vec<String>>,
    /// Every limit, by its key in the config.
    #[schema(value_type = Object)]
    pub limits: serde_json::Value,
    pub rate_limit: RateLimits,
}

/// One version of a component's code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// The sha256 of the `.wasm`, in hex.
    pub digest: String,
    pub short: String,
    /// RFC 3339.
    pub loaded_at: String,
    /// Where the code came from: `file:`, `upload:`, `cluster:` or `oci://`.
    pub origin: String,
    /// `corral:service/service` or `wasi:http/proxy`.
    pub world: String,
    /// The host's interfaces it imports.
    pub host_imports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CanaryInfo {
    pub percent: u8,
    pub version: VersionInfo,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateLimits {
    /// For the whole component, as written (`10/minute`).
    pub component: Option<String>,
    pub routes: Vec<RouteLimit>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouteLimit {
    pub route: String,
    pub limit: String,
}

/// The schemas an answer needs, gathered as the document is built.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// What a route answers with when it succeeds.
#[derive(Clone, Copy)]
pub enum Answer {
    /// JSON of a type, named by a function that adds its schema.
    Json(fn(&mut Schemas) -> RefOr<Schema>),
    /// OpenMetrics text.
    Metrics,
    /// A file, of this media type.
    File(&'static str),
    /// The OpenAPI document itself.
    OpenApi,
}

/// A route of the admin API.
#[derive(Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// With `{name}` for a path parameter.
    pub path: &'static str,
    pub summary: &'static str,
    /// Whether it takes the bearer token.
    pub token: bool,
    pub answer: Answer,
}

/// The schema of `T`, with the schemas it refers to.
fn json<T: ToSchema>(schemas: &mut Schemas) -> RefOr<Schema> {
    T::schemas(schemas);
    schemas.push((T::name().into(), T::schema()));
    Ref::from_schema_name(T::name()).into()
}

const fn route(method: &'static str, path: &'static str, summary: &'static str, answer: Answer) -> Route {
    Route {
        method,
        path,
        summary,
        token: true,
        answer,
    }
}

const fn open(route: Route) -> Route {
    Route { token: false, ..route }
}

/// The media type of a database backup.
pub const BACKUP_MEDIA_TYPE: &str = "application/vnd.sqlite3";

/// Every route the admin listener answers.
pub const ROUTES: &[Route] = &[
    open(route(
        "GET",
        "/healthz",
        "The host is alive",
        Answer::Json(json::<Health>),
    )),
    open(route(
        "GET",
        "/readyz",
        "Every component is loaded (and in a cluster, the host serves what the cluster wants); 503 until then",
        Answer::Json(json::<Health>),
    )),
    open(route("GET", "/openapi.json", "This document", Answer::OpenApi)),
    route(
        "GET",
        "/components",
        "What this host serves",
        Answer::Json(json::<Components>),
    ),
    route(
        "PUT",
        "/components/{name}",
        "Swaps in new code: the body is a .wasm or `oci://<reference>`; `?canary=N` serves it to N% of requests",
        Answer::Json(json::<Changed>),
    ),
    route(
        "GET",
        "/components/{name}/backup",
        "A consistent copy of the component's database, taken while it serves",
        Answer::File(BACKUP_MEDIA_TYPE),
    ),
    route(
        "PUT",
        "/components/{name}/backup",
        "Replaces the component's database with the SQLite file in the body, whole or not at all",
        Answer::Json(json::<Restored>),
    ),
    route(
        "POST",
        "/components/{name}/rollback",
        "Back to the previous version, or drops the canary",
        Answer::Json(json::<Changed>),
    ),
    route(
        "POST",
        "/components/{name}/promote",
        "The canary serves every request",
        Answer::Json(json::<Changed>),
    ),
    route(
        "POST",
        "/reload",
        "Reads the config file again",
        Answer::Json(json::<Reloaded>),
    ),
    route("GET", "/metrics", "Every metric, as OpenMetrics text", Answer::Metrics),
    route(
        "GET",
        "/cluster",
        "The cluster as this host sees it",
        Answer::Json(json::<ClusterStatus>),
    ),
    route(
        "POST",
        "/cluster/rotate-key",
        "A new key signs requests between hosts once every host has it",
        Answer::Json(json::<KeyIds>),
    ),
    route(
        "POST",
        "/cluster/components/{name}/owner/{node}",
        "Moves the component's database to another host",
        Answer::Json(json::<ClusterChange>),
    ),
    route(
        "GET",
        "/events",
        "Publishers, subscriptions and their backlogs",
        Answer::Json(json::<Events>),
    ),
    route(
        "GET",
        "/events/dead-letters",
        "Dead letters, `?subscriber=` and `?limit=` (at most 1000)",
        Answer::Json(json::<DeadLetters>),
    ),
    route(
        "POST",
        "/events/dead-letters/redrive",
        "Delivers dead letters again: `?subscriber=` and any `&id=`",
        Answer::Json(json::<Settled>),
    ),
    route(
        "POST",
        "/events/dead-letters/purge",
        "Drops dead letters: `?subscriber=` and any `&id=`",
        Answer::Json(json::<Settled>),
    ),
    route(
        "POST",
        "/events/pending/purge",
        "Drops what still waits for a subscriber: `?subscriber=` and any `&id=`",
        Answer::Json(json::<Settled>),
    ),
];

/// How a request's method and path meet the routes.
pub enum Found {
    Route(&'static Route),
    /// The path is a route's, but not with this method: these are.
    OtherMethods(Vec<&'static str>),
    NoRoute,
}

/// The route `method` and `path` ask for.
pub fn find(method: &str, path: &str) -> Found {
    let matching = |route: &&Route| {
        let (mut pattern, mut given) = (route.path.split('/'), path.split('/'));
        loop {
            match (pattern.next(), given.next()) {
                (None, None) => return true,
                (Some(p), Some(g)) if p.starts_with('{') && !g.is_empty() => {}
                (Some(p), Some(g)) if p == g => {}
                _ => return false,
            }
        }
    };
    let mut methods = Vec::new();
    for route in ROUTES.iter().filter(matching) {
        if route.method == method {
            return Found::Route(route);
        }
        methods.push(route.method);
    }
    if methods.is_empty() {
        Found::NoRoute
    } else {
        Found::OtherMethods(methods)
    }
}

/// The OpenAPI document of [`ROUTES`].
pub fn openapi() -> OpenApi {
    let mut schemas = Schemas::new();
    let problem = json::<Problem>(&mut schemas);
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let method = match route.method {
            "GET" => HttpMethod::Get,
            "PUT" => HttpMethod::Put,
            _ => HttpMethod::Post,
        };
        let content = match route.answer {
            Answer::Json(schema) => ("application/json", Some(schema(&mut schemas))),
            Answer::Metrics => ("application/openmetrics-text", None),
            Answer::File(media_type) => (media_type, None),
            Answer::OpenApi => ("application/json", None),
        };
        let mut operation = OperationBuilder::new()
            .summary(Some(route.summary))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("done")
                    .content(content.0, ContentBuilder::new().schema(content.1).build()),
            )
            .response(
                "default",
                ResponseBuilder::new().description("refused, or failed").content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(problem.clone())).build(),
                ),
            );
        for name in route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            operation = operation.parameter(ParameterBuilder::new().name(name).parameter_in(ParameterIn::Path));
        }
        if route.token {
            operation = operation.security(SecurityRequirement::new("token", Vec::<String>::new()));
        }
        paths = paths.path(route.path, PathItem::new(method, operation));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("corral admin API")
                .version(env!("CARGO_PKG_VERSION")),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .schemas_from_iter(schemas)
                .security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
                .build(),
        ))
        .build()
}

/// An answer of the admin API as JSON.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    let text = serde_json::to_string(body).expect("admin answers serialize");
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
