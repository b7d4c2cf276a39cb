//! Hot swap: new versions installed, canaried, promoted, rolled back and
//! reloaded while clients keep sending requests, with no request failing
//! and every response from exactly one version, on the right side of the
//! change. Broken versions are refused and change nothing.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Reply, Sample, TestHost, admin_toml, assert_clean_switch, host, variant, wasm};

const PATH: &str = "/users/1";

fn swap_host() -> TestHost {
    let host = host()
        .component("users", "users", &["/users"])
        .toml(&admin_toml())
        .start();
    assert_eq!(
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
    host
}

/// Sends requests to [`PATH`] while `change` runs; see [`crate::support::under_load`].
fn under_load(host: &TestHost, change: impl FnOnce() -> Reply) -> (Vec<Sample>, Instant, Instant, Reply) {
    crate::support::under_load(host, PATH, change)
}

fn short(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["version"].as_str().unwrap()[..12].to_string()
}

#[test]
fn a_swap_under_load_drops_no_request() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let (samples, before, after, reply) =
        under_load(&host, || host.admin("PUT", "/components/users", variant("users", "v2")));
    let v2 = short(&reply);
    assert_ne!(v1, v2);
    assert_clean_switch(&samples, before, after, &v1, &v2);
    // The data survived: the new version uses the same database.
    assert_eq!(host.get(PATH).json()["name"], "Ada");

    let users = host.component_status("users");
    assert_eq!(users["version"]["short"], v2);
    assert!(
        users["version"]["origin"].as_str().unwrap().starts_with("upload:"),
        "{users}"
    );
    assert_eq!(users["previous"]["short"], v1);
    assert_eq!(users["routes"], json!(["/users"]));
    assert_eq!(users["limits"]["memory_mib"], 128);
    assert_eq!(users["in_flight"], 0);
}

#[test]
fn a_rollback_under_load_drops_no_request() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let v2 = short(&host.admin("PUT", "/components/users", variant("users", "v2")));
    let (samples, before, after, reply) =
        under_load(&host, || host.admin("POST", "/components/users/rollback", Vec::new()));
    assert_eq!(short(&reply), v1);
    assert_clean_switch(&samples, before, after, &v2, &v1);
    // Rolling back again goes forward to what was rolled back.
    assert_eq!(short(&host.admin("POST", "/components/users/rollback", Vec::new())), v2);
}

#[test]
fn a_canary_takes_its_share_then_is_promoted() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let reply = host.admin("PUT", "/components/users?canary=30", variant("users", "canary"));
    let v2 = short(&reply);
    assert_eq!(reply.json()["canary_percent"], 30);
    let versions: Vec<String> = (0..300).map(|_| host.version_of(PATH)).collect();
    let canary = versions.iter().filter(|v| **v == v2).count();
    assert!((40..=150).contains(&canary), "about 30% of 300 requests: {canary}");
    assert!(versions.iter().all(|v| *v == v1 || *v == v2));
    let users = host.component_status("users");
    assert_eq!(users["canary"]["percent"], 30);
    assert_eq!(users["canary"]["version"]["short"], v2);

    let (samples, _, after, reply) = under_load(&host, || host.admin("POST", "/components/users/promote", Vec::new()));
    assert_eq!(short(&reply), v2);
    assert!(samples.iter().all(|s| s.status == 200));
    assert!(
        samples
            .iter()
            .filter(|s| s.sent > after)
            .all(|s| s.version.as_deref() == Some(v2.as_str()))
    );
    let users = host.component_status("users");
    assert_eq!(users["canary"], Value::Null);
    assert_eq!(users["previous"]["short"], v1);
    host.admin("POST", "/components/users/promote", Vec::new())
        .assert_problem(409, "conflict");
}

#[test]
fn rolling_back_a_canary_drops_it() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    short(&host.admin("PUT", "/components/users?canary=50", variant("users", "canary")));
    let (samples, _, after, reply) = under_load(&host, || host.admin("POST", "/components/users/rollback", Vec::new()));
    assert_eq!(short(&reply), v1);
    assert!(samples.iter().all(|s| s.status == 200));
    assert!(
        samples
            .iter()
            .filter(|s| s.sent > after)
            .all(|s| s.version.as_deref() == Some(v1.as_str()))
    );
    for canary in ["0", "100", "x", "-5"] {
        host.admin(
            "PUT",
            &format!("/components/users?canary={canary}"),
            variant("users", "c"),
        )
        .assert_problem(400, "bad-canary");
    }
}

