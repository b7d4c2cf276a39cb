//! The sqlite capability: each component's private database, offered to its
//! guests through `corral:service/sqlite`.
//!
//! [`db`] owns the files and runs statements (blocking); [`SqliteCtx`] is
//! one request's handle on its component's database, and `host_impl`
//! implements the WIT interface on it, moving blocking work off the async
//! workers.

mod db;
mod host_impl;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

pub use db::{Conn, Database, DbLimits};

use crate::bindings::corral::service::sqlite as wit;

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

    /// Runs `work` on this request's connection on a blocking thread.
    pub async fn with_conn<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> R + Send + 'static,
    ) -> Result<R, SqliteError> {
        let conn = self.conn.take();
        let db = Arc::clone(&self.db);
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let mut conn = match conn {
                Some(conn) => conn,
                None => db.checkout()?,
            };
            let out = work(&mut conn);
            Ok::<_, wit::Error>((conn, out))
        })
        .await
        .map_err(|e| SqliteError::Trap(wasmtime::Error::msg(format!("sqlite worker failed: {e}"))))??;
        self.conn = Some(conn);
        Ok(out)
    }
}

impl Drop for SqliteCtx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.is_autocommit() {
            drop(conn);
            return;
        }
        // Rolling back is file I/O: keep it off the async workers.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(conn))),
            Err(_) => drop(conn),
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
