//! From the file as written to the [`Config`] the host runs with: paths made
//! absolute, values checked against their ranges, routes against each other,
//! every problem collected under its dotted key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use super::events::{EventsConfig, Ordering, RawSubscription, Subscription, SubscriptionSettings, TopicPattern};
use super::problems::Problems;
use super::raw::{RawAdmin, RawComponent, RawConfig, RawRateLimit, RawRegistries, RawTelemetry};
use super::routes::{check_route, routes_overlap};
use super::settings::RawServer;
use super::tokens::MIN_TOKEN_LEN;
use super::{
    AdminConfig, ComponentConfig, ComponentLimits, Config, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, Durability, Overrides,
    Rate, RateLimit, RateLimitConfig, ReadFrom, RegistriesConfig, RoutePattern, Scope, ServerConfig, ServerSettings,
    TelemetryConfig, TokenSource, TrustedProxies, WasmSource,
};

const MAX_NAME_LEN: usize = 64;

pub fn config(raw: RawConfig, file: &Path, base: &Path, overrides: &Overrides, problems: &mut Problems) -> Config {
    let listen = overrides.listen.unwrap_or_else(|| {
        let text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        text.parse().unwrap_or_else(|_| {
            problems.add("listen", format!("{text:?} is not an address such as {DEFAULT_LISTEN}"));
            DEFAULT_LISTEN.parse().expect("the default address parses")
        })
    });
    let data_dir = data_dir(raw.data_dir.as_deref(), base, overrides, problems);
    let cache_dir = raw.cache_dir.map(|dir| base.join(dir));
    let registries = registries_config(
        &raw.registries,
        base,
        cache_dir.as_deref().unwrap_or(&data_dir),
        problems,
    );
    let server = server_config(&raw.server, problems);
    let telemetry = telemetry_config(&raw.telemetry, problems);
    let admin = raw
        .admin
        .as_ref()
        .map(|admin| admin_config(admin, base, &data_dir, problems));
    let cluster = raw
        .cluster
        .as_ref()
        .map(|cluster| super::cluster::resolve_cluster(cluster, base, problems));
    let defaults = ComponentLimits::resolve(&raw.limits, &ComponentLimits::default(), "limits", problems);

    if raw.components.is_empty() {
        problems.add("components", "at least one component is required");
    }
    let mut components = Vec::new();
    for (name, component) in raw.components {
        components.push(component_config(
            name,
            component,
            base,
            &defaults,
            overrides.watch,
            problems,
        ));
    }
    check_components(&components, cluster.is_some(), server.settings.max_instances, problems);
    Config {
        source: file.to_path_buf(),
        listen,
        data_dir,
        cache_dir,
        server,
        admin,
        cluster,
        registries,
        telemetry,
        warnings: unheard_topics(&components),
        components,
    }
}

/// The folder of the databases: `--data-dir`, else the file's.
fn data_dir(raw: Option<&str>, base: &Path, overrides: &Overrides, problems: &mut Problems) -> PathBuf {
    let dir = match (&overrides.data_dir, raw) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => base.join(dir),
        (None, None) => {
            problems.add(
                "data_dir",
                "is required: the folder where each component's database lives",
            );
            PathBuf::new()
        }
    };
    if dir.exists() && !dir.is_dir() {
        problems.add("data_dir", format!("{} exists and is not a folder", dir.display()));
    }
    dir
}

/// The largest event a component of a cluster may publish.
const MAX_CLUSTER_EVENT_BYTES: usize = 512 * 1024;

