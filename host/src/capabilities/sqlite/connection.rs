//! A connection checked out for one request, a reader or the writer, and
//! what it has open: the transaction state machine ([`Txn`]) behind the
//! interface's `begin`, `commit` and `rollback`, and the host's own
//! transaction around `init`. Dropping a connection rolls back whatever the
//! request left open, and gives the writer to the next request.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::pool::{Database, HOST_STATEMENT_TIMEOUT, Pooled, WriterGuard};
use super::replication::Recording;
use super::threads::SqlThreads;
use crate::capabilities::bindings::corral::service::sqlite::Error;

/// What a connection has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Txn {
    /// Nothing: each statement commits on its own.
    Idle,
    /// Transactions are open. `host`: the host's `init` transaction is the
    /// outermost; `depth`: how many the guest opened inside it (or alone,
    /// the outermost then being a real transaction, the others savepoints).
    Open { host: bool, depth: u32 },
    /// SQLite rolled everything back after an error. The guest still closes
    /// its `depth` levels: a commit fails, a rollback succeeds.
    RolledBack { host: bool, depth: u32 },
}

/// What the connection must run for a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnSql {
    Begin,
    Commit,
    Rollback,
    Savepoint(u32),
    Release(u32),
    RollbackTo(u32),
}

impl TxnSql {
    fn text(&self) -> String {
        match self {
            TxnSql::Begin => "BEGIN IMMEDIATE".into(),
            TxnSql::Commit => "COMMIT".into(),
            TxnSql::Rollback => "ROLLBACK".into(),
            TxnSql::Savepoint(n) => format!("SAVEPOINT corral_{n}"),
            TxnSql::Release(n) => format!("RELEASE corral_{n}"),
            TxnSql::RollbackTo(n) => format!("ROLLBACK TO corral_{n}; RELEASE corral_{n}"),
        }
    }
}

fn rolled_back() -> Error {
    Error::InvalidTransactionState("the transaction was rolled back after an error".into())
}

impl Txn {
    /// The guest's `begin`.
    pub fn begin(self) -> Result<(Txn, TxnSql), Error> {
        match self {
            Txn::Idle => Ok((Txn::Open { host: false, depth: 1 }, TxnSql::Begin)),
            Txn::Open { host, depth } => Ok((Txn::Open { host, depth: depth + 1 }, TxnSql::Savepoint(depth))),
            Txn::RolledBack { .. } => Err(rolled_back()),
        }
    }

    /// The guest's `commit` (or `rollback`): the state after, and the SQL
    /// to run, if any. After a rollback by SQLite, commits fail.
    pub fn finish(self, commit: bool) -> Result<(Txn, Option<TxnSql>), Error> {
        let none_open = || Error::InvalidTransactionState("no transaction is open".into());
        match self {
            Txn::Idle | Txn::Open { depth: 0, .. } | Txn::RolledBack { depth: 0, .. } => Err(none_open()),
            Txn::Open { host, depth } => {
                let depth = depth - 1;
                let sql = match (host || depth > 0, commit) {
                    (false, true) => TxnSql::Commit,
                    (false, false) => TxnSql::Rollback,
                    (true, true) => TxnSql::Release(depth),
                    (true, false) => TxnSql::RollbackTo(depth),
                };
                let next = if host || depth > 0 {
                    Txn::Open { host, depth }
                } else {
                    Txn::Idle
                };
                Ok((next, Some(sql)))
            }
            Txn::RolledBack { host, depth } => {
                let depth = depth - 1;
                let next = if host || depth > 0 {
                    Txn::RolledBack { host, depth }
                } else {
                    Txn::Idle
                };
                if commit { Err(rolled_back()) } else { Ok((next, None)) }
            }
        }
    }

    /// After a statement failed: whether SQLite rolled the transaction back,
    /// which it does on some errors, seen as the connection in autocommit.
    pub fn statement_failed(self, autocommit: bool) -> Txn {
        match self {
            Txn::Open { host, depth } if autocommit => Txn::RolledBack { host, depth },
            other => other,
        }
    }

    /// The host's transaction around `init`.
    pub fn begin_host(self) -> Result<(Txn, TxnSql), Error> {
        match self {
            Txn::Idle => Ok((Txn::Open { host: true, depth: 0 }, TxnSql::Begin)),
            _ => Err(Error::InvalidTransactionState("a transaction is already open".into())),
        }
    }

