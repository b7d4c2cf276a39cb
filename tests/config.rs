//! Config validation: every problem of a file reported at once, with its key.

use crate::support::{check_config, component_toml};

#[test]
fn a_valid_config_passes() {
    let toml = format!(
        "listen = \"127.0.0.1:8080\"\ndata_dir = \"data\"\n{}{}",
        component_toml("users", "users", &["/users"]),
        component_toml("orders", "orders", &["/orders", "/api/orders"]),
    );
    let (ok, output) = check_config(&toml);
    assert!(ok, "{output}");
    assert!(output.contains(": ok"), "{output}");
}

#[test]
fn check_names_each_component_s_world_and_what_it_imports() {
    let toml = format!(
        "data_dir = \"data\"\n{}{}allowed_outbound_hosts = [\"https://api.example.com\", \"http://users.internal\"]\n",
        component_toml("users", "users", &["/users"]),
        component_toml("hello", "http-hello", &["/http"]),
    );
    let (ok, output) = check_config(&toml);
    assert!(ok, "{output}");
    let line = |name: &str| {
        output
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("users").contains("(corral:service/service)"), "{output}");
    assert!(
        line("users").contains("corral:service@0.2.0 {sqlite, log, events"),
        "{output}"
    );
    assert!(line("hello").contains("(wasi:http/proxy)"), "{output}");
    assert!(line("hello").contains("{types, outgoing-handler}"), "{output}");
}

