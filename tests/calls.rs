//! Calls between components owned by different hosts of a cluster: typed
//! results and errors as on one host, the callee's limits applied on its
//! host, the depth bound and the caller's deadline carried across, and an
//! owner that is gone answered as `unavailable` at once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Daemon, cluster_host_of, cluster_of, nats};
use crate::support::*;

/// Users owned by n2 and orders by n1, each database on its owner's disk.
fn shop() -> String {
    format!(
        "{}owner = \"n2\"\ndurability = \"local\"\n{}owner = \"n1\"\ndurability = \"local\"\n",
        component_toml("users", "users", &["/users"]),
        component_toml("orders", "orders", &["/orders"]),
    )
}

/// Two relays with a database each, relay-a owned by n1 and relay-b by n2,
/// each the other's provider; relay-b takes small payloads and has a
/// long timeout of its own.
fn relays() -> String {
    format!(
        "{}owner = \"n1\"\ndurability = \"local\"\n\
         [components.relay-a.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n\
         [components.relay-a.limits]\ntimeout_ms = 3000\n\
         {}owner = \"n2\"\ndurability = \"local\"\n\
         [components.relay-b.imports]\n\"corral:test/relay@0.1.0\" = \"relay-a\"\n\
         [components.relay-b.limits]\ntimeout_ms = 60000\ncall_payload_kib = 1\n",
        component_toml("relay-a", "relay-store", &["/relay-a"]),
        component_toml("relay-b", "relay-store", &["/relay-b"]),
    )
}

/// Three hosts on one NATS server, serving `components`, each seeing
/// every host live.
fn three_hosts(nats: &Daemon, components: &str) -> Vec<TestHost> {
    let hosts: Vec<TestHost> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| cluster_host_of(nats, node, components, None))
        .collect();
    for host in &hosts {
        eventually("every host sees the others live", || {
            cluster_of(host)["nodes"].as_array().map(Vec::len) == Some(3)
        });
    }
    hosts
}

fn order_for(user_id: &Value) -> Value {
    json!({ "user_id": user_id, "items": [{ "sku": "TEA-1", "quantity": 2, "unit_price_cents": 450 }] })
}

#[test]
fn an_order_through_a_host_that_owns_neither_asks_users_on_its_owner() {
    let nats = nats();
    let hosts = three_hosts(&nats, &shop());
    let user = hosts[2].post("/users", &json!({ "name": "ada", "email": "ada@example.com" }));
    assert_eq!(user.status, 201, "{}", user.text());
    let id = user.json()["id"].clone();

    // n3 forwards to n1, where orders calls users on n2.
    let order = hosts[2].post("/orders", &order_for(&id));
    assert_eq!(order.status, 201, "{}", order.text());
    assert_eq!(order.header("corral-node"), Some("n1"));
    let problem = hosts[2]
        .post("/orders", &order_for(&json!(999_999)))
        .assert_problem(422, "unknown-user");
    assert_eq!(error_fields(&problem), ["user_id"]);
    // An order that carries its user reads it across the hosts too.
    let order_id = order.json()["id"].clone();
    let read = hosts[0].get(&format!("/orders/{order_id}?expand=user"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["user"]["name"], "ada", "{}", read.text());

    // The calls went from n1 to n2, and were served by users there.
    let calls = metric(
        &hosts[0].metrics(),
        "corral_calls_total",
        &[("caller", "orders"), ("callee", "users"), ("outcome", "ok")],
    );
    assert!(calls >= 3.0, "{calls}");
    let served = metric(
        &hosts[1].metrics(),
        "corral_requests_total",
        &[("component", "users"), ("route", "(call)")],
    );
    assert!(served >= 3.0, "{served}");
    hosts[1].wait_for_log(&["path=\"/.corral/call/users\"", "status=200"]);
}

#[test]
fn an_order_answers_users_unavailable_at_once_when_the_owner_of_users_is_killed() {
    let nats = nats();
    let mut hosts = three_hosts(&nats, &shop());
    let user = hosts[0].post("/users", &json!({ "name": "bob", "email": "bob@example.com" }));
    assert_eq!(user.status, 201, "{}", user.text());
    let id = user.json()["id"].clone();
    assert_eq!(hosts[2].post("/orders", &order_for(&id)).status, 201);

    hosts.remove(1).kill();
    for host in &hosts {
        let asked = Instant::now();
        let problem = host
            .post("/orders", &order_for(&id))
            .assert_problem(503, "dependency-unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("users") && detail.contains("n2"), "{detail}");
        // Refused, not timed out: the components' timeouts are 10 s.
        assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    }
}

#[test]
fn calls_between_hosts_keep_the_depth_bound_the_payload_limits_and_the_deadline() {
    let nats = nats();
    let hosts = three_hosts(&nats, &relays());
    // a (n1) -> b (n2) -> a (n1) -> b (n2) -> a (n1): four calls between hosts.
    let reply = hosts[2].get("/relay-a/3");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["answered"], 5);
    let problem = hosts[2]
        .get("/relay-a/50")
        .assert_problem(503, "dependency-unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("past the limit of 8"),
        "{problem}"
    );

    // relay-b takes at most 1 KiB each way, held on both hosts.
    let reply = hosts[0].get("/relay-a/echo?send=500&answer=500");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["received"], 500);
    for (query, said) in [("send=2000", "would be passed"), ("answer=2000", "answered with")] {
        let problem = hosts[0]
            .get(&format!("/relay-a/echo?{query}"))
            .assert_problem(503, "dependency-unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(said) && detail.contains("call limit"),
            "{query}: {detail}"
        );
    }

    // relay-a has 3 s; relay-b, told to sleep, gets what relay-a has left
    // (less the time for its answer to come back) on n2, not its own
    // minute, and is stopped there in time for relay-a to say so.
    let asked = Instant::now();
    let problem = hosts[0]
        .get("/relay-a/0?behavior=sleep")
        .assert_problem(503, "dependency-unavailable");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("relay-b") && detail.contains("took longer than"),
        "{detail}"
    );
    assert!(asked.elapsed() < Duration::from_secs(10), "{:?}", asked.elapsed());
    assert_eq!(
        hosts[2].get("/relay-a/1").json()["answered"],
        3,
        "and the relays serve again"
    );
}