/// What holds between components: routes apart, owners only in a cluster
/// and well named, every import's provider configured, and instance slots
/// for every component's `max_concurrent`.
fn check_components(components: &[ComponentConfig], clustered: bool, max_instances: usize, problems: &mut Problems) {
    check_overlaps(components, problems);
    for component in components {
        if !clustered && component.durability != Durability::default() {
            problems.add(
                format!("components.{}.durability", component.name),
                "only means something in a cluster: add a [cluster] section",
            );
        }
        if component.read_from == ReadFrom::Replica {
            let key = format!("components.{}.read_from", component.name);
            if !clustered {
                problems.add(key, "only means something in a cluster: add a [cluster] section");
            } else if component.durability != Durability::Replicated {
                problems.add(
                    key,
                    "needs durability = \"replicated\": with \"local\" only the owner has a copy",
                );
            }
        }
        if clustered && component.limits.max_event_bytes > MAX_CLUSTER_EVENT_BYTES {
            problems.add(
                format!("components.{}.limits.event_payload_kib", component.name),
                format!(
                    "is at most {} in a cluster: events travel as NATS messages, at most 1 MiB with what describes them",
                    MAX_CLUSTER_EVENT_BYTES / 1024
                ),
            );
        }
        let Some(owner) = &component.owner else {
            continue;
        };
        let key = format!("components.{}.owner", component.name);
        if !clustered {
            problems.add(key, "only means something in a cluster: add a [cluster] section");
        } else if let Err(why) = check_name(owner) {
            problems.add(key, why.replace("component name", "node name"));
        }
    }
    for component in components {
        for (interface, provider) in &component.imports {
            if !components.iter().any(|c| &c.name == provider) {
                problems.add(
                    format!("components.{}.imports.\"{interface}\"", component.name),
                    format!("{provider:?} is not a configured component"),
                );
            }
        }
    }
    let concurrent: usize = components.iter().map(|c| c.limits.max_concurrent).sum();
    if concurrent > max_instances {
        problems.add(
            "server.max_instances",
            format!("{max_instances} is less than the components' max_concurrent added up ({concurrent})"),
        );
    }
}

fn telemetry_config(raw: &RawTelemetry, problems: &mut Problems) -> TelemetryConfig {
    let otlp_endpoint = raw
        .otlp_endpoint
        .as_ref()
        .map(|url| url.trim_end_matches('/').to_string());
    if let Some(url) = &otlp_endpoint
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.add(
            "telemetry.otlp_endpoint",
            format!("{url:?} is not an OTLP/HTTP endpoint such as \"http://127.0.0.1:4318\""),
        );
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        problems.add(
            "telemetry.sample_ratio",
            format!("{sample_ratio} is not between 0 and 1"),
        );
    }
    let service_name = raw.service_name.clone().unwrap_or_else(|| "corral".to_string());
    if service_name.is_empty() {
        problems.add("telemetry.service_name", "it is empty");
    }
    TelemetryConfig {
        otlp_endpoint,
        sample_ratio,
        service_name,
    }
}

fn registries_config(raw: &RawRegistries, base: &Path, cache_dir: &Path, problems: &mut Problems) -> RegistriesConfig {
    for (i, registry) in raw.insecure.iter().enumerate() {
        if registry.is_empty() || registry.contains(['/', ' ']) {
            problems.add(
                format!("registries.insecure[{i}]"),
                format!("{registry:?} is not a registry such as \"127.0.0.1:5000\""),
            );
        }
    }
    let ca_file = raw.ca_file.as_ref().map(|file| base.join(file));
    if let Some(file) = &ca_file
        && !file.is_file()
    {
        problems.add("registries.ca_file", format!("no such file: {}", file.display()));
    }
    let max_download_mib = problems
        .ranged("registries.max_download_mib", raw.max_download_mib, 1, 1024)
        .unwrap_or(64);
    RegistriesConfig {
        insecure: raw.insecure.clone(),
        ca_file,
        max_download_bytes: max_download_mib << 20,
        cache_dir: cache_dir.join("oci"),
    }
}

