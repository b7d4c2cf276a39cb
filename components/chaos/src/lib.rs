//! A component that misbehaves on purpose, for tests only: it panics, loops,
//! exhausts its memory, stack and database, returns huge bodies, runs any SQL
//! it is sent (with bound parameters too), floods its output, probes its
//! sandbox, looks for what an earlier request left in its memory, echoes the
//! headers it gets and sets any it is asked to. Never part of a real configuration.

use std::hint::black_box;

use corral_sdk::db::{self, SqliteError, Value};
use corral_sdk::{Problem, Request, Response, Service};
use serde_json::json;

struct Chaos;

corral_sdk::export_service!(Chaos);

impl Service for Chaos {
    /// Tests that watch the host start slowly put a delay in `init_delay`.
    fn init() -> Result<(), String> {
        db::migrate(&[
            "CREATE TABLE junk (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
            "CREATE TABLE received (seq INTEGER PRIMARY KEY, id TEXT, topic TEXT, source TEXT, attempt INTEGER,
             ordering_key TEXT, payload TEXT)",
        ])
        .map_err(|e| e.to_string())?;
        #[derive(serde::Deserialize)]
        struct Delay {
            ms: u64,
        }
        if let Ok(Some(delay)) = db::query_optional::<Delay>("SELECT ms FROM init_delay", &[]) {
            std::thread::sleep(std::time::Duration::from_millis(delay.ms));
        }
        Ok(())
    }

    fn on_event(event: corral_sdk::Event) -> corral_sdk::Outcome {
        on_event(event)
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        match req.segments().as_slice() {
            ["chaos", "panic"] => panic!("chaos: a deliberate panic"),
            ["chaos", "loop"] => spin(),
            ["chaos", "alloc"] => allocate_forever(),
            ["chaos", "recurse"] => Ok(Response::text(200, &recurse(0).to_string())),
            ["chaos", "big-body"] => big_body(&req),
            ["chaos", "sleep"] => sleep(&req),
            ["chaos", "print"] => {
                println!("chaos says hello on stdout");
                eprintln!("chaos says hello on stderr");
                corral_sdk::log::warn("chaos says hello through the log interface");
                Ok(Response::empty(204))
            }
            ["chaos", "sandbox"] => Ok(Response::json(200, &sandbox())),
            // Under any prefix, so that a second chaos at another route has it too.
            [.., "residue"] => Ok(Response::json(200, &residue())),
            ["chaos", "echo"] => Ok(Response::json(
                200,
                &json!({ "headers": req.headers(), "client_addr": req.client_addr() }),
            )),
            ["chaos", "answer-with"] => {
                // `count` headers: `header` itself, then `header-1`, `header-2`, ...
                let name = req.query("header").unwrap_or_default();
                let value = req.query("value").unwrap_or_default();
                let count: usize = req.query("count").and_then(|c| c.parse().ok()).unwrap_or(1);
                let response = Response::empty(204).header(&name, value.clone());
                Ok((1..count).fold(response, |r, i| r.header(&format!("{name}-{i}"), value.clone())))
            }
            ["chaos", "sql"] => run_sql(&req),
            ["chaos", "query"] => query(&req),
            ["chaos", "write"] => write_at_once(&req),
            ["chaos", "write-zeroes"] => write_zeroes(&req),
            ["chaos", "lines"] => lines(&req),
            ["chaos", "publish"] => publish(&req),
            ["chaos", "received"] => answer(db::execute(
                "SELECT id, topic, source, attempt, ordering_key, payload FROM received ORDER BY seq",
                &[],
            )),
            ["chaos", "txn-trap"] => txn_trap(),
            ["chaos", "fill"] => fill(),
            _ => Err(Problem::not_found(format!("no chaos at {}", req.path()))),
        }
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn allocate_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![7u8; 1 << 20]));
    }
}

