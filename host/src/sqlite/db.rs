//! A component's database file: a pool of rusqlite connections, each hardened
//! against what a guest may try, and the statements run on them. Everything
//! here blocks; callers run it off the async workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, OpenFlags};

use super::policy;
use super::threads::SqlThreads;
use super::watchdog::Deadline;
use crate::bindings::corral::service::sqlite::{Error, QueryResult, Row, Value};

/// Bounds on what one component may do with its database.
#[derive(Debug, Clone, PartialEq)]
pub struct DbLimits {
    /// The file may not grow past this; writes beyond fail with `database-full`.
    pub max_size_bytes: u64,
    /// One statement may run this long before it is interrupted.
    pub statement_timeout: Duration,
    /// One query may return at most this many rows ...
    pub max_result_rows: usize,
    /// ... and this many bytes of values.
    pub max_result_bytes: usize,
    /// The largest string or blob SQLite makes for the component, in a
    /// table, a parameter or along the way of a statement.
    pub max_value_bytes: usize,
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits {
            max_size_bytes: 1 << 30,
            statement_timeout: Duration::from_secs(1),
            max_result_rows: 10_000,
            max_result_bytes: 16 << 20,
            max_value_bytes: 1 << 20,
        }
    }
}

/// SQLite's unix VFS in exclusive mode; see [`Database::connect`].
const EXCLUSIVE_VFS: &std::ffi::CStr = c"unix-excl";
/// How long a statement waits for another request's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per database; more are opened on demand and closed after use.
const MAX_IDLE_CONNECTIONS: usize = 32;
/// SQLite calls the progress handler every this many virtual machine steps.
const PROGRESS_STEPS: i32 = 1000;

/// One component's database file.
pub struct Database {
    path: PathBuf,
    limits: DbLimits,
    idle: Mutex<Vec<Pooled>>,
    threads: Arc<SqlThreads>,
}

/// A connection and the state its authorizer and progress handler read.
struct Pooled {
    conn: rusqlite::Connection,
    guard: Arc<Guard>,
}

/// What the hooks installed on a connection consult.
struct Guard {
    /// Set while the host runs its own statements (transaction control),
    /// which the authorizer otherwise denies.
    trusted: AtomicBool,
    /// When the running statement must stop.
    deadline: Arc<Deadline>,
    /// Why the authorizer last said no, for the error the guest sees.
    denied: Mutex<Option<String>>,
}

impl Database {
    /// Opens (creating it if needed) the database file at `path`; its
    /// statements run on `threads`.
    pub fn open(path: PathBuf, limits: DbLimits, threads: Arc<SqlThreads>) -> anyhow::Result<Arc<Database>> {
        let db = Arc::new(Database {
            path,
            limits,
            idle: Mutex::new(Vec::new()),
            threads,
        });
        let first = db.connect()?;
        db.idle.lock().expect("pool lock").push(first);
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The threads this database's statements run on.
    pub fn threads(&self) -> &Arc<SqlThreads> {
        &self.threads
    }

    /// A connection for one request, from the pool or newly opened.
    pub fn checkout(self: &Arc<Self>) -> Result<Conn, Error> {
        match self.checkout_idle() {
            Some(conn) => Ok(conn),
            None => {
                let pooled = self
                    .connect()
                    .map_err(|e| Error::Io(format!("cannot open the database: {e:#}")))?;
                Ok(self.conn(pooled))
            }
        }
    }

    /// A pooled connection, if one is idle; never blocks.
    pub fn checkout_idle(self: &Arc<Self>) -> Option<Conn> {
        let pooled = self.idle.lock().expect("pool lock").pop()?;
        Some(self.conn(pooled))
    }

    fn conn(self: &Arc<Self>, pooled: Pooled) -> Conn {
        Conn {
            db: Arc::clone(self),
            pooled: Some(pooled),
            depth: 0,
            host_transaction: false,
            aborted: false,
            changes: 0,
            last_insert_rowid: 0,
        }
    }

    fn connect(&self) -> anyhow::Result<Pooled> {
        use anyhow::Context;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The unix-excl VFS holds the file exclusively for this process and keeps
        // the WAL index in memory shared by its connections: no other process
        // can touch a component's database while the host runs, and reads
        // skip the file-lock system calls of the shared-memory index.
        let mut conn = rusqlite::Connection::open_with_flags_and_vfs(&self.path, flags, EXCLUSIVE_VFS)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let journal: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        anyhow::ensure!(
            journal.eq_ignore_ascii_case("wal"),
            "cannot switch to WAL mode (got {journal})"
        );
        // Temporary tables and sorts stay in memory, under SQLite's heap cap,
        // instead of in files a statement could grow without bound.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;")?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let max_pages = (self.limits.max_size_bytes / page_size.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |_| Ok(()))?;
        policy::harden(&conn, &self.limits)?;

        let guard = Arc::new(Guard {
            trusted: AtomicBool::new(false),
            deadline: Deadline::watch(&conn),
            denied: Mutex::new(None),
        });
        let auth_guard = Arc::clone(&guard);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&auth_guard, ctx)))?;
        let deadline = Arc::clone(&guard.deadline);
        conn.progress_handler(PROGRESS_STEPS, Some(move || deadline.passed()))?;
        Ok(Pooled { conn, guard })
    }

    fn checkin(&self, pooled: Pooled) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(pooled);
        }
    }
}

