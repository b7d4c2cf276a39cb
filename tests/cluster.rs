//! Many hosts as one: three real `corral` processes sharing a real NATS
//! JetStream server and a real Redis, behind a real HAProxy, all on
//! loopback ports of their own.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, Reply, TestHost, admin_toml, assert_clean_switch, client, eventually, find_program, host, metric,
    run_corral, spawn_listening, under_load_url, variant, wasm,
};

/// A server the tests start and stop: NATS, Redis or HAProxy.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program` with the arguments `args` gives for the address it
    /// is to listen on, a free one, and waits until it listens there.
    pub(crate) fn start(program: &str, args: impl Fn(SocketAddr) -> Vec<String>, dir: tempfile::TempDir) -> Daemon {
        let path = find_program(program);
        let (child, addr) = spawn_listening(program, |addr| {
            let mut command = Command::new(&path);
            command.args(args(addr)).current_dir(dir.path());
            command
        });
        Daemon { child, addr, _dir: dir }
    }

    /// The folder it runs in, which lives as long as it.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A NATS server with JetStream, its store in a temporary directory.
pub(crate) fn nats() -> Daemon {
    nats_with(&[])
}

/// A NATS server with JetStream that wants `token` from every client.
fn nats_with_token(token: &str) -> Daemon {
    nats_with(&["--auth", token])
}

