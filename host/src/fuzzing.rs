//! Entry points for the fuzzers in `fuzz/` (`just fuzz`, cargo fuzz on
//! nightly) and for the replay of their corpora by `cargo test`
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, drives one boundary
//! of the host with them through its real code, and panics only when an
//! invariant of that boundary breaks:
//! - [`config`]: any text as a config file is resolved or refused with its
//!   problems, never a panic;
//! - [`sql`]: whatever guest SQL the authorizer admits never runs a denied
//!   function (each is replaced by a trap that reports it) and never reads
//!   the host's tables (their canary never shows in a result);
//! - [`guest_response`]: a component's response becomes HTTP with none of
//!   the host's or the connection's headers and within its limits, or is
//!   refused;
//! - [`http_request`]: any bytes sent to a gateway serving real components
//!   get HTTP back or a closed connection, and no task panics.
//!
//! Sits on top of every layer, as `lib.rs` does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::capabilities::bindings::corral::service::sqlite::Value;
use crate::capabilities::bindings::corral::service::types;
use crate::capabilities::sqlite::{Database, DbLimits, SqlThreads};
use crate::config::{ComponentLimits, Config, Overrides};
use crate::limits::responses::{Owed, ResponseBudget};
use crate::serving::server::{Connection, Handler};

/// Any text as a config file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/nonexistent/fuzz.toml"), &Overrides::default()) {
        Ok(config) => {
            for component in &config.components {
                assert!(crate::config::check_name(&component.name).is_ok(), "{}", component.name);
            }
        }
        Err(e) => assert!(!e.problems.is_empty(), "a refused config names its problems"),
    }
}

/// What is kept in the host's own table, which no guest statement may read.
const CANARY: &str = "host-canary-5b1d0e";

/// Set when a denied function ran.
static DENIED_RAN: AtomicBool = AtomicBool::new(false);

/// Up to 8 guest statements, one per line, run in turn on a fresh
/// database with small limits.
pub fn sql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch_dir("sql");
    let limits = DbLimits {
        max_size_bytes: 16 << 20,
        statement_timeout: Duration::from_millis(50),
        max_result_rows: 1000,
        max_result_bytes: 1 << 20,
        max_value_bytes: 64 << 10,
    };
    let threads = sql_threads();
    let db = Database::open_hooked(
        dir.join("fuzz.sqlite3"),
        limits,
        threads,
        Default::default(),
        trap_denied,
    )
    .expect("a fresh database opens");
    let mut conn = db.writer_blocking().expect("the writer opens");
    let canary = crate::capabilities::sqlite::outbox::Message {
        id: "canary".into(),
        topic: "host.canary".into(),
        source: "fuzz".into(),
        payload: CANARY.as_bytes().to_vec(),
        content_type: None,
        headers: Vec::new(),
        ordering_key: None,
        published_at: 0,
    };
    conn.publish(&canary, None).expect("the host writes its tables");
    DENIED_RAN.store(false, Ordering::Relaxed);
    for statement in text.lines().take(8) {
        // One parameter, or none, whichever the statement takes.
        let result = conn.execute(statement, &[Value::Text("guest".into())]);
        let result = match result {
            Err(crate::capabilities::bindings::corral::service::sqlite::Error::InvalidStatement(_)) => {
                conn.execute(statement, &[])
            }
            other => other,
        };
        assert!(
            !DENIED_RAN.swap(false, Ordering::Relaxed),
            "a denied function ran in {statement:?}"
        );
        if let Ok(result) = result {
            for row in &result.rows {
                for value in &row.values {
                    let leaked = match value {
                        Value::Text(t) => t.contains(CANARY) && !statement.contains(CANARY),
                        // A blob holds the canary only if read from the host's table.
                        Value::Blob(b) => b.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                        _ => false,
                    };
                    assert!(!leaked, "the host's table was read by {statement:?}");
                }
            }
        }
    }
    let outbox = conn.outbox(10, "fuzz").expect("the host reads its tables");
    assert!(
        outbox.len() == 1 && outbox[0].message.payload == CANARY.as_bytes(),
        "a guest statement changed the host's table"
    );
    drop(conn);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replaces, on a connection, every built-in function the policy denies
/// with one that reports it ran: the authorizer decides by name, so
/// whatever it admits never reaches one of these.
fn trap_denied(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    static DENIED: OnceLock<Vec<(String, i32)>> = OnceLock::new();
    let denied = DENIED.get_or_init(|| {
        let plain = rusqlite::Connection::open_in_memory().expect("an in-memory database");
        let mut statement = plain
            .prepare("SELECT name, narg FROM pragma_function_list WHERE builtin")
            .expect("the function list");
        statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i32>(1)?)))
            .expect("the function list")
            .filter_map(Result::ok)
            .filter(|(name, _)| !crate::capabilities::sqlite::policy::allows_function(name))
            .collect()
    });
    for (name, args) in denied {
        conn.create_scalar_function(
            name.as_str(),
            *args,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |_| {
                DENIED_RAN.store(true, Ordering::Relaxed);
                Ok(rusqlite::types::Value::Null)
            },
        )?;
    }
    Ok(())
}

