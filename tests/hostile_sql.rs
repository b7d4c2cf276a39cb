//! A hostile component against its database: functions that hand out or
//! take host pointers, with bound parameters; huge values and wide rows;
//! statements that would run for minutes. The host stays alive, within a
//! stated memory bound, and every statement stops within its time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestHost, host, proc_status_kib};

fn chaos(limits: &str) -> TestHost {
    host()
        .component("users", "users", &["/users"])
        .component("chaos", "chaos", &["/chaos"])
        .toml(&format!("[components.chaos.limits]\n{limits}"))
        .start()
}

/// Runs `sql` with bound `params` in the chaos component.
fn query(host: &TestHost, sql: &str, params: Value) -> Value {
    let reply = host.post_raw(
        "/chaos/query",
        "application/json",
        json!({ "sql": sql, "params": params }).to_string().as_bytes(),
    );
    assert!(reply.status == 200 || reply.status == 422, "{sql}: {}", reply.text());
    reply.json()
}

#[test]
fn pointer_passing_functions_are_refused_with_bound_parameters() {
    let mut host = chaos("");
    let fake_pointer = json!([{ "blob_len": 8, "byte": 0x41 }]);
    for (statement, params) in [
        ("SELECT fts3_tokenizer(?)", json!(["simple"])),
        ("SELECT fts3_tokenizer('x', ?)", fake_pointer.clone()),
        (
            "SELECT fts3_tokenizer(?, ?)",
            json!(["x", { "blob_len": 8, "byte": 0x41 }]),
        ),
        ("SELECT fts5(?)", json!([null])),
        ("SELECT load_extension(?)", json!(["/lib/x86_64-linux-gnu/libc.so.6"])),
        ("SELECT rtreenode(2, ?)", fake_pointer),
        ("SELECT sqlite_compileoption_get(?)", json!([0])),
        ("SELECT count(*) FROM dbstat", json!([])),
    ] {
        let reply = query(&host, statement, params);
        assert_eq!(reply["error"], "access-denied", "{statement}: {reply}");
    }
    // The fake tokenizer was never registered: a table naming it fails,
    // and the host is alive to say so.
    let reply = host.sql("CREATE VIRTUAL TABLE t USING fts4(x, tokenize=x)");
    assert!(reply["error"].is_string(), "{reply}");
    assert!(host.is_alive());
    assert_eq!(host.get("/users").status, 200);
    // What services use is still there, bound parameters and all.
    let reply = query(
        &host,
        "SELECT upper(?), json_extract(?, '$.a'), instr(?, 'c')",
        json!(["ok", "{\"a\":2}", "abc"]),
    );
    assert_eq!(reply["rows"], json!([["OK", 2, 3]]), "{reply}");
}

#[test]
fn huge_values_and_wide_rows_stay_within_a_memory_bound() {
    // Values may be as large as 16 MiB here, and results too: the attack
    // is a row of 48 such columns, which used to be copied whole.
    let mut host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[server]\nsqlite_heap_mib = 64\n[components.chaos.limits]\ndb_max_value_kib = 16384\ndb_max_result_kib = 16384\ndb_statement_timeout_ms = 5000")
        .start();
    let before = proc_status_kib(host.pid(), "VmHWM");
    let columns = ["zeroblob(16000000)"; 48].join(", ");
    let reply = host.sql(&format!("SELECT {columns}"));
    assert_eq!(reply["error"], "limit-exceeded", "{reply}");
    // A distinct set of large rows needs SQLite's heap (temporary tables
    // live in memory, not in files), which is capped.
    let distinct = "WITH RECURSIVE n(x, b) AS (SELECT 1, randomblob(1000000) \
                    UNION SELECT x + 1, randomblob(1000000) FROM n WHERE x < 300) SELECT count(*) FROM n";
    let reply = host.sql(distinct);
    assert_eq!(reply["error"], "limit-exceeded", "{reply}");
    // Big parameters go through the same limit.
    let reply = query(&host, "SELECT length(?)", json!([{ "blob_len": 17_000_000 }]));
    assert_eq!(reply["error"], "limit-exceeded", "{reply}");
    let peak = proc_status_kib(host.pid(), "VmHWM");
    let grown_mib = peak.saturating_sub(before) >> 10;
    // The guest's own copies live in its 128 MiB linear memory; what the
    // host adds is one value and SQLite's capped heap.
    eprintln!(
        "peak resident memory: {} MiB before, {} MiB after the attacks",
        before >> 10,
        peak >> 10
    );
    assert!(grown_mib < 256, "peak resident memory grew by {grown_mib} MiB");
    assert!(host.is_alive());
    assert_eq!(host.sql("SELECT length(zeroblob(1000))")["rows"], json!([[1000]]));
}

