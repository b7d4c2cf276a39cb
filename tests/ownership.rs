//! One writer per database in a cluster: every way two hosts could both
//! write a component's database is closed, and a forwarding host answers
//! with what the owner did, never a guess.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{cluster_host_of, cluster_of, nats, rows, with_desired_bucket};
use crate::support::{TestHost, admin_toml, eventually, find_program, free_addr, run_corral, wasm};

/// `users` (with a database) owned by `owner`.
fn users_owned_by(owner: &str) -> String {
    format!(
        "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"{owner}\"\n",
        wasm("users").display().to_string()
    )
}

/// The owner the cluster's state names for `component`, as `host` sees it.
fn owner_of(host: &TestHost, component: &str) -> Option<String> {
    cluster_of(host)["desired"][component]["owner"]
        .as_str()
        .map(String::from)
}

#[test]
fn a_second_process_cannot_take_a_live_hosts_name_and_a_crashed_ones_is_waited_out() {
    let nats = nats();
    let data = tempfile::tempdir().unwrap();
    let first = cluster_host_of(&nats, "n1", &users_owned_by("n1"), Some(data.path()));
    let ada = first.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    assert_eq!(ada.status, 201, "{}", ada.text());

    // Another process named n1, with a database of its own: it must not start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{}\n[cluster]\nnats = [\"nats://{}\"]\nnode = \"n1\"\nnode_ttl_ms = 2000\nreplicas = 1\n\n{}",
            dir.path().join("data").display().to_string(),
            admin_toml(),
            nats.addr,
            users_owned_by("n1")
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (ok, out) = run_corral(
        &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[],
        dir.path(),
    );
    assert!(!ok, "a second n1 started: {out}");
    assert!(out.contains("another host is live as node \"n1\""), "{out}");
    // It waited out a report's lifetime before saying so.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    // The first one serves on, untouched.
    assert_eq!(first.get("/users").json()["items"].as_array().map(Vec::len), Some(1));

    // Killed, as a crash would: its report is left behind, and a new n1
    // on the same data waits it out instead of refusing to start.
    first.kill();
    let second = cluster_host_of(&nats, "n1", &users_owned_by("n1"), Some(data.path()));
    assert_eq!(second.get("/users").json()["items"].as_array().map(Vec::len), Some(1));
    let bob = second.post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }));
    assert_eq!(bob.status, 201, "{}", bob.text());
}

#[test]
fn a_version_that_brings_a_database_brings_an_owner() {
    let nats = nats();
    // `users` starts as a relay, which has no database, so every host
    // serves it; two more relays give it someone to call. Its database,
    // once it has one, is kept by its owner only (not replicated), so
    // that no other host's file ever holds a row of it.
    let relay = wasm("relay").display().to_string();
    let relay = format!(
        "[components.users]\nwasm = {relay:?}\nroutes = [\"/users\"]\ndurability = \"local\"\n\
         [components.users.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n\
         [components.relay-b]\nwasm = {relay:?}\nroutes = [\"/relay-b\"]\n\
         [components.relay-b.imports]\n\"corral:test/relay@0.1.0\" = \"relay-c\"\n\
         [components.relay-c]\nwasm = {relay:?}\nroutes = [\"/relay-c\"]\n\
         [components.relay-c.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n"
    );
    let mut hosts: Vec<TestHost> = ["n1", "n2"]
        .into_iter()
        .map(|node| cluster_host_of(&nats, node, &relay, None))
        .collect();
    assert_eq!(owner_of(&hosts[0], "users"), None);

    let reply = hosts[1].admin("PUT", "/components/users", std::fs::read(wasm("users")).unwrap());
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The host that swapped it in owns it, and both hosts know.
    for host in &hosts {
        assert_eq!(owner_of(host, "users").as_deref(), Some("n2"));
    }
    for i in 0..4 {
        let user = json!({ "name": format!("u{i}"), "email": format!("u{i}@example.com") });
        let reply = hosts[0].post("/users", &user);
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert_eq!(reply.header("corral-node"), Some("n2"));
    }
    for host in &mut hosts {
        host.terminate();
        host.wait();
    }
    assert_eq!(rows(&hosts[1].data_dir, "users", "users"), 4);
    assert_eq!(rows(&hosts[0].data_dir, "users", "users"), 0);
}

#[test]
fn a_deleted_cluster_entry_comes_back_with_its_owner() {
    let nats = nats();
    let mut hosts: Vec<TestHost> = ["n1", "n2"]
        .into_iter()
        .map(|node| cluster_host_of(&nats, node, &users_owned_by("n2"), None))
        .collect();
    with_desired_bucket(&nats, async |kv| kv.delete("users").await.unwrap());
    eventually("the entry is published again", || {
        cluster_of(&hosts[0])["desired"]["users"]["change"] == "republished"
    });
    for host in &hosts {
        assert_eq!(owner_of(host, "users").as_deref(), Some("n2"));
    }
    // Purged outright, history and all: the hosts still know the owner.
    with_desired_bucket(&nats, async |kv| kv.purge("users").await.unwrap());
    eventually("the entry is published again", || {
        owner_of(&hosts[0], "users").is_some()
    });
    assert_eq!(owner_of(&hosts[1], "users").as_deref(), Some("n2"));
    let reply = hosts[0].post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("corral-node"), Some("n2"));
    for host in &mut hosts {
        host.terminate();
        host.wait();
    }
    assert_eq!(rows(&hosts[0].data_dir, "users", "users"), 0);
    assert_eq!(rows(&hosts[1].data_dir, "users", "users"), 1);
}

