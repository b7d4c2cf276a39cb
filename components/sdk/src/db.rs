//! Typed access to the component's own SQLite database: statements, rows,
//! transactions and schema migrations.

use std::fmt;

use crate::bindings::corral::service::sqlite as wit;
use crate::http::Problem;

pub use wit::{Error as SqliteError, QueryResult, Row, Value};

/// Why a database call failed.
#[derive(Debug)]
pub enum Error {
    /// The host refused or failed the statement.
    Sqlite(SqliteError),
    /// A column held another type than the code asked for.
    Decode {
        column: usize,
        expected: &'static str,
        found: &'static str,
    },
    /// A query that must return a row returned none.
    NoRow,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => match e {
                SqliteError::InvalidStatement(m) => write!(f, "invalid statement: {m}"),
                SqliteError::ConstraintViolation(m) => write!(f, "constraint violation: {m}"),
                SqliteError::DatabaseFull => write!(f, "the database is full"),
                SqliteError::AccessDenied(m) => write!(f, "access denied: {m}"),
                SqliteError::Busy => write!(f, "the database is busy"),
                SqliteError::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
                SqliteError::InvalidTransactionState(m) => {
                    write!(f, "invalid transaction state: {m}")
                }
                SqliteError::Io(m) => write!(f, "sqlite: {m}"),
            },
            Error::Decode {
                column,
                expected,
                found,
            } => {
                write!(f, "column {column}: expected {expected}, found {found}")
            }
            Error::NoRow => write!(f, "the query returned no row"),
        }
    }
}

impl From<SqliteError> for Error {
    fn from(e: SqliteError) -> Self {
        Error::Sqlite(e)
    }
}

/// Database errors a handler does not handle itself become problems: a full
/// database is 507, a busy one 503, anything else an internal error that is
/// logged but not shown to the client.
impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Sqlite(SqliteError::DatabaseFull) => Problem::new(
                507,
                "insufficient-storage",
                "Insufficient storage",
                "the service's database is full",
            ),
            Error::Sqlite(SqliteError::Busy) => {
                Problem::new(503, "busy", "Service busy", "the service's database is busy; try again")
                    .header("retry-after", "1")
            }
            other => {
                crate::log::error(&format!("database error: {other}"));
                Problem::internal("database error")
            }
        }
    }
}

/// Runs one statement with positional parameters.
pub fn execute(sql: &str, params: &[Value]) -> Result<QueryResult, Error> {
    Ok(wit::execute(sql, params)?)
}

/// Runs a query that must return a row and returns the first one.
pub fn query_row(sql: &str, params: &[Value]) -> Result<Row, Error> {
    optional_row(sql, params)?.ok_or(Error::NoRow)
}

/// Runs a query and returns its first row, if any.
pub fn optional_row(sql: &str, params: &[Value]) -> Result<Option<Row>, Error> {
    Ok(execute(sql, params)?.rows.into_iter().next())
}

/// The number of rows changed by the last INSERT, UPDATE or DELETE.
pub fn changes() -> u64 {
    wit::changes()
}

/// Runs `body` in a transaction: commits if it returns `Ok`, rolls back if not.
/// Transactions nest.
pub fn transaction<T, E: From<Error>>(body: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    wit::begin().map_err(Error::from)?;
    match body() {
        Ok(value) => {
            wit::commit().map_err(Error::from)?;
            Ok(value)
        }
        Err(e) => {
            // The body's error is the one worth reporting; a failed rollback
            // still ends with the transaction rolled back by the host.
            let _ = wit::rollback();
            Err(e)
        }
    }
}

/// Brings the schema up to date: runs the statements of `steps` that this
/// database has not run yet, in order, and records how many ran in
/// `PRAGMA user_version`. Each step is one statement; steps are only ever
/// appended.
pub fn migrate(steps: &[&str]) -> Result<(), Error> {
    transaction(|| {
        let applied: i64 = query_row("PRAGMA user_version", &[])?.get(0)?;
        let applied = usize::try_from(applied).unwrap_or(0);
        if applied > steps.len() {
            crate::log::warn(&format!(
                "the database has {applied} migrations applied, this version knows {}",
                steps.len()
            ));
            return Ok(());
        }
        for step in &steps[applied..] {
            execute(step, &[])?;
        }
        execute(&format!("PRAGMA user_version = {}", steps.len()), &[])?;
        Ok(())
    })
}

impl Row {
    /// The value of column `column` as a Rust type.
    pub fn get<T: FromValue>(&self, column: usize) -> Result<T, Error> {
        let value = self.values.get(column).unwrap_or(&Value::Null);
        T::from_value(value).ok_or(Error::Decode {
            column,
            expected: T::EXPECTED,
            found: type_name(value),
        })
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Integer(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}

/// A Rust type that a column value converts to.
pub trait FromValue: Sized {
    const EXPECTED: &'static str;
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "integer";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    const EXPECTED: &'static str = "real";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Real(n) => Some(*n),
            Value::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    const EXPECTED: &'static str = "text";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    const EXPECTED: &'static str = "blob";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Real(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}
