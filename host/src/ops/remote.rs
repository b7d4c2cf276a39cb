//! The admin API's client, behind `corral status`, `swap`, `rollback`,
//! `promote`, `reload` and the event commands: finds the admin address and
//! token, sends one request, and renders what came back for people.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::api;
use crate::components::versions::Canary;
use crate::config::tokens::{TokenFile, resolve_token};
use crate::config::{Config, DEFAULT_ADMIN_LISTEN, OCI_SCHEME, Overrides};

/// How long a call to the admin API may take, but for database copies.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The environment variable the CLI reads the token from when none is given.
pub const TOKEN_VAR: &str = "CORRAL_ADMIN_TOKEN";

pub struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The admin API at `admin` (or the config's `[admin] listen`) with
    /// `token` (or `$CORRAL_ADMIN_TOKEN`, or the config's token, whose
    /// default file is in `data_dir` when given, as for `corral serve`).
    pub fn new(
        config: Option<&Path>,
        data_dir: Option<PathBuf>,
        admin: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let overrides = Overrides {
            data_dir,
            ..Overrides::default()
        };
        let config = match config {
            Some(path) => Some(Config::load(path, &overrides)?),
            None => None,
        };
        let admin_config = config.as_ref().and_then(|c| c.admin.as_ref());
        if config.is_some() && admin_config.is_none() && admin.is_none() {
            bail!("the config has no [admin] section, so the host has no admin API");
        }
        let base = match (admin, admin_config) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(admin)) => format!("http://{}", admin.listen),
            (None, None) => format!("http://{DEFAULT_ADMIN_LISTEN}"),
        };
        let token = match (token, std::env::var(TOKEN_VAR).ok(), admin_config) {
            (Some(token), _, _) | (None, Some(token), _) => token,
            (None, None, Some(admin)) => resolve_token(&admin.token, TokenFile::ReadOnly)?,
            (None, None, None) => bail!("no admin token: pass --token, set {TOKEN_VAR}, or pass --config"),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(AdminClient { base, token, agent })
    }

    /// Sends a request and reads the reply as a `T`.
    fn send_as<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let json = self.send(method, path, body)?;
        serde_json::from_value(json)
            .with_context(|| format!("the admin API's answer to {method} {path} is not what this corral reads"))
    }

    /// Sends a request and returns the JSON reply, or the problem's detail as an error.
    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let response = self.call(method, path, "application/wasm", body, Some(CALL_TIMEOUT))?;
        let text = response.into_body().read_to_string().unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a request and returns the response, or the problem's detail as
    /// an error; `timeout` bounds the whole exchange (none for a database,
    /// whose copy takes as long as it is large: a client that gave up would
    /// report a restore failed that went on to succeed).
    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl ureq::AsSendBody,
        timeout: Option<Duration>,
    ) -> anyhow::Result<http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(body)?;
        let request = self.agent.configure_request(request).timeout_global(timeout).build();
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.into_body().read_to_string().unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let detail = json["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| json.to_string());
        bail!("{status}: {detail}");
    }

    /// Saves a copy of `name`'s database in the new file `out`, written
    /// beside it first and renamed once whole.
    pub fn backup(&self, name: &str, out: &Path) -> anyhow::Result<Saved> {
        anyhow::ensure!(!out.exists(), "{} exists; name another file with --out", out.display());
        let path = format!("/components/{name}/backup");
        let response = self.call("GET", &path, "application/json", (), None)?;
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut file =
            std::fs::File::create_new(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
        let copied = std::io::copy(&mut response.into_body().into_reader(), &mut file)
            .and_then(|bytes| file.sync_all().map(|()| bytes))
            .and_then(|bytes| std::fs::rename(&partial, out).map(|()| bytes));
        match copied {
            Ok(bytes) => Ok(Saved {
                component: name.to_string(),
                file: out.to_path_buf(),
                bytes,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(anyhow::Error::from(e).context(format!("the backup of {name} did not arrive whole")))
            }
        }
    }

    /// Replaces `name`'s database with the SQLite file `file`.
    pub fn restore(&self, name: &str, file: &Path) -> anyhow::Result<api::Restored> {
        let body = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let path = format!("/components/{name}/backup");
        let response = self.call("PUT", &path, api::BACKUP_MEDIA_TYPE, body, None)?;
        let text = response.into_body().read_to_string().unwrap_or_default();
        serde_json::from_str(&text)
            .with_context(|| format!("the admin API's answer to PUT {path} is not what this corral reads"))
    }

    pub fn status(&self) -> anyhow::Result<api::Components> {
        self.send_as("GET", "/components", Vec::new())
    }

    /// Sends `wasm`'s file, or the `oci://` reference it is for the host to fetch.
    pub fn swap(&self, name: &str, wasm: &str, canary: Option<u8>) -> anyhow::Result<api::Changed> {
        let bytes = match wasm.starts_with(OCI_SCHEME) {
            true => wasm.as_bytes().to_vec(),
            false => std::fs::read(wasm).with_context(|| format!("cannot read {wasm}"))?,
        };
        let query = canary.map(|c| format!("?canary={c}")).unwrap_or_default();
        self.send_as("PUT", &format!("/components/{name}{query}"), bytes)
    }

    pub fn rollback(&self, name: &str) -> anyhow::Result<api::Changed> {
        self.send_as("POST", &format!("/components/{name}/rollback"), Vec::new())
    }

    pub fn promote(&self, name: &str) -> anyhow::Result<api::Changed> {
        self.send_as("POST", &format!("/components/{name}/promote"), Vec::new())
    }

    pub fn reload(&self) -> anyhow::Result<api::Reloaded> {
        self.send_as("POST", "/reload", Vec::new())
    }

    pub fn events(&self) -> anyhow::Result<api::Events> {
        self.send_as("GET", "/events", Vec::new())
    }

    pub fn dead_letters(&self, subscriber: Option<&str>, limit: usize) -> anyhow::Result<api::DeadLetters> {
        let subscriber = subscriber.map(|s| format!("&subscriber={s}")).unwrap_or_default();
        self.send_as(
            "GET",
            &format!("/events/dead-letters?limit={limit}{subscriber}"),
            Vec::new(),
        )
    }

    /// Redrives (or purges) `subscriber`'s dead letters, the given ones or
    /// all; `pending` purges what still waits too.
    pub fn settle_dead(
        &self,
        action: &str,
        subscriber: &str,
        ids: &[String],
        pending: bool,
    ) -> anyhow::Result<api::Settled> {
        let kind = if pending { "pending" } else { "dead-letters" };
        let ids: String = ids.iter().map(|id| format!("&id={id}")).collect();
        self.send_as(
            "POST",
            &format!("/events/{kind}/{action}?subscriber={subscriber}{ids}"),
            Vec::new(),
        )
    }
}

/// A backup saved by `corral backup`.
#[derive(Debug, serde::Serialize)]
pub struct Saved {
    pub component: String,
    pub file: PathBuf,
    pub bytes: u64,
}

/// What `corral backup` saved.
pub fn backup_summary(saved: &Saved) -> String {
    format!("{}: {} bytes in {}", saved.component, saved.bytes, saved.file.display())
}

/// What `corral restore` put in place.
pub fn restore_summary(restored: &api::Restored) -> String {
    format!(
        "{}: restored, {} bytes, {} tables",
        restored.component, restored.bytes, restored.tables
    )
}

/// The file `corral backup <name>` writes when not told: its name and the
/// time, to the second.
pub fn backup_file_name(name: &str) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(char::is_ascii_alphanumeric).collect();
    PathBuf::from(format!("{name}-{stamp}.sqlite3"))
}

