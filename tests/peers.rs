//! Calls between components through WIT interfaces: orders asking users,
//! chains and cycles of relays, and callees that misbehave.

use serde_json::json;

use crate::support::{TestHost, admin_toml, component_toml, error_fields, host, variant, with_config};

fn shop() -> TestHost {
    host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .toml(&admin_toml())
        .start()
}

fn order_for(user_id: u64) -> serde_json::Value {
    json!({ "user_id": user_id, "items": [{ "sku": "TEA", "quantity": 1, "unit_price_cents": 300 }] })
}

#[test]
fn orders_are_refused_for_users_that_do_not_exist() {
    let host = shop();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let placed = host.post("/orders", &order_for(user["id"].as_u64().unwrap()));
    assert_eq!(placed.status, 201, "{}", placed.text());

    let problem = host
        .post("/orders", &order_for(4242))
        .assert_problem(422, "unknown-user");
    assert_eq!(error_fields(&problem), ["user_id"]);
    assert!(problem["detail"].as_str().unwrap().contains("4242"), "{problem}");
    // A deleted user is a missing user too.
    assert_eq!(host.delete(&format!("/users/{}", user["id"])).status, 204);
    host.post("/orders", &order_for(user["id"].as_u64().unwrap()))
        .assert_problem(422, "unknown-user");
    assert_eq!(
        host.get("/orders").json()["items"].as_array().unwrap().len(),
        1,
        "nothing written for refusals"
    );
}

#[test]
fn an_order_can_carry_its_user() {
    let host = shop();
    let user = host
        .post("/users", &json!({ "name": "Ada Lovelace", "email": "ada@example.com" }))
        .json();
    let order = host.post("/orders", &order_for(user["id"].as_u64().unwrap())).json();
    let path = format!("/orders/{}", order["id"]);
    let plain = host.get(&path).json();
    assert_eq!(plain.get("user"), None);
    let expanded = host.get(&format!("{path}?expand=user")).json();
    assert_eq!(
        expanded["user"],
        json!({ "id": user["id"], "name": "Ada Lovelace", "email": "ada@example.com" })
    );
    assert_eq!(expanded["total_cents"], 300);
    host.get(&format!("{path}?expand=everything"))
        .assert_problem(400, "validation");
    // Once the user is gone, the order shows none.
    host.delete(&format!("/users/{}", user["id"]));
    assert_eq!(
        host.get(&format!("{path}?expand=user")).json()["user"],
        serde_json::Value::Null
    );
}

