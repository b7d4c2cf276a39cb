//! A hostile component against the host's memory through what it writes
//! and what it passes to other components: writes past `check-write`, a
//! huge `write-zeroes`, floods of lines, oversized call payloads. Each
//! fails the component's own request, and the host carries on.

use serde_json::json;

use crate::support::{TestHost, host, proc_status_kib};

fn chaos() -> TestHost {
    host()
        .component("users", "users", &["/users"])
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmemory_mib = 256\ntimeout_ms = 20000")
        .start()
}

#[test]
fn writes_past_check_write_trap() {
    let mut host = chaos();
    let before = proc_status_kib(host.pid(), "VmHWM");
    host.get("/chaos/write?kib=65536").assert_problem(500, "trap");
    let reply = host.get("/chaos/write-zeroes?n=1099511627776");
    assert_eq!(reply.status, 500, "{}", reply.text());
    let grown_mib = proc_status_kib(host.pid(), "VmHWM").saturating_sub(before) >> 10;
    // The 64 MiB the guest wrote lives in its own memory; the host copies it
    // once to see it is too large, and never makes the zeroes at all.
    assert!(grown_mib < 160, "peak resident memory grew by {grown_mib} MiB");
    assert!(host.is_alive());
    // Within check-write, output is fine.
    assert_eq!(host.get("/chaos/write?kib=16").status, 200);
    assert_eq!(host.get("/users").status, 200);
}

#[test]
fn a_flood_of_lines_is_cut_at_the_log_budget() {
    let host = chaos();
    let reply = host.get("/chaos/lines?mib=64");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["written"], 64 << 20);
    let logged = host
        .logs()
        .lines()
        .filter(|l| l.contains("component=chaos") && l.contains("stream=\"stdout\""))
        .count();
    assert!(logged > 0 && logged <= 256 << 10, "{logged} lines logged");
}

#[test]
fn call_payloads_past_the_limit_are_unavailable() {
    let host = host()
        .component("relay-a", "relay", &["/relay-a"])
        .toml("[components.relay-a.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"")
        .component("relay-b", "relay", &["/relay-b"])
        .toml("[components.relay-b.limits]\ncall_payload_kib = 64")
        .start();
    let echo = |send: usize, answer: usize| host.get(&format!("/relay-a/echo?send={send}&answer={answer}"));
    assert_eq!(echo(60_000, 60_000).json(), json!({ "received": 60_000 }));
    let problem = echo(70_000, 10).assert_problem(503, "dependency-unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("limit of 65536"),
        "{problem}"
    );
    let problem = echo(10, 70_000).assert_problem(503, "dependency-unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("answered with"),
        "{problem}"
    );
    assert_eq!(echo(1, 1).status, 200, "the provider serves on");
}

#[test]
fn a_response_with_more_headers_than_the_limit_is_refused() {
    let limited = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nresponse_headers = 3")
        .start();
    let reply = limited.get("/chaos/answer-with?header=x-many&value=v&count=3");
    assert_eq!(reply.status, 204, "{}", reply.text());
    assert_eq!(reply.header("x-many-2"), Some("v"));
    let problem = limited
        .get("/chaos/answer-with?header=x-many&value=v&count=4")
        .assert_problem(500, "invalid-response");
    assert!(problem.to_string().contains("4 headers is more than 3"), "{problem}");
    // The default, 100, holds too.
    let default = host().component("chaos", "chaos", &["/chaos"]).start();
    assert_eq!(
        default.get("/chaos/answer-with?header=x-many&value=v&count=100").status,
        204
    );
    default
        .get("/chaos/answer-with?header=x-many&value=v&count=101")
        .assert_problem(500, "invalid-response");
}