    /// Ends the host's transaction, and whatever the guest left open in it.
    pub fn end_host(self, commit: bool) -> Result<Option<TxnSql>, Error> {
        match self {
            Txn::Open { host: true, .. } => Ok(Some(if commit { TxnSql::Commit } else { TxnSql::Rollback })),
            Txn::RolledBack { host: true, .. } if commit => Err(rolled_back()),
            Txn::RolledBack { host: true, .. } => Ok(None),
            _ => Err(Error::InvalidTransactionState(
                "the host's transaction is not open".into(),
            )),
        }
    }

    pub fn is_open(self) -> bool {
        self != Txn::Idle
    }
}

/// A connection as the host uses it for its own SQL, which the authorizer
/// lets through: statements are prepared afresh every time, never kept in
/// the connection's statement cache. Guest statements are looked up there
/// by their text, so a statement the host compiled without the authorizer
/// would be handed, unchecked, to a guest that sends the same text.
pub struct HostSql<'c>(&'c rusqlite::Connection);

impl HostSql<'_> {
    pub fn execute(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.0.execute(sql, params)
    }

    pub fn execute_batch(&self, sql: &str) -> rusqlite::Result<()> {
        self.0.execute_batch(sql)
    }

    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.0.query_row(sql, params, row)
    }

    pub fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::Statement<'_>> {
        self.0.prepare(sql)
    }

    /// The connection itself, for the host's work that rusqlite offers only
    /// there (applying a changeset); nothing cached.
    pub(super) fn raw(&self) -> &rusqlite::Connection {
        self.0
    }
}

/// What a statement that writes changed: `changes()`, and the rowid it
/// inserted, if it inserted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    pub changes: u64,
    pub inserted: Option<i64>,
}

/// A connection checked out for one request.
pub struct Conn {
    pub(super) db: Arc<Database>,
    handle: Option<Handle>,
    pub(super) txn: Txn,
    /// What the last statement changed, until taken: per checkout rather
    /// than read from the connection, so that one request never sees
    /// another's counts.
    pub(super) effect: Option<Effect>,
    /// A message was published in the open transaction: the relay is told
    /// when it commits.
    pub(super) published_in_txn: bool,
    /// What the open write transaction changed, if the file has a log.
    /// Declared before `handle`'s connection is given up (see `Drop`).
    pub(super) recording: Option<Recording>,
    /// The statements of the open write transaction that changed the
    /// schema, for the log.
    pub(super) schema_statements: Vec<String>,
    /// Why the file's log refused the last commit, until taken: the request
    /// is then answered by the host, not by the guest.
    pub(super) unwritten: Option<super::AppendError>,
}

/// What a [`Conn`] runs on.
enum Handle {
    /// A reader from the pool, which cannot write.
    Reader(Pooled),
    /// The writer, held until the `Conn` is dropped; its slot holds an open
    /// connection for as long as it is held.
    Writer(WriterGuard),
}

impl Conn {
    pub(super) fn reader(db: Arc<Database>, pooled: Pooled) -> Conn {
        Conn::new(db, Handle::Reader(pooled))
    }

    pub(super) fn writer(db: Arc<Database>, slot: WriterGuard) -> Conn {
        debug_assert!(slot.conn.is_some());
        Conn::new(db, Handle::Writer(slot))
    }

    fn new(db: Arc<Database>, handle: Handle) -> Conn {
        Conn {
            db,
            handle: Some(handle),
            txn: Txn::Idle,
            effect: None,
            published_in_txn: false,
            recording: None,
            schema_statements: Vec::new(),
            unwritten: None,
        }
    }

    pub(super) fn pooled(&self) -> &Pooled {
        match self.handle.as_ref() {
            Some(Handle::Reader(pooled)) => pooled,
            Some(Handle::Writer(slot)) => slot.conn.as_ref().expect("a held writer is open"),
            None => unreachable!("a checked-out connection is present until drop"),
        }
    }

    /// The writer's connection itself, for the host's own work on the
    /// whole file (a restore).
    pub(super) fn connection_mut(&mut self) -> &mut rusqlite::Connection {
        match self.handle.as_mut() {
            Some(Handle::Writer(slot)) => &mut slot.conn.as_mut().expect("a held writer is open").conn,
            _ => unreachable!("only the writer is taken for work on the whole file"),
        }
    }