fn admin_config(raw: &RawAdmin, base: &Path, data_dir: &Path, problems: &mut Problems) -> AdminConfig {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen: SocketAddr = text.parse().unwrap_or_else(|_| {
        problems.add(
            "admin.listen",
            format!("{text:?} is not an address such as {DEFAULT_ADMIN_LISTEN}"),
        );
        DEFAULT_ADMIN_LISTEN.parse().expect("the default address parses")
    });
    let token = match (&raw.token, &raw.token_env, &raw.token_file) {
        (Some(token), None, None) => {
            if token.len() < MIN_TOKEN_LEN {
                problems.add("admin.token", format!("is shorter than {MIN_TOKEN_LEN} characters"));
            }
            TokenSource::Literal(token.clone())
        }
        (None, Some(var), None) => TokenSource::Env(var.clone()),
        (None, None, Some(file)) => TokenSource::File(base.join(file)),
        (None, None, None) => TokenSource::File(data_dir.join("admin.token")),
        _ => {
            problems.add("admin", "give at most one of token, token_env and token_file");
            TokenSource::File(data_dir.join("admin.token"))
        }
    };
    let max_upload_mib = problems
        .ranged("admin.max_upload_mib", raw.max_upload_mib, 1, 1024)
        .unwrap_or(64);
    let allow_remote = raw.allow_remote.unwrap_or(false);
    if !listen.ip().is_loopback() && !allow_remote {
        problems.add(
            "admin.listen",
            format!(
                "{listen} is reachable from other machines: the admin API can replace every component; \
                 use a loopback address, or set admin.allow_remote = true behind a firewall"
            ),
        );
    }
    AdminConfig {
        listen,
        token,
        max_upload_bytes: (max_upload_mib << 20) as usize,
        allow_remote,
    }
}

fn server_config(raw: &RawServer, problems: &mut Problems) -> ServerConfig {
    let settings = ServerSettings::resolve(raw, &ServerSettings::default(), "server", problems);
    let mut proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => proxies.push(net),
            Err(_) => problems.add(
                format!("server.trusted_proxies[{i}]"),
                format!("{text:?} is not an address or network such as \"10.0.0.0/8\""),
            ),
        }
    }
    let rate_limit_store = raw
        .rate_limit_store
        .as_deref()
        .and_then(|url| super::cluster::resolve_rate_limit_store(url, problems));
    ServerConfig {
        settings,
        trusted_proxies: TrustedProxies(proxies),
        rate_limit_store,
    }
}

fn component_config(
    name: String,
    raw: RawComponent,
    base: &Path,
    defaults: &ComponentLimits,
    watch_all: bool,
    problems: &mut Problems,
) -> ComponentConfig {
    let key = format!("components.{name}");
    if let Err(message) = check_name(&name) {
        problems.add(&key, message);
    }
    let wasm = match raw.wasm.as_deref().map(|text| WasmSource::parse(text, base)) {
        Some(Ok(WasmSource::File(path))) => {
            if !path.is_file() {
                problems.add(
                    format!("{key}.wasm"),
                    format!(
                        "no such file: {} (run `just build` to build the components)",
                        path.display()
                    ),
                );
            }
            WasmSource::File(path)
        }
        Some(Ok(oci)) => oci,
        Some(Err(message)) => {
            problems.add(format!("{key}.wasm"), message);
            WasmSource::File(PathBuf::new())
        }
        None => {
            problems.add(
                format!("{key}.wasm"),
                "is required: the path of the component's .wasm file, or an oci:// reference",
            );
            WasmSource::File(PathBuf::new())
        }
    };
    let routes = raw.routes.unwrap_or_else(|| {
        problems.add(
            format!("{key}.routes"),
            "is required: the path prefixes the component serves",
        );
        Vec::new()
    });
    for (i, route) in routes.iter().enumerate() {
        if let Err(message) = check_route(route) {
            problems.add(format!("{key}.routes[{i}]"), message);
        }
    }
    let limits = match &raw.limits {
        Some(own) => ComponentLimits::resolve(own, defaults, &format!("{key}.limits"), problems),
        None => defaults.clone(),
    };
    let rate_limits = match raw.rate_limit {
        Some(raw) => rate_limits(raw, &routes, &format!("{key}.rate_limit"), problems),
        None => RateLimitConfig::default(),
    };
    let events = events_config(&raw.publishes, raw.subscription.as_ref(), &key, problems);
    let mut allowed_outbound_hosts = Vec::new();
    for (i, text) in raw.allowed_outbound_hosts.iter().enumerate() {
        match text.parse() {
            Ok(pattern) => allowed_outbound_hosts.push(pattern),
            Err(message) => problems.add(format!("{key}.allowed_outbound_hosts[{i}]"), message),
        }
    }
    ComponentConfig {
        name,
        wasm,
        routes,
        limits,
        rate_limits,
        watch: raw.watch.unwrap_or(false) || watch_all,
        imports: raw.imports,
        events,
        allowed_outbound_hosts,
        owner: raw.owner,
        durability: raw.durability.unwrap_or_default(),
        read_from: raw.read_from.unwrap_or_default(),
        max_replica_lag: replica_lag(raw.max_replica_lag_ms, raw.read_from, &key, problems),
    }
}

