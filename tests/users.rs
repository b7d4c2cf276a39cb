//! The users service through HTTP: every route, every validation rule.

use serde_json::{Value, json};

use crate::support::{TestHost, error_fields, host};

fn users_host() -> TestHost {
    host().component("users", "users", &["/users"]).start()
}

fn create(host: &TestHost, name: &str, email: &str) -> Value {
    let reply = host.post("/users", &json!({ "name": name, "email": email }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

#[test]
fn create_then_read() {
    let host = users_host();
    let reply = host.post("/users", &json!({ "name": "Ada Lovelace", "email": "ada@example.com" }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let user = reply.json();
    let id = user["id"].as_i64().unwrap();
    assert_eq!(reply.header("location"), Some(format!("/users/{id}").as_str()));
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["email"], "ada@example.com");
    let created_at = user["created_at"].as_str().unwrap();
    assert!(created_at.len() == 24 && created_at.ends_with('Z'), "{created_at}");

    let reply = host.get(&format!("/users/{id}"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), user);
}

#[test]
fn unknown_users_are_404() {
    let host = users_host();
    for path in [
        "/users/999",
        "/users/0",
        "/users/-1",
        "/users/abc",
        "/users/1.5",
        "/users/99999999999999999999",
    ] {
        host.get(path).assert_problem(404, "not-found");
    }
    host.patch("/users/999", &json!({ "name": "x" }))
        .assert_problem(404, "not-found");
    host.delete("/users/999").assert_problem(404, "not-found");
    host.get("/users/1/extra").assert_problem(404, "not-found");
}

#[test]
fn names_must_be_1_to_100_characters() {
    let host = users_host();
    for (name, ok) in [
        (json!("a"), true),
        (json!("é".repeat(100)), true),
        (json!("x".repeat(101)), false),
        (json!(""), false),
        (json!("   "), false),
        (json!(42), false),
        (Value::Null, false),
    ] {
        let email = format!("n{}@example.com", name.to_string().len());
        let reply = host.post("/users", &json!({ "name": name, "email": email }));
        if ok {
            assert_eq!(reply.status, 201, "{name}: {}", reply.text());
        } else {
            let problem = reply.assert_problem(400, "validation");
            assert_eq!(error_fields(&problem), ["name"], "{name}");
        }
    }
    let problem = host
        .post("/users", &json!({ "email": "x@example.com" }))
        .assert_problem(400, "validation");
    assert_eq!(problem["errors"][0]["message"], "is required");
}

#[test]
fn emails_must_look_like_emails() {
    let host = users_host();
    for email in [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "a da@example.com",
        "ada@@example.com",
    ] {
        let problem = host
            .post("/users", &json!({ "name": "Ada", "email": email }))
            .assert_problem(400, "validation");
        assert_eq!(error_fields(&problem), ["email"], "{email}");
    }
    let long = format!("{}@example.com", "a".repeat(250));
    host.post("/users", &json!({ "name": "Ada", "email": long }))
        .assert_problem(400, "validation");
}

#[test]
fn every_field_error_is_reported_at_once() {
    let host = users_host();
    let problem = host
        .post("/users", &json!({ "name": "", "email": "nope", "age": 3 }))
        .assert_problem(400, "validation");
    let mut fields = error_fields(&problem);
    fields.sort();
    assert_eq!(fields, ["age", "email", "name"]);
}

#[test]
fn emails_are_unique_regardless_of_case() {
    let host = users_host();
    create(&host, "Ada", "ada@example.com");
    let problem = host
        .post("/users", &json!({ "name": "Other", "email": "ADA@Example.COM" }))
        .assert_problem(409, "conflict");
    assert!(
        problem["detail"].as_str().unwrap().contains("ADA@Example.COM"),
        "{problem}"
    );

    let bob = create(&host, "Bob", "bob@example.com");
    host.patch(&format!("/users/{}", bob["id"]), &json!({ "email": "Ada@example.com" }))
        .assert_problem(409, "conflict");
    // Changing the case of one's own email is not a conflict.
    let reply = host.patch(&format!("/users/{}", bob["id"]), &json!({ "email": "BOB@example.com" }));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["email"], "BOB@example.com");
}

#[test]
fn patch_updates_name_and_or_email() {
    let host = users_host();
    let user = create(&host, "Ada", "ada@example.com");
    let path = format!("/users/{}", user["id"]);

    let reply = host.patch(&path, &json!({ "name": "Ada King" }));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["name"], "Ada King");
    assert_eq!(reply.json()["email"], "ada@example.com");

    let reply = host.patch(&path, &json!({ "name": "Countess", "email": "countess@example.com" }));
    assert_eq!(reply.status, 200);
    let updated = reply.json();
    assert_eq!(
        (updated["name"].as_str(), updated["email"].as_str()),
        (Some("Countess"), Some("countess@example.com"))
    );
    assert_eq!(updated["created_at"], user["created_at"]);
    assert_eq!(host.get(&path).json(), updated);

    host.patch(&path, &json!({})).assert_problem(400, "validation");
    host.patch(&path, &json!({ "name": "" }))
        .assert_problem(400, "validation");
    host.patch(&path, &json!({ "email": "nope" }))
        .assert_problem(400, "validation");
    host.patch(&path, &json!({ "name": "x".repeat(101) }))
        .assert_problem(400, "validation");
    assert_eq!(host.get(&path).json(), updated, "failed updates change nothing");
}

#[test]
fn delete_removes_the_user() {
    let host = users_host();
    let user = create(&host, "Ada", "ada@example.com");
    let path = format!("/users/{}", user["id"]);
    let reply = host.delete(&path);
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());
    host.get(&path).assert_problem(404, "not-found");
    host.delete(&path).assert_problem(404, "not-found");
    // The email is free again, and ids are never reused.
    let again = create(&host, "Ada", "ada@example.com");
    assert!(again["id"].as_i64() > user["id"].as_i64());
}

#[test]
fn lists_are_paged_in_id_order() {
    let host = users_host();
    let ids: Vec<i64> = (0..25)
        .map(|i| {
            create(&host, &format!("User {i}"), &format!("user{i}@example.com"))["id"]
                .as_i64()
                .unwrap()
        })
        .collect();

    let page = host.get("/users").json();
    assert_eq!(page["items"].as_array().unwrap().len(), 20, "the default limit is 20");
    assert_eq!(page["next_after"], ids[19]);

    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let reply = host.get(&format!("/users?limit=7&after={after}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|u| u["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let page = host.get("/users?limit=100").json();
    assert_eq!(page["items"].as_array().unwrap().len(), 25);
    assert_eq!(page["next_after"], Value::Null);
    let page = host.get(&format!("/users?after={}", ids[24])).json();
    assert_eq!(page["items"], json!([]));

    for query in ["limit=0", "limit=101", "limit=abc", "limit=-5", "after=-1", "after=x"] {
        let problem = host.get(&format!("/users?{query}")).assert_problem(400, "validation");
        let field = query.split('=').next().unwrap();
        assert_eq!(error_fields(&problem), [field], "{query}");
    }
}

#[test]
fn bad_bodies_and_methods_are_4xx_never_500() {
    let host = users_host();
    host.post_raw("/users", "application/json", b"{\"name\": ")
        .assert_problem(400, "malformed-json");
    host.post_raw("/users", "application/json", b"")
        .assert_problem(400, "malformed-json");
    host.post_raw("/users", "application/json", b"[1, 2]")
        .assert_problem(400, "malformed-json");
    host.post_raw("/users", "application/json", b"\"ada\"")
        .assert_problem(400, "malformed-json");
    host.post_raw("/users", "application/json", &[0xff, 0xfe, 0x00])
        .assert_problem(400, "malformed-json");
    host.post_raw("/users", "text/plain", b"{}")
        .assert_problem(415, "unsupported-media-type");
    let wrong_types = host
        .post("/users", &json!({ "name": ["Ada"], "email": 7 }))
        .assert_problem(400, "validation");
    assert_eq!(error_fields(&wrong_types), ["name", "email"]);

    let reply = host.send("PUT", "/users", None);
    reply.assert_problem(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    let reply = host.send("POST", "/users/1", Some(&json!({})));
    reply.assert_problem(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("GET, PATCH, DELETE"));
    host.send("BREW", "/users", None)
        .assert_problem(405, "method-not-allowed");
}