/// A NATS server with JetStream and the further arguments `extra`.
fn nats_with(extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("jetstream").display().to_string();
    let args = |addr: SocketAddr| {
        let port = addr.port().to_string();
        let mut args = ["-js", "-sd", store.as_str(), "-a", "127.0.0.1", "-p", port.as_str()]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    Daemon::start("nats-server", args, dir)
}

/// A Redis server that keeps nothing on disk.
fn redis() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let args = |addr: SocketAddr| {
        let port = addr.port().to_string();
        [
            "--port",
            port.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    };
    Daemon::start("redis-server", args, dir)
}

/// HAProxy with `deploy/haproxy/haproxy.cfg`, balancing `hosts` round-robin.
pub(crate) fn haproxy(hosts: &[&TestHost]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::workspace().join("deploy/haproxy/haproxy.cfg");
    let path = find_program("haproxy");
    let (child, addr) = spawn_listening("haproxy", |addr| {
        let mut command = Command::new(&path);
        command.env("CORRAL_LISTEN", addr.to_string());
        for (i, host) in hosts.iter().enumerate() {
            command.env(format!("CORRAL_{}", i + 1), host.addr.to_string());
            command.env(
                format!("CORRAL_{}_ADMIN", i + 1),
                host.admin_addr.unwrap().port().to_string(),
            );
        }
        command.args(["-db", "-f"]).arg(&config).current_dir(dir.path());
        command
    });
    let mut daemon = Daemon { child, addr, _dir: dir };
    let started = Instant::now();
    // Up, and every host passed its health check: no component serves
    // this path, so a host answers 404 where HAProxy would answer 503.
    while (0..6).any(|_| get(&daemon, "/no-such-route").map(|r| r.status) != Some(404)) {
        assert!(daemon.child.try_wait().unwrap().is_none(), "haproxy exited");
        assert!(started.elapsed() < Duration::from_secs(20), "haproxy does not serve");
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

fn get(daemon: &Daemon, path: &str) -> Option<Reply> {
    send(daemon, "GET", path, None)
}

fn send(daemon: &Daemon, method: &str, path: &str, json: Option<&Value>) -> Option<Reply> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", daemon.addr));
    let body = match json {
        Some(json) => {
            request = request.header("content-type", "application/json");
            serde_json::to_vec(json).unwrap()
        }
        None => Vec::new(),
    };
    let response = client().run(request.body(body).unwrap()).ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().read_to_vec().ok()?;
    Some(Reply { status, headers, body })
}

/// A pair of relays without a database: relay-a calls relay-b.
fn relays() -> String {
    let relay = wasm("relay").display().to_string();
    format!(
        "[components.relay-a]\nwasm = {relay:?}\nroutes = [\"/relay-a\"]\n\
         [components.relay-a.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n\
         [components.relay-b]\nwasm = {relay:?}\nroutes = [\"/relay-b\"]\n"
    )
}

/// A host of the cluster on `nats` named `node`, serving the relays and `extra`.
fn cluster_host(nats: &Daemon, node: &str, extra: &str, data_dir: Option<&Path>) -> TestHost {
    cluster_host_of(nats, node, &format!("{}{extra}", relays()), data_dir)
}

/// A host of the cluster on `nats` named `node`, serving `components`.
pub(crate) fn cluster_host_of(nats: &Daemon, node: &str, components: &str, data_dir: Option<&Path>) -> TestHost {
    let toml = format!(
        "{}\n[cluster]\nnats = [\"nats://{}\"]\nnode = \"{node}\"\nnode_ttl_ms = 2000\nreplicas = 1\n\n{components}",
        admin_toml(),
        nats.addr,
    );
    let mut builder = host().toml(&toml);
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    builder.start()
}

/// Three hosts, started one after the other (the first publishes the
/// cluster's state, the others converge to it).
fn three_hosts(nats: &Daemon, extra: &str) -> Vec<TestHost> {
    ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| cluster_host(nats, node, extra, None))
        .collect()
}

/// The cluster as host `host` sees it, with every host's report.
pub(crate) fn cluster_of(host: &TestHost) -> Value {
    let reply = host.admin("GET", "/cluster", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[test]
fn a_rollout_through_one_host_reaches_every_host_under_load() {
    let nats = nats();
    let hosts = three_hosts(&nats, "");
    let proxy = haproxy(&hosts.iter().collect::<Vec<_>>());
    let old = hosts[0].version_of("/relay-b/local");
    for host in &hosts[1..] {
        assert_eq!(
            host.version_of("/relay-b/local"),
            old,
            "every host starts on the first's version"
        );
    }
    let url = format!("http://{}/relay-b/local", proxy.addr);

    // A swap through n2's admin API, while six clients go through HAProxy.
    let new_wasm = variant("relay", "cluster-v2");
    let (samples, before, after, reply) = under_load_url(&url, 6, || {
        hosts[1].admin("PUT", "/components/relay-b", new_wasm.clone())
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    let nodes = reply.json()["nodes"].as_array().unwrap().len();
    assert_eq!(nodes, 3, "the change waited for every host: {}", reply.text());
    let new = hosts[0].version_of("/relay-b/local");
    assert_ne!(new, old);
    assert_clean_switch(&samples, before, after, &old, &new);
    for host in &hosts {
        assert_eq!(host.version_of("/relay-b/local"), new);
    }
    // `corral status` against any host shows every host serving it.
    let admin = format!("http://{}", hosts[2].admin_addr.unwrap());
    let (ok, out) = run_corral(
        &["status".as_ref(), "--admin".as_ref(), admin.as_ref()],
        &[("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        Path::new("."),
    );
    assert!(ok, "{out}");
    for node in ["n1", "n2", "n3"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(node) && l.contains("relay-b"))
            .unwrap_or_else(|| panic!("no line for {node}:\n{out}"));
        assert!(line.contains(&new) && line.ends_with("ok"), "{line}");
    }

    // A rollback through n3 likewise.
    let (samples, before, after, reply) = under_load_url(&url, 6, || {
        hosts[2].admin("POST", "/components/relay-b/rollback", Vec::new())
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_clean_switch(&samples, before, after, &new, &old);
    for host in &hosts {
        assert_eq!(host.version_of("/relay-b/local"), old);
    }

    // A version that cannot serve relay-b's role (it lacks the export
    // relay-a calls) is refused, and no host serves it.
    let broken = std::fs::read(wasm("empty")).unwrap();
    let reply = hosts[0].admin("PUT", "/components/relay-b", broken);
    assert!(reply.status >= 400, "{}", reply.text());
    for host in &hosts {
        assert_eq!(host.version_of("/relay-b/local"), old);
    }

    // A canary through n1 reaches every host; a promote through n2 makes
    // it every host's version.
    let reply = hosts[0].admin(
        "PUT",
        "/components/relay-b?canary=50",
        variant("relay", "cluster-canary"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen: std::collections::BTreeSet<String> = (0..60).map(|i| hosts[i % 3].version_of("/relay-b/local")).collect();
    assert_eq!(seen.len(), 2, "the old version and the canary: {seen:?}");
    let canary = seen.iter().find(|v| **v != old).unwrap().clone();
    for node in cluster_of(&hosts[1])["nodes"].as_array().unwrap() {
        assert_eq!(node["components"]["relay-b"]["canary"]["percent"], 50, "{node}");
    }
    let reply = hosts[1].admin("POST", "/components/relay-b/promote", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    for host in &hosts {
        for _ in 0..5 {
            assert_eq!(host.version_of("/relay-b/local"), canary);
        }
    }

    // Every host shows every host.
    let cluster = cluster_of(&hosts[2]);
    let reported: Vec<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(reported, ["n1", "n2", "n3"], "{cluster}");
}

#[test]
fn a_version_another_host_cannot_load_is_refused_and_undone_everywhere() {
    let nats = nats();
    // On n1, relay-b calls itself; on n2, relay-a calls it. A version of
    // relay-b that neither calls nor answers relay calls passes n1's
    // checks and fails n2's.
    let relay_b = format!(
        "[components.relay-b]\nwasm = {:?}\nroutes = [\"/relay-b\"]\n\
         [components.relay-b.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n",
        wasm("relay").display().to_string()
    );
    let n1 = cluster_host_of(&nats, "n1", &relay_b, None);
    let n2 = cluster_host(&nats, "n2", "", None);
    let old = n1.version_of("/relay-b/local");
    let reply = n1.admin("PUT", "/components/relay-b", std::fs::read(wasm("empty")).unwrap());
    let problem = reply.assert_problem(422, "refused-by-host");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("n2") && detail.contains("relay-a"), "{problem}");
    for host in [&n1, &n2] {
        assert_eq!(host.version_of("/relay-b/local"), old, "undone everywhere");
    }
    let reply = n2.get("/relay-a/1");
    assert_eq!(reply.status, 200, "relay-b still answers relay-a: {}", reply.text());
}

#[test]
fn a_restarted_host_converges_before_it_serves() {
    let nats = nats();
    let data = tempfile::tempdir().unwrap();
    let n1 = cluster_host(&nats, "n1", "", None);
    let n2 = cluster_host(&nats, "n2", "", Some(data.path()));
    let old = n2.version_of("/relay-b/local");
    n2.kill();

    // Changed while n2 is down: n1 does not wait for it once its report expires.
    let reply = n1.admin("PUT", "/components/relay-b", variant("relay", "while-down"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let new = n1.version_of("/relay-b/local");
    assert_ne!(new, old);

    // n2 comes back with its old config and converges before it listens.
    let n2 = cluster_host(&nats, "n2", "", Some(data.path()));
    assert_eq!(n2.version_of("/relay-b/local"), new);
    let ready = n2.admin("GET", "/readyz", Vec::new());
    assert_eq!(ready.status, 200, "{}", ready.text());
    eventually("n1 sees n2 again", || {
        let cluster = cluster_of(&n1);
        cluster["nodes"].as_array().unwrap().iter().any(|n| {
            n["node"] == "n2"
                && n["components"]["relay-b"]["current"]
                    .as_str()
                    .unwrap()
                    .starts_with(&new)
        })
    });
}

/// The number of rows in `table` of the database of `component` under
/// `data_dir`, zero when the file does not exist.
pub(crate) fn rows(data_dir: &Path, component: &str, table: &str) -> i64 {
    let path = data_dir.join(format!("{component}.sqlite3"));
    if !path.exists() {
        return 0;
    }
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from {table}').fetchone()[0])"
        ))
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().unwrap_or(0)
}

#[test]
fn local_durability_writes_land_in_the_owners_database_only() {
    let nats = nats();
    // users lives on n2, orders (which calls users) on n1, each database on
    // its owner's disk only.
    let users = format!(
        "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\npublishes = [\"users.deleted\"]\nowner = \"n2\"\ndurability = \"local\"\n\
         [components.orders]\nwasm = {:?}\nroutes = [\"/orders\"]\npublishes = [\"orders.status-changed\"]\nowner = \"n1\"\ndurability = \"local\"\n",
        wasm("users").display().to_string(),
        wasm("orders").display().to_string()
    );
    let mut hosts = three_hosts(&nats, &users);
    let proxy = haproxy(&hosts.iter().collect::<Vec<_>>());
    let mut ids = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let reply = host.post(
            "/users",
            &json!({ "name": format!("user{i}"), "email": format!("u{i}@example.com") }),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        ids.push(reply.json()["id"].clone());
    }
    for i in 3..9 {
        let user = json!({ "name": format!("user{i}"), "email": format!("u{i}@example.com") });
        let reply = send(&proxy, "POST", "/users", Some(&user)).unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text());
        ids.push(reply.json()["id"].clone());
    }
    // Every host reads the same users.
    for host in &hosts {
        let listed = host.get("/users").json();
        assert_eq!(listed["items"].as_array().map(Vec::len), Some(9), "{listed}");
        for id in &ids {
            assert_eq!(host.get(&format!("/users/{id}")).status, 200);
        }
    }
    // The hosts that are not the owner counted what they forwarded.
    let metrics = hosts[0].metrics();
    let forwarded = metric(
        &metrics,
        "corral_requests_forwarded_total",
        &[("to", "n2"), ("why", "owner")],
    );
    assert!(forwarded >= 3.0, "{forwarded}");
    // orders, on n1, asks users on n2 (n1's copy of users' database is
    // never read), through whichever host the order reaches.
    let order = json!({ "user_id": ids[0], "items": [{ "sku": "TEA-1", "quantity": 1, "unit_price_cents": 450 }] });
    for host in &hosts {
        let reply = host.post("/orders", &order);
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    // Ownership moves to n1 (here without copying the database, so n1
    // starts from its own, empty one), and every host knows it at once.
    let reply = hosts[2].admin("POST", "/cluster/components/users/owner/n1", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = hosts[1].post("/users", &json!({ "name": "moved", "email": "moved@example.com" }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("corral-node"), Some("n1"));
    assert_eq!(hosts[2].get("/users").json()["items"].as_array().map(Vec::len), Some(1));
    for host in &mut hosts {
        host.terminate();
        host.wait();
    }
    assert_eq!(rows(&hosts[1].data_dir, "users", "users"), 9);
    assert_eq!(rows(&hosts[0].data_dir, "users", "users"), 1);
    assert_eq!(rows(&hosts[2].data_dir, "users", "users"), 0);
    assert_eq!(rows(&hosts[0].data_dir, "orders", "orders"), 3);
}

#[test]
fn rate_limits_are_shared_through_redis_and_survive_its_loss() {
    let nats = nats();
    let mut redis = redis();
    let extra = format!(
        "[server]\nrate_limit_store = \"redis://{}\"\n\
         [components.relay-a.rate_limit]\nrate = \"10/minute\"\n\
         [components.relay-b.rate_limit]\nrate = \"30/minute\"\n",
        redis.addr
    );
    let hosts = three_hosts(&nats, &extra);
    let proxy = haproxy(&hosts.iter().collect::<Vec<_>>());
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..30 {
        match get(&proxy, "/relay-a/local").unwrap().status {
            200 => admitted += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!((admitted, refused), (10, 20), "the three hosts share one bucket");

    // Without Redis, every host still answers, on a local share of the limit.
    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&proxy, "/relay-b/local").unwrap().status);
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let fallbacks: f64 = hosts
        .iter()
        .map(|h| {
            let text = h.metrics();
            metric(&text, "corral_rate_limit_fallbacks_total", &[])
        })
        .sum();
    assert!(fallbacks >= 12.0, "{fallbacks}");
    for host in &hosts {
        host.wait_for_log(&["the rate limit store failed"]);
    }
}

#[test]
fn a_busy_host_sends_requests_to_one_with_free_slots() {
    let nats = nats();
    // One relay-b instance at a time per host, held by a sleeping request.
    let limits = "[components.relay-b.limits]\nmax_concurrent = 1\ntimeout_ms = 3000\n";
    let n1 = cluster_host(&nats, "n1", limits, None);
    let n2 = cluster_host(&nats, "n2", limits, None);
    assert_eq!(n1.get("/relay-b/local").header("corral-node"), Some("n1"));
    eventually("n1 sees n2 ready", || {
        let cluster = cluster_of(&n1);
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "n2" && n["ready"] == true)
    });
    std::thread::scope(|scope| {
        let sleeper = scope.spawn(|| n1.get("/relay-b/0?behavior=sleep"));
        eventually("the sleeper holds n1's slot", || {
            n1.component_status("relay-b")["in_flight"] == 1
        });
        let reply = n1.get("/relay-b/local");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("corral-node"),
            Some("n2"),
            "served by the host with a free slot"
        );
        assert_eq!(sleeper.join().unwrap().status, 504);
    });
    let metrics = n1.metrics();
    let spilled = metric(
        &metrics,
        "corral_requests_forwarded_total",
        &[("to", "n2"), ("why", "busy")],
    );
    assert_eq!(spilled, 1.0);
    let _ = n2;
}

#[test]
fn a_host_joins_with_its_nats_token_and_says_so_when_it_is_refused() {
    let nats = nats_with_token("cluster-token-0123456789");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("nats.token");
    std::fs::write(&token_file, "cluster-token-0123456789\n").unwrap();
    let auth = format!("token_file = {:?}\n", token_file.display().to_string());
    let toml = |auth: &str| {
        format!(
            "{}\n[cluster]\nnats = [\"nats://{}\"]\nnode = \"n1\"\nreplicas = 1\n{auth}\n{}",
            admin_toml(),
            nats.addr,
            relays()
        )
    };
    let n1 = host().toml(&toml(&auth)).start();
    assert_eq!(cluster_of(&n1)["node"], "n1");
    assert_eq!(n1.get("/relay-b/local").status, 200);

    // A wrong token: the host stops at once and names the reason.
    let (ok, output) = crate::support::with_config(
        "serve",
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{}",
            toml("token = \"wrong-token-0123456789\"\n")
        ),
    );
    assert!(!ok, "{output}");
    assert!(output.contains("refused this host's credentials"), "{output}");
}

#[test]
fn a_client_cannot_pass_for_another_host_of_the_cluster() {
    let nats = nats();
    let limit = "[components.relay-a.rate_limit]\nrate = \"1/minute\"\n";
    let n1 = cluster_host(&nats, "n1", limit, None);
    // Forwarded requests skip the limits (the sending host applied them)
    // and name their client: a client that claims to be a host with a
    // key of its own gets neither.
    let spoofed = || {
        let request = http::Request::get("/relay-a/local")
            .header("corral-forward-key", "0123456789abcdef0123456789abcdef0123456789abcdef")
            .header("corral-forwarded-by", "n2")
            .header("x-forwarded-for", "10.9.9.9")
            .body(Vec::new())
            .unwrap();
        n1.request(request)
    };
    assert_eq!(spoofed().status, 200);
    let problem = spoofed().assert_problem(429, "rate-limited");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("127.0.0.1") && !detail.contains("10.9.9.9"),
        "{problem}"
    );
}

/// A TCP proxy between hosts that copies what passes, as someone on the
/// network between them could: what the client side sent is kept.
struct Tap {
    addr: SocketAddr,
    to: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Tap {
    fn start() -> Tap {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let to: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (target, copy) = (Arc::clone(&to), Arc::clone(&sent));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(target) = *target.lock().unwrap() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (mut client_in, mut server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let copy = Arc::clone(&copy);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = client_in.read(&mut buf) {
                        if n == 0 || server_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        copy.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_in, &mut client_out);
                    let _ = client_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Tap { addr, to, sent }
    }

    /// The first whole request that went through (one without a body).
    fn first_request(&self) -> Vec<u8> {
        let sent = self.sent.lock().unwrap();
        let end = sent
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a request went through")
            + 4;
        sent[..end].to_vec()
    }
}

/// Sends raw bytes to `addr` and reads the answer until the server closes
/// or stops sending.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Runs `work` against the cluster's `corral_desired` bucket, as anyone
/// with access to the NATS account could.
pub(crate) fn with_desired_bucket<R>(
    nats: &Daemon,
    work: impl AsyncFnOnce(async_nats::jetstream::kv::Store) -> R,
) -> R {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.addr.to_string()).await.unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value("corral_desired")
            .await
            .unwrap();
        work(kv).await
    })
}

/// The cluster's key ring, as a host with NATS access reads it.
fn key_ring(nats: &Daemon) -> corral::cluster::trust::KeyRing {
    with_desired_bucket(nats, async |kv| {
        let ring = kv.get("_forward_keys").await.unwrap().expect("a key ring");
        serde_json::from_slice(&ring).unwrap()
    })
}

/// `GET path` on `host` (node `to`), signed with `ring` as if another
/// host sent it on for `client`: sent as raw bytes, so that its headers are
/// exactly the ones signed (none but the host's).
fn signed_get(host: &TestHost, to: &str, ring: &corral::cluster::trust::KeyRing, path: &str, client: &str) -> Reply {
    use corral::cluster::trust::{Claim, Target, body_sha256, headers_sha256, sign};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let claim = Claim {
        by: "n2".into(),
        client: client.parse().unwrap(),
        body_sha256: body_sha256(b""),
    };
    let target = Target {
        method: "GET",
        target: path,
        to,
        headers_sha256: headers_sha256(std::iter::empty()),
    };
    let header = sign(ring, &target, &claim, now_ms).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\ncorral-forwarded: {header}\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(host.addr, request.as_bytes());
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.get(9..12)).unwrap_or("0").parse().unwrap();
    let mut headers = http::HeaderMap::new();
    for (name, value) in lines.filter_map(|l| l.split_once(": ")) {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    Reply {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn hosts_trust_each_other_only_by_signature_and_guests_never_see_the_hosts_headers() {
    let nats = nats();
    let tap = Tap::start();
    let chaos = format!(
        "[components.chaos]\nwasm = {:?}\nroutes = [\"/chaos\"]\n[components.chaos.rate_limit]\nrate = \"100/minute\"\n\
         [components.http]\nwasm = {:?}\nroutes = [\"/http\"]\n",
        wasm("chaos").display().to_string(),
        wasm("http-hello").display().to_string(),
    );
    // n1 owns chaos; n2 reaches it through the tap, as across a network.
    let n1 = cluster_host_of(
        &nats,
        "n1",
        &format!("advertise = \"http://{}\"\n{chaos}", tap.addr),
        None,
    );
    *tap.to.lock().unwrap() = Some(n1.addr);
    let n2 = cluster_host_of(&nats, "n2", &chaos, None);

    // Whatever corral-* headers a client sends, the guest sees none, and
    // the host that served it is the one that says so.
    let echo = |host: &TestHost| {
        let request = http::Request::get("/chaos/echo")
            .header("corral-forward-key", "0123456789abcdef0123456789abcdef0123456789abcdef")
            .header("corral-node", "n9")
            .header("corral-client-addr", "10.9.9.9")
            .header("corral-anything", "x")
            .header("x-kept", "yes")
            .body(Vec::new())
            .unwrap();
        let reply = host.request(request);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("corral-node"), Some("n1"));
        reply.json()
    };
    for seen in [echo(&n2), echo(&n1)] {
        let names: Vec<&str> = seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("corral-")), "{names:?}");
        assert!(names.contains(&"x-kept"), "{names:?}");
        assert_eq!(seen["client_addr"], "127.0.0.1");
    }
    // A guest cannot speak for the host either.
    for host in [&n1, &n2] {
        for path in [
            "/chaos/answer-with?header=corral-node&value=n9",
            "/http/answer-with?header=corral-node&value=n9",
        ] {
            let reply = host.get(path);
            assert_eq!(reply.status, 204, "{path}: {}", reply.text());
            assert_ne!(reply.header("corral-node"), Some("n9"), "{path}");
        }
        let reply = host.request(
            http::Request::post("/http/echo")
                .header("corral-forwarded", "v1;forged")
                .header("corral-node", "n9")
                .body(b"x".to_vec())
                .unwrap(),
        );
        // n2 and n1 are in a cluster: a signature that does not hold is refused.
        reply.assert_problem(403, "forward-refused");
        let reply = host.request(
            http::Request::post("/http/echo")
                .header("corral-node", "n9")
                .body(b"x".to_vec())
                .unwrap(),
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("seen-client"), Some("127.0.0.1"));
        let names = reply.header("seen-names").unwrap();
        assert!(
            names
                .split(',')
                .all(|n| !n.starts_with("corral-") || n == "corral-client-addr"),
            "{names}"
        );
    }

    // What went over the wire between the hosts proves nothing twice.
    let captured = tap.first_request();
    let text = String::from_utf8_lossy(&captured).to_string();
    assert!(text.contains("corral-forwarded: v1;"), "{text}");
    assert!(!text.contains("corral-forward-key"), "{text}");
    let replayed = raw_exchange(n1.addr, &captured);
    assert!(replayed.starts_with("HTTP/1.1 403"), "{replayed}");
    assert!(replayed.contains("replay"), "{replayed}");
    // Nor does it, altered: another client, another header, another host.
    for forged in [
        text.replace("client=127.0.0.1", "client=203.0.113.9"),
        text.replace("x-kept: yes", "x-kept: no"),
    ] {
        let answer = raw_exchange(n1.addr, forged.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    let elsewhere = raw_exchange(n2.addr, &captured);
    assert!(elsewhere.starts_with("HTTP/1.1 403"), "{elsewhere}");

    // A request signed with the cluster's key is believed: the client it
    // names is the client the guest sees and the limits count ...
    let ring = key_ring(&nats);
    let reply = signed_get(&n1, "n1", &ring, "/chaos/echo", "203.0.113.7");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["client_addr"], "203.0.113.7");
    // ... until its key is rotated out: one rotation keeps it, and so does a
    // second before the new key signs (hosts still sign with the old one);
    // one after that drops it.
    let rotate = || {
        let reply = n2.admin("POST", "/cluster/rotate-key", Vec::new());
        assert_eq!(reply.status, 200, "{}", reply.text());
    };
    rotate();
    let second = key_ring(&nats).keys[0].created_ms;
    rotate();
    let reply = signed_get(&n1, "n1", &ring, "/chaos/echo", "203.0.113.7");
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The second key signs once it is 5 s old.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    std::thread::sleep(std::time::Duration::from_millis(
        (second + 5_000).saturating_sub(now_ms()),
    ));
    rotate();
    // Every host learns of the rotation through the bucket's watch.
    eventually("n1 refuses the rotated-out key", || {
        signed_get(&n1, "n1", &ring, "/chaos/echo", "203.0.113.7").status == 403
    });
    let problem = signed_get(&n1, "n1", &ring, "/chaos/echo", "203.0.113.7").assert_problem(403, "forward-refused");
    assert!(problem["detail"].as_str().unwrap().contains("rotated out"), "{problem}");
    // The hosts keep sending requests on, with the new key.
    assert_eq!(echo(&n2)["client_addr"], "127.0.0.1");
}