fn authorize(guard: &Guard, ctx: AuthContext<'_>) -> Authorization {
    if guard.trusted.load(Ordering::Relaxed) {
        return Authorization::Allow;
    }
    match policy::authorize(&ctx.action) {
        Ok(()) => Authorization::Allow,
        Err(reason) => {
            *guard.denied.lock().expect("denial lock") = Some(reason);
            Authorization::Deny
        }
    }
}

/// A connection checked out for one request. Dropping it rolls back what the
/// request left open and returns the connection to the pool.
pub struct Conn {
    db: Arc<Database>,
    pooled: Option<Pooled>,
    /// Transactions the guest has open; the outermost is a real transaction
    /// (unless the host opened one), the inner ones savepoints.
    depth: u32,
    /// The host runs `init` inside a transaction of its own.
    host_transaction: bool,
    /// SQLite rolled the transaction back after an error; the guest's
    /// commit must fail rather than silently commit nothing.
    aborted: bool,
    /// Kept per checkout rather than read from the pooled connection, so
    /// that one request never sees another's counts.
    changes: u64,
    last_insert_rowid: i64,
}

impl Conn {
    fn pooled(&mut self) -> &mut Pooled {
        self.pooled
            .as_mut()
            .expect("a checked-out connection is present until drop")
    }

    /// The threads this connection's statements run on.
    pub fn threads(&self) -> &Arc<SqlThreads> {
        self.db.threads()
    }

    /// Rows changed by this request's last INSERT, UPDATE or DELETE.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The rowid of this request's last INSERT.
    pub fn last_insert_rowid(&self) -> i64 {
        self.last_insert_rowid
    }

    /// Whether the connection has no transaction open.
    pub fn is_autocommit(&mut self) -> bool {
        self.pooled().conn.is_autocommit()
    }

