//! Data lives in one SQLite file per component and survives the host.

use serde_json::json;

use crate::support::host;

#[test]
fn data_survives_a_crash_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let start = || {
        host()
            .component("users", "users", &["/users"])
            .component("orders", "orders", &["/orders"])
            .data_dir(data.path())
            .start()
    };
    let first = start();
    let user = first
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let order = first
        .post(
            "/orders",
            &json!({ "user_id": user["id"], "items": [{ "sku": "A", "quantity": 2, "unit_price_cents": 5 }] }),
        )
        .json();
    assert_eq!(
        first
            .patch(&format!("/orders/{}", order["id"]), &json!({ "status": "paid" }))
            .status,
        200
    );
    first.kill();

    let second = start();
    assert_eq!(second.get(&format!("/users/{}", user["id"])).json(), user);
    let stored = second.get(&format!("/orders/{}", order["id"])).json();
    assert_eq!(stored["status"], "paid");
    assert_eq!(stored["items"], order["items"]);
    second
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .assert_problem(409, "conflict");
    let next = second
        .post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }))
        .json();
    assert!(next["id"].as_i64() > user["id"].as_i64());
}

#[test]
fn each_component_has_its_own_file() {
    let host = host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .component("chaos", "chaos", &["/chaos"])
        .start();
    host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    let mut files: Vec<String> = std::fs::read_dir(&host.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sqlite3"))
        .collect();
    // The host keeps its event log beside them, under a name no component can have.
    files.retain(|name| name != "_corral_events.sqlite3");
    files.sort();
    assert_eq!(files, ["chaos.sqlite3", "orders.sqlite3", "users.sqlite3"]);

    // From inside the chaos component, the other components' tables do not exist.
    for sql in [
        "SELECT * FROM users",
        "SELECT * FROM orders",
        "SELECT * FROM main.users",
    ] {
        let reply = host.sql(sql);
        assert_eq!(reply["error"], "invalid-statement", "{sql}: {reply}");
        assert!(reply["message"].as_str().unwrap().contains("no such table"), "{reply}");
    }
    let tables = host.sql_rows(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_corral\\_%' ESCAPE '\\' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    );
    assert_eq!(
        tables,
        json!([["junk"], ["received"]]),
        "only chaos's own tables, and the host's"
    );
}

#[test]
fn no_other_process_writes_a_database_while_the_host_runs() {
    let host = host().component("users", "users", &["/users"]).start();
    let outside = rusqlite::Connection::open(host.data_dir.join("users.sqlite3")).unwrap();
    let write = outside.execute(
        "INSERT INTO users (name, email, email_key) VALUES ('x', 'x@y.z', 'x@y.z')",
        [],
    );
    assert!(write.is_err(), "an outside write went through");
    assert_eq!(host.get("/users").json()["items"], json!([]));
}
