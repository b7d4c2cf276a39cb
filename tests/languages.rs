//! Components in other languages, built here by their own toolchains and
//! served through the real path: a Python service of corral's own world
//! (componentize-py), and `wasi:http` components in Python and JavaScript
//! (componentize-js). `just toolchains` installs the toolchains.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::json;

use crate::support::{admin_toml, host, workspace};

/// Builds one component at a time, and each only when its source changed.
static BUILDING: Mutex<()> = Mutex::new(());

/// Builds `components/<dir>` with `command` (given the output) into
/// `target/languages/<name>.wasm`, unless that is newer than `source`.
fn build(name: &str, dir: &str, source: &str, command: impl FnOnce(&Path) -> Command) -> PathBuf {
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let source_dir = workspace().join("components").join(dir);
    let output = workspace().join(format!("target/languages/{name}.wasm"));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&output).is_some() && modified(&output) >= modified(&source_dir.join(source)) {
        return output;
    }
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    let mut command = command(&output);
    let run = command.current_dir(&source_dir).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}): `just toolchains` installs it",
            command.get_program()
        )
    });
    assert!(
        run.status.success(),
        "building {name} failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    output
}

/// A componentize-py component of `world` in the WIT folder `wit`.
fn python(name: &str, wit: &str, world: &str) -> PathBuf {
    build(
        &format!("python-{name}"),
        &format!("python/{name}"),
        "app.py",
        |output| {
            let mut command = Command::new(workspace().join("target/toolchains/python/bin/componentize-py"));
            command
                .arg("-d")
                .arg(workspace().join(wit))
                .args(["-w", world, "componentize", "app", "-o"])
                .arg(output);
            command
        },
    )
}

/// A componentize-js component of the `wasi:http/proxy` world.
fn javascript(name: &str) -> PathBuf {
    build(&format!("js-{name}"), &format!("js/{name}"), "app.js", |output| {
        let js = workspace().join("components/js");
        let mut command = Command::new(js.join("node_modules/.bin/componentize-js"));
        command
            .arg("--wit")
            .arg(js.join("wit"))
            .args(["--world-name", "proxy", "-o"])
            .arg(output)
            .arg("app.js");
        command
    })
}

fn section(name: &str, wasm: &Path, route: &str) -> String {
    format!(
        "[components.{name}]\nwasm = {:?}\nroutes = [{route:?}]\n",
        wasm.display().to_string()
    )
}

#[test]
fn a_python_service_of_corral_s_world_keeps_its_data_in_its_database() {
    let notes = python("notes", "wit", "corral:service/service");
    let data = tempfile::tempdir().unwrap();
    let mut first = host()
        .toml(&section("notes", &notes, "/notes"))
        .data_dir(data.path())
        .start();
    let created = first.post("/notes", &json!({ "text": "buy milk" }));
    assert_eq!(created.status, 201, "{}", created.text());
    let milk = created.json();
    assert_eq!(milk["text"], "buy milk");
    let eggs = first.post("/notes", &json!({ "text": "eggs" })).json();
    assert_eq!(first.get("/notes").json(), json!([milk, eggs]));
    assert_eq!(first.get(&format!("/notes/{}", milk["id"])).json(), milk);
    first
        .post("/notes", &json!({ "text": "  " }))
        .assert_problem(422, "invalid");
    first
        .post("/notes", &json!({ "text": "x".repeat(1001) }))
        .assert_problem(422, "invalid");
    first
        .post_raw("/notes", "application/json", b"{not json")
        .assert_problem(400, "bad-json");
    assert_eq!(first.delete(&format!("/notes/{}", milk["id"])).status, 204);
    first
        .get(&format!("/notes/{}", milk["id"]))
        .assert_problem(404, "not-found");
    first.wait_for_log(&["note 2 created", "component=notes"]);
    first.terminate();
    first.wait();

    // Its data is in its own SQLite file, there for the next host.
    assert!(data.path().join("notes.sqlite3").is_file());
    let second = host()
        .toml(&section("notes", &notes, "/notes"))
        .data_dir(data.path())
        .start();
    assert_eq!(second.get("/notes").json(), json!([eggs]));
}

#[test]
fn wasi_http_components_in_python_and_javascript_are_served_as_they_are() {
    let py = python("hello", "wit/proxy", "proxy");
    let js = javascript("hello");
    let host = host()
        .toml(&section("py", &py, "/py"))
        .toml(&section("js", &js, "/js"))
        .toml(&admin_toml())
        .start();
    assert_eq!(host.get("/py/hello").text(), "hello from python");
    assert_eq!(host.get("/js/hello").text(), "hello from javascript");
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for prefix in ["/py", "/js"] {
        let echo = host.post_raw(&format!("{prefix}/echo"), "application/octet-stream", &body);
        assert_eq!(echo.status, 200, "{prefix}: {}", echo.text());
        assert!(echo.body == body, "{prefix} echoed something else");
        assert_eq!(host.get(&format!("{prefix}/nowhere")).status, 404);
    }
    for name in ["py", "js"] {
        let component = host.component_status(name);
        assert_eq!(component["version"]["world"], "wasi:http/proxy", "{component}");
    }
}
