//! A runaway component is cut off, and contained: the right status for that
//! request, the host alive, other components and requests served meanwhile,
//! and every database intact.

use serde_json::json;

use crate::support::{ADMIN_TOKEN, Reply, TestHost, admin_toml, eventually, host, metric};

/// users next to a chaos component with tight limits.
fn attack_host() -> TestHost {
    host()
        .component("users", "users", &["/users"])
        .component("chaos", "chaos", &["/chaos"])
        .toml(
            "[components.chaos.limits]\nmemory_mib = 32\ncpu_time_ms = 300\ntimeout_ms = 6000\nresponse_body_kib = 1024\ndb_size_mib = 2\ndb_statement_timeout_ms = 200\ndb_max_rows = 1000",
        )
        .toml(&admin_toml())
        .start()
}

/// How many requests chaos has taken so far, running or answered; `None`
/// once the host is gone.
fn chaos_requests(host: &TestHost) -> Option<f64> {
    let request = http::Request::get(format!("http://{}/metrics", host.admin_addr.unwrap()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Vec::new())
        .unwrap();
    let text = host.try_request(request)?.text();
    let chaos = [("component", "chaos")];
    Some(metric(&text, "corral_instances_in_flight", &chaos) + metric(&text, "corral_requests_total", &chaos))
}

/// Waits until chaos has taken `n` requests more than `before`, or the
/// host is gone (which the caller's checks then report).
fn until_chaos_took(host: &TestHost, before: f64, n: f64) {
    eventually("the requests reach chaos", || {
        chaos_requests(host).is_none_or(|taken| taken >= before + n)
    });
}

/// Runs `attack` several times at once while users are created and read;
/// checks the host survived and every user request succeeded.
fn contained(host: &mut TestHost, attack: &str) -> Vec<Reply> {
    let user = host
        .post(
            "/users",
            &json!({ "name": "Victim", "email": format!("{}@example.com", attack.replace('/', "")) }),
        )
        .json();
    let path = format!("/users/{}", user["id"]);
    let before = chaos_requests(host).unwrap();
    let replies = std::thread::scope(|scope| {
        let attacks: Vec<_> = (0..3).map(|_| scope.spawn(|| host.get(attack))).collect();
        // The attacks are running (or over) while users is used.
        until_chaos_took(host, before, 3.0);
        for _ in 0..20 {
            let reply = host.get(&path);
            assert_eq!(reply.status, 200, "users failed during {attack}: {}", reply.text());
        }
        attacks.into_iter().map(|a| a.join().unwrap()).collect::<Vec<_>>()
    });
    assert!(host.is_alive(), "the host died during {attack}");
    assert_eq!(host.get(&path).json(), user);
    replies
}

#[test]
fn an_infinite_loop_is_stopped_by_its_cpu_budget() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/loop") {
        let problem = reply.assert_problem(504, "cpu-time");
        assert!(problem["detail"].as_str().unwrap().contains("CPU"), "{problem}");
    }
    // While loops spin, the same component still answers other requests.
    let before = chaos_requests(&host).unwrap();
    std::thread::scope(|scope| {
        let spinning = scope.spawn(|| host.get("/chaos/loop"));
        until_chaos_took(&host, before, 1.0);
        assert_eq!(host.get("/chaos/sandbox").status, 200);
        spinning.join().unwrap().assert_problem(504, "cpu-time");
    });
    host.wait_for_log(&["component=chaos", "cause=\"cpu-time\""]);
}

#[test]
fn a_slow_host_call_is_stopped_by_the_timeout() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/sleep?ms=60000") {
        reply.assert_problem(504, "timeout");
    }
    assert_eq!(host.get("/chaos/sleep?ms=10").text(), "awake");
}

#[test]
fn memory_growth_past_the_limit_fails_the_request() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/alloc") {
        let problem = reply.assert_problem(500, "memory");
        assert!(
            problem["detail"].as_str().unwrap().contains("33554432"),
            "names the limit: {problem}"
        );
    }
}

#[test]
fn a_stack_overflow_fails_the_request() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/recurse") {
        reply.assert_problem(500, "stack-overflow");
    }
}

#[test]
fn a_panic_fails_the_request() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/panic") {
        reply.assert_problem(500, "panic");
    }
}

#[test]
fn a_huge_response_is_cut_off() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/big-body?mib=8") {
        let problem = reply.assert_problem(500, "invalid-response");
        assert!(problem["detail"].as_str().unwrap().contains("1048576"), "{problem}");
    }
    host.wait_for_log(&["component=chaos", "invalid response"]);
    assert_eq!(host.get("/chaos/big-body?mib=0").status, 200);
}

#[test]
fn a_transaction_left_open_by_a_trap_is_rolled_back() {
    let mut host = attack_host();
    for reply in contained(&mut host, "/chaos/txn-trap") {
        reply.assert_problem(500, "panic");
    }
    assert_eq!(host.sql("SELECT count(*) FROM junk")["rows"], json!([[0]]));
}

#[test]
fn a_full_database_refuses_writes_and_stays_valid() {
    let mut host = attack_host();
    let replies = contained(&mut host, "/chaos/fill");
    for reply in &replies {
        assert_eq!(reply.status, 507, "{}", reply.text());
        assert_eq!(reply.json()["error"], "database-full");
    }
    let size = std::fs::metadata(host.data_dir.join("chaos.sqlite3")).unwrap().len();
    assert!(size <= 2 << 20, "the file stays within its limit: {size}");
    assert_eq!(host.sql("PRAGMA integrity_check")["rows"], json!([["ok"]]));
    assert!(host.sql("SELECT count(*) FROM junk")["rows"][0][0].as_i64().unwrap() > 0);
    // Deleting makes room again.
    assert_eq!(host.sql("DELETE FROM junk")["rows"], json!([]));
    assert_eq!(
        host.sql("INSERT INTO junk (data) VALUES (zeroblob(1000))")["rows"],
        json!([])
    );
    assert_eq!(host.get("/users").status, 200, "the users database is untouched");
}

#[test]
fn slow_and_huge_queries_are_cut_off() {
    let host = attack_host();
    let endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    let reply = host.sql(endless);
    assert_eq!(reply["error"], "limit-exceeded", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("200 ms"), "{reply}");
    let many = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 1001) SELECT x FROM n";
    let reply = host.sql(many);
    assert_eq!(reply["error"], "limit-exceeded", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("1000 rows"), "{reply}");
    let enough = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 1000) SELECT x FROM n";
    assert_eq!(host.sql(enough)["rows"].as_array().unwrap().len(), 1000);
}
