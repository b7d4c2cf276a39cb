//! The sqlite capability: each component's private database, offered to its
//! guests through `corral:service/sqlite`.
//!
//! In reading order: [`pool`] owns the files and their connections;
//! [`policy`] says what guest SQL may do; [`connection`] is one request's
//! connection and the transaction state machine; [`exec`] runs a statement
//! within the limits; [`threads`] is where statements run, off the async
//! workers, and [`watchdog`] stops those that outlive their time; the
//! host's own tables for events are in [`outbox`].
//! [`SqliteCtx`] is one request's handle on its component's database, and
//! `host_impl` implements the WIT interface on it.

pub mod connection;
mod exec;
mod host_impl;
pub mod outbox;
pub mod policy;
pub mod pool;
#[cfg(test)]
mod tests;
pub mod threads;
mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

pub use connection::Conn;
pub use pool::{Database, DbLimits};
pub use threads::SqlThreads;

use crate::capabilities::bindings::corral::service::sqlite as wit;

/// How long a read may run on an async worker before it is stopped and run
/// again on a blocking thread. Handing a statement to another thread and back
/// costs more than most point reads take.
const INLINE_READ_BUDGET: Duration = Duration::from_micros(100);

/// A failure of a sqlite host call: an error the guest sees as a WIT value, or
/// a trap for host failures the guest cannot handle.
#[derive(Debug)]
pub enum SqliteError {
    Guest(wit::Error),
    Trap(wasmtime::Error),
}

impl From<wit::Error> for SqliteError {
    fn from(e: wit::Error) -> Self {
        SqliteError::Guest(e)
    }
}

/// Where a component's statements are counted and timed.
#[derive(Clone)]
pub struct SqliteStats {
    pub ok: Counter,
    pub failed: Counter,
    pub duration: Histogram,
}

/// One request's handle on its component's database. The connection is
/// checked out on first use and held until the request ends, when anything
/// left open is rolled back.
pub struct SqliteCtx {
    db: Arc<Database>,
    conn: Option<Conn>,
    stats: SqliteStats,
}

impl SqliteCtx {
    pub fn new(db: Arc<Database>, stats: SqliteStats) -> Self {
        SqliteCtx { db, conn: None, stats }
    }

    /// Runs a read here and now if it is quick and safe to (see
    /// [`Conn::try_read_inline`]); `None` when it must go to a blocking thread.
    pub fn try_read_inline(
        &mut self,
        sql: &str,
        params: &[wit::Value],
    ) -> Option<Result<wit::QueryResult, wit::Error>> {
        if self.conn.is_none() {
            self.conn = self.db.checkout_idle();
        }
        self.conn.as_mut()?.try_read_inline(sql, params, INLINE_READ_BUDGET)
    }

    /// The connection this request holds, with whatever it has open.
    pub fn take_conn(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    /// Makes `conn`, with whatever it has open, this request's connection.
    pub fn put_conn(&mut self, conn: Conn) {
        self.conn = Some(conn);
    }

    /// Runs `work` on this request's connection on an SQL thread.
    pub async fn with_conn<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> R + Send + 'static,
    ) -> Result<R, SqliteError> {
        let conn = self.conn.take();
        let had_conn = conn.is_some();
        let db = Arc::clone(&self.db);
        let job = move |wanted: bool| {
            if !wanted {
                // The request is gone; dropping the connection rolls back.
                return None;
            }
            let mut conn = match conn {
                Some(conn) => conn,
                None => match db.checkout() {
                    Ok(conn) => conn,
                    Err(e) => return Some(Err(e)),
                },
            };
            let out = work(&mut conn);
            Some(Ok((conn, out)))
        };
        let (conn, out) = match self.db.threads().run(job).await {
            Ok(Some(done)) => done?,
            // The connection, and any transaction on it, is gone (rolled
            // back): the guest cannot go on as if it were open.
            Ok(None) | Err(threads::Busy) if had_conn => {
                return Err(SqliteError::Trap(wasmtime::Error::msg(
                    "the host's SQL threads are overloaded; this request's connection was rolled back",
                )));
            }
            Ok(None) | Err(threads::Busy) => return Err(wit::Error::Busy.into()),
        };
        self.conn = Some(conn);
        Ok(out)
    }
}

/// Commits or rolls back the transaction `init` ran in, on an SQL thread.
pub async fn end_host_transaction(mut conn: Conn, commit: bool) -> Result<(), wit::Error> {
    let threads = Arc::clone(conn.threads());
    threads
        .run(move |_| conn.end_host_transaction(commit))
        .await
        .unwrap_or(Err(wit::Error::Busy))
}

/// Caps the memory SQLite may allocate in this process, across every
/// database: past `bytes`, statements fail with `limit-exceeded`, and past
/// half of it SQLite gives back cache memory first.
pub fn limit_heap(bytes: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open_in_memory()?;
    conn.query_row(&format!("PRAGMA hard_heap_limit = {bytes}"), [], |_| Ok(()))?;
    conn.query_row(&format!("PRAGMA soft_heap_limit = {}", bytes / 2), [], |_| Ok(()))?;
    Ok(())
}

impl Drop for SqliteCtx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.is_autocommit() {
            drop(conn);
            return;
        }
        // Rolling back is file I/O: keep it off the async workers.
        if self.db.threads().spawn(move || drop(conn)).is_err() {
            tracing::warn!("the SQL threads are busy; a request's transaction is rolled back in place");
        }
    }
}

/// Adds `corral:service/sqlite` to a linker whose store data holds a [`SqliteCtx`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut SqliteCtx,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, wasmtime::component::HasSelf<SqliteCtx>>(linker, get)
}