    /// Runs one guest statement and collects its rows within the limits.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<QueryResult, Error> {
        let in_transaction = self.depth > 0 || self.host_transaction;
        let limits = &self.db.limits;
        let pooled = self
            .pooled
            .as_ref()
            .expect("a checked-out connection is present until drop");
        let (conn, guard) = (&pooled.conn, &pooled.guard);
        let (total_before, rowid_before) = (conn.total_changes(), conn.last_insert_rowid());
        let result = guard
            .deadline
            .within(limits.statement_timeout, || run(conn, sql, params, limits))
            .map_err(|e| match e {
                Failure::Sqlite(e) => guest_error(e, guard, limits),
                Failure::Guest(e) => e,
            });
        match &result {
            Ok((_, true)) => {}
            Ok((_, false)) => {
                let changed = conn.total_changes() > total_before;
                self.changes = if changed { conn.changes() } else { 0 };
                if changed && conn.last_insert_rowid() != rowid_before {
                    self.last_insert_rowid = conn.last_insert_rowid();
                }
            }
            Err(_) => {
                if in_transaction && conn.is_autocommit() {
                    self.aborted = true;
                }
            }
        }
        result.map(|(rows, _)| rows)
    }

    /// Runs `sql` right here if it is a read outside any transaction and it
    /// finishes within `budget` without waiting for a lock: then nothing it
    /// did needs undoing if it is stopped. `None` means it must run on a
    /// blocking thread instead, with [`Conn::execute`].
    pub fn try_read_inline(
        &mut self,
        sql: &str,
        params: &[Value],
        budget: Duration,
    ) -> Option<Result<QueryResult, Error>> {
        if self.depth > 0 || self.host_transaction || self.aborted {
            return None;
        }
        let limits = &self.db.limits;
        let pooled = self.pooled.as_ref()?;
        let (conn, guard) = (&pooled.conn, &pooled.guard);
        let mut statement = conn
            .prepare_cached(sql)
            .ok()
            .filter(|s| s.readonly() && conn.is_autocommit())?;
        let final_budget = budget >= limits.statement_timeout;
        conn.busy_timeout(Duration::ZERO).ok()?;
        let result = guard.deadline.within(budget.min(limits.statement_timeout), || {
            run_statement(&mut statement, params, limits)
        });
        drop(statement);
        if conn.busy_timeout(BUSY_TIMEOUT).is_err() {
            return None;
        }
        match result {
            Ok((rows, _)) => Some(Ok(rows)),
            Err(Failure::Sqlite(e)) => match e.sqlite_error_code() {
                Some(ErrorCode::OperationInterrupted) if !final_budget => None,
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => None,
                _ => Some(Err(guest_error(e, guard, limits))),
            },
            Err(Failure::Guest(e)) => Some(Err(e)),
        }
    }

    /// Opens a transaction, or a savepoint inside one.
    pub fn begin(&mut self) -> Result<(), Error> {
        if self.aborted {
            return Err(aborted());
        }
        let sql = if self.depth == 0 && !self.host_transaction {
            "BEGIN IMMEDIATE".to_string()
        } else {
            format!("SAVEPOINT corral_{}", self.depth)
        };
        self.trusted(&sql)?;
        self.depth += 1;
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), Error> {
        self.finish(true)
    }

    pub fn rollback(&mut self) -> Result<(), Error> {
        self.finish(false)
    }

    fn finish(&mut self, commit: bool) -> Result<(), Error> {
        if self.depth == 0 {
            return Err(Error::InvalidTransactionState("no transaction is open".into()));
        }
        self.depth -= 1;
        if self.aborted {
            if self.depth == 0 {
                self.aborted = false;
            }
            return if commit { Err(aborted()) } else { Ok(()) };
        }
        let outermost = self.depth == 0 && !self.host_transaction;
        let sql = match (outermost, commit) {
            (true, true) => "COMMIT".to_string(),
            (true, false) => "ROLLBACK".to_string(),
            (false, true) => format!("RELEASE corral_{}", self.depth),
            (false, false) => format!("ROLLBACK TO corral_{0}; RELEASE corral_{0}", self.depth),
        };
        let result = self.trusted(&sql);
        if result.is_err() && outermost && !self.is_autocommit() {
            // A failed COMMIT can leave the transaction open; end it so the
            // connection is clean, and report the failure.
            let _ = self.trusted("ROLLBACK");
        }
        result
    }

    /// Opens the transaction `init` runs in.
    pub fn begin_host_transaction(&mut self) -> Result<(), Error> {
        self.trusted("BEGIN IMMEDIATE")?;
        self.host_transaction = true;
        Ok(())
    }

    /// Commits or rolls back the transaction `init` ran in; whatever the
    /// guest left open inside it goes with it.
    pub fn end_host_transaction(&mut self, commit: bool) -> Result<(), Error> {
        self.host_transaction = false;
        self.depth = 0;
        let commit = commit && !std::mem::take(&mut self.aborted);
        if self.is_autocommit() {
            return if commit { Err(aborted()) } else { Ok(()) };
        }
        let result = self.trusted(if commit { "COMMIT" } else { "ROLLBACK" });
        if result.is_err() && !self.is_autocommit() {
            let _ = self.trusted("ROLLBACK");
        }
        result
    }

    /// Runs the host's own SQL, which the authorizer would deny to a guest.
    fn trusted(&mut self, sql: &str) -> Result<(), Error> {
        let limits = self.db.limits.clone();
        let pooled = self.pooled();
        pooled.guard.trusted.store(true, Ordering::Relaxed);
        let result = pooled.conn.execute_batch(sql);
        pooled.guard.trusted.store(false, Ordering::Relaxed);
        result.map_err(|e| guest_error(e, &pooled.guard, &limits))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(pooled) = self.pooled.take() else {
            return;
        };
        if !pooled.conn.is_autocommit() {
            pooled.guard.trusted.store(true, Ordering::Relaxed);
            let rolled_back = pooled.conn.execute_batch("ROLLBACK").is_ok();
            pooled.guard.trusted.store(false, Ordering::Relaxed);
            if !rolled_back {
                // A connection in an unknown state is closed, not reused.
                return;
            }
        }
        self.db.checkin(pooled);
    }
}