#[test]
fn a_runaway_statement_stops_within_its_timeout() {
    let host = chaos("db_statement_timeout_ms = 200\ndb_max_value_kib = 4096");
    let a = |n: u32| format!("replace(hex(zeroblob({n})), '0', 'a')");
    for statement in [
        // One function call that compares every position of one input
        // against the other: minutes unbounded.
        format!("SELECT instr({}, {} || 'b')", a(2_000_000), a(1_000_000)),
        format!("SELECT length(replace({}, {} || 'b', 'x'))", a(2_000_000), a(1_000_000)),
        // Many steps: stopped by the deadline.
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n".to_string(),
        format!(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n WHERE instr({}, 'b') = x",
            a(500_000)
        ),
    ] {
        let started = Instant::now();
        let reply = host.sql(&statement);
        let took = started.elapsed();
        assert_eq!(reply["error"], "limit-exceeded", "{statement}: {reply}");
        assert!(took < Duration::from_millis(1500), "{took:?} for {statement}");
    }
    assert_eq!(host.get("/users").status, 200);
}

#[test]
fn the_hosts_tables_are_out_of_reach() {
    let host = chaos("");
    for statement in [
        "SELECT * FROM _corral_outbox",
        "SELECT count(*) FROM _CORRAL_PROCESSED",
        "INSERT INTO _corral_outbox (id, topic, payload, headers, published_at) VALUES ('x', 'y', x'00', '[]', 0)",
        "UPDATE _corral_published SET id = 'x'",
        "DELETE FROM _corral_processed",
        "DROP TABLE _corral_outbox",
        "ALTER TABLE _corral_outbox RENAME TO mine",
        "CREATE INDEX sneaky ON _corral_outbox (topic)",
        "CREATE TRIGGER sneaky AFTER INSERT ON _corral_outbox BEGIN DELETE FROM junk; END",
        "CREATE TABLE _corral_mine (x)",
        "CREATE VIEW _corral_mine AS SELECT 1",
    ] {
        let reply = host.sql(statement);
        assert_eq!(reply["error"], "access-denied", "{statement}: {reply}");
    }
    // A view may name them, but reading through it is reading them.
    host.sql("CREATE VIEW peek AS SELECT * FROM _corral_outbox");
    assert_eq!(host.sql("SELECT * FROM peek")["error"], "access-denied");
    // Publishing still works: the host writes there itself.
    let published = host.post("/chaos/publish?topic=chaos.x", &json!({}));
    assert_eq!(published.status, 200, "{}", published.text());
}