/// Recursion whose frames live on the wasm stack (locals only), so it ends
/// in the engine's stack overflow trap. Frames with arrays would live on
/// Rust's shadow stack in linear memory and end in a memory fault instead.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    black_box(recurse(black_box(depth + 1))) + 1
}

fn big_body(req: &Request) -> Result<Response, Problem> {
    let mib: usize = req.query("mib").and_then(|m| m.parse().ok()).unwrap_or(64);
    Ok(Response::text(200, &"x".repeat(mib << 20)))
}

fn sleep(req: &Request) -> Result<Response, Problem> {
    let ms: u64 = req.query("ms").and_then(|m| m.parse().ok()).unwrap_or(60_000);
    corral_sdk::log::info(&format!("sleeping for {ms} ms"));
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Ok(Response::text(200, "awake"))
}

/// Set by every request; a request that finds it set runs where an earlier
/// one ran and was not reset.
static mut LEFT_BEHIND: u64 = 0;
const MARK: u64 = 0x0c0f_fee0_dead_beef;
/// Pages grown past the allocator's, checked and marked by every request.
const GROWN_PAGES: usize = 16;

/// What an earlier request left in this instance's memory, if anything: a
/// static it set and pages it grew and wrote. Each request leaves both.
fn residue() -> serde_json::Value {
    // SAFETY: one request, one thread; volatile so neither access is elided.
    let static_left = unsafe { std::ptr::read_volatile(&raw const LEFT_BEHIND) } == MARK;
    unsafe { std::ptr::write_volatile(&raw mut LEFT_BEHIND, MARK) };
    let first = grow_memory(GROWN_PAGES);
    assert_ne!(first, usize::MAX, "cannot grow memory");
    let mut dirty_words = 0;
    for page in first..first + GROWN_PAGES {
        for offset in (0..65536).step_by(4096) {
            let word = (page * 65536 + offset) as *mut u64;
            // SAFETY: inside the pages just grown, which nothing else uses.
            unsafe {
                if std::ptr::read_volatile(word) != 0 {
                    dirty_words += 1;
                }
                std::ptr::write_volatile(word, MARK);
            }
        }
    }
    json!({ "static_left": static_left, "dirty_words": dirty_words, "memory_pages": first + GROWN_PAGES })
}

/// Grows linear memory by `pages`; the first new page, or `usize::MAX`.
#[cfg(target_arch = "wasm32")]
fn grow_memory(pages: usize) -> usize {
    core::arch::wasm32::memory_grow(0, pages)
}

/// Built for the host only by `cargo clippy --all-targets`; never run there.
#[cfg(not(target_arch = "wasm32"))]
fn grow_memory(_pages: usize) -> usize {
    usize::MAX
}

/// What the guest can see of the machine; everything should be empty or denied.
fn sandbox() -> serde_json::Value {
    let outcome = |r: Result<String, std::io::Error>| match r {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "err": e.to_string() }),
    };
    json!({
        "env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>(),
        "args": std::env::args().collect::<Vec<_>>(),
        "read_root": outcome(std::fs::read_dir("/").map(|d| d.count().to_string())),
        "read_passwd": outcome(std::fs::read_to_string("/etc/passwd")),
        "write_file": outcome(std::fs::write("escape.txt", b"x").map(|_| "written".into())),
        "connect": outcome(std::net::TcpStream::connect("127.0.0.1:22").map(|_| "connected".into())),
    })
}

/// Runs the SQL in the body and returns the rows or the error variant.
fn run_sql(req: &Request) -> Result<Response, Problem> {
    answer(db::execute(&String::from_utf8_lossy(req.body()), &[]))
}

