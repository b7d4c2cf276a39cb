//! Changes are all or nothing, and they last: a reload that fails leaves
//! databases, rate limit buckets, gates and limits as they were; a reload
//! of limits alone keeps buckets and never runs more than the new limit;
//! versions installed through the admin API are served again after a
//! restart, unless the config's file changed.

use std::path::Path;

use serde_json::json;

use crate::support::{TestHost, admin_toml, component_toml, eventually, host, variant, wasm};

fn reload_with(host: &TestHost, config: &str) -> crate::support::Reply {
    std::fs::write(&host.config_path, config).unwrap();
    host.admin("POST", "/reload", Vec::new())
}

#[test]
fn a_failed_reload_changes_nothing() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nroutes = [{ route = \"GET /users/{id}\", rate = \"2/minute\" }]")
        .component("chaos", "chaos", &["/chaos"])
        .toml(&admin_toml())
        .start();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let user_path = format!("/users/{}", user["id"]);
    assert_eq!(host.get(&user_path).header("ratelimit-remaining"), Some("1"));
    host.sql_rows("INSERT INTO junk (data) VALUES (x'01')");
    let chaos_version = host.version_of("/chaos/sandbox");
    let schema = "SELECT name FROM sqlite_schema ORDER BY name";
    let chaos_schema = host.sql_rows(schema);

    // The new config changes users' limits and chaos's code (to a version
    // whose init creates tables), and adds a component whose init fails.
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    let changed = config.replace(
        &wasm("chaos").display().to_string(),
        &wasm("users").display().to_string(),
    ) + "[components.users.limits]\nmax_concurrent = 1\n"
        + &component_toml("broken", "failing-init", &["/broken"]);
    assert_ne!(changed, config);
    let reply = reload_with(&host, &changed);
    reply.assert_problem(422, "init-failed");

    assert_eq!(host.version_of("/chaos/sandbox"), chaos_version, "chaos keeps its code");
    assert_eq!(
        host.sql_rows(schema),
        chaos_schema,
        "the init that succeeded was rolled back"
    );
    assert_eq!(host.sql_rows("SELECT count(*) FROM junk"), json!([[1]]));
    assert!(
        !host.data_dir.join("broken.sqlite3").exists(),
        "the new component's database was removed"
    );
    host.get("/broken").assert_problem(404, "no-route");
    assert_eq!(host.component_status("users")["limits"]["max_concurrent"], 64);
    // The client's bucket is the one it had: one request left.
    assert_eq!(host.get(&user_path).json(), user);
    host.get(&user_path).assert_problem(429, "rate-limited");

    // Fixed, the same change goes through.
    let fixed = changed.replace(&component_toml("broken", "failing-init", &["/broken"]), "");
    let reply = reload_with(&host, &fixed);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(host.component_status("users")["limits"]["max_concurrent"], 1);
}

#[test]
fn a_reload_of_limits_keeps_buckets_and_never_exceeds_the_new_limit() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nrate = \"3/minute\"")
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmax_concurrent = 2\nmax_queued = 0")
        .toml(&admin_toml())
        .start();
    assert_eq!(host.get("/users").header("ratelimit-remaining"), Some("2"));
    assert_eq!(host.get("/users").header("ratelimit-remaining"), Some("1"));
    let config = std::fs::read_to_string(&host.config_path).unwrap();
    std::thread::scope(|scope| {
        let sleepers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| host.get("/chaos/sleep?ms=2000")))
            .collect();
        eventually("both sleep", || host.component_status("chaos")["in_flight"] == 2);
        let limits_only =
            config.replace("max_concurrent = 2", "max_concurrent = 1") + "[components.users.limits]\nmemory_mib = 64\n";
        let reply = reload_with(&host, &limits_only);
        assert_eq!(reply.status, 200, "{}", reply.text());
        // Two run on the old size; the new size is one, so a third waits
        // for nothing: it is refused.
        host.get("/chaos/sandbox").assert_problem(503, "overloaded");
        for sleeper in sleepers {
            assert_eq!(sleeper.join().unwrap().status, 200);
        }
    });
    // One at a time from now on.
    std::thread::scope(|scope| {
        let sleeper = scope.spawn(|| host.get("/chaos/sleep?ms=1000"));
        eventually("it sleeps", || host.component_status("chaos")["in_flight"] == 1);
        host.get("/chaos/sandbox").assert_problem(503, "overloaded");
        assert_eq!(sleeper.join().unwrap().status, 200);
    });
    assert_eq!(host.get("/chaos/sandbox").status, 200);
    // The users bucket survived the reload: one request was left.
    assert_eq!(host.get("/users").header("ratelimit-remaining"), Some("0"));
    host.get("/users").assert_problem(429, "rate-limited");
}