fn aborted() -> Error {
    Error::InvalidTransactionState("the transaction was rolled back after an error".into())
}

enum Failure {
    Sqlite(rusqlite::Error),
    Guest(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sqlite(e)
    }
}

/// Runs a statement; also tells whether it was read-only.
fn run(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Value],
    limits: &DbLimits,
) -> Result<(QueryResult, bool), Failure> {
    let mut statement = conn.prepare_cached(sql)?;
    run_statement(&mut statement, params, limits)
}

fn run_statement(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[Value],
    limits: &DbLimits,
) -> Result<(QueryResult, bool), Failure> {
    let readonly = stmt.readonly();
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(Failure::Guest(Error::InvalidStatement(format!(
            "the statement takes {expected} parameters, {} given",
            params.len()
        ))));
    }
    for (i, param) in params.iter().enumerate() {
        let value = match param {
            Value::Null => ValueRef::Null,
            Value::Integer(n) => ValueRef::Integer(*n),
            Value::Real(n) => ValueRef::Real(*n),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        };
        stmt.raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(value))?;
    }
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let width = columns.len();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        if out.len() == limits.max_result_rows {
            return Err(Failure::Guest(Error::LimitExceeded(format!(
                "the query returns more than {} rows",
                limits.max_result_rows
            ))));
        }
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            // Sized while still in SQLite's memory: nothing is copied past the limit.
            let value = row.get_ref(i)?;
            bytes += 8 + match value {
                ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
                _ => 0,
            };
            if bytes > limits.max_result_bytes {
                return Err(Failure::Guest(Error::LimitExceeded(format!(
                    "the query returns more than {} bytes",
                    limits.max_result_bytes
                ))));
            }
            values.push(match value {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Integer(n),
                ValueRef::Real(n) => Value::Real(n),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(Row { values });
    }
    Ok((QueryResult { columns, rows: out }, readonly))
}

