//! Writes under contention: requests take each database's writer in turn
//! through the host's queue (never SQLite's busy handler), writes outside a
//! transaction commit in groups, and a write that fails, even one that
//! makes SQLite roll back everything, takes no other request's write with it.

use std::sync::Mutex;

use serde_json::{Value, json};

use crate::support::{TestHost, host};

/// Every order, page by page.
fn all_orders(host: &TestHost) -> Vec<Value> {
    let (mut orders, mut after) = (Vec::new(), 0);
    loop {
        let page = host.get(&format!("/orders?limit=100&after={after}")).json();
        orders.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return orders,
        }
    }
}

#[test]
fn concurrent_orders_and_sign_ups_all_succeed() {
    let host = host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .start();
    for i in 0..10 {
        let created = host.post(
            "/users",
            &json!({ "name": format!("Buyer {i}"), "email": format!("buyer{i}@example.com") }),
        );
        assert_eq!(created.status, 201);
    }
    // More transactions at once than the host has SQL threads, each taking
    // the writer while its guest runs between statements, next to sign-ups.
    let (threads, each) = (16, 30);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (host, failures) = (&host, &failures);
            scope.spawn(move || {
                for i in 0..each {
                    let reply = if i % 2 == 0 {
                        let items = json!([
                            { "sku": format!("T{t}-{i}"), "quantity": 1, "unit_price_cents": 100 },
                            { "sku": "GIFT-WRAP", "quantity": 1, "unit_price_cents": 99 },
                        ]);
                        host.post("/orders", &json!({ "user_id": 1 + (t + i) % 10, "items": items }))
                    } else {
                        let email = format!("t{t}-{i}@example.com");
                        host.post("/users", &json!({ "name": "Signup", "email": email }))
                    };
                    if reply.status != 201 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", reply.status, reply.text()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Every order is whole: both of its items are there.
    let orders = all_orders(&host);
    assert_eq!(orders.len(), threads * each / 2);
    for order in &orders {
        assert_eq!(order["items"].as_array().unwrap().len(), 2, "{order}");
        assert_eq!(order["total_cents"], 199, "{order}");
    }
}

#[test]
fn a_write_that_fails_in_a_group_takes_no_other_write_with_it() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\ndb_statement_timeout_ms = 300")
        .start();
    let sql = |statement: &str| host.sql_reply(statement);
    assert_eq!(
        sql("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL UNIQUE)").status,
        200
    );
    // Writers insert rows, some of them twice (a constraint violation,
    // which fails only that write), while one runs writes that never end
    // (stopped at their deadline, which makes SQLite roll back the whole
    // transaction they were grouped in).
    let endless = "INSERT INTO t (who) SELECT 'slow-' || x FROM \
                   (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)";
    let (threads, each) = (8, 40);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| (0..6).map(|_| sql(endless).json()).collect::<Vec<_>>());
        for t in 0..threads {
            let (sql, outcomes) = (&sql, &outcomes);
            scope.spawn(move || {
                for i in 0..each {
                    // Every fifth write repeats the one before it.
                    let n = if i % 5 == 4 { i - 1 } else { i };
                    let reply = sql(&format!("INSERT INTO t (who) VALUES ('w{t}-{n}')"));
                    outcomes.lock().unwrap().push((i % 5 == 4, reply.status, reply.text()));
                }
            });
        }
        for reply in slow.join().unwrap() {
            assert_eq!(reply["error"], "limit-exceeded", "{reply}");
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    for (repeated, status, text) in &outcomes {
        match repeated {
            false => assert_eq!(*status, 200, "{text}"),
            true => assert!(*status == 422 && text.contains("constraint-violation"), "{text}"),
        }
    }
    let count = |filter: &str| sql(&format!("SELECT count(*) FROM t WHERE {filter}")).json()["rows"][0][0].clone();
    let written = outcomes.iter().filter(|(_, status, _)| *status == 200).count();
    assert_eq!(
        count("who LIKE 'w%'"),
        json!(written),
        "a write that succeeded is missing"
    );
    assert_eq!(count("who LIKE 'slow-%'"), json!(0));
}

#[test]
fn a_group_of_slow_writes_gives_the_writer_back_between_them() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\ndb_statement_timeout_ms = 10000")
        .start();
    // Each write counts for a while, then fails alone (a NOT NULL
    // violation undoes that statement, not its group's transaction).
    let slow = "INSERT INTO junk (data) SELECT NULL FROM (SELECT count(*) AS c FROM \
        (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) SELECT x FROM n)) WHERE c > 0";
    let started = std::time::Instant::now();
    let answered = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let reply = host.sql_reply(slow);
                assert_eq!(reply.json()["error"], "constraint-violation", "{}", reply.text());
                answered.lock().unwrap().push(started.elapsed());
            });
        }
    });
    let mut answered = answered.into_inner().unwrap();
    answered.sort();
    eprintln!("answered after {answered:?}");
    // The first ran alone; the seven that queued behind it were not
    // answered together after one group ran them all (within moments of
    // each other, at the very end), but one by one: their answers spread
    // over most of the run. (Relative to the whole run, not to the first
    // write, whose time also holds the host's start-up of a burst.)
    let spread = (answered[7] - answered[1]).as_secs_f64();
    assert!(spread > answered[7].as_secs_f64() / 4.0, "{answered:?}");
    // Fast writes still go in groups, and the writer is free again.
    let reply = host.sql_reply("INSERT INTO junk (data) VALUES (x'01')");
    assert_eq!(reply.status, 200, "{}", reply.text());
}
