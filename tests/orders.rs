//! The orders service through HTTP: placing orders, their validation, and
//! the status life cycle.

use serde_json::{Value, json};

use crate::support::{TestHost, error_fields, host};

/// orders, next to the users service it checks users against, with
/// users 1 to 8.
fn orders_host() -> TestHost {
    let host = host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .start();
    for i in 1..=8 {
        let reply = host.post(
            "/users",
            &json!({ "name": format!("User {i}"), "email": format!("user{i}@example.com") }),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    host
}

fn place(host: &TestHost, user_id: i64, items: Value) -> Value {
    let reply = host.post("/orders", &json!({ "user_id": user_id, "items": items }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

fn item(sku: &str, quantity: i64, unit_price_cents: i64) -> Value {
    json!({ "sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents })
}

#[test]
fn place_then_read() {
    let host = orders_host();
    let items = json!([item("TEA-1", 2, 450), item("MUG-7", 1, 1299), item("FREE", 3, 0)]);
    let reply = host.post("/orders", &json!({ "user_id": 7, "items": items }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let order = reply.json();
    let id = order["id"].as_i64().unwrap();
    assert_eq!(reply.header("location"), Some(format!("/orders/{id}").as_str()));
    assert_eq!(order["user_id"], 7);
    assert_eq!(order["status"], "pending");
    assert_eq!(order["items"], items);
    assert_eq!(order["total_cents"], 2 * 450 + 1299);
    assert!(order["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(host.get(&format!("/orders/{id}")).json(), order);
}

#[test]
fn invalid_orders_are_400_with_the_fields_at_fault() {
    let host = orders_host();
    let cases = [
        (json!({ "user_id": 1, "items": [] }), vec!["items"]),
        (json!({ "user_id": 1 }), vec!["items"]),
        (json!({ "items": [item("A", 1, 1)] }), vec!["user_id"]),
        (json!({ "user_id": 0, "items": [item("A", 1, 1)] }), vec!["user_id"]),
        (json!({ "user_id": "1", "items": [item("A", 1, 1)] }), vec!["user_id"]),
        (
            json!({ "user_id": 1, "items": [item("A", 0, 1)] }),
            vec!["items[0].quantity"],
        ),
        (
            json!({ "user_id": 1, "items": [item("A", -2, 1)] }),
            vec!["items[0].quantity"],
        ),
        (
            json!({ "user_id": 1, "items": [item("A", 1, 1), item("B", 1, -1)] }),
            vec!["items[1].unit_price_cents"],
        ),
        (json!({ "user_id": 1, "items": [item("", 1, 1)] }), vec!["items[0].sku"]),
        (
            json!({ "user_id": 1, "items": [item(&"s".repeat(65), 1, 1)] }),
            vec!["items[0].sku"],
        ),
        (
            json!({ "user_id": 1, "items": [{ "sku": "A", "quantity": 1.5, "unit_price_cents": 1 }] }),
            vec!["items[0].quantity"],
        ),
        (
            json!({ "user_id": 1, "items": [{ "sku": "A" }] }),
            vec!["items[0].quantity", "items[0].unit_price_cents"],
        ),
        (
            json!({ "user_id": 1, "items": [{ "sku": "A", "quantity": 1, "unit_price_cents": 1, "note": "x" }] }),
            vec!["items[0].note"],
        ),
        (json!({ "user_id": 1, "items": ["A"] }), vec!["items[0]"]),
        (json!({ "user_id": 1, "items": "A" }), vec!["items"]),
        // Each line fits in 64 bits; the total does not.
        (
            json!({ "user_id": 1, "items": [item("A", 1 << 62, 2), item("B", 1 << 62, 2)] }),
            vec!["items"],
        ),
        (
            json!({ "user_id": 1, "items": [item("A", i64::MAX, 2)] }),
            vec!["items"],
        ),
        (
            json!({ "user_id": 1, "items": (0..101).map(|i| item(&format!("S{i}"), 1, 1)).collect::<Vec<_>>() }),
            vec!["items"],
        ),
    ];
    for (body, fields) in cases {
        let problem = host.post("/orders", &body).assert_problem(400, "validation");
        assert_eq!(error_fields(&problem), fields, "{body}");
    }
    let too_big = json!({ "user_id": 1, "items": [{ "sku": "A", "quantity": u64::MAX, "unit_price_cents": 1 }] });
    host.post("/orders", &too_big).assert_problem(400, "validation");
    host.post_raw("/orders", "application/json", b"{\"user_id\": 1, \"items\": [")
        .assert_problem(400, "malformed-json");
    assert_eq!(host.get("/orders").json()["items"], json!([]), "nothing was written");
}

#[test]
fn statuses_follow_the_life_cycle() {
    let host = orders_host();
    let order = place(&host, 1, json!([item("A", 1, 100)]));
    let path = format!("/orders/{}", order["id"]);
    for status in ["paid", "shipped", "delivered"] {
        let reply = host.patch(&path, &json!({ "status": status }));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["status"], status);
        assert_eq!(reply.json()["items"], order["items"]);
    }
    for status in ["pending", "paid", "shipped", "delivered", "cancelled"] {
        let problem = host
            .patch(&path, &json!({ "status": status }))
            .assert_problem(409, "conflict");
        assert_eq!(problem["current_status"], "delivered");
        assert!(problem["detail"].as_str().unwrap().contains("delivered"), "{problem}");
    }
    assert_eq!(host.get(&path).json()["status"], "delivered");
}

#[test]
fn pending_and_paid_orders_can_be_cancelled() {
    let host = orders_host();
    let pending = place(&host, 1, json!([item("A", 1, 100)]));
    let paid = place(&host, 1, json!([item("A", 1, 100)]));
    let shipped = place(&host, 1, json!([item("A", 1, 100)]));
    host.patch(&format!("/orders/{}", paid["id"]), &json!({ "status": "paid" }));
    host.patch(&format!("/orders/{}", shipped["id"]), &json!({ "status": "paid" }));
    host.patch(&format!("/orders/{}", shipped["id"]), &json!({ "status": "shipped" }));

    for order in [&pending, &paid] {
        let reply = host.patch(&format!("/orders/{}", order["id"]), &json!({ "status": "cancelled" }));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["status"], "cancelled");
    }
    let problem = host
        .patch(&format!("/orders/{}", shipped["id"]), &json!({ "status": "cancelled" }))
        .assert_problem(409, "conflict");
    assert_eq!(problem["current_status"], "shipped");
    let cancelled = format!("/orders/{}", pending["id"]);
    let problem = host
        .patch(&cancelled, &json!({ "status": "paid" }))
        .assert_problem(409, "conflict");
    assert_eq!(problem["current_status"], "cancelled");
    // Skipping a step is a conflict too.
    let fresh = place(&host, 1, json!([item("A", 1, 100)]));
    let problem = host
        .patch(&format!("/orders/{}", fresh["id"]), &json!({ "status": "shipped" }))
        .assert_problem(409, "conflict");
    assert_eq!(problem["current_status"], "pending");
}

#[test]
fn bad_status_changes_are_4xx() {
    let host = orders_host();
    let order = place(&host, 1, json!([item("A", 1, 100)]));
    let path = format!("/orders/{}", order["id"]);
    for body in [
        json!({ "status": "lost" }),
        json!({ "status": 3 }),
        json!({}),
        json!({ "status": "paid", "x": 1 }),
    ] {
        host.patch(&path, &body).assert_problem(400, "validation");
    }
    host.patch("/orders/9999", &json!({ "status": "paid" }))
        .assert_problem(404, "not-found");
    host.get("/orders/9999").assert_problem(404, "not-found");
    host.get("/orders/nope").assert_problem(404, "not-found");
    host.delete(&path).assert_problem(405, "method-not-allowed");
    assert_eq!(host.get(&path).json()["status"], "pending");
}

#[test]
fn lists_filter_by_user_and_page() {
    let host = orders_host();
    let mut mine = Vec::new();
    for i in 0..12 {
        let user = if i % 3 == 0 { 2 } else { 1 };
        let order = place(&host, user, json!([item(&format!("SKU-{i}"), i + 1, 10)]));
        if user == 1 {
            mine.push(order);
        }
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = host.get(&format!("/orders?user_id=1&limit=3&after={after}")).json();
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, mine, "every order of user 1, in order, with its items");
    assert_eq!(
        host.get("/orders?limit=100").json()["items"].as_array().unwrap().len(),
        12
    );
    assert_eq!(host.get("/orders?user_id=3").json()["items"], json!([]));
    for query in ["user_id=x", "user_id=0", "limit=0", "limit=101", "after=-3"] {
        host.get(&format!("/orders?{query}")).assert_problem(400, "validation");
    }
}