/// A component's response, from bytes: a status (2 bytes), then headers as
/// `name\0value\0` up to a `\xff`, then the body.
pub fn guest_response(data: &[u8]) {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]);
    let (head, body) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let fields: Vec<String> = head
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let headers: Vec<(String, String)> = fields
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
        .collect();
    let limits = ComponentLimits {
        max_response_body_bytes: 4096,
        ..ComponentLimits::default()
    };
    let response = types::Response {
        status,
        headers,
        body: body.to_vec(),
    };
    let Ok(http) = crate::serving::gateway::into_http(response, &limits) else {
        return;
    };
    assert!(http.status().as_u16() >= 200, "{}", http.status());
    for name in http.headers().keys() {
        assert!(
            crate::serving::headers::component_may_set(name),
            "the host's header {name} came from a guest"
        );
    }
    assert!(body.len() <= limits.max_response_body_bytes);
}

/// Makes the gateway [`http_request`] sends to (it compiles components),
/// before the first input's time starts.
pub fn http_request_init() {
    gateway();
}

/// Raw bytes sent to a gateway serving `users` and the `wasi:http`
/// `http-hello`, in process, over one connection.
pub fn http_request(data: &[u8]) {
    let gateway = gateway();
    gateway.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let handler = Arc::clone(&gateway.handler);
        let connection = Arc::new(Connection {
            peer: "192.0.2.7:40000".parse().expect("an address"),
            owed: Owed::new(Arc::clone(&gateway.budget), None),
        });
        let served = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let (handler, connection) = (Arc::clone(&handler), Arc::clone(&connection));
                async move { Ok::<_, std::convert::Infallible>(handler.handle(request, &connection).await) }
            });
            // The client's write side is closed once it has sent everything:
            // the requests it sent are still answered.
            let mut http = crate::serving::server::http1(&gateway_settings());
            http.half_close(true);
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await;
        });
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        drop(client);
        match tokio::time::timeout(Duration::from_secs(5), served).await {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        }
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1."),
                "not HTTP: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(64)])
            );
        }
    });
}

/// The gateway [`http_request`] sends to, made once per process.
struct FuzzGateway {
    runtime: tokio::runtime::Runtime,
    handler: Arc<crate::serving::gateway::Gateway>,
    budget: Arc<ResponseBudget>,
    _ticker: crate::wasm::engine::EpochTicker,
}

fn gateway_settings() -> crate::config::ServerSettings {
    crate::config::ServerSettings {
        header_read_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

fn gateway() -> &'static FuzzGateway {
    static GATEWAY: OnceLock<FuzzGateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let wasm = |name: &str| workspace().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
        for name in ["users", "http_hello"] {
            assert!(
                wasm(name).is_file(),
                "{} is missing: run `just build` first",
                wasm(name).display()
            );
        }
        let data = scratch_dir("gateway");
        let toml = format!(
            "data_dir = {:?}\ncache_dir = {:?}\n\
             [components.users]\nwasm = {:?}\nroutes = [\"/users\"]\npublishes = [\"users.deleted\"]\n\
             [components.users.rate_limit]\nrate = \"1000/second\"\n\
             [components.http]\nwasm = {:?}\nroutes = [\"/http\"]\n\
             [components.http.limits]\ntimeout_ms = 2000\n",
            data.display().to_string(),
            workspace().join("target/corral-test-cache").display().to_string(),
            wasm("users").display().to_string(),
            wasm("http_hello").display().to_string(),
        );
        let config = Config::parse(&toml, &data.join("corral.toml"), &Overrides::default()).expect("the fuzz config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let metrics = crate::ops::metrics::Metrics::new();
        let registry =
            Arc::new(crate::registry(&config, Arc::clone(&metrics.components), Arc::default()).expect("the registry"));
        runtime
            .block_on(registry.load_all(&config))
            .expect("the components load");
        let ticker = crate::wasm::engine::EpochTicker::start(registry.engine());
        let handler = Arc::new(crate::serving::gateway::Gateway {
            registry: Arc::clone(&registry),
            trusted_proxies: Default::default(),
            stats: Arc::clone(&metrics.serving),
            body_pace: crate::serving::body::BodyPace {
                timeout: Duration::from_secs(2),
                min_bytes_per_sec: 1024,
            },
            cluster: None,
            shared_limits: None,
        });
        registry.serve_internal(Arc::new(crate::serving::gateway::Internal(Arc::downgrade(&handler))));
        let settings = gateway_settings();
        FuzzGateway {
            runtime,
            handler,
            budget: ResponseBudget::new(
                settings.response_buffer_bytes,
                settings.response_buffer_per_client_bytes,
            ),
            _ticker: ticker,
        }
    })
}

/// The SQL threads every fuzzed database shares.
fn sql_threads() -> Arc<SqlThreads> {
    static THREADS: OnceLock<Arc<SqlThreads>> = OnceLock::new();
    Arc::clone(THREADS.get_or_init(|| SqlThreads::start(2).expect("SQL threads")))
}

/// The repository's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host's crate is in the workspace")
        .to_path_buf()
}

/// A new folder for one run, under /dev/shm when there is one.
fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: Mutex<u64> = Mutex::new(0);
    let n = {
        let mut next = NEXT.lock().expect("scratch lock");
        *next += 1;
        *next
    };
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("corral-fuzz-{}-{what}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}