/// A host serving users from a copy of its `.wasm` in `dir`, with its data
/// in `data`.
fn users_from(dir: &Path, data: &Path) -> TestHost {
    host()
        .toml(&format!(
            "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\n",
            dir.join("users.wasm").display().to_string()
        ))
        .toml(&admin_toml())
        .data_dir(data)
        .start()
}

#[test]
fn a_restart_serves_the_versions_changes_installed() {
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("users"), files.path().join("users.wasm")).unwrap();
    let first = users_from(files.path(), data.path());
    let v1 = first.version_of("/users");
    let swapped = first.admin("PUT", "/components/users", variant("users", "swapped"));
    assert_eq!(swapped.status, 200, "{}", swapped.text());
    let v2 = first.version_of("/users");
    let canary = first.admin("PUT", "/components/users?canary=50", variant("users", "canary"));
    assert_eq!(canary.status, 200, "{}", canary.text());
    let v3 = canary.json()["version"].as_str().unwrap()[..12].to_string();
    first
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    first.kill();

    let second = users_from(files.path(), data.path());
    let users = second.component_status("users");
    assert_eq!(users["version"]["short"], v2.as_str(), "{users}");
    assert!(
        users["version"]["origin"].as_str().unwrap().starts_with("upload:"),
        "{users}"
    );
    assert_eq!(users["previous"]["short"], v1.as_str(), "{users}");
    assert_eq!(users["canary"]["version"]["short"], v3.as_str(), "{users}");
    assert_eq!(users["canary"]["percent"], 50);
    second.wait_for_log(&["serving the version saved by the last change"]);
    assert_eq!(second.get("/users").json()["items"][0]["name"], "Ada");
    let served: Vec<String> = (0..40).map(|_| second.version_of("/users")).collect();
    assert!(served.contains(&v2) && served.contains(&v3), "{served:?}");
    second.kill();

    // The config's file changed meanwhile: it wins, and says so.
    std::fs::write(files.path().join("users.wasm"), variant("users", "edited")).unwrap();
    let third = users_from(files.path(), data.path());
    let users = third.component_status("users");
    assert!(
        users["version"]["origin"].as_str().unwrap().starts_with("file:"),
        "{users}"
    );
    assert_ne!(users["version"]["short"], v2.as_str());
    assert_eq!(users["previous"]["short"], v2.as_str(), "{users}");
    assert!(users["canary"].is_null(), "{users}");
    third.wait_for_log(&["the config's file changed since the last run"]);
}

#[test]
fn a_change_that_cannot_be_recorded_is_not_made() {
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("users"), files.path().join("users.wasm")).unwrap();
    let first = users_from(files.path(), data.path());
    let v1 = first.version_of("/users");
    // The state file cannot be replaced: a folder stands in its way (as
    // root, permissions would not stop the host).
    let state = data.path().join("versions/users/state.json");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("in-the-way")).unwrap();
    let swapped = first.admin("PUT", "/components/users", variant("users", "unrecorded"));
    let problem = swapped.assert_problem(507, "storage");
    assert!(problem["detail"].as_str().unwrap().contains("not made"), "{problem}");
    assert_eq!(first.version_of("/users"), v1, "the old version still serves");
    let rolled_back = first.admin("POST", "/components/users/rollback", Vec::new());
    assert_eq!(rolled_back.status, 409, "nothing to roll back: {}", rolled_back.text());
    first.kill();
    // Once the way is clear, the next host serves the config's file.
    std::fs::remove_dir_all(&state).unwrap();
    let second = users_from(files.path(), data.path());
    assert_eq!(second.version_of("/users"), v1);
}