/// How stale a replica may be to serve reads: 1 s unless the config says.
fn replica_lag(
    ms: Option<u64>,
    read_from: Option<ReadFrom>,
    key: &str,
    problems: &mut Problems,
) -> std::time::Duration {
    let Some(ms) = ms else {
        return std::time::Duration::from_secs(1);
    };
    if read_from != Some(ReadFrom::Replica) {
        problems.add(
            format!("{key}.max_replica_lag_ms"),
            "only means something with read_from = \"replica\"",
        );
    } else if !(100..=60_000).contains(&ms) {
        problems.add(format!("{key}.max_replica_lag_ms"), "use 100 to 60000 milliseconds");
    }
    std::time::Duration::from_millis(ms)
}

fn rate_limits(raw: RawRateLimit, routes: &[String], key: &str, problems: &mut Problems) -> RateLimitConfig {
    let component = match &raw.rate {
        Some(_) => rate_limit(raw.rate.as_deref(), raw.burst, raw.per.as_deref(), key, problems),
        None => {
            if raw.burst.is_some() || raw.per.is_some() {
                problems.add(format!("{key}.rate"), "is required with burst or per");
            } else if raw.routes.is_empty() {
                problems.add(format!("{key}.rate"), "is required: a rate such as \"10/minute\"");
            }
            None
        }
    };
    let mut route_limits = Vec::new();
    for (i, route) in raw.routes.into_iter().enumerate() {
        let key = format!("{key}.routes[{i}]");
        let pattern = match route.route.as_deref().map(str::parse::<RoutePattern>) {
            Some(Ok(pattern)) if routes.iter().any(|prefix| pattern.is_under(prefix)) => Some(pattern),
            Some(Ok(pattern)) => {
                problems.add(
                    format!("{key}.route"),
                    format!("{pattern} is not under any of this component's routes"),
                );
                None
            }
            Some(Err(message)) => {
                problems.add(format!("{key}.route"), message);
                None
            }
            None => {
                problems.add(
                    format!("{key}.route"),
                    "is required: a method and path such as \"GET /users/{id}\"",
                );
                None
            }
        };
        let limit = rate_limit(route.rate.as_deref(), route.burst, route.per.as_deref(), &key, problems);
        if let (Some(pattern), Some(limit)) = (pattern, limit) {
            route_limits.push((pattern, limit));
        }
    }
    RateLimitConfig {
        component,
        routes: route_limits,
    }
}

fn rate_limit(
    rate: Option<&str>,
    burst: Option<u64>,
    per: Option<&str>,
    key: &str,
    problems: &mut Problems,
) -> Option<RateLimit> {
    let rate = match rate.map(str::parse::<Rate>) {
        Some(Ok(rate)) => Some(rate),
        Some(Err(message)) => {
            problems.add(format!("{key}.rate"), message);
            None
        }
        None => {
            problems.add(format!("{key}.rate"), "is required: a rate such as \"10/minute\"");
            None
        }
    };
    let burst = problems.ranged(format!("{key}.burst"), burst, 1, u64::from(u32::MAX));
    let scope = match per {
        None | Some("client") => Some(Scope::Client),
        Some("global") => Some(Scope::Global),
        Some(other) => {
            problems.add(
                format!("{key}.per"),
                format!("{other:?} is not \"client\" or \"global\""),
            );
            None
        }
    };
    let rate = rate?;
    let burst = burst.map_or(rate.count, |b| NonZeroU32::new(b as u32).expect("burst is at least 1"));
    Some(RateLimit {
        rate,
        burst,
        scope: scope?,
    })
}