#[test]
fn outbound_destinations_are_validated() {
    let toml = format!(
        "data_dir = \"data\"\n{}allowed_outbound_hosts = [\"ftp://files.example.com\", \"https://api.example.com/v1\", \"api.example.com\"]\n",
        component_toml("hello", "http-hello", &["/http"]),
    );
    let (ok, output) = check_config(&toml);
    assert!(!ok, "{output}");
    for expected in [
        "components.hello.allowed_outbound_hosts[0]: \"ftp://files.example.com\" is not a destination",
        "the scheme is http, https or *",
        "components.hello.allowed_outbound_hosts[1]",
        "no path",
        "components.hello.allowed_outbound_hosts[2]",
        "it needs a scheme",
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = format!(
        r#"
listen = "localhost:http"
data_dir = "data"
colour = "blue"

{users}
[components.orders]
wasm = "missing/orders.wasm"
routes = ["/orders", "/users/orders", "no-slash", "/trailing/"]
retries = 3

[components.Bad_Name]
routes = ["/bad"]
"#,
        users = component_toml("users", "users", &["/users"]),
    );
    let (ok, output) = check_config(&toml);
    assert!(!ok, "{output}");
    for expected in [
        "listen: \"localhost:http\" is not an address",
        "colour: unknown key",
        "components.orders.retries: unknown key",
        "components.orders.wasm: no such file",
        "run `just build`",
        "components.orders.routes[1]: \"/users/orders\" overlaps \"/users\" of component users",
        "components.orders.routes[2]: \"no-slash\" is not a route",
        "components.orders.routes[3]: \"/trailing/\" is not a route",
        "components.Bad_Name: \"Bad_Name\" is not a valid component name",
        "components.Bad_Name.wasm: is required",
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
    assert!(output.contains("9 problems"), "{output}");
}

#[test]
fn shape_errors_name_the_line() {
    let (ok, output) = check_config("data_dir = \"data\"\n[components.users]\nroutes = \"/users\"\n");
    assert!(!ok);
    assert!(output.contains("line 3"), "{output}");
    let (ok, output) = check_config("this is not toml");
    assert!(!ok);
    assert!(output.contains("line 1"), "{output}");
    let (ok, output) = check_config("data_dir = \"data\"\n");
    assert!(!ok);
    assert!(
        output.contains("components: at least one component is required"),
        "{output}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let toml = format!(
        "data_dir = \"data\"\n[components.core]\nwasm = {:?}\nroutes = [\"/core\"]\n[components.junk]\nwasm = {:?}\nroutes = [\"/junk\"]\n",
        core_module.display().to_string(),
        junk.display().to_string()
    );
    let (ok, output) = check_config(&toml);
    assert!(!ok, "{output}");
    assert!(
        output.contains("core: ") && output.contains("core wasm module"),
        "{output}"
    );
    assert!(
        output.contains("junk: ") && output.contains("not WebAssembly"),
        "{output}"
    );
}

#[test]
fn limits_and_rate_limits_are_validated_too() {
    let toml = format!(
        r#"
data_dir = "data"

[server]
trusted_proxies = ["10.0.0.0/8", "not-a-network"]
max_instances = 10
max_headers = 0

[limits]
memory_mib = 0
cpu_time_ms = 1000

{users}
[components.users.limits]
max_concurrent = 11
timeout_ms = 99999999
bogus = 1

[components.users.rate_limit]
rate = "10/fortnight"
burst = 0
per = "everyone"
routes = [
    {{ route = "GET /orders/{{id}}", rate = "1/second" }},
    {{ route = "get /users", rate = "1/second" }},
    {{ rate = "1/second" }},
]
"#,
        users = component_toml("users", "users", &["/users"]),
    );
    let (ok, output) = check_config(&toml);
    assert!(!ok, "{output}");
    for expected in [
        "server.trusted_proxies[1]: \"not-a-network\" is not an address or network",
        "server.max_headers: 0 is out of range",
        "limits.memory_mib: 0 is out of range: use 1 to 4096",
        "components.users.limits.timeout_ms: 99999999 is out of range",
        "components.users.limits.bogus: unknown key",
        "components.users.rate_limit.rate: \"10/fortnight\" is not a rate",
        "components.users.rate_limit.burst: 0 is out of range",
        "components.users.rate_limit.per: \"everyone\" is not \"client\" or \"global\"",
        "components.users.rate_limit.routes[0].route: GET /orders/{id} is not under any of this component's routes",
        "components.users.rate_limit.routes[1].route: \"get /users\" is not a route pattern",
        "components.users.rate_limit.routes[2].route: is required",
        "server.max_instances: 10 is less than the components' max_concurrent added up (11)",
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
}

#[test]
fn check_resolves_imports_between_components() {
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n{}",
        component_toml("orders", "orders", &["/orders"])
    ));
    assert!(!ok);
    assert!(
        output.contains("orders imports corral:shop/users@0.1.0, which no configured component exports"),
        "{output}"
    );
    let both = format!(
        "data_dir = \"data\"\n{}{}",
        component_toml("orders", "orders", &["/orders"]),
        component_toml("users", "users", &["/users"])
    );
    let (ok, output) = check_config(&both);
    assert!(ok, "{output}");
}

#[test]
fn cluster_settings_are_validated() {
    let users = component_toml("users", "users", &["/users"]);
    let toml = format!(
        r#"
data_dir = "data"

[server]
rate_limit_store = "http://redis:6379"

[cluster]
nats = ["redis://nats:4222"]
node = "Node 1"
token = "a-token-long-enough-0123"
token_env = "NATS_TOKEN"
node_ttl_ms = 10
weight = 0

{users}owner = "n2"
"#
    );
    let (ok, output) = check_config(&toml);
    assert!(!ok, "{output}");
    for expected in [
        "server.rate_limit_store: \"http://redis:6379\" is not a Redis URL",
        "cluster.nats[0]: \"redis://nats:4222\" is not a NATS server",
        "cluster.node: \"Node 1\" is not a valid node name",
        "cluster: give at most one of credentials_file, token, token_env and token_file",
        "cluster.node_ttl_ms",
        "cluster.weight",
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
    let (ok, output) = check_config(
        "data_dir = \"data\"\n[cluster]\nnats = [\"nats://n:4222\"]\nnode = \"n1\"\nbalance = \"fastest\"\n",
    );
    assert!(!ok && output.contains("unknown variant `fastest`"), "{output}");
    // A component may name an owner only in a cluster.
    let (ok, output) = check_config(&format!("data_dir = \"data\"\n{users}owner = \"n2\"\n"));
    assert!(!ok && output.contains("components.users.owner"), "{output}");
    // The same settings, right, pass.
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n[server]\nrate_limit_store = \"redis://127.0.0.1:6379\"\n\
         [cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"n1\"\nbalance = \"weighted-random\"\nweight = 300\n\
         {users}owner = \"n2\"\n"
    ));
    assert!(ok, "{output}");
    // One server, as NATS clients take it, without a list.
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"n1\"\n{users}"
    ));
    assert!(ok, "{output}");
    let (ok, output) = check_config("data_dir = \"data\"\n[cluster]\nnats = 4222\nnode = \"n1\"\n");
    assert!(!ok && output.contains("or a list of them"), "{output}");
    // Requests go on to the advertised address with their own path: it has
    // none of its own.
    for advertise in [
        "http://10.0.0.5:8080/api",
        "http://10.0.0.5:8080?x=1",
        "https://10.0.0.5",
        "10.0.0.5:8080",
    ] {
        let (ok, output) = check_config(&format!(
            "data_dir = \"data\"\n[cluster]\nnats = \"nats://n:4222\"\nnode = \"n1\"\nadvertise = \"{advertise}\"\n{users}"
        ));
        assert!(!ok && output.contains("cluster.advertise"), "{advertise}: {output}");
    }
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n[cluster]\nnats = \"nats://n:4222\"\nnode = \"n1\"\nadvertise = \"http://10.0.0.5:8080/\"\n{users}"
    ));
    assert!(ok, "{output}");
    // Events travel as NATS messages, at most 1 MiB: a larger payload
    // would never leave its publisher's outbox.
    let large = format!("{users}[components.users.limits]\nevent_payload_kib = 4096\n");
    let (ok, output) = check_config(&format!("data_dir = \"data\"\n{large}"));
    assert!(ok, "on one host: {output}");
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n[cluster]\nnats = \"nats://n:4222\"\nnode = \"n1\"\n{large}"
    ));
    assert!(
        !ok && output.contains("components.users.limits.event_payload_kib") && output.contains("512"),
        "{output}"
    );
    // Reads from replicas: only in a cluster, only of a replicated log,
    // within a lag of 100 ms to a minute.
    let cluster = "[cluster]\nnats = \"nats://n:4222\"\nnode = \"n1\"\n";
    for (where_, extra, problem) in [
        ("", "read_from = \"replica\"\n", "users.read_from"),
        (
            cluster,
            "read_from = \"replica\"\ndurability = \"local\"\n",
            "users.read_from",
        ),
        (cluster, "max_replica_lag_ms = 500\n", "users.max_replica_lag_ms"),
        (
            cluster,
            "read_from = \"replica\"\nmax_replica_lag_ms = 5\n",
            "users.max_replica_lag_ms",
        ),
        (cluster, "read_from = \"everywhere\"\n", "read_from"),
    ] {
        let (ok, output) = check_config(&format!("data_dir = \"data\"\n{where_}{users}{extra}"));
        assert!(!ok && output.contains(problem), "{extra}: {output}");
    }
    let (ok, output) = check_config(&format!(
        "data_dir = \"data\"\n{cluster}{users}read_from = \"replica\"\nmax_replica_lag_ms = 500\n"
    ));
    assert!(ok, "{output}");
}