    /// Has the writer's next holder open it again, after its file changed
    /// under it (a restore).
    pub(super) fn reopen_writer(&mut self) {
        if let Some(Handle::Writer(slot)) = self.handle.as_mut() {
            slot.expire();
        }
    }

    /// Whether this is the writer.
    pub fn is_writer(&self) -> bool {
        matches!(self.handle, Some(Handle::Writer(_)))
    }

    /// The transaction state.
    pub fn txn(&self) -> Txn {
        self.txn
    }

    /// The threads this connection's statements run on.
    pub fn threads(&self) -> &Arc<SqlThreads> {
        self.db.threads()
    }

    /// What the last statement that wrote changed, once.
    pub fn take_effect(&mut self) -> Option<Effect> {
        self.effect.take()
    }

    /// Whether SQLite has no transaction open.
    pub fn is_autocommit(&self) -> bool {
        self.pooled().conn.is_autocommit()
    }

    /// Opens a transaction, or a savepoint inside one.
    pub fn begin(&mut self) -> Result<(), Error> {
        let (next, sql) = self.txn.begin()?;
        self.run_txn_sql(&sql)?;
        self.txn = next;
        Ok(())
    }

    /// Runs a transition's SQL; the outermost transaction's through
    /// [`Conn::begin_write`] and [`Conn::commit_write`], for the log.
    fn run_txn_sql(&mut self, sql: &TxnSql) -> Result<(), Error> {
        match sql {
            TxnSql::Begin => self.begin_write(),
            TxnSql::Commit => self.commit_write(),
            TxnSql::Rollback => self.rollback_write(),
            other => self.trusted(&other.text()),
        }
    }

    pub fn commit(&mut self) -> Result<(), Error> {
        self.finish(true)
    }

    pub fn rollback(&mut self) -> Result<(), Error> {
        self.finish(false)
    }

    fn finish(&mut self, commit: bool) -> Result<(), Error> {
        let (next, sql) = self.txn.finish(commit)?;
        self.txn = next;
        let Some(sql) = sql else { return Ok(()) };
        let result = self.run_txn_sql(&sql);
        if next == Txn::Idle {
            self.transaction_ended(commit && result.is_ok());
        }
        result
    }

    /// Tells the relay about messages a committed transaction published.
    fn transaction_ended(&mut self, committed: bool) {
        if std::mem::take(&mut self.published_in_txn) && committed {
            self.db.outbox.raise();
        }
    }

    /// Opens the transaction `init` runs in.
    pub fn begin_host_transaction(&mut self) -> Result<(), Error> {
        let (next, sql) = self.txn.begin_host()?;
        self.run_txn_sql(&sql)?;
        self.txn = next;
        Ok(())
    }