#[test]
fn a_reload_under_load_picks_up_the_changed_file() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let dir = tempfile::tempdir().unwrap();
    let new_file = dir.path().join("users-v2.wasm");
    std::fs::write(&new_file, variant("users", "reloaded")).unwrap();
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    let old_path = format!("{:?}", wasm("users").display().to_string());
    let new_path = format!("{:?}", new_file.display().to_string());
    std::fs::write(&host.config_path, config.replace(&old_path, &new_path)).unwrap();

    let (samples, before, after, reply) = under_load(&host, || host.admin("POST", "/reload", Vec::new()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v2 = reply.json()["components"][0]["version"].as_str().unwrap()[..12].to_string();
    assert_clean_switch(&samples, before, after, &v1, &v2);
    // Reloading an unchanged file changes nothing.
    assert_eq!(host.admin("POST", "/reload", Vec::new()).status, 200);
    assert_eq!(host.version_of(PATH), v2);
}

#[test]
fn a_reload_adds_removes_and_reroutes_components() {
    let host = swap_host();
    host.get("/orders").assert_problem(404, "no-route");
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    let orders = crate::support::component_toml("orders", "orders", &["/orders", "/shop/orders"]);
    std::fs::write(
        &host.config_path,
        format!("{config}\n{orders}\n[components.users.limits]\nrequest_body_kib = 1\n"),
    )
    .unwrap();
    let reply = host.admin("POST", "/reload", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(host.get("/orders").status, 200);
    // The new route reaches orders, which has no resource there.
    let problem = host.get("/shop/orders").assert_problem(404, "not-found");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no resource at /shop/orders"),
        "{problem}"
    );
    let padding = "x".repeat(2000);
    host.post(
        "/users",
        &json!({ "name": "Bob", "email": "bob@example.com", "p": padding }),
    )
    .assert_problem(413, "body-too-large");

    std::fs::write(&host.config_path, config).unwrap();
    assert_eq!(host.admin("POST", "/reload", Vec::new()).status, 200);
    host.get("/orders").assert_problem(404, "no-route");
    assert_eq!(host.get(PATH).json()["name"], "Ada", "users kept serving its data");
}

#[test]
fn an_invalid_config_changes_nothing() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    std::fs::write(
        &host.config_path,
        format!("{config}\n[components.users.limits]\nmemory_mib = 0\nnonsense = 1\n"),
    )
    .unwrap();
    let problem = host
        .admin("POST", "/reload", Vec::new())
        .assert_problem(400, "invalid-config");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("memory_mib") && detail.contains("nonsense"), "{detail}");
    assert_eq!(host.version_of(PATH), v1);
    std::fs::write(&host.config_path, "this is not toml").unwrap();
    host.admin("POST", "/reload", Vec::new())
        .assert_problem(400, "invalid-config");
    assert_eq!(host.get(PATH).status, 200);
}

#[test]
fn sighup_reloads_the_config() {
    let host = swap_host();
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    std::fs::write(
        &host.config_path,
        format!(
            "{config}\n{}",
            crate::support::component_toml("orders", "orders", &["/orders"])
        ),
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    host.wait_for_log(&["SIGHUP: reloaded the config"]);
    assert_eq!(host.get("/orders").status, 200);
}

#[test]
fn broken_uploads_are_refused_and_change_nothing() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let no_handler = wat::parse_str("(component)").unwrap();
    // A service that imports an interface no component here exports.
    let unknown_import = std::fs::read(wasm("relay")).unwrap();
    let cases: [(&str, Vec<u8>, u16, &str, &str); 5] = [
        (
            "random bytes",
            b"\x13\x37 definitely not wasm".to_vec(),
            422,
            "invalid-component",
            "not WebAssembly",
        ),
        (
            "a core module",
            b"\0asm\x01\0\0\0".to_vec(),
            422,
            "invalid-component",
            "core wasm module",
        ),
        (
            "no handler",
            no_handler,
            422,
            "invalid-component",
            "exports neither corral:service/handler",
        ),
        (
            "an unknown import",
            unknown_import,
            422,
            "invalid-component",
            "corral:test/relay@0.1.0, which no configured component exports",
        ),
        (
            "a failing migration",
            std::fs::read(wasm("failing-init")).unwrap(),
            422,
            "init-failed",
            "refuses to start",
        ),
    ];
    for (what, body, status, kind, reason) in cases {
        let problem = host
            .admin("PUT", "/components/users", body)
            .assert_problem(status, kind);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("nothing changed") && detail.contains(reason),
            "{what}: {detail}"
        );
        assert_eq!(host.version_of(PATH), v1, "{what}");
    }
    assert_eq!(
        host.component_status("users")["previous"],
        Value::Null,
        "no version was installed"
    );

    host.admin("PUT", "/components/nobody", variant("users", "x"))
        .assert_problem(404, "not-found");
    host.admin("POST", "/components/users/promote", Vec::new())
        .assert_problem(409, "conflict");
    assert_eq!(host.get(PATH).json()["name"], "Ada");

    // The failed migration left the database as it was. The host holds its
    // databases exclusively, so look once it has stopped.
    let mut host = host;
    host.terminate();
    assert!(host.wait().success());
    let db = rusqlite::Connection::open(host.data_dir.join("users.sqlite3")).unwrap();
    let leftover: i64 = db
        .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'leftover'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(leftover, 0);
    let user_version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(user_version, 1);
}

