//! The database capability's rules, on a real temporary database: what a
//! guest may and may not run, and the limits that hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::Conn;
use super::pool::{Database, DbLimits};
use super::threads::SqlThreads;
use crate::capabilities::bindings::corral::service::sqlite::{Error, Value};

fn database(limits: DbLimits) -> (tempfile::TempDir, Arc<Database>) {
    let dir = tempfile::tempdir().unwrap();
    let threads = SqlThreads::start(1).unwrap();
    let db = Database::open(dir.path().join("t.sqlite3"), limits, threads, Default::default()).unwrap();
    (dir, db)
}

fn exec(conn: &mut Conn, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, Error> {
    conn.execute(sql, params)
        .map(|r| r.rows.into_iter().map(|row| row.values).collect())
}

fn one(conn: &mut Conn, sql: &str) -> Value {
    exec(conn, sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e:?}"))[0][0].clone()
}

fn denied(conn: &mut Conn, sql: &str, params: &[Value]) -> String {
    match exec(conn, sql, params) {
        Err(Error::AccessDenied(why)) => why,
        other => panic!("{sql} was not denied: {other:?}"),
    }
}

#[test]
fn functions_outside_the_allow_list_are_denied_even_with_bound_parameters() {
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    let pointer = Value::Blob(vec![0x41; 8]);
    denied(&mut conn, "SELECT fts3_tokenizer(?)", &[Value::Text("simple".into())]);
    denied(&mut conn, "SELECT fts3_tokenizer('x', ?)", &[pointer]);
    denied(&mut conn, "SELECT fts5(?)", &[Value::Null]);
    denied(
        &mut conn,
        "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')",
        &[],
    );
    denied(&mut conn, "SELECT sqlite_compileoption_get(0)", &[]);
    denied(&mut conn, "SELECT count(*) FROM dbstat", &[]);
    let why = denied(&mut conn, "SELECT rtreenode(2, x'00')", &[]);
    assert!(why.contains("rtreenode"), "{why}");
    // A view or trigger cannot smuggle one in: it is authorized when used.
    exec(&mut conn, "CREATE TABLE t (x)", &[]).unwrap();
    exec(&mut conn, "CREATE VIEW v AS SELECT sqlite_source_id() AS x", &[]).unwrap_or_default();
    assert!(exec(&mut conn, "SELECT * FROM v", &[]).is_err());
    // Full-text search is refused: its queries run past any deadline.
    for module in ["fts3", "fts4", "fts5", "fts4aux"] {
        denied(&mut conn, &format!("CREATE VIRTUAL TABLE f USING {module}(x)"), &[]);
    }
    denied(&mut conn, "SELECT json_pretty('[1]')", &[]);
}

#[test]
fn full_text_tables_made_before_full_text_search_was_refused_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite3");
    {
        let earlier = rusqlite::Connection::open(&path).unwrap();
        earlier
            .execute_batch("CREATE VIRTUAL TABLE Notes USING fts5(body); INSERT INTO notes VALUES ('running dogs');")
            .unwrap();
    }
    let db = Database::open(
        path,
        DbLimits::default(),
        SqlThreads::start(1).unwrap(),
        Default::default(),
    )
    .unwrap();
    let mut conn = db.writer_blocking().unwrap();
    for sql in [
        "SELECT count(*) FROM notes WHERE notes MATCH 'dogs'",
        "SELECT * FROM NOTES",
        "SELECT * FROM notes('dogs')",
        "SELECT rowid FROM notes WHERE notes = 'dogs'",
        "INSERT INTO notes(notes) VALUES ('rebuild')",
        "ALTER TABLE notes RENAME TO plain",
    ] {
        let why = denied(&mut conn, sql, &[]);
        assert!(why.contains("full-text"), "{sql}: {why}");
    }
    // Dropping it is still allowed.
    exec(&mut conn, "DROP TABLE notes", &[]).unwrap();
}

