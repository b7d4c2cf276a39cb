//! Metrics, request logs and health probes: scrape, act, scrape again.

use serde_json::{Value, json};

use crate::support::{TestHost, admin_toml, host, metric};

fn scrape(host: &TestHost) -> String {
    let reply = host.admin("GET", "/metrics", Vec::new());
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    reply.text()
}

#[test]
fn metrics_follow_requests_rejections_and_traps() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nroutes = [{ route = \"POST /users\", rate = \"1/hour\" }]")
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmemory_mib = 32\nrequest_body_kib = 1")
        .toml(&admin_toml())
        .start();
    let users_version = host.version_of("/users");
    let before = scrape(&host);

    assert_eq!(
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
    host.post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }))
        .assert_problem(429, "rate-limited");
    assert_eq!(host.get("/users/1").status, 200);
    host.get("/users/99").assert_problem(404, "not-found");
    host.get("/chaos/panic").assert_problem(500, "panic");
    host.get("/chaos/alloc").assert_problem(500, "memory");
    host.post_raw("/chaos/sql", "text/plain", &[b' '; 2048])
        .assert_problem(413, "body-too-large");
    let after = scrape(&host);

    let delta = |name: &str, labels: &[(&str, &str)]| metric(&after, name, labels) - metric(&before, name, labels);
    let users = ("component", "users");
    let v = ("version", users_version.as_str());
    assert_eq!(
        delta(
            "corral_requests_total",
            &[users, v, ("method", "POST"), ("route", "/users"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        delta("corral_requests_total", &[users, ("method", "POST"), ("status", "4xx")]),
        1.0,
        "the 429"
    );
    assert_eq!(
        delta(
            "corral_requests_total",
            &[users, v, ("method", "GET"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "corral_requests_total",
            &[users, v, ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        delta("corral_requests_rejected_total", &[users, ("reason", "rate_limit")]),
        1.0
    );
    assert_eq!(delta("corral_request_duration_seconds_count", &[users, v]), 3.0);
    assert!(delta("corral_request_duration_seconds_sum", &[users]) > 0.0);
    assert_eq!(
        delta("corral_sqlite_statements_total", &[users, ("outcome", "ok")]),
        3.0,
        "one insert, two selects"
    );
    assert_eq!(delta("corral_sqlite_statement_duration_seconds_count", &[users]), 3.0);
    let chaos = ("component", "chaos");
    assert_eq!(delta("corral_traps_total", &[chaos, ("cause", "panic")]), 1.0);
    assert_eq!(delta("corral_traps_total", &[chaos, ("cause", "memory")]), 1.0);
    assert_eq!(
        delta("corral_requests_rejected_total", &[chaos, ("reason", "body_size")]),
        1.0
    );
    assert_eq!(delta("corral_requests_total", &[chaos, ("status", "5xx")]), 2.0);
    assert!(delta("corral_queue_wait_seconds_count", &[users]) >= 3.0);

    assert_eq!(
        metric(
            &after,
            "corral_component_info",
            &[("name", "users"), v, ("role", "current")]
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "corral_component_changes_total", &[users, ("kind", "load")]),
        1.0
    );
    assert_eq!(metric(&after, "corral_instances_in_flight", &[users]), 0.0);
    assert!(metric(&after, "corral_open_connections", &[("listener", "public")]) >= 1.0);
    assert!(metric(&after, "corral_process_resident_memory_bytes", &[]) > 1e6);
    assert!(metric(&after, "corral_process_cpu_seconds", &[]) > 0.0);

    // A swap shows in the changes and the info gauge.
    let v2 = crate::support::variant("users", "metrics");
    assert_eq!(host.admin("PUT", "/components/users?canary=10", v2).status, 200);
    let swapped = scrape(&host);
    assert_eq!(
        metric(&swapped, "corral_component_changes_total", &[users, ("kind", "canary")]),
        1.0
    );
    assert_eq!(
        metric(
            &swapped,
            "corral_component_info",
            &[("name", "users"), ("role", "canary")]
        ),
        1.0
    );
}

#[test]
fn every_request_is_logged_once_with_its_id() {
    let host = crate::support::full_host();
    let reply = host.request(
        http::Request::get("/users/42")
            .header("x-request-id", "abc-123")
            .body(Vec::new())
            .unwrap(),
    );
    assert_eq!(reply.header("x-request-id"), Some("abc-123"));
    let line = host.wait_for_log(&["corral::access", "request_id=\"abc-123\""]);
    for field in [
        "client=127.0.0.1",
        "method=GET",
        "path=\"/users/42\"",
        "component=\"users\"",
        "status=404",
        "duration_ms=",
        "bytes_out=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // A fresh id when the client sends none, or one that is not a sane token.
    for given in [None, Some("has spaces in it"), Some(&*"x".repeat(200))] {
        let mut request = http::Request::get("/nowhere");
        if let Some(id) = given {
            request = request.header("x-request-id", id);
        }
        let reply = host.request(request.body(Vec::new()).unwrap());
        let id = reply.header("x-request-id").unwrap().to_string();
        assert_eq!(id.len(), 16, "{id}");
        host.wait_for_log(&["corral::access", &format!("request_id=\"{id}\""), "status=404"]);
    }
    let logs = host.logs();
    assert_eq!(logs.matches("request_id=\"abc-123\"").count(), 1, "{logs}");
}

#[test]
fn json_logs_carry_the_same_fields() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .arg("--log-format")
        .arg("json")
        .start();
    let reply = host.request(
        http::Request::get("/chaos/print")
            .header("x-request-id", "json-77")
            .body(Vec::new())
            .unwrap(),
    );
    assert_eq!(reply.status, 204);
    let access = host.wait_for_log(&["corral::access", "json-77"]);
    let access: Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["fields"]["request_id"], "json-77");
    assert_eq!(access["fields"]["status"], 204);
    assert_eq!(access["fields"]["component"], "chaos");
    let guest = host.wait_for_log(&["through the log interface", "json-77"]);
    let guest: Value = serde_json::from_str(&guest).unwrap();
    assert_eq!(guest["fields"]["request_id"], "json-77");
    assert_eq!(guest["fields"]["component"], "chaos");
    assert_eq!(guest["level"], "WARN");
}

#[test]
fn readyz_waits_for_the_components() {
    let data = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(data.path().join("chaos.sqlite3")).unwrap();
    db.execute_batch("CREATE TABLE init_delay (ms INTEGER); INSERT INTO init_delay VALUES (2000);")
        .unwrap();
    drop(db);
    let mut host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml(&admin_toml())
        .data_dir(data.path())
        .start_loading();
    assert_eq!(
        host.admin_as("GET", "/healthz", Vec::new(), None).status,
        200,
        "alive while loading"
    );
    host.admin_as("GET", "/readyz", Vec::new(), None)
        .assert_problem(503, "not-ready");
    host.wait_until_serving();
    let ready = host.admin_as("GET", "/readyz", Vec::new(), None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
}