fn topics(texts: &[String], key: &str, problems: &mut Problems) -> Vec<TopicPattern> {
    let mut topics = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match text.parse() {
            Ok(topic) => topics.push(topic),
            Err(message) => problems.add(format!("{key}[{i}]"), message),
        }
    }
    topics
}

fn events_config(
    publishes: &[String],
    raw: Option<&RawSubscription>,
    key: &str,
    problems: &mut Problems,
) -> EventsConfig {
    let publishes = topics(publishes, &format!("{key}.publishes"), problems);
    let subscription = raw.map(|raw| {
        let key = format!("{key}.subscription");
        if raw.topics.is_empty() {
            problems.add(
                format!("{key}.topics"),
                "is required: the topics to receive, such as [\"orders.*\"]",
            );
        }
        let settings = SubscriptionSettings::resolve(raw, &SubscriptionSettings::default(), &key, problems);
        if settings.backoff_initial > settings.backoff_max {
            problems.add(format!("{key}.backoff_max_ms"), "must be at least backoff_initial_ms");
        }
        let ordering = match raw.ordering.as_deref() {
            None | Some("none") => Ordering::None,
            Some("key") => Ordering::Key,
            Some(other) => {
                problems.add(
                    format!("{key}.ordering"),
                    format!("{other:?} is not \"none\" or \"key\""),
                );
                Ordering::None
            }
        };
        Subscription {
            topics: topics(&raw.topics, &format!("{key}.topics"), problems),
            settings,
            ordering,
            exactly_once: raw.exactly_once.unwrap_or(false),
        }
    });
    EventsConfig {
        publishes,
        subscription,
    }
}

/// Subscriptions to topics no component may publish: allowed (a publisher
/// may come later), but worth a warning.
pub fn unheard_topics(components: &[ComponentConfig]) -> Vec<String> {
    let mut warnings = Vec::new();
    for component in components {
        let Some(subscription) = &component.events.subscription else {
            continue;
        };
        for topic in &subscription.topics {
            let heard = components
                .iter()
                .any(|c| c.events.publishes.iter().any(|p| p.overlaps(topic)));
            if !heard {
                warnings.push(format!(
                    "components.{}.subscription.topics: no component publishes to {topic}",
                    component.name
                ));
            }
        }
    }
    warnings
}

/// Names become file names, log fields and metric labels, so they stay plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let starts_well = name.starts_with(|c: char| c.is_ascii_lowercase());
    if name.len() > MAX_NAME_LEN || !plain || !starts_well {
        return Err(format!(
            "{name:?} is not a valid component name: use 1 to {MAX_NAME_LEN} lowercase letters, digits, `-` or `_`, starting with a letter"
        ));
    }
    Ok(())
}