#[test]
fn a_client_cannot_call_a_component_through_the_hosts_call_path() {
    let nats = nats();
    let hosts = three_hosts(&nats, &shop());
    let call = json!({
        "caller": "orders", "interface": "corral:shop/users@0.1.0", "func": "get-user",
        "params": ["1"], "depth": 1, "within_ms": 1000, "request_id": "x",
    });
    // Unsigned, it is a path like any other, which no component serves.
    hosts[1]
        .post("/.corral/call/users", &call)
        .assert_problem(404, "no-route");
    // With a signature that does not hold, it is refused.
    let reply = hosts[1].request(
        http::Request::post("/.corral/call/users")
            .header(
                "corral-forwarded",
                "v1;key=k1;by=n1;client=127.0.0.1;at=1;nonce=00000000000000000000000000000000;body=00;sig=00",
            )
            .header("content-type", "application/json")
            .body(call.to_string().into_bytes())
            .unwrap(),
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        metric(&hosts[1].metrics(), "corral_requests_total", &[("route", "(call)")]),
        0.0
    );
}

#[test]
fn a_request_to_an_internal_url_goes_to_the_host_that_owns_the_component() {
    let nats = nats();
    let components = format!(
        "{}allowed_outbound_hosts = [\"http://*.internal\"]\nowner = \"n1\"\ndurability = \"local\"\n{}",
        component_toml("hello", "http-hello", &["/http"]),
        shop()
    );
    let hosts = three_hosts(&nats, &components);
    let ada = hosts[1].post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    assert_eq!(ada.status, 201, "{}", ada.text());
    let ada = ada.json();
    // hello (it counts visits in a database) is served by n1; users, by n2.
    for host in [&hosts[0], &hosts[2]] {
        let fetched = host.get(&format!("/http/fetch?url=http://users.internal/users/{}", ada["id"]));
        assert_eq!(fetched.header("fetched-status"), Some("200"), "{}", fetched.text());
        assert_eq!(fetched.json(), ada);
        assert_eq!(fetched.header("corral-node"), Some("n1"));
    }
    hosts[1].wait_for_log(&["client=hello.internal", "component=\"users\"", "/users/"]);
    // What users answers comes back as it is.
    let missing = hosts[2].get("/http/fetch?url=http://users.internal/users/999999");
    assert_eq!(missing.header("fetched-status"), Some("404"), "{}", missing.text());
}
