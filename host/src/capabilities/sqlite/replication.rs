//! Commits shipped to a replicated log before they take place. While a
//! [`CommitLog`] is attached to a file, every write transaction on its
//! writer records its changes with SQLite's session extension; at commit,
//! the changeset (with the schema statements the transaction ran, which a
//! changeset does not carry) is appended to the log at the place this file
//! has reached, and only once the log took it there does the transaction
//! commit, with that place recorded in the same transaction. An append the
//! log refuses (another host appended first, or this host does not own the
//! file) rolls the transaction back. So every host's file holds a prefix of
//! the log, and a host that lost its place cannot add to it: the log's
//! expected last sequence is the fence.
//!
//! Replicas apply the log with [`Database::apply`]: the schema statements,
//! then the changeset, with the place, in one transaction.

use std::sync::Arc;

use rusqlite::OptionalExtension;
use rusqlite::session::{ConflictAction, ConflictType};

use super::connection::Conn;
use super::pool::Database;
pub(super) use super::session::Recording;
use crate::capabilities::bindings::corral::service::sqlite::Error;

/// The host's record of how far into the log a file is.
pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _corral_log (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    );";

/// One committed transaction, as the log carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The statements that changed the schema, in the order they ran.
    pub schema: Vec<String>,
    /// SQLite's changeset of every row the transaction changed.
    pub changeset: Vec<u8>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.schema.is_empty() && self.changeset.is_empty()
    }
}

/// Why the log did not take a commit; the transaction is rolled back. A
/// guest whose commit this stops traps with it, and the host answers its
/// request (see `InvokeError::Unwritten`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// This host does not own the database.
    #[error("this host does not own the database: {0}")]
    NotOwner(String),
    /// The log has moved past this file's place: another host wrote.
    #[error("another host wrote to the database first; this write was not made")]
    Fenced,
    /// The log answered that it did not take the write (no server leads
    /// it now, or it refused): the write is not in it.
    #[error("the replicated log refused the write: {0}")]
    Refused(String),
    /// The log did not answer: the write may or may not be in it.
    #[error("the replicated log did not answer: {0}")]
    Unavailable(String),
}

/// Where a file's commits go before they take place. `append` blocks: it
/// is called on an SQL thread, holding the writer.
pub trait CommitLog: Send + Sync {
    /// Whether this host owns the file, and may append.
    fn owns(&self) -> bool;

    /// Appends `change` right after `after`, the last entry this file
    /// holds; answers its place in the log.
    fn append(&self, after: u64, change: &Change) -> Result<u64, AppendError>;

    /// Appends, right after `after`, an entry that replaces the database
    /// with the SQLite file at `file`, which holds its place (`after + 1`):
    /// an operator's restore. Answers its place.
    fn reset(&self, after: u64, file: &std::path::Path) -> Result<u64, AppendError>;

    /// The file committed entry `seq`, which it appended.
    fn committed(&self, seq: u64);
}

/// Whether `sql`, a guest statement, changes the schema or the file's
/// header (which a changeset does not carry): it begins with CREATE, ALTER
/// or DROP, or sets `user_version` (which migrations count by).
pub(super) fn changes_schema(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.split_once('\n').map_or("", |(_, after)| after).trim_start();
        } else if let Some(block) = rest.strip_prefix("/*") {
            rest = block.split_once("*/").map_or("", |(_, after)| after).trim_start();
        } else {
            break;
        }
    }
    let word: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
    let sets_version = || {
        let pragma = rest[word.len()..].to_ascii_lowercase();
        pragma.trim_start().starts_with("user_version") && pragma.contains('=')
    };
    ["create", "alter", "drop"].iter().any(|w| word.eq_ignore_ascii_case(w))
        || (word.eq_ignore_ascii_case("pragma") && sets_version())
}

/// The tables whose changes a changeset cannot carry: those without a
/// primary key (the session extension skips them without a word).
pub fn unreplicable_tables(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT s.name FROM sqlite_schema s
         WHERE s.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND s.sql NOT LIKE 'create virtual table%'
           AND NOT EXISTS (SELECT 1 FROM pragma_table_info(s.name) WHERE pk > 0)
         ORDER BY s.name",
    )?;
    statement.query_map([], |row| row.get(0))?.collect()
}

/// What [`Database::apply`] did with one entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// It is in the file now.
    Done,
    /// The file held it already.
    Had,
    /// It does not follow the file's place: the entries between are missing.
    Gap { at: u64 },
}