#[test]
fn what_a_service_needs_stays_allowed() {
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    for sql in [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, at TEXT DEFAULT (strftime('%Y', 'now')))",
        "CREATE INDEX users_by_name ON users (lower(name))",
        "INSERT INTO users (name) VALUES (upper('ada'))",
        "ALTER TABLE users ADD COLUMN email TEXT",
        "ALTER TABLE users RENAME COLUMN email TO mail",
        "ALTER TABLE users DROP COLUMN mail",
        "ALTER TABLE users RENAME TO people",
        "CREATE TRIGGER named AFTER INSERT ON people BEGIN UPDATE people SET name = trim(name) WHERE id = new.id; END",
        "CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1)",
        "PRAGMA user_version = 3",
    ] {
        exec(&mut conn, sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    assert_eq!(
        one(
            &mut conn,
            "SELECT json_extract(json_object('a', 1, 'b', json_array(2, 3)), '$.b[1]')"
        ),
        Value::Integer(3)
    );
    assert_eq!(one(&mut conn, "SELECT '{\"a\":[1,2]}' ->> '$.a[0]'"), Value::Integer(1));
    assert_eq!(
        one(&mut conn, "SELECT count(*) FROM json_each('[1,2,3]')"),
        Value::Integer(3)
    );
    assert_eq!(
        one(&mut conn, "SELECT count(*) FROM pragma_table_info('people')"),
        Value::Integer(3)
    );
    assert_eq!(
        one(
            &mut conn,
            "SELECT group_concat(x) OVER () FROM (SELECT 1 AS x UNION ALL SELECT 2) LIMIT 1"
        ),
        Value::Text("1,2".into())
    );
    assert_eq!(one(&mut conn, "SELECT name FROM people"), Value::Text("ADA".into()));
    // The wrapped functions answer exactly as SQLite's own.
    assert_eq!(one(&mut conn, "SELECT instr('hello', 'l')"), Value::Integer(3));
    assert_eq!(one(&mut conn, "SELECT instr(x'0102', x'02')"), Value::Integer(2));
    assert_eq!(one(&mut conn, "SELECT instr(12345, 34)"), Value::Integer(3));
    assert_eq!(one(&mut conn, "SELECT instr(NULL, 'a')"), Value::Null);
    assert_eq!(
        one(&mut conn, "SELECT replace('aXbX', 'X', 'yy')"),
        Value::Text("ayybyy".into())
    );
    assert_eq!(
        one(&mut conn, "SELECT trim('xxhixx', 'x') || ltrim('  a') || rtrim('b  ')"),
        Value::Text("hiab".into())
    );
    assert_eq!(
        one(
            &mut conn,
            "SELECT json_patch('{\"a\":1,\"b\":2}', '{\"b\":null,\"c\":3}')"
        ),
        Value::Text("{\"a\":1,\"c\":3}".into())
    );
    assert_eq!(
        one(&mut conn, "SELECT unhex('41-42', '-')"),
        Value::Blob(b"AB".to_vec())
    );
    assert_eq!(
        one(
            &mut conn,
            "SELECT json_set('{}', '$.a', 1, '$.b', 2) || json_remove('[1,2]', '$[0]')"
        ),
        Value::Text("{\"a\":1,\"b\":2}[2]".into())
    );
    assert_eq!(
        one(&mut conn, "SELECT json_extract('{\"a\":1,\"b\":2}', '$.a', '$.b')"),
        Value::Text("[1,2]".into())
    );
    // JSON in, JSON out: what a wrapped function takes and makes stays JSON,
    // not a string, as SQLite's own would have it.
    for (sql, expected) in [
        ("SELECT json_set('{}', '$.a', json_array(1, 2))", r#"{"a":[1,2]}"#),
        ("SELECT json_object('x', json_set('{}', '$.a', 1))", r#"{"x":{"a":1}}"#),
        (
            "SELECT json_object('x', json_extract('{\"a\":[1]}', '$.a'))",
            r#"{"x":[1]}"#,
        ),
        (
            "SELECT json_object('x', json_extract('{\"a\":\"s\"}', '$.a'))",
            r#"{"x":"s"}"#,
        ),
        (
            "SELECT json_array(json_patch('{}', '{\"b\":2}'), json_remove('[1,2]', '$[0]'))",
            r#"[{"b":2},[2]]"#,
        ),
        (
            "SELECT json_insert('[]', '$[#]', json('{\"k\":true}'))",
            r#"[{"k":true}]"#,
        ),
    ] {
        assert_eq!(one(&mut conn, sql), Value::Text(expected.into()), "{sql}");
    }
    // LIKE is case-insensitive for ASCII, takes an escape, and GLOB is not.
    for (sql, expected) in [
        ("SELECT 'Ada' LIKE 'a%'", 1),
        ("SELECT '10%' LIKE '10!%' ESCAPE '!'", 1),
        ("SELECT '100' LIKE '10!%' ESCAPE '!'", 0),
        ("SELECT 'Ada' GLOB 'a*'", 0),
        ("SELECT 'ada' GLOB '[a-c]d?'", 1),
        ("SELECT like('a_', 'ab')", 1),
    ] {
        assert_eq!(one(&mut conn, sql), Value::Integer(expected), "{sql}");
    }
}

#[test]
fn statements_with_quadratic_cost_end_quickly() {
    let (_dir, db) = database(DbLimits {
        statement_timeout: Duration::from_millis(200),
        ..DbLimits::default()
    });
    let mut conn = db.writer_blocking().unwrap();
    let a = |n: u32| format!("replace(hex(zeroblob({n})), '0', 'a')");
    for sql in [
        format!("SELECT instr({}, {} || 'b')", a(250_000), a(120_000)),
        format!("SELECT length(replace({}, {} || 'b', 'x'))", a(250_000), a(120_000)),
        format!(
            "SELECT length(trim({}, replace(hex(zeroblob(20000)), '0', 'c') || 'a'))",
            a(250_000)
        ),
    ] {
        let started = Instant::now();
        let outcome = exec(&mut conn, &sql, &[]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?} for {outcome:?}",
            started.elapsed()
        );
        assert!(matches!(outcome, Err(Error::LimitExceeded(_))), "{outcome:?}");
    }
}

#[test]
fn values_and_results_are_sized_before_they_are_copied() {
    let (_dir, db) = database(DbLimits {
        max_result_bytes: 1 << 20,
        max_result_rows: 100_000,
        max_value_bytes: 256 << 10,
        ..DbLimits::default()
    });
    let mut conn = db.writer_blocking().unwrap();
    assert!(matches!(
        exec(&mut conn, "SELECT zeroblob(300000)", &[]),
        Err(Error::LimitExceeded(_))
    ));
    assert!(matches!(
        exec(&mut conn, "SELECT ?", &[Value::Blob(vec![0; 300_000])]),
        Err(Error::LimitExceeded(_))
    ));
    let wide = ["zeroblob(200000)"; 8].join(", ");
    assert!(matches!(
        exec(&mut conn, &format!("SELECT {wide}"), &[]),
        Err(Error::LimitExceeded(_))
    ));
    assert_eq!(exec(&mut conn, "SELECT zeroblob(200000)", &[]).unwrap().len(), 1);
    // Small values count at what they cost the host, not only their bytes:
    // 20,000 rows of one integer take about 1.4 MiB, not 160 KB.
    let rows = |n: u32| {
        format!("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {n}) SELECT x FROM n")
    };
    match exec(&mut conn, &rows(20_000), &[]) {
        Err(Error::LimitExceeded(why)) => assert!(why.contains("bytes"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(exec(&mut conn, &rows(5_000), &[]).unwrap().len(), 5_000);
}

#[test]
fn a_long_statement_is_interrupted_at_its_deadline() {
    let (_dir, db) = database(DbLimits {
        statement_timeout: Duration::from_millis(100),
        ..DbLimits::default()
    });
    let mut conn = db.writer_blocking().unwrap();
    let started = Instant::now();
    let endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    assert!(matches!(exec(&mut conn, endless, &[]), Err(Error::LimitExceeded(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The next statement on the same connection is not interrupted.
    assert_eq!(one(&mut conn, "SELECT 1"), Value::Integer(1));
}

#[test]
fn transactions_and_temporary_objects_stay_the_hosts() {
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    for sql in [
        "BEGIN",
        "COMMIT",
        "SAVEPOINT s",
        "CREATE TEMP TABLE t (x)",
        "ATTACH ':memory:' AS m",
        "PRAGMA writable_schema = ON",
        "PRAGMA max_page_count = 1",
        "PRAGMA journal_mode = DELETE",
    ] {
        denied(&mut conn, sql, &[]);
    }
    conn.begin().unwrap();
    conn.begin().unwrap();
    exec(&mut conn, "CREATE TABLE t (x)", &[]).unwrap();
    conn.rollback().unwrap();
    conn.commit().unwrap();
    assert!(
        exec(&mut conn, "SELECT * FROM t", &[]).is_err(),
        "the savepoint was rolled back"
    );
}

#[test]
fn constraint_violations_say_which_kind() {
    use crate::capabilities::bindings::corral::service::sqlite::ConstraintKind;
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    exec(
        &mut conn,
        "CREATE TABLE p (id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INTEGER NOT NULL CHECK (n > 0))",
        &[],
    )
    .unwrap();
    exec(&mut conn, "CREATE TABLE c (p INTEGER REFERENCES p (id))", &[]).unwrap();
    exec(&mut conn, "INSERT INTO p VALUES (1, 'a', 1)", &[]).unwrap();
    for (sql, kind) in [
        ("INSERT INTO p VALUES (2, 'a', 1)", ConstraintKind::Unique),
        ("INSERT INTO p VALUES (1, 'b', 1)", ConstraintKind::PrimaryKey),
        ("INSERT INTO p VALUES (3, 'c', NULL)", ConstraintKind::NotNull),
        ("INSERT INTO p VALUES (4, 'd', 0)", ConstraintKind::Check),
        ("INSERT INTO c VALUES (9)", ConstraintKind::ForeignKey),
    ] {
        match exec(&mut conn, sql, &[]) {
            Err(Error::ConstraintViolation(constraint)) => assert_eq!(constraint.kind, kind, "{sql}: {constraint:?}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn a_statement_the_host_prepared_is_never_handed_to_a_guest() {
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    // A statement of the host's, with no parameter whose value the plan
    // depends on (SQLite recompiles those when their bindings are cleared).
    let sql = "SELECT count(*) FROM _corral_outbox";
    let counted = conn.host(|host| host.prepare(sql)?.query_row([], |row| row.get::<_, i64>(0)));
    assert_eq!(counted.unwrap(), 0);
    denied(&mut conn, sql, &[]);
    // The outbox the relay reads, by its very text.
    conn.outbox(10, "test").unwrap();
    let outbox = "SELECT seq, id, topic, payload, content_type, headers, ordering_key, published_at
                 FROM _corral_outbox ORDER BY seq LIMIT ?";
    denied(&mut conn, outbox, &[Value::Integer(10)]);
}

#[test]
fn the_log_is_checkpointed_off_the_writer_once_it_grows() {
    let (dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    exec(&mut conn, "CREATE TABLE t (x BLOB)", &[]).unwrap();
    // About 1,250 pages of 4 KiB in the log, committed by the writer, which
    // checkpoints nothing itself: the file stays small until the host does.
    for _ in 0..10 {
        exec(&mut conn, "INSERT INTO t SELECT randomblob(4000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 125) SELECT i FROM n)", &[]).unwrap();
    }
    let file = dir.path().join("t.sqlite3");
    let size = || std::fs::metadata(&file).unwrap().len();
    assert!(size() < 1 << 20, "checkpointed in a commit: {} bytes", size());
    // Giving the writer back queues a checkpoint on an SQL thread.
    drop(conn);
    let started = Instant::now();
    while size() < 4 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never checkpointed: {} bytes",
            size()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_large_schema_never_keeps_the_database_from_opening() {
    let (_dir, db) = database(DbLimits::default());
    let mut conn = db.writer_blocking().unwrap();
    // A table whose CREATE text is larger than the product LIKE and GLOB
    // allow against a short pattern.
    let default = "x".repeat(600_000);
    exec(&mut conn, &format!("CREATE TABLE t (a TEXT DEFAULT '{default}')"), &[]).unwrap();
    drop(conn);
    // New connections (a reader, and the writer opened again) still open.
    let mut reader = db.reader().unwrap();
    assert_eq!(one(&mut reader, "SELECT count(*) FROM t"), Value::Integer(0));
}

/// A log in memory that takes an entry only right after its last one,
/// as JetStream's expected last sequence does.
#[derive(Default)]
struct MemoryLog {
    entries: std::sync::Mutex<Vec<super::Change>>,
    /// The files of the entries that are restores, by place.
    restores: std::sync::Mutex<std::collections::HashMap<u64, Vec<u8>>>,
    owns: std::sync::atomic::AtomicBool,
}

impl super::CommitLog for MemoryLog {
    fn owns(&self) -> bool {
        self.owns.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn committed(&self, _seq: u64) {}

    fn append(&self, after: u64, change: &super::Change) -> Result<u64, super::AppendError> {
        if !self.owns() {
            return Err(super::AppendError::NotOwner("test".into()));
        }
        let mut entries = self.entries.lock().unwrap();
        if after != entries.len() as u64 {
            return Err(super::AppendError::Fenced);
        }
        entries.push(change.clone());
        Ok(entries.len() as u64)
    }

    fn reset(&self, after: u64, file: &std::path::Path) -> Result<u64, super::AppendError> {
        let seq = self.append(after, &super::Change::default())?;
        let bytes = std::fs::read(file).map_err(|e| super::AppendError::Refused(e.to_string()))?;
        self.restores.lock().unwrap().insert(seq, bytes);
        Ok(seq)
    }
}

/// An owner whose commits go to a [`MemoryLog`] it owns, and a replica
/// to apply that log to.
struct Replicated {
    owner_dir: tempfile::TempDir,
    owner: Arc<Database>,
    replica_dir: tempfile::TempDir,
    replica: Arc<Database>,
    log: Arc<MemoryLog>,
    stats: super::SqliteStats,
}

fn replicated() -> Replicated {
    let (owner_dir, owner) = tokio::task::block_in_place(|| database(DbLimits::default()));
    let (replica_dir, replica) = tokio::task::block_in_place(|| database(DbLimits::default()));
    let log = Arc::new(MemoryLog::default());
    log.owns.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::task::block_in_place(|| owner.attach_log(log.clone())).unwrap();
    let stats = super::SqliteStats {
        ok: Default::default(),
        failed: Default::default(),
        duration: prometheus_client::metrics::histogram::Histogram::new([1.0]),
    };
    Replicated {
        owner_dir,
        owner,
        replica_dir,
        replica,
        log,
        stats,
    }
}

fn rows(db: &Arc<Database>, sql: &str) -> Vec<Vec<Value>> {
    tokio::task::block_in_place(|| exec(&mut db.reader().unwrap(), sql, &[]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_applies_the_log_holds_what_the_owner_committed() {
    let Replicated {
        owner_dir: _a,
        owner,
        replica_dir: _b,
        replica,
        log,
        stats,
    } = replicated();
    let mut ctx = super::SqliteCtx::new(Arc::clone(&owner), stats.clone());
    // A schema change and writes in a guest transaction, one of them undone.
    ctx.begin_transaction().await.unwrap().unwrap();
    for sql in [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, at TEXT)",
        "INSERT INTO t (name, at) VALUES ('a', datetime('now', 'subsec'))",
        "PRAGMA user_version = 1",
    ] {
        ctx.run(sql.into(), vec![]).await.unwrap().unwrap();
    }
    ctx.begin_transaction().await.unwrap().unwrap();
    ctx.run("INSERT INTO t (name) VALUES ('undone')".into(), vec![])
        .await
        .unwrap()
        .unwrap();
    ctx.end_transaction(false).await.unwrap().unwrap();
    ctx.end_transaction(true).await.unwrap().unwrap();
    // Writes outside a transaction, committed in groups, one of them failing.
    let writes = (0..20).map(|i| {
        let owner = Arc::clone(&owner);
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut ctx = super::SqliteCtx::new(owner, stats);
            let sql = if i == 7 {
                "INSERT INTO t (id, name) VALUES (1, 'taken')"
            } else {
                "INSERT INTO t (name) VALUES (?)"
            };
            ctx.run(sql.into(), vec![Value::Text(format!("w{i}"))]).await.unwrap()
        })
    });
    let results: Vec<_> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1, "{results:?}");
    ctx.run("UPDATE t SET name = upper(name) WHERE id % 2 = 0".into(), vec![])
        .await
        .unwrap()
        .unwrap();
    ctx.run("DELETE FROM t WHERE id = 3".into(), vec![])
        .await
        .unwrap()
        .unwrap();
    drop(ctx);

    let entries = log.entries.lock().unwrap().clone();
    assert_eq!(
        entries[0].schema.len(),
        2,
        "the CREATE TABLE and user_version travel as statements"
    );
    for (i, change) in entries.into_iter().enumerate() {
        let applied = replica.apply(i as u64 + 1, change.clone()).await.unwrap();
        assert_eq!(applied, super::Applied::Done);
        assert_eq!(replica.apply(i as u64 + 1, change).await.unwrap(), super::Applied::Had);
    }
    let all = "SELECT id, name, at FROM t ORDER BY id";
    assert_eq!(rows(&replica, all), rows(&owner, all));
    assert_eq!(rows(&owner, "SELECT count(*) FROM t")[0][0], Value::Integer(19));
    let version = "PRAGMA user_version";
    assert_eq!(
        rows(&replica, version),
        rows(&owner, version),
        "a new owner would migrate again"
    );
    let place = |db: &Arc<Database>| tokio::task::block_in_place(|| db.log_place().unwrap());
    assert_eq!(place(&replica), place(&owner));

    // Another writer appended: the owner's next commit is refused, and
    // nothing of it is in its file.
    log.entries.lock().unwrap().push(super::Change::default());
    let mut ctx = super::SqliteCtx::new(Arc::clone(&owner), stats);
    // The guest traps: the host answers its request, saying to retry.
    let refused = ctx.run("INSERT INTO t (name) VALUES ('fenced')".into(), vec![]).await;
    assert!(
        matches!(&refused, Err(super::SqliteError::Trap(e)) if e.to_string().contains("another host")),
        "{refused:?}"
    );
    assert!(rows(&owner, "SELECT id FROM t WHERE name = 'fenced'").is_empty());
    // A table the log cannot carry is refused, named.
    log.entries.lock().unwrap().pop();
    let refused_again = ctx.run("CREATE TABLE loose (x)".into(), vec![]).await.unwrap();
    assert!(
        matches!(&refused_again, Err(Error::InvalidStatement(why)) if why.contains("loose")),
        "{refused_again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_a_replicated_database_goes_through_its_log_and_every_copy_obeys_it() {
    let Replicated {
        owner_dir: dir,
        owner,
        replica_dir: _b,
        replica,
        log,
        stats,
    } = replicated();
    let mut ctx = super::SqliteCtx::new(Arc::clone(&owner), stats);
    let mut write = async |sql: &str| ctx.run(sql.into(), vec![]).await.unwrap().unwrap();
    write("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").await;
    write("INSERT INTO t (name) VALUES ('kept')").await;
    let backup = dir.path().join("backup.sqlite3");
    tokio::task::block_in_place(|| owner.backup_to(&backup)).unwrap();
    write("INSERT INTO t (name) VALUES ('lost')").await;
    let names = |db: &Arc<Database>| rows(db, "SELECT name FROM t ORDER BY id");
    let copy_of_backup = || {
        let copy = tempfile::NamedTempFile::new_in(dir.path()).unwrap().into_temp_path();
        std::fs::copy(&backup, &copy).unwrap();
        copy
    };

    // Another host appended first: the restore is refused, nothing changed.
    log.entries.lock().unwrap().push(super::Change::default());
    let fenced = owner.restore_through_log(&copy_of_backup()).await;
    assert!(
        matches!(fenced, Err(super::RestoreError::Unwritten(super::AppendError::Fenced))),
        "{fenced:?}"
    );
    assert_eq!(names(&owner).len(), 2);
    log.entries.lock().unwrap().pop();

    owner.restore_through_log(&copy_of_backup()).await.unwrap();
    assert_eq!(names(&owner), vec![vec![Value::Text("kept".into())]]);
    let place = |db: &Arc<Database>| tokio::task::block_in_place(|| db.log_place().unwrap());
    assert_eq!(
        place(&owner),
        log.entries.lock().unwrap().len() as u64,
        "the restore is an entry"
    );
    // Writes go on after it, from its place.
    write("INSERT INTO t (name) VALUES ('after')").await;

    // A copy that follows the log ends as the owner is.
    let entries = log.entries.lock().unwrap().clone();
    let restores = log.restores.lock().unwrap().clone();
    assert_eq!(restores.len(), 1);
    for (i, change) in entries.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let applied = match restores.get(&seq) {
            Some(bytes) => {
                let file = dir.path().join(format!("entry-{seq}.sqlite3"));
                std::fs::write(&file, bytes).unwrap();
                let applied = replica.apply_restore(seq, &file).await.unwrap();
                std::fs::write(&file, bytes).unwrap();
                let again = replica.apply_restore(seq, &file).await.unwrap();
                assert_eq!(again, super::Applied::Had, "an entry is put in place once");
                applied
            }
            None => replica.apply(seq, change).await.unwrap(),
        };
        assert_eq!(applied, super::Applied::Done, "entry {seq}");
    }
    assert_eq!(names(&replica), names(&owner));
    assert_eq!(names(&owner).len(), 2);
    assert_eq!(place(&replica), place(&owner));
}