fn check_overlaps(components: &[ComponentConfig], problems: &mut Problems) {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let mut reported = HashSet::new();
    for component in components {
        for (i, route) in component.routes.iter().enumerate() {
            if check_route(route).is_err() {
                continue;
            }
            for (other_name, other_route) in &seen {
                if routes_overlap(route, other_route) && reported.insert((component.name.as_str(), i)) {
                    let owner = if *other_name == component.name {
                        "another route of this component".to_string()
                    } else {
                        format!("component {other_name}")
                    };
                    problems.add(
                        format!("components.{}.routes[{i}]", component.name),
                        format!("{route:?} overlaps {other_route:?} of {owner}"),
                    );
                }
            }
            seen.push((&component.name, route));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir();
        let wasm = dir.join("corral-config-test.wasm");
        std::fs::write(&wasm, b"").unwrap();
        let toml = toml.replace("WASM", &wasm.display().to_string());
        Config::parse(&toml, &dir.join("corral.toml"), &Overrides::default())
    }

    fn keys(error: ConfigError) -> Vec<String> {
        error.problems.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn component_limits_override_the_defaults_which_override_the_built_in_ones() {
        let config = parse(
            "data_dir = \"d\"\n[limits]\nmemory_mib = 64\ntimeout_ms = 900\n\
             [components.a]\nwasm = \"WASM\"\nroutes = [\"/a\"]\n[components.a.limits]\nmemory_mib = 32\n\
             [components.b]\nwasm = \"WASM\"\nroutes = [\"/b\"]\n",
        )
        .unwrap();
        let (a, b) = (&config.components[0].limits, &config.components[1].limits);
        assert_eq!((a.memory_bytes, b.memory_bytes), (32 << 20, 64 << 20));
        assert_eq!((a.timeout.as_millis(), b.timeout.as_millis()), (900, 900));
        assert_eq!(a.max_concurrent, ComponentLimits::default().max_concurrent);
        assert!(config.data_dir.is_absolute());
    }

    #[test]
    fn every_problem_is_reported_at_once_under_its_key() {
        let error = parse(
            "listen = \"nowhere\"\n[server]\nmax_instances = 1\n\
             [components.A]\nroutes = [\"users\"]\n\
             [components.b]\nwasm = \"WASM\"\nroutes = [\"/b\", \"/b/c\"]\nsurprise = 1\n\
             [components.b.rate_limit]\nrate = \"7/fortnight\"\nroutes = [{ route = \"GET /elsewhere\", rate = \"1/second\" }]\n",
        )
        .unwrap_err();
        let mut keys = keys(error);
        keys.sort();
        assert_eq!(
            keys,
            [
                "components.A",
                "components.A.routes[0]",
                "components.A.wasm",
                "components.b.rate_limit.rate",
                "components.b.rate_limit.routes[0].route",
                "components.b.routes[1]",
                "components.b.surprise",
                "data_dir",
                "listen",
                "server.max_instances",
            ]
        );
    }

    #[test]
    fn rate_limits_resolve_with_their_defaults() {
        let config = parse(
            "data_dir = \"d\"\n[components.a]\nwasm = \"WASM\"\nroutes = [\"/a\"]\n\
             [components.a.rate_limit]\nrate = \"10/minute\"\nroutes = [{ route = \"POST /a\", rate = \"1/second\", burst = 3, per = \"global\" }]\n",
        )
        .unwrap();
        let limits = &config.components[0].rate_limits;
        assert_eq!(limits.component.unwrap().to_string(), "10/minute, burst 10, per client");
        assert_eq!(limits.routes[0].1.to_string(), "1/second, burst 3, per global");
    }

    #[test]
    fn subscriptions_resolve_and_bad_values_fail() {
        let base = "data_dir = \"d\"\n[components.a]\nwasm = \"WASM\"\nroutes = [\"/a\"]\npublishes = [\"a.created\"]\n\
                    [components.b]\nwasm = \"WASM\"\nroutes = [\"/b\"]\n[components.b.subscription]\n";
        let config = parse(&format!(
            "{base}topics = [\"a.*\", \"c.>\"]\nordering = \"key\"\nmax_attempts = 3\n"
        ))
        .unwrap();
        let subscription = config.components[1].events.subscription.as_ref().unwrap();
        assert!(subscription.matches("a.created") && subscription.matches("c.x.y") && !subscription.matches("b.x"));
        assert_eq!(subscription.settings.max_attempts, 3);
        assert_eq!(
            unheard_topics(&config.components),
            ["components.b.subscription.topics: no component publishes to c.>"]
        );
        let mut wrong = keys(
            parse(&format!("{base}topics = [\"A\"]\nordering = \"random\"\nconcurrency = 0\nbackoff_initial_ms = 9000\nbackoff_max_ms = 10\n"))
                .unwrap_err(),
        );
        wrong.sort();
        assert_eq!(
            wrong,
            [
                "components.b.subscription.backoff_max_ms",
                "components.b.subscription.concurrency",
                "components.b.subscription.ordering",
                "components.b.subscription.topics[0]",
            ]
        );
    }

    #[test]
    fn the_admin_api_is_local_unless_allowed() {
        let base = "data_dir = \"d\"\n[components.a]\nwasm = \"WASM\"\nroutes = [\"/a\"]\n[admin]\nlisten = \"0.0.0.0:9090\"\n";
        assert_eq!(keys(parse(base).unwrap_err()), ["admin.listen"]);
        let config = parse(&format!("{base}allow_remote = true\n")).unwrap();
        assert!(config.admin.unwrap().allow_remote);
    }
}