#[test]
fn every_function_whose_cost_is_superlinear_ends_within_its_statement_timeout() {
    // The default value cap (1 MiB); a 200 ms deadline that the progress
    // handler and the watchdog enforce between steps, but not inside one
    // call of a function.
    let host = chaos("db_statement_timeout_ms = 200");
    let a = |n: u32| format!("printf('%.*c', {n}, 'a')");
    let z = |n: u32| format!("printf('%.*c', {n}, 'z')");
    let keys = |n: u32| {
        format!(
            "(WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n}) \
             SELECT json_group_object('k' || i, 1) FROM k)"
        )
    };
    let pairs = |n: usize| vec!["'$[0]', 1"; n].join(", ");
    let paths = |n: usize| vec!["'$[0]'"; n].join(", ");
    let big_array = format!("json_array({})", a(1_000_000));
    // (what, statement, what it must come to): the worst case past each
    // guard, and the largest call each guard lets through.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "instr past",
            format!("SELECT instr({}, {} || 'b')", a(1_040_000), a(524_287)),
            "limit-exceeded",
        ),
        (
            "instr within",
            format!("SELECT instr({}, {} || 'b')", a(1_040_000), a(2_000)),
            "rows",
        ),
        (
            "replace past",
            format!("SELECT length(replace({}, {} || 'b', 'x'))", a(1_040_000), a(524_287)),
            "limit-exceeded",
        ),
        (
            "replace within",
            format!("SELECT length(replace({}, {} || 'b', 'x'))", a(1_040_000), a(2_000)),
            "rows",
        ),
        (
            "ltrim past",
            format!(
                "SELECT length(ltrim({}, printf('%.*c', 87380, 'y') || 'z'))",
                z(1_048_575)
            ),
            "limit-exceeded",
        ),
        (
            "rtrim within",
            format!("SELECT length(rtrim({}, 'yyyyyyyz'))", z(1_040_000)),
            "rows",
        ),
        (
            "trim within",
            format!("SELECT length(trim({}, 'yyyyyyyz'))", z(1_040_000)),
            "rows",
        ),
        (
            "unhex past",
            format!("SELECT length(unhex({}, {} || 'z'))", z(1_048_575), a(1_048_574)),
            "limit-exceeded",
        ),
        (
            "unhex (the reported case)",
            format!("SELECT length(unhex({}, {} || 'z'))", z(100_000), a(99_999)),
            "limit-exceeded",
        ),
        (
            "unhex within",
            format!("SELECT length(unhex({}, 'yyyyyyyyyyyyyyyz'))", z(1_040_000)),
            "rows",
        ),
        (
            "like past",
            format!("SELECT {} LIKE '%' || {} || 'b'", a(1_040_000), a(998)),
            "limit-exceeded",
        ),
        (
            "like with escape past",
            format!("SELECT {} LIKE '%' || {} || 'b' ESCAPE '!'", a(1_040_000), a(998)),
            "limit-exceeded",
        ),
        (
            "like within",
            format!("SELECT {} LIKE '%' || {} || 'b'", a(1_040_000), a(14)),
            "rows",
        ),
        (
            "glob past",
            format!("SELECT {} GLOB '*' || {} || 'b'", a(1_040_000), a(998)),
            "limit-exceeded",
        ),
        (
            "glob within",
            format!("SELECT {} GLOB '*' || {} || 'b'", a(1_040_000), a(14)),
            "rows",
        ),
        (
            "json_patch past",
            format!("SELECT length(json_patch('{{}}', {}))", keys(80_000)),
            "limit-exceeded",
        ),
        (
            "json_patch within",
            format!("SELECT length(json_patch('{{}}', {}))", keys(1_200)),
            "rows",
        ),
        (
            "json_set past",
            format!("SELECT length(json_set({big_array}, {}))", pairs(31)),
            "limit-exceeded",
        ),
        (
            "json_set within",
            format!("SELECT length(json_set({big_array}, {}))", pairs(4)),
            "rows",
        ),
        (
            "json_remove past",
            format!("SELECT length(json_remove({big_array}, {}))", paths(63)),
            "limit-exceeded",
        ),
        (
            "json_extract past",
            format!("SELECT length(json_extract({big_array}, {}))", paths(63)),
            "limit-exceeded",
        ),
        (
            "json_pretty",
            format!("SELECT length(json_pretty({big_array}, {}))", a(1_000_000)),
            "access-denied",
        ),
        (
            "full-text search",
            "CREATE VIRTUAL TABLE f USING fts5(body)".into(),
            "access-denied",
        ),
        // Linear, but their output is much larger than their input: the
        // value cap holds before the work is done.
        (
            "concat",
            format!("SELECT length(concat({}))", vec![a(1_040_000); 63].join(", ")),
            "limit-exceeded",
        ),
        (
            "printf width",
            "SELECT length(printf('%2000000000d', 1))".into(),
            "limit-exceeded",
        ),
        (
            "zeroblob",
            "SELECT length(zeroblob(2000000000))".into(),
            "limit-exceeded",
        ),
        (
            "json_group_array",
            format!(
                "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 300) SELECT length(json_group_array({})) FROM k",
                a(1_000_000)
            ),
            "limit-exceeded",
        ),
        (
            "deep JSON",
            "SELECT json_valid(printf('%.*c', 998, '[') || printf('%.*c', 998, ']'))".into(),
            "rows",
        ),
    ];
    for (what, statement, expected) in cases {
        let started = Instant::now();
        let reply = host.sql(&statement);
        let took = started.elapsed();
        let outcome = reply["error"]
            .as_str()
            .unwrap_or(if reply["rows"].is_array() { "rows" } else { "?" });
        assert_eq!(outcome, expected, "{what}: {reply}");
        eprintln!("{what}: {outcome} in {took:?}");
        assert!(took < Duration::from_millis(500), "{what} took {took:?}");
    }
}
