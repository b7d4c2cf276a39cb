//! What a guest cannot do: see the machine, escape its database, or take
//! the host or other requests down with it.

use serde_json::json;

use crate::support::{full_host, host};

#[test]
fn guests_see_nothing_of_the_machine() {
    let host = full_host();
    let seen = host.get("/chaos/sandbox").json();
    assert_eq!(seen["env"], json!([]), "no environment variables");
    assert!(seen["read_root"]["err"].is_string(), "{seen}");
    assert!(seen["read_passwd"]["err"].is_string(), "{seen}");
    assert!(seen["write_file"]["err"].is_string(), "{seen}");
    assert!(seen["connect"]["err"].is_string(), "{seen}");
    assert!(!host.data_dir.join("escape.txt").exists());
}

/// Every request runs in a fresh instance: nothing an earlier request left
/// in memory (a static it set, pages it grew and wrote) is there for the
/// next, whether that is the same component's or another's taking over the
/// pool slot, from clients at once so that slots are freed and reused.
#[test]
fn no_request_sees_what_an_earlier_one_left_in_memory() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .component("other", "chaos", &["/other"])
        .start();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let host = &host;
            scope.spawn(move || {
                for i in 0..40 {
                    let path = if (client + i) % 2 == 0 {
                        "/chaos/residue"
                    } else {
                        "/other/residue"
                    };
                    let reply = host.get(path);
                    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
                    let seen = reply.json();
                    assert_eq!(
                        seen["static_left"],
                        json!(false),
                        "{path} found an earlier request's static: {seen}"
                    );
                    assert_eq!(
                        seen["dirty_words"],
                        json!(0),
                        "{path} found an earlier request's pages: {seen}"
                    );
                }
            });
        }
    });
}

#[test]
fn sql_cannot_escape_the_database() {
    let host = full_host();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("stolen.db");
    let denied = [
        format!("ATTACH DATABASE '{}' AS other", target.display()),
        format!("VACUUM INTO '{}'", target.display()),
        "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        "PRAGMA foreign_keys = OFF".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "PRAGMA max_page_count = 999999999".to_string(),
        "PRAGMA temp_store_directory = '/tmp'".to_string(),
        "BEGIN".to_string(),
        "COMMIT".to_string(),
        "SAVEPOINT s".to_string(),
        "CREATE TEMP TABLE t (x)".to_string(),
    ];
    for statement in &denied {
        let reply = host.sql(statement);
        assert!(reply["error"].is_string(), "{statement} was allowed: {reply}");
    }
    assert!(!target.exists(), "nothing was written outside the data folder");
    assert_eq!(host.sql("ATTACH DATABASE ':memory:' AS m")["error"], "access-denied");
    assert_eq!(host.sql("PRAGMA foreign_keys = OFF")["error"], "access-denied");
    assert_eq!(
        host.sql("PRAGMA foreign_keys")["rows"],
        json!([[1]]),
        "foreign keys stay on"
    );
    assert_eq!(host.sql("PRAGMA journal_mode")["rows"], json!([["wal"]]));
    // What a migration needs stays allowed.
    assert_eq!(host.sql("PRAGMA user_version = 7")["rows"], json!([]));
    assert_eq!(host.sql("PRAGMA user_version")["rows"], json!([[7]]));
    assert!(host.sql("PRAGMA table_info(junk)")["rows"].as_array().unwrap().len() == 2);
    assert_eq!(host.sql("SELECT 1; SELECT 2")["error"], "invalid-statement");
    assert_eq!(host.sql("SELEKT 1")["error"], "invalid-statement");
}

#[test]
fn an_open_transaction_is_rolled_back_when_the_guest_traps() {
    let host = full_host();
    host.get("/chaos/txn-trap").assert_problem(500, "panic");
    assert_eq!(host.sql("SELECT count(*) FROM junk")["rows"], json!([[0]]));
    // The database is not left locked either.
    assert_eq!(host.sql("INSERT INTO junk (data) VALUES (x'02')")["rows"], json!([]));
    assert_eq!(host.sql("SELECT count(*) FROM junk")["rows"], json!([[1]]));
}

#[test]
fn a_trap_fails_one_request_while_others_carry_on() {
    let mut host = full_host();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let user_path = format!("/users/{}", user["id"]);
    std::thread::scope(|scope| {
        let panics: Vec<_> = (0..8).map(|_| scope.spawn(|| host.get("/chaos/panic"))).collect();
        let readers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| (0..10).map(|_| host.get(&user_path).status).collect::<Vec<_>>()))
            .collect();
        for panic in panics {
            let problem = panic.join().unwrap().assert_problem(500, "panic");
            assert!(problem["detail"].as_str().unwrap().contains("chaos"), "{problem}");
        }
        for reader in readers {
            assert!(reader.join().unwrap().iter().all(|status| *status == 200));
        }
    });
    assert!(host.is_alive());
    assert_eq!(host.get(&user_path).json(), user);
    host.wait_for_log(&["component=chaos", "a deliberate panic"]);
}

#[test]
fn guest_output_reaches_the_host_log_tagged() {
    let host = full_host();
    let reply = host.request(
        http::Request::get("/chaos/print")
            .header("x-request-id", "trace-me-42")
            .body(Vec::new())
            .unwrap(),
    );
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("x-request-id"), Some("trace-me-42"));
    for text in ["hello on stdout", "hello on stderr", "hello through the log interface"] {
        host.wait_for_log(&["component=chaos", "request_id=trace-me-42", text]);
    }
}

#[test]
fn host_errors_are_problem_json() {
    let host = full_host();
    host.get("/nowhere").assert_problem(404, "no-route");
    host.get("/").assert_problem(404, "no-route");
    host.get("/usersx").assert_problem(404, "no-route");
    let big = vec![b'x'; (1 << 20) + 1];
    host.post_raw("/users", "application/json", &big)
        .assert_problem(413, "body-too-large");
    let generated = host.get("/nowhere");
    let id = generated.header("x-request-id").unwrap();
    assert_eq!(id.len(), 16, "a request id is generated: {id}");
}