/// A digest's first 12 hex digits, as versions are shown.
fn short(digest: &str) -> String {
    digest[..digest.len().min(12)].to_string()
}

/// What a swap, rollback or promote did, in a line.
pub fn change_summary(changed: &api::Changed) -> String {
    let short_or_none = |digest: Option<&String>| digest.map_or("-".to_string(), |d| short(d));
    match changed {
        api::Changed::Cluster(change) => {
            let versions = &change.desired.versions;
            let canary = match &versions.canary {
                Some(canary) => format!(", canary {} at {}%", short(&canary.version), canary.percent),
                None => String::new(),
            };
            let nodes: Vec<&str> = change.nodes.iter().map(|n| n.node.as_str()).collect();
            format!(
                "{}: {}{canary} (previous {}), on {}",
                change.component,
                short(&versions.current),
                short_or_none(versions.previous.as_ref()),
                nodes.join(", ")
            )
        }
        api::Changed::Host(change) => match change.canary_percent {
            Some(percent) => format!(
                "{}: canary {} serves {percent}% of requests, {} the rest",
                change.name,
                short(&change.version),
                short_or_none(change.previous_version.as_ref())
            ),
            None => format!(
                "{}: {} (previous {})",
                change.name,
                short(&change.version),
                short_or_none(change.previous_version.as_ref())
            ),
        },
    }
}

/// What a reload did: each component changed, and settings that wait for a restart.
pub fn reload_summary(reloaded: &api::Reloaded) -> String {
    let mut lines: Vec<String> = reloaded
        .components
        .iter()
        .map(|change| change_summary(&api::Changed::Host(change.clone())))
        .collect();
    if lines.is_empty() {
        lines.push("no component changed".into());
    }
    if !reloaded.needs_restart.is_empty() {
        lines.push(format!(
            "changed but applied only after a restart: {}",
            reloaded.needs_restart.join(", ")
        ));
    }
    lines.join("\n")
}

