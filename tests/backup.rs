//! `corral backup` and `corral restore`: a copy taken while clients write
//! holds every write acknowledged before it began, and a restore is whole
//! or changes nothing.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{ADMIN_TOKEN, TestHost, admin_toml, client, host, run_corral};

fn users_host(data: Option<&Path>) -> TestHost {
    let builder = host().component("users", "users", &["/users"]).toml(&admin_toml());
    match data {
        Some(dir) => builder.data_dir(dir).start(),
        None => builder.start(),
    }
}

/// Runs `corral <args> --admin <host's> --token <token>` in `dir`.
fn corral_against(host: &TestHost, args: &[&OsStr], dir: &Path) -> (bool, String) {
    let admin = format!("http://{}", host.admin_addr.unwrap());
    let mut all = args.to_vec();
    all.extend([
        OsStr::new("--admin"),
        admin.as_ref(),
        "--token".as_ref(),
        ADMIN_TOKEN.as_ref(),
    ]);
    run_corral(&all, &[], dir)
}

fn integrity(file: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap()
}

#[test]
fn a_backup_taken_under_writes_restores_every_acknowledged_row_on_a_fresh_host() {
    let source = users_host(None);
    let url = source.url("/users");
    // Every write acknowledged, with when its answer arrived.
    let acknowledged: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (url, acknowledged, stop) = (url.clone(), Arc::clone(&acknowledged), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let user = json!({ "name": "W", "email": format!("w{writer}-{n}@example.com") });
                    let sent = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(user.to_string());
                    let Ok(mut reply) = sent else { continue };
                    if reply.status() == 201 {
                        let text = reply.body_mut().read_to_string().unwrap();
                        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                        acknowledged
                            .lock()
                            .unwrap()
                            .push((body["id"].as_i64().unwrap(), Instant::now()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("users.sqlite3");
    let began = Instant::now();
    let (ok, out) = corral_against(
        &source,
        &["backup".as_ref(), "users".as_ref(), "--out".as_ref(), file.as_os_str()],
        work.path(),
    );
    assert!(ok, "{out}");
    // Writes go on while and after the copy is taken.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<i64> = acknowledged
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(id, _)| *id)
        .collect();
    assert!(before.len() > 50, "only {} writes before the backup", before.len());
    assert!(
        acknowledged.len() > before.len(),
        "no write landed after the backup began"
    );
    assert_eq!(integrity(&file), "ok");
    assert!(!work.path().join("users.sqlite3.partial").exists());

    let fresh = users_host(None);
    let (ok, out) = corral_against(
        &fresh,
        &["restore".as_ref(), "users".as_ref(), file.as_os_str()],
        work.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("users: restored"), "{out}");
    for id in &before {
        assert_eq!(fresh.get(&format!("/users/{id}")).status, 200, "user {id} is missing");
    }
    // The restored database goes on taking writes.
    let next = fresh.post("/users", &json!({ "name": "N", "email": "next@example.com" }));
    assert_eq!(next.status, 201, "{}", next.text());
    let data_file = fresh.data_dir.join("users.sqlite3");
    let mut fresh = fresh;
    fresh.terminate();
    assert_eq!(integrity(&data_file), "ok");
}

#[test]
fn a_restore_of_a_broken_or_oversized_file_changes_nothing() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml(&admin_toml())
        .toml("[components.users.limits]\ndb_size_mib = 1")
        .start();
    let ada = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let backup = host.admin("GET", "/components/users/backup", Vec::new());
    assert_eq!(backup.status, 200);
    assert_eq!(backup.header("content-type"), Some("application/vnd.sqlite3"));
    let good = backup.body.clone();
    assert!(good.starts_with(b"SQLite format 3\0"));

    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut flipped = good.clone();
    // Garbage over the second page, where the first table's rows live.
    let page = u16::from_be_bytes([good[16], good[17]]) as usize;
    for byte in &mut flipped[page..2 * page] {
        *byte = 0xA5;
    }
    for (what, body) in [
        ("not a database", b"hello, this is not SQLite".to_vec()),
        ("a component", std::fs::read(crate::support::wasm("users")).unwrap()),
        ("truncated", truncated),
        ("corrupt", flipped),
    ] {
        let reply = host.admin("PUT", "/components/users/backup", body);
        let problem = reply.assert_problem(422, "bad-database");
        assert!(
            problem["detail"].as_str().unwrap().contains("nothing changed"),
            "{what}: {problem}"
        );
        assert_eq!(host.get(&format!("/users/{}", ada["id"])).json(), ada, "after {what}");
    }

    // A database over the component's 1 MiB cap, made outside the host.
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.sqlite3");
    let conn = rusqlite::Connection::open(&big).unwrap();
    conn.execute_batch("CREATE TABLE filler (b BLOB); INSERT INTO filler VALUES (zeroblob(2000000));")
        .unwrap();
    drop(conn);
    let reply = host.admin("PUT", "/components/users/backup", std::fs::read(&big).unwrap());
    reply.assert_problem(413, "body-too-large");
    assert_eq!(host.get(&format!("/users/{}", ada["id"])).json(), ada);

    host.admin("PUT", "/components/nobody/backup", good.clone())
        .assert_problem(404, "not-found");
    host.admin("GET", "/components/nobody/backup", Vec::new())
        .assert_problem(404, "not-found");

    // The good copy, restored over later writes, brings back its rows only.
    let bob = host
        .post("/users", &json!({ "name": "Bob", "email": "bob@example.com" }))
        .json();
    let reply = host.admin("PUT", "/components/users/backup", good);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["tables"], 1, "{}", reply.text());
    assert_eq!(host.get(&format!("/users/{}", ada["id"])).json(), ada);
    host.get(&format!("/users/{}", bob["id"]))
        .assert_problem(404, "not-found");
}

#[test]
fn a_restored_full_text_table_is_held_to_the_policy_by_every_connection() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml(&admin_toml())
        .start();
    // Readers opened before the restore go back to the pool.
    for _ in 0..4 {
        assert!(host.sql("SELECT 1")["rows"].is_array());
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("notes.sqlite3");
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO notes (body) VALUES ('hello'), ('world');
         CREATE VIRTUAL TABLE f USING fts5(body);
         INSERT INTO f (body) VALUES ('hello'), ('world');",
    )
    .unwrap();
    drop(conn);
    let reply = host.admin("PUT", "/components/chaos/backup", std::fs::read(&file).unwrap());
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Whichever connection runs it, a full-text query is refused, as on a
    // file that had the table all along.
    for _ in 0..8 {
        let reply = host.sql("SELECT count(*) FROM f('hello')");
        assert_eq!(reply["error"], "access-denied", "{reply}");
    }
    let reply = host.sql("SELECT body FROM notes ORDER BY id");
    assert!(reply["rows"].is_array(), "{reply}");
    assert!(reply.to_string().contains("world"), "{reply}");
}
