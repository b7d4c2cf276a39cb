//! A component's database file: a pool of rusqlite connections, each hardened
//! against what a guest may try, and the statements run on them. Everything
//! here blocks; callers run it off the async workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, OpenFlags};

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
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits {
            max_size_bytes: 1 << 30,
            statement_timeout: Duration::from_secs(1),
            max_result_rows: 10_000,
            max_result_bytes: 16 << 20,
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
/// The largest string, blob or SQL text SQLite will handle for a guest.
const MAX_VALUE_BYTES: i32 = 16 << 20;

/// PRAGMAs a guest may read; anything else, and any write but
/// `user_version`, is denied because it could escape or corrupt the file.
const READABLE_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "page_count",
    "page_size",
    "freelist_count",
    "max_page_count",
    "data_version",
    "schema_version",
    "foreign_keys",
    "journal_mode",
    "collation_list",
    "function_list",
    "pragma_list",
];

/// Virtual table modules a guest may create; the rest of SQLite's are denied.
const VIRTUAL_TABLE_MODULES: &[&str] = &["fts5", "fts4", "fts3", "rtree"];

/// One component's database file.
pub struct Database {
    path: PathBuf,
    limits: DbLimits,
    idle: Mutex<Vec<Pooled>>,
}

/// A connection and the state its authorizer and progress handler read.
struct Pooled {
    conn: rusqlite::Connection,
    guard: Arc<Guard>,
}

/// What the hooks installed on a connection consult.
#[derive(Default)]
struct Guard {
    /// Set while the host runs its own statements (transaction control),
    /// which the authorizer otherwise denies.
    trusted: AtomicBool,
    /// When the running statement must stop, in nanoseconds since [`clock_base`].
    deadline_ns: AtomicU64,
    /// Why the authorizer last said no, for the error the guest sees.
    denied: Mutex<Option<String>>,
}

impl Guard {
    /// Runs `statement` with the progress handler set to interrupt it after `budget`.
    fn within<R>(&self, budget: Duration, statement: impl FnOnce() -> R) -> R {
        self.deadline_ns
            .store(now_ns().saturating_add(budget.as_nanos() as u64), Ordering::Relaxed);
        let result = statement();
        self.deadline_ns.store(u64::MAX, Ordering::Relaxed);
        result
    }
}

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    clock_base().elapsed().as_nanos() as u64
}

impl Database {
    /// Opens (creating it if needed) the database file at `path`.
    pub fn open(path: PathBuf, limits: DbLimits) -> anyhow::Result<Arc<Database>> {
        let db = Arc::new(Database {
            path,
            limits,
            idle: Mutex::new(Vec::new()),
        });
        let first = db.connect()?;
        db.idle.lock().expect("pool lock").push(first);
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let max_pages = (self.limits.max_size_bytes / page_size.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |_| Ok(()))?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        // No attached databases at all: this also stops `VACUUM INTO 'file'`.
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_VALUE_BYTES)?;

        let guard = Arc::new(Guard::default());
        guard.deadline_ns.store(u64::MAX, Ordering::Relaxed);
        let auth_guard = Arc::clone(&guard);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&auth_guard, ctx)))?;
        let progress_guard = Arc::clone(&guard);
        conn.progress_handler(
            PROGRESS_STEPS,
            Some(move || now_ns() > progress_guard.deadline_ns.load(Ordering::Relaxed)),
        )?;
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
    let denial = match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some("ATTACH and DETACH are not allowed".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Some("use the sqlite interface's begin, commit and rollback for transactions".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = match pragma_value {
                None => READABLE_PRAGMAS.contains(&name.as_str()),
                Some(_) => READABLE_PRAGMAS.contains(&name.as_str()) && !is_setting(&name) || name == "user_version",
            };
            (!allowed).then(|| format!("PRAGMA {pragma_name} is not allowed"))
        }
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Some("loading extensions is not allowed".into())
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => {
            Some("temporary objects are not allowed: they would outlive the request on a pooled connection".into())
        }
        AuthAction::CreateVtable { module_name, .. }
            if !VIRTUAL_TABLE_MODULES.contains(&module_name.to_ascii_lowercase().as_str()) =>
        {
            Some(format!("virtual table module {module_name} is not allowed"))
        }
        _ => None,
    };
    match denial {
        None => Authorization::Allow,
        Some(reason) => {
            *guard.denied.lock().expect("denial lock") = Some(reason);
            Authorization::Deny
        }
    }
}

/// PRAGMAs in the readable list whose argument changes a setting rather than
/// naming a table or index to look at.
fn is_setting(name: &str) -> bool {
    matches!(
        name,
        "user_version" | "application_id" | "page_size" | "max_page_count" | "foreign_keys" | "journal_mode"
    )
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
        let result = guard.within(budget.min(limits.statement_timeout), || {
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
            let value = match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Integer(n),
                ValueRef::Real(n) => Value::Real(n),
                ValueRef::Text(t) => {
                    bytes += t.len();
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
                ValueRef::Blob(b) => {
                    bytes += b.len();
                    Value::Blob(b.to_vec())
                }
            };
            bytes += 8;
            values.push(value);
        }
        if bytes > limits.max_result_bytes {
            return Err(Failure::Guest(Error::LimitExceeded(format!(
                "the query returns more than {} bytes",
                limits.max_result_bytes
            ))));
        }
        out.push(Row { values });
    }
    Ok((QueryResult { columns, rows: out }, readonly))
}

/// Maps an SQLite failure to the error variant a guest sees.
fn guest_error(e: rusqlite::Error, guard: &Guard, limits: &DbLimits) -> Error {
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
        ErrorCode::AuthorizationForStatementDenied => {
            Error::AccessDenied(guard.denied.lock().expect("denial lock").take().unwrap_or(message))
        }
        ErrorCode::TooBig => Error::LimitExceeded(message),
        ErrorCode::Unknown | ErrorCode::TypeMismatch | ErrorCode::ParameterOutOfRange => {
            Error::InvalidStatement(message)
        }
        _ => Error::Io(message),
    }
}