#[test]
fn an_upload_over_the_size_limit_is_413() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml(&admin_toml())
        .toml("max_upload_mib = 1")
        .start();
    host.admin("PUT", "/components/users", vec![0; 2 << 20])
        .assert_problem(413, "body-too-large");
}

#[test]
fn every_admin_route_needs_the_token() {
    let host = swap_host();
    let routes = [
        ("GET", "/components"),
        ("PUT", "/components/users"),
        ("POST", "/components/users/rollback"),
        ("POST", "/components/users/promote"),
        ("POST", "/reload"),
        ("GET", "/metrics"),
        ("GET", "/nonexistent"),
    ];
    for (method, path) in routes {
        for token in [
            None,
            Some("wrong-token-wrong-token"),
            Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ] {
            let reply = host.admin_as(method, path, variant("users", "x"), token);
            reply.assert_problem(401, "unauthorized");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"corral\""));
        }
    }
    assert_eq!(host.version_of(PATH).len(), 12);
    assert_eq!(host.admin_as("GET", "/healthz", Vec::new(), None).status, 200);
    // Each listener serves only its own routes.
    host.get("/components").assert_problem(404, "no-route");
    host.get("/reload").assert_problem(404, "no-route");
    host.admin("GET", "/users/1", Vec::new())
        .assert_problem(404, "not-found");
}

