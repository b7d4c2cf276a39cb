//! Typed access to the component's own SQLite database: statements whose
//! rows decode by column name into structs, typed constraint violations,
//! transactions and schema migrations.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::bindings::corral::service::sqlite as wit;
use crate::http::Problem;

pub use wit::{Constraint, ConstraintKind, Error as SqliteError, QueryResult, Row, Value};

/// Why a database call failed.
#[derive(Debug)]
pub enum Error {
    /// The host refused or failed the statement.
    Sqlite(SqliteError),
    /// A column could not become the field that asked for it.
    Decode { column: String, message: String },
    /// A query that must return a row returned none.
    NoRow,
}

impl From<crate::rows::DecodeError> for Error {
    fn from(e: crate::rows::DecodeError) -> Self {
        Error::Decode {
            column: e.column,
            message: e.message,
        }
    }
}

impl Error {
    /// The constraint the statement broke, if that is why it failed.
    pub fn constraint(&self) -> Option<&Constraint> {
        match self {
            Error::Sqlite(SqliteError::ConstraintViolation(constraint)) => Some(constraint),
            _ => None,
        }
    }

    /// Whether the statement broke the UNIQUE (or primary key) constraint
    /// on `column`, written `table.column`.
    pub fn is_unique_violation(&self, column: &str) -> bool {
        self.constraint().is_some_and(|c| {
            matches!(c.kind, ConstraintKind::Unique | ConstraintKind::PrimaryKey)
                && c.columns().any(|name| name == column)
        })
    }
}

impl Constraint {
    /// The `table.column`s SQLite names for a UNIQUE, PRIMARY KEY or NOT
    /// NULL constraint.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        let named = match self.kind {
            ConstraintKind::Unique | ConstraintKind::PrimaryKey | ConstraintKind::NotNull => {
                self.message.split_once(": ").map(|(_, columns)| columns)
            }
            _ => None,
        };
        named.into_iter().flat_map(|columns| columns.split(", "))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => match e {
                SqliteError::InvalidStatement(m) => write!(f, "invalid statement: {m}"),
                SqliteError::ConstraintViolation(c) => write!(f, "constraint violation: {}", c.message),
                SqliteError::DatabaseFull => write!(f, "the database is full"),
                SqliteError::AccessDenied(m) => write!(f, "access denied: {m}"),
                SqliteError::Busy => write!(f, "the database is busy"),
                SqliteError::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
                SqliteError::InvalidTransactionState(m) => {
                    write!(f, "invalid transaction state: {m}")
                }
                SqliteError::Io(m) => write!(f, "sqlite: {m}"),
            },
            Error::Decode { column, message } => write!(f, "column {column}: {message}"),
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

/// Runs one statement with positional parameters (`?`, `?2`).
pub fn execute(sql: &str, params: &[Value]) -> Result<QueryResult, Error> {
    Ok(wit::execute(sql, params)?)
}

/// Runs a query and decodes every row into a `T`, by column name.
pub fn query<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<Vec<T>, Error> {
    let result = execute(sql, params)?;
    let columns = result.columns;
    result
        .rows
        .into_iter()
        .map(|row| Ok(crate::rows::decode(&columns, row.values)?))
        .collect()
}

/// Runs a query and decodes its first row, if any.
pub fn query_optional<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<Option<T>, Error> {
    let result = execute(sql, params)?;
    match result.rows.into_iter().next() {
        Some(row) => Ok(Some(crate::rows::decode(&result.columns, row.values)?)),
        None => Ok(None),
    }
}

/// Runs a query that must return a row and decodes the first one.
pub fn query_one<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<T, Error> {
    query_optional(sql, params)?.ok_or(Error::NoRow)
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
        #[derive(serde::Deserialize)]
        struct Applied {
            user_version: i64,
        }
        let applied = query_one::<Applied>("PRAGMA user_version", &[])?.user_version;
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

impl From<u64> for Value {
    /// Past `i64::MAX`, SQLite has no integer for it: it is stored as a real.
    fn from(n: u64) -> Self {
        i64::try_from(n).map_or(Value::Real(n as f64), Value::Integer)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Integer(i64::from(b))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.into())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Text(s.clone())
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