/// Records each delivery, then does what its payload says: `{"fail": n}`
/// fails the first n attempts (by trapping), `{"fail": "always"}` every one,
/// `{"retry_ms": m}` asks for a retry once, `{"dead": "why"}` dead-letters it.
fn on_event(event: corral_sdk::Event) -> corral_sdk::Outcome {
    use corral_sdk::Outcome;
    let payload: serde_json::Value = event.json().unwrap_or_default();
    let recorded = db::execute(
        "INSERT INTO received (id, topic, source, attempt, ordering_key, payload) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            event.id.as_str().into(),
            event.topic.as_str().into(),
            event.source.as_str().into(),
            i64::from(event.attempt).into(),
            event.ordering_key.clone().into(),
            String::from_utf8_lossy(&event.payload).into_owned().into(),
        ],
    );
    if let Err(e) = recorded {
        corral_sdk::log::warn(&format!("cannot record a delivery: {e}"));
        return Outcome::RetryAfter(50);
    }
    if let Some(ms) = payload["sleep_ms"].as_u64() {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    match (&payload["fail"], &payload["retry_ms"], &payload["dead"]) {
        (serde_json::Value::String(s), _, _) if s == "always" => panic!("chaos: failing a delivery on purpose"),
        (fail, _, _) if fail.as_u64().is_some_and(|n| u64::from(event.attempt) <= n) => {
            panic!("chaos: failing attempt {} on purpose", event.attempt)
        }
        (_, retry, _) if retry.as_u64().is_some() && event.attempt == 1 => {
            Outcome::RetryAfter(retry.as_u64().unwrap_or(0) as u32)
        }
        (_, _, serde_json::Value::String(why)) => Outcome::DeadLetter(why.clone()),
        _ => Outcome::Ack,
    }
}

/// Publishes `n` messages (default 1) of the JSON body to `topic`; with
/// `key`, under that ordering key; with `txn=commit|rollback`, inside a
/// transaction that also writes a row to `junk`. Returns their ids.
fn publish(req: &Request) -> Result<Response, Problem> {
    let topic = req.query("topic").unwrap_or_else(|| "chaos.test".into());
    let n: usize = req.query("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    let key = req.query("key");
    let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or(json!({}));
    let send = || -> Result<Vec<String>, Problem> {
        (0..n)
            .map(|i| {
                let mut payload = body.clone();
                payload["i"] = json!(i);
                corral_sdk::events::publish_with(&topic, &payload, key.as_deref())
                    .map_err(|e| Problem::new(422, "publish-failed", "Not published", e.to_string()))
            })
            .collect()
    };
    let ids = match req.query("txn").as_deref() {
        None => send()?,
        Some(end) => {
            corral_sdk::bindings::corral::service::sqlite::begin().map_err(db::Error::from)?;
            db::execute("INSERT INTO junk (data) VALUES (x'01')", &[])?;
            let ids = send()?;
            match end {
                "rollback" => corral_sdk::bindings::corral::service::sqlite::rollback(),
                _ => corral_sdk::bindings::corral::service::sqlite::commit(),
            }
            .map_err(db::Error::from)?;
            ids
        }
    };
    Ok(Response::json(200, &json!({ "ids": ids })))
}

/// Runs `{"sql": "...", "params": [...]}`: a parameter is null, a number,
/// a string, or `{"blob": [bytes]}` / `{"blob_len": n, "byte": b}`.
fn query(req: &Request) -> Result<Response, Problem> {
    let body: serde_json::Value =
        serde_json::from_slice(req.body()).map_err(|e| Problem::bad_request("malformed-json", e.to_string()))?;
    let sql = body["sql"].as_str().unwrap_or_default();
    let params: Vec<Value> = body["params"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Number(n) => n
                .as_i64()
                .map_or(Value::Real(n.as_f64().unwrap_or(0.0)), Value::Integer),
            serde_json::Value::String(s) => Value::Text(s.clone()),
            other => match other["blob_len"].as_u64() {
                Some(len) => Value::Blob(vec![other["byte"].as_u64().unwrap_or(0) as u8; len as usize]),
                None => Value::Blob(
                    other["blob"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|b| b.as_u64().unwrap_or(0) as u8)
                        .collect(),
                ),
            },
        })
        .collect();
    answer(db::execute(sql, &params))
}