    /// Commits or rolls back the transaction `init` ran in; whatever the
    /// guest left open inside it goes with it.
    pub fn end_host_transaction(&mut self, commit: bool) -> Result<(), Error> {
        let ending = self.txn.end_host(commit);
        self.txn = Txn::Idle;
        let result = match ending {
            Ok(Some(sql)) => self.run_txn_sql(&sql),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if !self.is_autocommit() {
            let _ = self.rollback_write();
        }
        self.transaction_ended(commit && result.is_ok());
        result
    }

    /// Runs `work` with the host's privileges on this connection, within
    /// [`HOST_STATEMENT_TIMEOUT`].
    pub(super) fn host<R>(&mut self, work: impl FnOnce(&HostSql<'_>) -> rusqlite::Result<R>) -> Result<R, Error> {
        let pooled = self.pooled();
        let result = as_host(pooled, || work(&HostSql(&pooled.conn)));
        result.map_err(|e| super::exec::guest_error(e, &pooled.guard, &self.db.limits))
    }

    /// Runs the host's own writes: in the open transaction, or else in one
    /// of their own, committed like any other (through the file's log).
    pub(super) fn host_write<R>(&mut self, work: impl FnOnce(&HostSql<'_>) -> rusqlite::Result<R>) -> Result<R, Error> {
        if self.txn.is_open() {
            return self.host(work);
        }
        self.begin_write()?;
        match self.host(work) {
            Ok(out) => self.commit_write().map(|()| out),
            Err(e) => {
                let _ = self.rollback_write();
                Err(e)
            }
        }
    }

    /// Runs the host's own SQL, which the authorizer would deny to a guest.
    pub(super) fn trusted(&mut self, sql: &str) -> Result<(), Error> {
        self.host(|conn| conn.execute_batch(sql))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The session goes before its connection may.
        self.recording = None;
        let Some(handle) = self.handle.take() else {
            return;
        };
        let rolled_back = {
            let pooled = match &handle {
                Handle::Reader(pooled) => pooled,
                Handle::Writer(slot) => slot.conn.as_ref().expect("a held writer is open"),
            };
            pooled.conn.is_autocommit() || as_host(pooled, || pooled.conn.execute_batch("ROLLBACK")).is_ok()
        };
        // A connection in an unknown state is closed, not reused: a reader
        // is not taken back; the writer is opened again by its next holder.
        match handle {
            Handle::Reader(pooled) if rolled_back => self.db.checkin(pooled),
            Handle::Reader(_) => {}
            Handle::Writer(mut slot) if !rolled_back => slot.conn = None,
            Handle::Writer(slot) => {
                drop(slot);
                self.db.checkpoint_if_due();
            }
        }
    }
}

/// Runs the host's own SQL on `pooled`: the authorizer lets it through,
/// and it ends within [`HOST_STATEMENT_TIMEOUT`].
fn as_host<R>(pooled: &Pooled, work: impl FnOnce() -> R) -> R {
    pooled.guard.trusted.store(true, Ordering::Relaxed);
    let result = pooled.guard.deadline.within(HOST_STATEMENT_TIMEOUT, work);
    pooled.guard.trusted.store(false, Ordering::Relaxed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_transactions_nest_as_savepoints() {
        let (open, sql) = Txn::Idle.begin().unwrap();
        assert_eq!((open, sql), (Txn::Open { host: false, depth: 1 }, TxnSql::Begin));
        let (inner, sql) = open.begin().unwrap();
        assert_eq!(sql, TxnSql::Savepoint(1));
        assert_eq!(inner.finish(false).unwrap(), (open, Some(TxnSql::RollbackTo(1))));
        assert_eq!(inner.finish(true).unwrap(), (open, Some(TxnSql::Release(1))));
        assert_eq!(open.finish(true).unwrap(), (Txn::Idle, Some(TxnSql::Commit)));
        assert_eq!(open.finish(false).unwrap(), (Txn::Idle, Some(TxnSql::Rollback)));
        assert!(Txn::Idle.finish(true).is_err(), "nothing to commit");
    }

    #[test]
    fn inside_the_hosts_transaction_the_guest_only_makes_savepoints() {
        let (host, sql) = Txn::Idle.begin_host().unwrap();
        assert_eq!(sql, TxnSql::Begin);
        let (guest, sql) = host.begin().unwrap();
        assert_eq!(sql, TxnSql::Savepoint(0));
        assert_eq!(guest.finish(true).unwrap(), (host, Some(TxnSql::Release(0))));
        assert!(
            host.finish(true).is_err(),
            "the guest cannot end the host's transaction"
        );
        assert_eq!(guest.end_host(true).unwrap(), Some(TxnSql::Commit));
        assert!(host.begin_host().is_err());
    }

    #[test]
    fn after_sqlite_rolls_back_commits_fail_until_every_level_is_closed() {
        let (open, _) = Txn::Idle.begin().unwrap();
        let (inner, _) = open.begin().unwrap();
        assert_eq!(inner.statement_failed(false), inner, "still open");
        let gone = inner.statement_failed(true);
        assert_eq!(gone, Txn::RolledBack { host: false, depth: 2 });
        assert!(gone.begin().is_err());
        assert!(gone.finish(true).is_err());
        let (outer, sql) = gone.finish(false).unwrap();
        assert_eq!((outer, sql), (Txn::RolledBack { host: false, depth: 1 }, None));
        assert_eq!(outer.finish(false).unwrap(), (Txn::Idle, None));
        let (host, _) = Txn::Idle.begin_host().unwrap();
        let gone = host.statement_failed(true);
        assert!(gone.end_host(true).is_err(), "init's work is gone: no commit");
        assert_eq!(gone.end_host(false).unwrap(), None);
    }
}
