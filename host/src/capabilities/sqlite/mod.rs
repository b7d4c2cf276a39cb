//! The sqlite capability: each component's private database, offered to its
//! guests through `corral:service/sqlite`.
//!
//! In reading order: [`pool`] owns the files and their connections, a pool
//! of readers and one writer per file, taken in turn; [`policy`] says what
//! guest SQL may do; [`connection`] is one request's connection and the
//! transaction state machine; [`exec`] runs a statement within the limits;
//! [`group`] commits writes made outside a transaction together;
//! [`threads`] is where statements run when not in place, and [`watchdog`]
//! stops those that outlive their time; the host's own tables for events
//! are in [`outbox`]. [`SqliteCtx`] is one request's handle on its
//! component's database, `host_impl` implements the WIT interface on it,
//! and [`capability`] makes it a [`Capability`](super::Capability).
//!
//! Where a statement runs: a read outside a transaction runs on the async
//! worker that asks for it if it finishes within [`INLINE_READ_BUDGET`]
//! (else again on an SQL thread); a write outside a transaction joins a
//! group commit; a transaction takes the writer from `begin` to `commit`,
//! and its statements run in place while an [`inline`] slot is free.

mod backup;
mod capability;
pub mod connection;
mod exec;
mod group;
mod host_impl;
mod inline;
pub mod outbox;
pub mod policy;
pub mod pool;
pub mod replication;
mod session;
#[cfg(test)]
mod tests;
pub mod threads;
mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

pub use backup::{RestoreError, Restored, SCRATCH_PREFIXES};
pub use capability::{ComponentDb, Sqlite};
pub use connection::{Conn, Effect};
pub use pool::{Database, DbLimits};
pub use replication::{AppendError, Applied, Change, CommitLog};
pub use threads::SqlThreads;

pub use crate::capabilities::bindings::SqliteError;

use crate::capabilities::bindings::corral::service::sqlite as wit;
use exec::Inline;

/// How long a read may run on an async worker before it is stopped and run
/// again on a blocking thread. Handing a statement to another thread and back
/// costs more than most point reads take.
const INLINE_READ_BUDGET: Duration = Duration::from_micros(100);

/// Where a component's statements are counted and timed.
#[derive(Clone)]
pub struct SqliteStats {
    pub ok: Counter,
    pub failed: Counter,
    pub duration: Histogram,
}

/// One request's handle on its component's database: a reader, checked out
/// on first use and kept while it reads, or the writer, held while a
/// transaction is open. Anything left open when the request ends is
/// rolled back.
pub struct SqliteCtx {
    db: Arc<Database>,
    conn: Option<Conn>,
    /// What `changes()` and `last-insert-rowid()` answer: this request's
    /// own last write, wherever it ran.
    changes: u64,
    last_insert_rowid: i64,
    stats: SqliteStats,
}

impl SqliteCtx {
    pub fn new(db: Arc<Database>, stats: SqliteStats) -> Self {
        SqliteCtx {
            db,
            conn: None,
            changes: 0,
            last_insert_rowid: 0,
            stats,
        }
    }