/// Writes `kib` KiB to stdout in one `write`, ignoring `check-write`.
fn write_at_once(req: &Request) -> Result<Response, Problem> {
    let kib: usize = req.query("kib").and_then(|n| n.parse().ok()).unwrap_or(1024);
    let stdout = wasi::cli::stdout::get_stdout();
    let outcome = stdout.write(&vec![b'x'; kib << 10]);
    Ok(Response::text(200, &format!("{outcome:?}")))
}

/// Asks stdout to write `n` zero bytes at once.
fn write_zeroes(req: &Request) -> Result<Response, Problem> {
    let n: u64 = req.query("n").and_then(|n| n.parse().ok()).unwrap_or(1 << 40);
    let stdout = wasi::cli::stdout::get_stdout();
    let outcome = stdout.write_zeroes(n);
    Ok(Response::text(200, &format!("{outcome:?}")))
}

/// Writes `mib` MiB of empty lines to stdout, as fast as `check-write` allows.
fn lines(req: &Request) -> Result<Response, Problem> {
    let mib: usize = req.query("mib").and_then(|n| n.parse().ok()).unwrap_or(64);
    let stdout = wasi::cli::stdout::get_stdout();
    let chunk = vec![b'\n'; 64 << 10];
    let mut written = 0;
    while written < mib << 20 {
        let allowed = stdout.check_write().unwrap_or(0) as usize;
        if allowed == 0 {
            stdout.subscribe().block();
            continue;
        }
        let n = allowed.min(chunk.len());
        if stdout.write(&chunk[..n]).is_err() {
            break;
        }
        written += n;
    }
    Ok(Response::json(200, &json!({ "written": written })))
}

fn answer(result: Result<db::QueryResult, db::Error>) -> Result<Response, Problem> {
    match result {
        Ok(result) => {
            let rows: Vec<Vec<serde_json::Value>> = result
                .rows
                .iter()
                .map(|row| row.values.iter().map(value_json).collect())
                .collect();
            Ok(Response::json(200, &json!({ "columns": result.columns, "rows": rows })))
        }
        Err(db::Error::Sqlite(e)) => {
            let (kind, message) = error_parts(&e);
            Ok(Response::json(422, &json!({ "error": kind, "message": message })))
        }
        Err(other) => Err(other.into()),
    }
}

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(n) => json!(n),
        Value::Real(n) => json!(n),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(b),
    }
}

fn error_parts(e: &SqliteError) -> (&'static str, String) {
    match e {
        SqliteError::InvalidStatement(m) => ("invalid-statement", m.clone()),
        SqliteError::ConstraintViolation(c) => ("constraint-violation", c.message.clone()),
        SqliteError::DatabaseFull => ("database-full", String::new()),
        SqliteError::AccessDenied(m) => ("access-denied", m.clone()),
        SqliteError::Busy => ("busy", String::new()),
        SqliteError::LimitExceeded(m) => ("limit-exceeded", m.clone()),
        SqliteError::InvalidTransactionState(m) => ("invalid-transaction-state", m.clone()),
        SqliteError::Io(m) => ("io", m.clone()),
    }
}

/// Writes a row inside a transaction and traps before committing.
fn txn_trap() -> Result<Response, Problem> {
    corral_sdk::bindings::corral::service::sqlite::begin().map_err(db::Error::from)?;
    db::execute("INSERT INTO junk (data) VALUES (x'01')", &[])?;
    panic!("chaos: trapping with a transaction open");
}

/// Inserts 64 KiB blobs until the database is full.
fn fill() -> Result<Response, Problem> {
    let mut rows = 0u64;
    loop {
        match db::execute("INSERT INTO junk (data) VALUES (zeroblob(65536))", &[]) {
            Ok(_) => rows += 1,
            Err(db::Error::Sqlite(SqliteError::DatabaseFull)) => {
                return Ok(Response::json(507, &json!({ "rows": rows, "error": "database-full" })));
            }
            Err(other) => return Err(other.into()),
        }
    }
}
