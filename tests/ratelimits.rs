//! Rate limits through HTTP: refusals, headers, scopes, route patterns and
//! client addresses behind proxies.

use serde_json::json;

use crate::support::{TestHost, host};

fn get_as(host: &TestHost, path: &str, forwarded_for: Option<&str>) -> crate::support::Reply {
    let mut request = http::Request::get(path);
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    host.request(request.body(Vec::new()).unwrap())
}

#[test]
fn the_eleventh_request_in_a_minute_is_refused() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nrate = \"10/minute\"")
        .component("orders", "orders", &["/orders"])
        .start();
    for n in 1..=10 {
        let reply = host.get("/users");
        assert_eq!(reply.status, 200, "request {n}: {}", reply.text());
        assert_eq!(reply.header("ratelimit-limit"), Some("10"));
        assert_eq!(reply.header("ratelimit-remaining"), Some((10 - n).to_string().as_str()));
        let reset: u64 = reply.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset <= 60, "{reset}");
        assert_eq!(reply.header("retry-after"), None);
    }
    let refused = host.get("/users");
    let problem = refused.assert_problem(429, "rate-limited");
    assert!(problem["detail"].as_str().unwrap().contains("127.0.0.1"), "{problem}");
    assert_eq!(refused.header("ratelimit-limit"), Some("10"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=6).contains(&retry_after),
        "one request comes back every 6 s: {retry_after}"
    );
    // Writes are limited too, and refused before the component runs.
    host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .assert_problem(429, "rate-limited");
    // Other components have their own limits (none here).
    for _ in 0..15 {
        assert_eq!(host.get("/orders").status, 200);
    }
    assert_eq!(host.get("/orders").header("ratelimit-limit"), None);
}

#[test]
fn a_refused_request_never_reaches_the_component() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nroutes = [{ route = \"POST /users\", rate = \"1/hour\" }]")
        .start();
    assert_eq!(
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
    host.post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }))
        .assert_problem(429, "rate-limited");
    let names: Vec<_> = host.get("/users").json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].clone())
        .collect();
    assert_eq!(names, [json!("Ada")], "the refused create never ran");
}

#[test]
fn each_client_has_its_own_bucket_behind_a_trusted_proxy() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nrate = \"2/minute\"\n[server]\ntrusted_proxies = [\"127.0.0.0/8\"]")
        .start();
    for client in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(get_as(&host, "/users", Some(client)).status, 200);
        assert_eq!(get_as(&host, "/users", Some(client)).status, 200);
        let refused = get_as(&host, "/users", Some(client));
        let problem = refused.assert_problem(429, "rate-limited");
        assert!(problem["detail"].as_str().unwrap().contains(client), "{problem}");
    }
    // The client's own entries on the left do not help it: the right-most
    // untrusted hop is the client.
    assert_eq!(get_as(&host, "/users", Some("203.0.113.50, 198.51.100.1")).status, 429);
    assert_eq!(get_as(&host, "/users", Some("198.51.100.1, 203.0.113.7")).status, 200);
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nrate = \"2/minute\"")
        .start();
    assert_eq!(get_as(&host, "/users", Some("198.51.100.1")).status, 200);
    assert_eq!(get_as(&host, "/users", Some("198.51.100.2")).status, 200);
    let problem = get_as(&host, "/users", Some("198.51.100.3")).assert_problem(429, "rate-limited");
    assert!(problem["detail"].as_str().unwrap().contains("127.0.0.1"), "{problem}");
}

#[test]
fn a_global_limit_is_shared_by_all_clients() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml(
            "[components.users.rate_limit]\nrate = \"3/minute\"\nper = \"global\"\n[server]\ntrusted_proxies = [\"127.0.0.1\"]",
        )
        .start();
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(get_as(&host, "/users", Some(client)).status, 200);
    }
    get_as(&host, "/users", Some("198.51.100.4")).assert_problem(429, "rate-limited");
}

#[test]
fn route_limits_apply_on_top_of_the_component_limit() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml(
            r#"[components.users.rate_limit]
rate = "100/minute"
routes = [
    { route = "POST /users", rate = "1/minute" },
    { route = "GET /users/{id}", rate = "5/minute", burst = 2 },
]"#,
        )
        .start();
    assert_eq!(
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
    let refused = host.post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }));
    refused.assert_problem(429, "rate-limited");
    assert_eq!(refused.header("ratelimit-limit"), Some("1"));

    let first = host.get("/users/1");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-limit"),
        Some("2"),
        "the strictest applicable limit is reported"
    );
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));
    assert_eq!(host.get("/users/1").status, 200);
    host.get("/users/1").assert_problem(429, "rate-limited");
    // Other routes only meet the component limit.
    let list = host.get("/users");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("ratelimit-limit"), Some("100"));
}