    /// Runs one guest statement where it belongs (see the module's docs),
    /// in a span of its own.
    pub async fn run(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> Result<Result<wit::QueryResult, wit::Error>, SqliteError> {
        let span = tracing::info_span!("sql", db.system = "sqlite", db.statement = statement_text(&sql));
        tracing::Instrument::instrument(self.run_statement(sql, params), span).await
    }

    async fn run_statement(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> Result<Result<wit::QueryResult, wit::Error>, SqliteError> {
        if self.holds_writer() {
            return self.on_own_conn(move |conn| conn.execute(&sql, &params)).await;
        }
        if self.conn.is_none() {
            self.conn = self.db.idle_reader();
        }
        if let Some(conn) = self.conn.as_mut() {
            match conn.try_read_inline(&sql, &params, INLINE_READ_BUDGET) {
                Inline::Done(result) => return Ok(result),
                Inline::Writes => return self.write(sql, params).await,
                Inline::Slow => {}
            }
        }
        // A slow read, or no idle reader: on an SQL thread, with one.
        let db = Arc::clone(&self.db);
        let conn = self.conn.take();
        let job = move |wanted: bool| {
            let mut conn = match conn {
                Some(conn) => conn,
                None if wanted => db.reader()?,
                None => return Err(wit::Error::Busy),
            };
            let read = if wanted {
                conn.read(&sql, &params)
            } else {
                Inline::Done(Err(wit::Error::Busy))
            };
            Ok((conn, read, sql, params))
        };
        match self.db.threads().run(job).await {
            Ok(Ok((conn, Inline::Writes, sql, params))) => {
                self.conn = Some(conn);
                self.write(sql, params).await
            }
            Ok(Ok((conn, Inline::Done(result), _, _))) => {
                self.conn = Some(conn);
                Ok(result)
            }
            Ok(Ok((_, Inline::Slow, _, _))) => Ok(Err(wit::Error::Busy)),
            Ok(Err(e)) => Ok(Err(e)),
            Err(threads::Busy) => Ok(Err(wit::Error::Busy)),
        }
    }

    /// A write outside a transaction, committed with others.
    async fn write(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> Result<Result<wit::QueryResult, wit::Error>, SqliteError> {
        let written = group::write(&self.db, sql, params).await?;
        if let Some(unwritten) = written.unwritten {
            return Err(SqliteError::Trap(wasmtime::Error::new(unwritten)));
        }
        self.absorb(written.effect);
        Ok(written.result)
    }

    /// Whether this request holds the writer (a transaction is open).
    fn holds_writer(&self) -> bool {
        self.conn.as_ref().is_some_and(Conn::is_writer)
    }

    /// Takes the writer, unless this request holds it already.
    async fn take_writer(&mut self) -> Result<(), SqliteError> {
        if !self.holds_writer() {
            // A reader goes back first: nothing is open on it.
            self.conn = None;
            self.conn = Some(self.db.writer().await?);
        }
        Ok(())
    }

    /// Gives the writer back once no transaction is open on it.
    fn release_writer_if_idle(&mut self) {
        if self.conn.as_ref().is_some_and(|c| c.is_writer() && !c.txn().is_open()) {
            self.conn = None;
        }
    }

    /// The guest's `begin`: takes the writer until its transaction ends.
    pub async fn begin_transaction(&mut self) -> Result<Result<(), wit::Error>, SqliteError> {
        self.take_writer().await?;
        let begun = self.on_own_conn(Conn::begin).await?;
        self.release_writer_if_idle();
        Ok(begun)
    }

    /// The guest's `commit` or `rollback`.
    pub async fn end_transaction(&mut self, commit: bool) -> Result<Result<(), wit::Error>, SqliteError> {
        if !self.holds_writer() {
            return Ok(Err(wit::Error::InvalidTransactionState(
                "no transaction is open".into(),
            )));
        }
        let finished = self
            .on_own_conn(move |conn| if commit { conn.commit() } else { conn.rollback() })
            .await?;
        self.release_writer_if_idle();
        Ok(finished)
    }

    fn absorb(&mut self, effect: Option<Effect>) {
        if let Some(effect) = effect {
            self.changes = effect.changes;
            if let Some(rowid) = effect.inserted {
                self.last_insert_rowid = rowid;
            }
        }
    }

    /// The connection this request holds, with whatever it has open.
    pub fn take_conn(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    /// Makes `conn`, with whatever it has open, this request's connection.
    pub fn put_conn(&mut self, conn: Conn) {
        self.conn = Some(conn);
    }

    /// Runs `work` on the writer (taken if not held): the host's own
    /// transactions and publishing. The writer is kept if a transaction is
    /// left open, and given back otherwise.
    pub async fn with_writer<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> R + Send + 'static,
    ) -> Result<R, SqliteError> {
        self.take_writer().await?;
        let out = self.on_own_conn(work).await?;
        self.release_writer_if_idle();
        Ok(out)
    }

    /// Runs `work` on this request's connection, in place or on an SQL
    /// thread (see [`on_conn`]), and takes in what its statement changed.
    async fn on_own_conn<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> R + Send + 'static,
    ) -> Result<R, SqliteError> {
        let conn = self.conn.take().expect("a connection is held");
        let (mut conn, out) = on_conn(conn, work).await?;
        self.absorb(conn.take_effect());
        let unwritten = conn.unwritten.take();
        self.conn = Some(conn);
        match unwritten {
            Some(unwritten) => Err(SqliteError::Trap(wasmtime::Error::new(unwritten))),
            None => Ok(out),
        }
    }
}

/// Runs `work` on `conn`: right here if an [`inline`] slot is free, so a
/// transaction's statements need no round trip to another thread, or else
/// on an SQL thread.
pub(super) async fn on_conn<R: Send + 'static>(
    mut conn: Conn,
    work: impl FnOnce(&mut Conn) -> R + Send + 'static,
) -> Result<(Conn, R), SqliteError> {
    // A commit may wait for the file's log: never on an async worker.
    if conn.db.log().is_none()
        && let Some(_slot) = inline::enter()
    {
        let out = work(&mut conn);
        return Ok((conn, out));
    }
    on_thread(conn, work).await
}

/// Runs `work` on `conn` on an SQL thread.
pub(super) async fn on_thread<R: Send + 'static>(
    mut conn: Conn,
    work: impl FnOnce(&mut Conn) -> R + Send + 'static,
) -> Result<(Conn, R), SqliteError> {
    let open = conn.txn().is_open();
    let threads = Arc::clone(conn.threads());
    let job = move |wanted: bool| {
        // If the request is gone, dropping the connection rolls back.
        wanted.then(|| {
            let out = work(&mut conn);
            (conn, out)
        })
    };
    match threads.run(job).await {
        Ok(Some(done)) => Ok(done),
        // The connection, and any transaction on it, is gone (rolled
        // back): the guest cannot go on as if it were open.
        _ if open => Err(SqliteError::Trap(wasmtime::Error::msg(
            "the host's SQL threads are overloaded; this request's transaction was rolled back",
        ))),
        _ => Err(wit::Error::Busy.into()),
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

/// Commits the transaction `init` ran in, unless another host owns the
/// file: a replica's `init` is tried, not kept, since what its owner's did
/// comes to it through the log.
pub async fn end_init_transaction(conn: Conn) -> Result<(), wit::Error> {
    let owned_here = conn.db.log().is_none_or(|log| log.owns());
    end_host_transaction(conn, owned_here).await
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

/// At most this many bytes of a statement go in its span.
const MAX_SPAN_STATEMENT_BYTES: usize = 512;

/// `sql` as its span shows it: cut at [`MAX_SPAN_STATEMENT_BYTES`], on a
/// character boundary. Parameters are never shown.
fn statement_text(sql: &str) -> &str {
    let mut end = sql.len().min(MAX_SPAN_STATEMENT_BYTES);
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}
