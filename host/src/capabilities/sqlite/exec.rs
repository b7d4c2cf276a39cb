//! Running one guest statement: parameters bound, rows collected within
//! the result limits (sized before they are copied out of SQLite), and
//! SQLite's failures mapped to the error variants a guest sees.

use std::time::Duration;

use rusqlite::ErrorCode;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::connection::{Conn, Effect};
use super::pool::{BUSY_TIMEOUT, DbLimits, Guard, Pooled};
use crate::capabilities::bindings::corral::service::sqlite::{
    Constraint, ConstraintKind, Error, QueryResult, Row, Value,
};

/// What became of a statement tried on the async worker.
pub enum Inline {
    /// It ran, or failed for good.
    Done(Result<QueryResult, Error>),
    /// It reads, but could not finish within the budget without waiting:
    /// run it again on an SQL thread.
    Slow,
    /// It writes: it needs the writer.
    Writes,
}

impl Conn {
    /// Runs one guest statement and collects its rows within the limits.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<QueryResult, Error> {
        let limits = &self.db.limits;
        let pooled = self.pooled();
        let (conn, guard) = (&pooled.conn, &pooled.guard);
        let (total_before, rowid_before) = (conn.total_changes(), conn.last_insert_rowid());
        let result = guard
            .deadline
            .within(limits.statement_timeout, || run(conn, sql, params, limits))
            .map_err(|e| match e {
                Failure::Sqlite(e) => guest_error(e, guard, limits),
                Failure::Guest(e) => e,
            });
        let autocommit = conn.is_autocommit();
        let effect = match &result {
            Ok((_, false)) if conn.total_changes() > total_before => {
                let rowid = conn.last_insert_rowid();
                Some(Effect {
                    changes: conn.changes(),
                    inserted: (rowid != rowid_before).then_some(rowid),
                })
            }
            Ok((_, false)) => Some(Effect {
                changes: 0,
                inserted: None,
            }),
            _ => None,
        };
        if effect.is_some() {
            self.effect = effect;
        }
        if result.is_ok() && self.recording.is_some() && super::replication::changes_schema(sql) {
            self.schema_statements.push(sql.to_string());
        }
        if result.is_err() {
            self.txn = self.txn.statement_failed(autocommit);
        }
        result.map(|(rows, _)| rows)
    }

    /// Runs `sql` to the end of its time if it only reads (on an SQL
    /// thread); says if it writes instead.
    pub fn read(&mut self, sql: &str, params: &[Value]) -> Inline {
        let limits = &self.db.limits;
        let pooled = self.pooled();
        let guard = &pooled.guard;
        let mut statement = match prepare_read(pooled, sql, limits) {
            Ok(statement) => statement,
            Err(instead) => return instead,
        };
        let result = guard.deadline.within(limits.statement_timeout, || {
            run_statement(&mut statement, params, limits)
        });
        Inline::Done(result.map(|(rows, _)| rows).map_err(|e| match e {
            Failure::Sqlite(e) => guest_error(e, guard, limits),
            Failure::Guest(e) => e,
        }))
    }

    /// Runs `sql` right here if it is a read outside any transaction and it
    /// finishes within `budget` without waiting for a lock: then nothing it
    /// did needs undoing if it is stopped. Says when it must run on a
    /// blocking thread instead, or on the writer.
    pub fn try_read_inline(&mut self, sql: &str, params: &[Value], budget: Duration) -> Inline {
        if self.txn.is_open() {
            return Inline::Slow;
        }
        let limits = &self.db.limits;
        let pooled = self.pooled();
        let (conn, guard) = (&pooled.conn, &pooled.guard);
        let mut statement = match prepare_read(pooled, sql, limits) {
            Ok(statement) => statement,
            Err(instead) => return instead,
        };
        if !conn.is_autocommit() || conn.busy_timeout(Duration::ZERO).is_err() {
            return Inline::Slow;
        }
        let final_budget = budget >= limits.statement_timeout;
        let result = guard.deadline.within(budget.min(limits.statement_timeout), || {
            run_statement(&mut statement, params, limits)
        });
        drop(statement);
        if conn.busy_timeout(BUSY_TIMEOUT).is_err() {
            return Inline::Slow;
        }
        match result {
            Ok((rows, _)) => Inline::Done(Ok(rows)),
            Err(Failure::Sqlite(e)) => match e.sqlite_error_code() {
                Some(ErrorCode::OperationInterrupted) if !final_budget => Inline::Slow,
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Inline::Slow,
                _ => Inline::Done(Err(guest_error(e, guard, limits))),
            },
            Err(Failure::Guest(e)) => Inline::Done(Err(e)),
        }
    }
}

/// `sql` prepared on `pooled`, if it only reads; else what to do instead.
fn prepare_read<'c>(pooled: &'c Pooled, sql: &str, limits: &DbLimits) -> Result<rusqlite::CachedStatement<'c>, Inline> {
    let statement = pooled
        .conn
        .prepare_cached(sql)
        .map_err(|e| Inline::Done(Err(guest_error(e, &pooled.guard, limits))))?;
    if !statement.readonly() {
        return Err(Inline::Writes);
    }
    Ok(statement)
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

/// What one value of a result costs the host besides its bytes: the
/// `Value` itself, which a string or blob also points from.
const VALUE_BYTES: usize = std::mem::size_of::<Value>();
/// What one row costs besides its values: the `Row`, and the allocation
/// header of its values' `Vec`.
const ROW_BYTES: usize = std::mem::size_of::<Row>() + 16;

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
        bytes += ROW_BYTES;
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
            bytes += VALUE_BYTES
                + match value {
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
pub(super) fn guest_error(e: rusqlite::Error, guard: &Guard, limits: &DbLimits) -> Error {
    // A denial fails the statement, at prepare time or when it runs.
    if let Some(why) = guard.denied.lock().expect("denial lock").take() {
        return Error::AccessDenied(why);
    }
    let (code, extended, message) = match e {
        rusqlite::Error::SqliteFailure(failure, message) => (
            failure.code,
            failure.extended_code,
            message.unwrap_or_else(|| failure.to_string()),
        ),
        rusqlite::Error::MultipleStatement => {
            return Error::InvalidStatement("execute takes one statement at a time".into());
        }
        rusqlite::Error::SqlInputError { msg, sql, offset, .. } => {
            return Error::InvalidStatement(format!("{msg} in {sql:?} at offset {offset}"));
        }
        other => return Error::Io(other.to_string()),
    };
    match code {
        ErrorCode::ConstraintViolation => Error::ConstraintViolation(Constraint {
            kind: constraint_kind(extended),
            message,
        }),
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

/// The kind of constraint an extended result code names.
fn constraint_kind(extended: i32) -> ConstraintKind {
    use rusqlite::ffi;
    match extended {
        ffi::SQLITE_CONSTRAINT_UNIQUE => ConstraintKind::Unique,
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_ROWID => ConstraintKind::PrimaryKey,
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ConstraintKind::ForeignKey,
        ffi::SQLITE_CONSTRAINT_CHECK => ConstraintKind::Check,
        ffi::SQLITE_CONSTRAINT_NOTNULL => ConstraintKind::NotNull,
        _ => ConstraintKind::Other,
    }
}