/// Every `$ref` under `value`.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.push(r.trim_start_matches("#/components/schemas/").to_string());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_is_the_routes_the_admin_listener_serves() {
    let host = swap_host();
    let doc = host.admin_as("GET", "/openapi.json", Vec::new(), None);
    assert_eq!(doc.status, 200, "{}", doc.text());
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut named = Vec::new();
    refs(&doc["paths"], &mut named);
    refs(&doc["components"], &mut named);
    for name in &named {
        assert!(schemas.contains_key(name), "{name} is referred to but not defined");
    }
    for answer in [
        "Components",
        "Changed",
        "Reloaded",
        "Events",
        "DeadLetters",
        "Settled",
        "Problem",
    ] {
        assert!(named.iter().any(|n| n == answer), "no route answers with {answer}");
    }
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{paths:?}");
    for (path, item) in paths {
        let concrete = path.replace("{name}", "users").replace("{node}", "nowhere");
        let methods: Vec<String> = item.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        for method in &methods {
            let operation = &item[method.to_lowercase()];
            let body = if method == "PUT" {
                variant("users", "openapi")
            } else {
                Vec::new()
            };
            let reply = host.admin(method, &concrete, body.clone());
            let missing = reply.status == 405
                || (reply.status == 404
                    && reply.json()["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("no admin route")));
            assert!(
                !missing,
                "{method} {path} is in the document but not served: {}",
                reply.text()
            );
            let without = host.admin_as(method, &concrete, body, None);
            let needs_token = operation.get("security").is_some();
            assert_eq!(
                without.status == 401,
                needs_token,
                "{method} {path} without the token: {}",
                without.text()
            );
        }
        let reply = host.admin("DELETE", &concrete, Vec::new());
        reply.assert_problem(405, "method-not-allowed");
        let mut allowed: Vec<&str> = reply.header("allow").unwrap().split(", ").collect();
        allowed.sort();
        let mut expected: Vec<&str> = methods.iter().map(String::as_str).collect();
        expected.sort();
        assert_eq!(allowed, expected, "{path}");
    }
    let reply = host.admin("GET", "/components/users/nothing", Vec::new());
    reply.assert_problem(404, "not-found");
    assert!(reply.json()["detail"].as_str().unwrap().contains("/openapi.json"));
}

#[test]
fn the_cli_drives_the_admin_api() {
    let host = swap_host();
    let v1 = host.version_of(PATH);
    let admin = format!("http://{}", host.admin_addr.unwrap());
    let corral = |args: &[&str]| {
        let admin_args = ["--admin", admin.as_str()];
        let args: Vec<&std::ffi::OsStr> = args.iter().chain(&admin_args).map(|a| a.as_ref()).collect();
        crate::support::run_corral(&args, &[("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)], Path::new("."))
    };
    let (ok, status) = corral(&["status"]);
    assert!(ok && status.contains("users") && status.contains(&v1), "{status}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.wasm");
    std::fs::write(&file, variant("users", "cli")).unwrap();
    let (ok, out) = corral(&["swap", "users", file.to_str().unwrap(), "--canary", "20"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("users: canary ") && out.contains("serves 20% of requests"),
        "{out}"
    );
    let (ok, status) = corral(&["status"]);
    assert!(ok && status.contains("at 20%"), "{status}");
    let (ok, out) = corral(&["promote", "users"]);
    assert!(ok, "{out}");
    let v2 = host.version_of(PATH);
    assert_ne!(v2, v1);
    assert_eq!(out.trim(), format!("users: {v2} (previous {v1})"));
    let (ok, out) = corral(&["rollback", "users", "--json"]);
    assert!(ok, "{out}");
    let change: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(&change["version"].as_str().unwrap()[..12], v1);
    assert_eq!(host.version_of(PATH), v1);
    let (ok, out) = corral(&["reload"]);
    assert!(ok && !out.trim().is_empty(), "{out}");
    let (ok, out) = corral(&["swap", "users", "/nonexistent.wasm"]);
    assert!(!ok && out.contains("cannot read"), "{out}");
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"nope").unwrap();
    let (ok, out) = corral(&["swap", "users", broken.to_str().unwrap()]);
    assert!(!ok && out.contains("422") && out.contains("not WebAssembly"), "{out}");
}

#[test]
fn a_watched_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.wasm");
    std::fs::write(&file, std::fs::read(wasm("users")).unwrap()).unwrap();
    let host = host()
        .toml(&format!(
            "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nwatch = true\n",
            file.display().to_string()
        ))
        .start();
    let v1 = host.version_of("/users");

    // A half-written file is never loaded: it does not compile, and the
    // version before it keeps serving.
    let v2_bytes = variant("users", "watched");
    std::fs::write(&file, &v2_bytes[..v2_bytes.len() / 2]).unwrap();
    host.wait_for_log(&["the changed file was not loaded"]);
    assert_eq!(host.version_of("/users"), v1);

    std::fs::write(&file, &v2_bytes).unwrap();
    host.wait_for_log(&["reloaded a changed file"]);
    let v2 = host.version_of("/users");
    assert_ne!(v2, v1);
    assert_eq!(host.get("/users").status, 200);
}

#[test]
fn the_admin_api_stays_on_this_machine_unless_told_and_clients_only_read_tokens() {
    let users = crate::support::component_toml("users", "users", &["/users"]);
    let remote = format!("data_dir = \"data\"\n{users}[admin]\nlisten = \"0.0.0.0:9090\"\n");
    let (ok, out) = crate::support::check_config(&remote);
    assert!(
        !ok && out.contains("admin.listen") && out.contains("allow_remote"),
        "{out}"
    );
    let (ok, out) = crate::support::check_config(&format!("{remote}allow_remote = true\n"));
    assert!(ok, "{out}");

    let host = swap_host();
    let lowercase = http::Request::get(format!("http://{}/components", host.admin_addr.unwrap()))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .body(Vec::new())
        .unwrap();
    assert_eq!(host.request(lowercase).status, 200, "the scheme is case-insensitive");

    // A client pointed at a config whose token file does not exist says so,
    // and creates nothing.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    let admin = host.admin_addr.unwrap();
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n{users}[admin]\nlisten = \"{admin}\"\n"),
    )
    .unwrap();
    let (ok, out) = crate::support::run_corral(
        &["status".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[],
        dir.path(),
    );
    assert!(
        !ok && out.contains("no admin token") && out.contains("--data-dir"),
        "{out}"
    );
    assert!(!dir.path().join("data/admin.token").exists());
    // A host started with --data-dir keeps its token there: so does the
    // client look, told the same.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("admin.token"), ADMIN_TOKEN).unwrap();
    let (ok, out) = crate::support::run_corral(
        &[
            "status".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--data-dir".as_ref(),
            elsewhere.as_os_str(),
        ],
        &[],
        dir.path(),
    );
    assert!(ok && out.starts_with("NAME"), "{out}");
}