/// Maps an SQLite failure to the error variant a guest sees.
fn guest_error(e: rusqlite::Error, guard: &Guard, limits: &DbLimits) -> Error {
    // A denial fails the statement, at prepare time or when it runs.
    if let Some(why) = guard.denied.lock().expect("denial lock").take() {
        return Error::AccessDenied(why);
    }
    let (code, message) = match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            (failure.code, message.unwrap_or_else(|| failure.to_string()))
        }
        rusqlite::Error::MultipleStatement => {
            return Error::InvalidStatement("execute takes one statement at a time".into());
        }
        rusqlite::Error::SqlInputError { msg, sql, offset, .. } => {
            return Error::InvalidStatement(format!("{msg} in {sql:?} at offset {offset}"));
        }
        other => return Error::Io(other.to_string()),
    };
    match code {
        ErrorCode::ConstraintViolation => Error::ConstraintViolation(message),
        ErrorCode::DiskFull => Error::DatabaseFull,
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Error::Busy,
        ErrorCode::OperationInterrupted => Error::LimitExceeded(format!(
            "the statement ran longer than {} ms",
            limits.statement_timeout.as_millis()
        )),
        ErrorCode::AuthorizationForStatementDenied => Error::AccessDenied(message),
        ErrorCode::TooBig => Error::LimitExceeded(message),
        ErrorCode::OutOfMemory => Error::LimitExceeded("the host's memory for SQLite is exhausted; try again".into()),
        ErrorCode::Unknown | ErrorCode::TypeMismatch | ErrorCode::ParameterOutOfRange => {
            Error::InvalidStatement(message)
        }
        _ => Error::Io(message),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn database(limits: DbLimits) -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().unwrap();
        let threads = SqlThreads::start(1).unwrap();
        let db = Database::open(dir.path().join("t.sqlite3"), limits, threads).unwrap();
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
        let mut conn = db.checkout().unwrap();
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
        // The tokenizer a denied function would register is not there.
        assert!(exec(&mut conn, "CREATE VIRTUAL TABLE f USING fts4(x, tokenize=x)", &[]).is_err());
        exec(&mut conn, "CREATE VIRTUAL TABLE g USING fts4(x, tokenize=porter)", &[]).unwrap();
        exec(&mut conn, "INSERT INTO g (x) VALUES ('running dogs')", &[]).unwrap();
        assert_eq!(
            one(&mut conn, "SELECT count(*) FROM g WHERE g MATCH 'run'"),
            Value::Integer(1)
        );
        denied(&mut conn, "CREATE VIRTUAL TABLE h USING fts4aux(g)", &[]);
    }

    #[test]
    fn what_a_service_needs_stays_allowed() {
        let (_dir, db) = database(DbLimits::default());
        let mut conn = db.checkout().unwrap();
        for sql in [
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, at TEXT DEFAULT (strftime('%Y', 'now')))",
            "CREATE INDEX users_by_name ON users (lower(name))",
            "INSERT INTO users (name) VALUES (upper('ada'))",
            "ALTER TABLE users ADD COLUMN email TEXT",
            "ALTER TABLE users RENAME COLUMN email TO mail",
            "ALTER TABLE users DROP COLUMN mail",
            "ALTER TABLE users RENAME TO people",
            "CREATE TRIGGER named AFTER INSERT ON people BEGIN UPDATE people SET name = trim(name) WHERE id = new.id; END",
            "CREATE VIRTUAL TABLE docs USING fts5(body)",
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
    }

    #[test]
    fn statements_with_quadratic_cost_end_quickly() {
        let (_dir, db) = database(DbLimits {
            statement_timeout: Duration::from_millis(200),
            ..DbLimits::default()
        });
        let mut conn = db.checkout().unwrap();
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
            max_value_bytes: 256 << 10,
            ..DbLimits::default()
        });
        let mut conn = db.checkout().unwrap();
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
    }

    #[test]
    fn a_long_statement_is_interrupted_at_its_deadline() {
        let (_dir, db) = database(DbLimits {
            statement_timeout: Duration::from_millis(100),
            ..DbLimits::default()
        });
        let mut conn = db.checkout().unwrap();
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
        let mut conn = db.checkout().unwrap();
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
}
