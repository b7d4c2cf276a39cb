//! `corral new`: the generated component builds as it is, and its CRUD
//! example serves through a real host.

use std::process::Command;

use serde_json::json;

use crate::support::{host, run_corral, workspace};

#[test]
fn a_new_component_builds_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = workspace().join("components/sdk");
    let (ok, out) = run_corral(
        &[
            "new".as_ref(),
            "todo-list".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
            "--sdk".as_ref(),
            sdk.as_os_str(),
        ],
        &[],
        dir.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("[components.todo-list]"), "{out}");
    let crate_dir = dir.path().join("todo-list");
    // The workspace's lock file pins the same versions; the target folder
    // is kept between runs.
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = workspace().join("target/generated");
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target)
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let wasm = target.join("wasm32-wasip2/release/todo_list.wasm");
    let config = std::fs::read_to_string(crate_dir.join("component.toml")).unwrap();
    let config: String = config
        .lines()
        .map(|line| match line.starts_with("wasm = ") {
            true => format!("wasm = {:?}", wasm.display().to_string()),
            false => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let host = host().toml(&config).start();

    let created = host.post("/todo-list", &json!({ "title": "write tests" }));
    assert_eq!(created.status, 201, "{}", created.text());
    let item = created.json();
    assert_eq!(item["done"], false);
    let path = created.header("location").unwrap().to_string();
    assert_eq!(host.get(&path).json(), item);
    let done = host.patch(&path, &json!({ "done": true })).json();
    assert_eq!(
        (done["title"].clone(), done["done"].clone()),
        (json!("write tests"), json!(true))
    );
    assert_eq!(host.get("/todo-list").json()["items"], json!([done]));
    let problem = host
        .post("/todo-list", &json!({ "title": " ", "colour": 1 }))
        .assert_problem(400, "validation");
    assert_eq!(crate::support::error_fields(&problem), ["colour", "title"]);
    assert_eq!(host.delete(&path).status, 204);
    host.get(&path).assert_problem(404, "not-found");
}