impl Conn {
    /// Opens a write transaction; its changes are recorded if the file has
    /// a log.
    pub(super) fn begin_write(&mut self) -> Result<(), Error> {
        self.trusted("BEGIN IMMEDIATE")?;
        if self.db.log().is_some() {
            match Recording::start(&self.pooled().conn) {
                Ok(recording) => self.recording = Some(recording),
                Err(e) => {
                    let _ = self.trusted("ROLLBACK");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Commits the open write transaction: through the file's log first,
    /// if it has one. On failure the transaction is rolled back.
    pub(super) fn commit_write(&mut self) -> Result<(), Error> {
        let shipped = self.ship();
        let result = shipped.and_then(|seq| self.trusted("COMMIT").map(|()| seq));
        match result {
            Ok(Some(seq)) => {
                self.db.log().expect("a shipped file has a log").committed(seq);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if !self.is_autocommit() {
                    let _ = self.trusted("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// Rolls back the open write transaction, and what it recorded.
    pub(super) fn rollback_write(&mut self) -> Result<(), Error> {
        self.recording = None;
        self.schema_statements.clear();
        self.trusted("ROLLBACK")
    }

    /// Appends what the open transaction changed to the file's log, and
    /// records its place, in the transaction; answers the place, if it
    /// appended anything.
    fn ship(&mut self) -> Result<Option<u64>, Error> {
        let Some(recording) = self.recording.take() else {
            return Ok(None);
        };
        let schema = std::mem::take(&mut self.schema_statements);
        // The session reads the schema and the rows with SQL of its own.
        let changeset = self.host(|_| Ok(recording.changeset())).and_then(|made| made);
        // Nothing after this is recorded: the place below is this file's own.
        drop(recording);
        let change = Change {
            schema,
            changeset: changeset?,
        };
        if change.is_empty() {
            return Ok(None);
        }
        let log = self.db.log().expect("a recording file has a log");
        if !change.schema.is_empty() {
            let unreplicable = self.host(|conn| unreplicable_tables(conn.raw()))?;
            if !unreplicable.is_empty() {
                return Err(Error::InvalidStatement(format!(
                    "table {} has no primary key, so its changes cannot be replicated; give it one",
                    unreplicable.join(", ")
                )));
            }
        }
        let after = self.host(|conn| log_place(conn.raw()))?;
        let seq = log.append(after, &change).map_err(|e| {
            let error = Error::Io(e.to_string());
            self.unwritten = Some(e);
            error
        })?;
        self.host(|conn| set_log_place(conn.raw(), seq))?;
        Ok(Some(seq))
    }
}

/// How far into the log the file is (0: nowhere yet).
pub(super) fn log_place(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM _corral_log WHERE id = 1", [], |row| row.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

pub(super) fn set_log_place(conn: &rusqlite::Connection, seq: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO _corral_log (id, seq) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
        [seq as i64],
    )
    .map(drop)
}

impl Database {
    /// Ships this file's commits to `log` from now on. Refused if it holds a
    /// table the log cannot carry.
    pub fn attach_log(self: &Arc<Self>, log: Arc<dyn CommitLog>) -> anyhow::Result<()> {
        let mut reader = self
            .reader()
            .map_err(|e| anyhow::anyhow!("cannot read the database: {e:?}"))?;
        let unreplicable = (reader.host(|conn| unreplicable_tables(conn.raw())))
            .map_err(|e| anyhow::anyhow!("cannot read the database's tables: {e:?}"))?;
        drop(reader);
        anyhow::ensure!(
            unreplicable.is_empty(),
            "table {} has no primary key, so its changes cannot be replicated; give it one, \
             or set `durability = \"local\"`",
            unreplicable.join(", ")
        );
        self.set_log(log);
        Ok(())
    }

    /// How far into its log the file is. Blocks.
    pub fn log_place(self: &Arc<Self>) -> anyhow::Result<u64> {
        let mut reader = self
            .reader()
            .map_err(|e| anyhow::anyhow!("cannot read the database: {e:?}"))?;
        (reader.host(|conn| log_place(conn.raw())))
            .map_err(|e| anyhow::anyhow!("cannot read the database's place in its log: {e:?}"))
    }

    /// Applies entry `seq` of the log, which must follow the file's place,
    /// on the writer, in one transaction that records the place: the schema
    /// statements as its guest ran them, then the changeset, with triggers
    /// and foreign key actions off (their effects are in the changeset).
    /// A conflict (the file is not the prefix of the log it should be)
    /// fails it, changing nothing.
    pub async fn apply(self: &Arc<Self>, seq: u64, change: Change) -> Result<Applied, Error> {
        let writer = self.writer().await?;
        match super::on_thread(writer, move |conn| conn.apply_entry(seq, &change)).await {
            Ok((_writer, applied)) => applied,
            Err(_) => Err(Error::Busy),
        }
    }
}

impl Conn {
    fn apply_entry(&mut self, seq: u64, change: &Change) -> Result<Applied, Error> {
        let place = self.host(|conn| log_place(conn.raw()))?;
        if seq <= place {
            return Ok(Applied::Had);
        }
        if seq != place + 1 {
            return Ok(Applied::Gap { at: place });
        }
        self.host(|conn| {
            conn.execute_batch("PRAGMA foreign_keys = OFF")?;
            conn.raw()
                .set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
            Ok(())
        })?;
        let applied = self.apply_in_transaction(seq, change);
        let restored = self.host(|conn| {
            conn.raw()
                .set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
            conn.execute_batch("PRAGMA foreign_keys = ON")
        });
        applied.and(restored).map(|()| Applied::Done)
    }

    fn apply_in_transaction(&mut self, seq: u64, change: &Change) -> Result<(), Error> {
        self.trusted("BEGIN IMMEDIATE")?;
        let applied = (|| {
            for statement in &change.schema {
                self.execute(statement, &[])?;
            }
            self.host(|conn| {
                let mut changeset = change.changeset.as_slice();
                conn.raw().apply_strm(
                    &mut changeset,
                    None::<fn(&str) -> bool>,
                    |_conflict: ConflictType, _item| ConflictAction::SQLITE_CHANGESET_ABORT,
                )?;
                set_log_place(conn.raw(), seq)
            })
        })();
        match applied {
            Ok(()) => self.trusted("COMMIT"),
            Err(e) => {
                if !self.is_autocommit() {
                    let _ = self.trusted("ROLLBACK");
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_changeset_does_not_carry_is_told_apart() {
        for sql in [
            "CREATE TABLE t (id INTEGER PRIMARY KEY)",
            "  -- a migration\n alter table t add column x",
            "/* gone */ DROP INDEX i",
            "PRAGMA user_version = 3",
            "pragma  USER_VERSION=4",
        ] {
            assert!(super::changes_schema(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "PRAGMA user_version",
            "SELECT 'create'",
            "-- create",
        ] {
            assert!(!super::changes_schema(sql), "{sql}");
        }
    }
}