#[test]
fn ownership_moves_only_to_a_live_host_that_serves_the_component() {
    let nats = nats();
    let n1 = cluster_host_of(&nats, "n1", &users_owned_by("n1"), None);
    let n2 = cluster_host_of(&nats, "n2", &users_owned_by("n1"), None);
    // n3 serves only a hello, not users.
    let relay = format!(
        "[components.relay]\nwasm = {:?}\nroutes = [\"/relay\"]\n",
        wasm("http-hello").display().to_string()
    );
    let n3 = cluster_host_of(&nats, "n3", &relay, None);
    for (to, why) in [
        ("ghost", "host ghost is not live"),
        ("n3", "host n3 does not serve users"),
    ] {
        let reply = n1.admin("POST", &format!("/cluster/components/users/owner/{to}"), Vec::new());
        let problem = reply.assert_problem(409, "conflict");
        assert!(problem["detail"].as_str().unwrap().contains(why), "{problem}");
        assert_eq!(owner_of(&n2, "users").as_deref(), Some("n1"));
    }
    // Stopped, it is no longer live: refused too.
    let mut n3 = n3;
    n3.terminate();
    n3.wait();
    let reply = n1.admin("POST", "/cluster/components/users/owner/n2", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(owner_of(&n1, "users").as_deref(), Some("n2"));
    let mut n2 = n2;
    n2.terminate();
    n2.wait();
    let reply = n1.admin("POST", "/cluster/components/users/owner/n2", Vec::new());
    let problem = reply.assert_problem(409, "conflict");
    assert!(problem["detail"].as_str().unwrap().contains("not live"), "{problem}");
}

#[test]
fn a_forwarded_request_whose_owner_dies_is_not_reported_as_never_done() {
    let nats = nats();
    let chaos = format!(
        "[components.chaos]\nwasm = {:?}\nroutes = [\"/chaos\"]\nowner = \"n2\"\n\
         [components.chaos.limits]\ntimeout_ms = 1000\n",
        wasm("chaos").display().to_string()
    );
    let n1 = cluster_host_of(&nats, "n1", &chaos, None);
    let n2 = cluster_host_of(&nats, "n2", &chaos, None);
    // Past the owner's own timeout the owner answers, and that answer is
    // the one the client gets.
    let reply = n1.get("/chaos/sleep?ms=3000");
    reply.assert_problem(504, "timeout");
    assert_eq!(reply.header("corral-node"), Some("n2"));

    // The owner dies while it runs the request: nobody knows whether it
    // took effect, and the client is told so, not invited to retry.
    let url = n1.url("/chaos/sleep?ms=800");
    let in_flight = std::thread::spawn(move || crate::support::client().get(&url).call().unwrap());
    n2.wait_for_log(&["sleeping for 800 ms"]);
    n2.kill();
    let response = in_flight.join().unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("retry-after").is_none());
    let text = response.into_body().read_to_string().unwrap();
    assert!(text.contains("outcome-unknown"), "{text}");

    // Now nothing listens there: the request never leaves n1, and may be retried.
    let reply = n1.get("/chaos/sleep?ms=1");
    reply.assert_problem(503, "owner-unreachable");
    assert_eq!(reply.header("retry-after"), Some("1"));
}

#[test]
fn a_host_that_cannot_reach_nats_serves_what_needs_no_owner_and_joins_when_it_answers() {
    let nats_addr = free_addr();
    let components = format!(
        "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"n1\"\n\
         [components.relay-a]\nwasm = {relay:?}\nroutes = [\"/relay-a\"]\n\
         [components.relay-b]\nwasm = {relay:?}\nroutes = [\"/relay-b\"]\n",
        wasm("users").display().to_string(),
        relay = wasm("relay").display().to_string(),
    );
    let host = crate::support::host()
        .toml(&format!(
            "{}\n[cluster]\nnats = [\"nats://{nats_addr}\"]\nnode = \"n1\"\nnode_ttl_ms = 2000\nreplicas = 1\n\n{components}",
            admin_toml()
        ))
        .start();
    // What has no database is served; what has one waits, and says why.
    assert_eq!(host.get("/relay-a/local").status, 200);
    let reply = host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    let problem = reply.assert_problem(503, "cluster-unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(problem["detail"].as_str().unwrap().contains("NATS"), "{problem}");
    let ready = host.admin_as("GET", "/readyz", Vec::new(), None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        ready.json()["detail"].as_str().unwrap().contains("waiting: users"),
        "{}",
        ready.text()
    );
    let status = host.admin("GET", "/components", Vec::new()).json();
    assert_eq!(status["unjoined"]["waiting"], json!(["users"]), "{status}");
    // Versions change only through the cluster.
    let reply = host.admin("PUT", "/components/relay-b", std::fs::read(wasm("relay")).unwrap());
    reply.assert_problem(503, "cluster-unavailable");
    host.admin("GET", "/components/users/backup", Vec::new())
        .assert_problem(503, "cluster-unavailable");

    // NATS comes up where the host looks for it: the host joins.
    let store = tempfile::tempdir().unwrap();
    let mut nats = std::process::Command::new(find_program("nats-server"))
        .args(["-js", "-sd"])
        .arg(store.path())
        .args(["-a", "127.0.0.1", "-p", &nats_addr.port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("the host joins and serves users", || {
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status
            == 201
    });
    let ready = host.admin_as("GET", "/readyz", Vec::new(), None).json();
    assert!(ready.get("detail").is_none(), "{ready}");
    assert_eq!(cluster_of(&host)["desired"]["users"]["owner"], "n1");
    let _ = nats.kill();
    let _ = nats.wait();
}