#[test]
fn a_call_after_a_swap_reaches_the_new_version() {
    let host = shop();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let id = user["id"].as_u64().unwrap();
    let reply = host.admin("PUT", "/components/users", variant("users", "v2"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v2 = reply.json()["version"].as_str().unwrap()[..12].to_string();
    assert_eq!(host.post("/orders", &order_for(id)).status, 201);
    let metrics = host.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("corral_calls_total") && l.contains("callee=\"users\"") && l.contains(&v2))
        .unwrap_or_else(|| panic!("no call to users {v2}:\n{metrics}"));
    assert!(line.contains("outcome=\"ok\"") && line.ends_with(" 1"), "{line}");
}

/// Two relays, each the other's provider, with tight limits on the second.
fn relays() -> TestHost {
    host()
        .component("relay-a", "relay", &["/relay-a"])
        .toml("[components.relay-a.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"")
        .component("relay-b", "relay", &["/relay-b"])
        // A CPU budget well inside the timeout, so that even on a loaded machine
        // a spinning relay runs out of CPU before it runs out of time.
        .toml("[components.relay-b.limits]\ncpu_time_ms = 200\ntimeout_ms = 4000")
        .start()
}

#[test]
fn calls_chain_through_a_cycle_until_the_depth_limit() {
    let host = relays();
    assert_eq!(host.get("/relay-a/local").json()["answered"], 1);
    // a -> b -> a -> b -> a: four calls between components.
    assert_eq!(host.get("/relay-a/3").json()["answered"], 5);
    assert_eq!(host.get("/relay-b/0").json()["answered"], 2);
    let problem = host.get("/relay-a/50").assert_problem(503, "dependency-unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("past the limit of 8"),
        "{problem}"
    );
    assert_eq!(host.get("/relay-a/3").json()["answered"], 5, "and then it serves again");
}

#[test]
fn a_callee_that_fails_gives_the_caller_an_error_not_a_trap() {
    let mut host = relays();
    for (behavior, reason) in [("panic", "panicked"), ("spin", "CPU time"), ("sleep", "timeout")] {
        let problem = host
            .get(&format!("/relay-a/0?behavior={behavior}"))
            .assert_problem(503, "dependency-unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("relay-b") && detail.contains(reason),
            "{behavior}: {detail}"
        );
        assert!(host.is_alive());
        assert_eq!(
            host.get("/relay-a/1").json()["answered"],
            3,
            "relay-b serves again after {behavior}"
        );
    }
    host.wait_for_log(&[
        "a call between components did not complete",
        "caller=relay-a",
        "callee=relay-b",
    ]);
}

#[test]
fn the_request_id_follows_the_call() {
    let host = relays();
    let reply = host.request(
        http::Request::get("/relay-a/1")
            .header("x-request-id", "chain-17")
            .body(Vec::new())
            .unwrap(),
    );
    assert_eq!(reply.status, 200);
    host.wait_for_log(&["component=relay-b", "request_id=chain-17", "forwarding, 1 hops to go"]);
    host.wait_for_log(&["component=relay-a", "request_id=chain-17", "forwarding, 0 hops to go"]);
}

/// Starts `corral serve` on a config and returns its failure output.
fn refused(components: &str) -> String {
    let (ok, output) = with_config(
        "serve",
        &format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{components}"),
    );
    assert!(!ok, "the host started");
    output
}

#[test]
fn missing_and_ambiguous_providers_are_refused_at_load() {
    let alone = refused(&component_toml("orders", "orders", &["/orders"]));
    assert!(
        alone.contains("orders imports corral:shop/users@0.1.0, which no configured component exports"),
        "{alone}"
    );

    let three = [("relay-a", "/a"), ("relay-b", "/b"), ("relay-c", "/c")]
        .iter()
        .map(|(name, route)| component_toml(name, "relay", &[route]))
        .collect::<String>();
    let ambiguous = refused(&three);
    assert!(
        ambiguous.contains("relay-a imports corral:test/relay@0.1.0, which relay-b, relay-c all export: name one in components.relay-a.imports"),
        "{ambiguous}"
    );

    let named_unknown = format!(
        "{}[components.orders.imports]\n\"corral:shop/users@0.1.0\" = \"people\"\n",
        component_toml("orders", "orders", &["/orders"])
    );
    let unknown = refused(&named_unknown);
    assert!(
        unknown.contains("\"people\" is not a configured component"),
        "{unknown}"
    );
}

#[test]
fn a_swap_that_would_break_an_importer_is_refused() {
    let host = shop();
    // chaos exports no corral:shop/users, which orders needs from users.
    let problem = host
        .admin(
            "PUT",
            "/components/users",
            std::fs::read(crate::support::wasm("chaos")).unwrap(),
        )
        .assert_problem(422, "invalid-component");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("orders imports corral:shop/users@0.1.0"), "{detail}");
    let user = host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }));
    assert_eq!(user.status, 201, "users still serves its old version");
}

#[test]
fn the_admin_api_shows_who_provides_what() {
    let host = shop();
    assert_eq!(
        host.component_status("orders")["imports"],
        json!({ "corral:shop/users@0.1.0": "users" })
    );
    let users = host.component_status("users");
    assert_eq!(users["exports"], json!(["corral:shop/users@0.1.0"]));
    assert_eq!(users["imports"], json!({}));
}