/// `GET /events` as two tables: who publishes what, and each subscription's backlog.
pub fn events_table(events: &api::Events) -> String {
    let mut publishers = vec![["PUBLISHER".to_string(), "TOPICS".into()]];
    for p in &events.publishers {
        publishers.push([p.component.clone(), p.topics.join(",")]);
    }
    let mut subscriptions = vec![[
        "SUBSCRIBER".to_string(),
        "TOPICS".into(),
        "BACKLOG".into(),
        "RETRYING".into(),
        "IN FLIGHT".into(),
        "DEAD".into(),
        "OLDEST MS".into(),
    ]];
    for s in &events.subscriptions {
        let topics = match s.removed {
            true => "(no longer subscribed)".to_string(),
            false => s.topics.join(","),
        };
        subscriptions.push([
            s.subscriber.clone(),
            topics,
            s.backlog.to_string(),
            s.retrying.to_string(),
            s.in_flight.to_string(),
            s.dead.to_string(),
            s.oldest_age_ms.map_or("-".into(), |ms| ms.to_string()),
        ]);
    }
    format!("{}\n\n{}", render(&publishers), render(&subscriptions))
}

/// `GET /events/dead-letters` as a table, reasons cut at 60 characters.
pub fn dead_letters_table(dead: &api::DeadLetters) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "SUBSCRIBER".into(),
        "TOPIC".into(),
        "SOURCE".into(),
        "ATTEMPTS".into(),
        "REASON".into(),
    ]];
    for d in &dead.dead_letters {
        let mut reason = d.reason.replace('\n', " ");
        if reason.chars().count() > 60 {
            reason = format!("{}...", reason.chars().take(57).collect::<String>());
        }
        rows.push([
            d.id.clone(),
            d.subscriber.clone(),
            d.topic.clone(),
            d.source.clone(),
            d.attempts.to_string(),
            reason,
        ]);
    }
    render(&rows)
}

/// What a redrive or purge did.
pub fn settled_summary(settled: &api::Settled) -> String {
    match (settled.redrive, settled.purge) {
        (Some(n), _) => format!("{}: {n} dead letters delivered again", settled.subscriber),
        (_, Some(n)) => format!("{}: {n} messages dropped", settled.subscriber),
        (None, None) => format!("{}: nothing done", settled.subscriber),
    }
}

/// `GET /components` as a table.
pub fn status_table(status: &api::Components) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "VERSION".into(),
        "ORIGIN".into(),
        "ROUTES".into(),
        "IN FLIGHT".into(),
        "PREVIOUS".into(),
        "CANARY".into(),
    ]];
    for c in &status.components {
        let canary = match &c.canary {
            None => "-".to_string(),
            Some(canary) => format!("{} at {}%", canary.version.short, canary.percent),
        };
        rows.push([
            c.name.clone(),
            c.version.short.clone(),
            c.version.origin.clone(),
            c.routes.join(","),
            c.in_flight.to_string(),
            c.previous.as_ref().map_or("-".into(), |p| p.short.clone()),
            canary,
        ]);
    }
    let mut table = render(&rows);
    if let Some(unjoined) = &status.unjoined {
        table.push_str(&format!(
            "\n\ncluster: not joined yet ({}); not served here until it joins: {}",
            unjoined.why,
            unjoined.waiting.join(", ")
        ));
    }
    if let Some(cluster) = &status.cluster {
        table.push_str("\n\n");
        table.push_str(&cluster_table(cluster));
    }
    table
}

/// The cluster part of `GET /components`: what each host serves of what
/// the cluster wants.
fn cluster_table(cluster: &api::ClusterStatus) -> String {
    let canary = |canary: &Option<Canary<String>>| match canary {
        None => "-".to_string(),
        Some(canary) => format!("{} at {}%", short(&canary.version), canary.percent),
    };
    let converged = if cluster.converged { "converged" } else { "converging" };
    let mut out = format!("cluster: this host is {}, {converged}\n", cluster.node);
    let mut wanted = vec![
        ["COMPONENT", "WANTED", "CANARY", "OWNER", "LAST CHANGE"]
            .map(String::from)
            .to_vec(),
    ];
    for (name, desired) in &cluster.desired {
        wanted.push(vec![
            name.clone(),
            short(&desired.versions.current),
            canary(&desired.versions.canary),
            desired.owner.clone().unwrap_or_else(|| "every host".into()),
            format!("{} by {}", desired.change, desired.changed_by),
        ]);
    }
    out.push_str(&render(&wanted));
    let mut hosts = vec![
        ["HOST", "READY", "COMPONENT", "SERVES", "CANARY", "STATE"]
            .map(String::from)
            .to_vec(),
    ];
    for node in &cluster.nodes {
        for (name, report) in &node.components {
            let desired = cluster.desired.get(name);
            let state = match &report.error {
                None if desired
                    .is_some_and(|d| report.current == d.versions.current && report.canary == d.versions.canary) =>
                {
                    "ok".to_string()
                }
                None => "converging".to_string(),
                Some(error) => format!("refused {}: {}", short(&error.wanted), error.message),
            };
            hosts.push(vec![
                node.node.clone(),
                if node.ready { "yes" } else { "no" }.to_string(),
                name.clone(),
                short(&report.current),
                canary(&report.canary),
                state,
            ]);
        }
    }
    out.push_str("\n\n");
    out.push_str(&render(&hosts));
    out
}

/// Rows as columns aligned on their widest cell.
fn render<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r.as_ref()[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .as_ref()
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
