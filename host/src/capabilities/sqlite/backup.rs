//! Copies of a component's database, taken and put back while it serves,
//! with SQLite's online backup API. A backup reads one snapshot in one
//! step on a reader, so writers go on meanwhile and the copy holds every
//! transaction committed before it began. A restore checks the file whole
//! first, then replaces the database in one step on the writer, which is
//! one write transaction: readers see the old rows or the new ones, and a
//! restore that fails leaves the old.

use std::path::Path;
use std::sync::Arc;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::pool::Database;
use super::replication::{AppendError, Applied, CommitLog, log_place, set_log_place};
use crate::capabilities::bindings::corral::service::sqlite::Error;

/// Why a restore did not take place; the database is as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a whole SQLite database.
    #[error("{0}")]
    Unusable(String),
    /// It is larger than the component's `db_size_mib`.
    #[error("{0}")]
    TooLarge(String),
    /// The writer stayed busy.
    #[error("the database stayed busy with writes; try again")]
    Busy,
    /// The database is replicated and its log did not take the restore.
    #[error("{0}")]
    Unwritten(AppendError),
    #[error("{0}")]
    Failed(String),
    /// The log took the restore, but this host failed to put it in place:
    /// it does when it follows its log to the entry.
    #[error("the log took the restore as entry {0}, and this host will put it in place from there: {1}")]
    Logged(u64, String),
}

/// Whose restore it is, which says what the log of a replicated database
/// has to do with it.
enum Putting {
    /// An operator's, on a database without a log, or a copy's own (a
    /// replica starting from a snapshot): the file is put in place.
    Plain,
    /// An operator's, on the owner of a replicated database: the file goes
    /// to the log first, as one entry every copy obeys, and is put in
    /// place only once the log took it, as that entry.
    ThroughLog(Arc<dyn CommitLog>),
    /// A copy obeying such an entry, `seq`: put in place if it follows the
    /// file's place, as a change would be.
    Entry(u64),
}

/// How the files of copies beside the databases begin: backups, restores
/// and snapshots of replicated databases.
pub const SCRATCH_PREFIXES: [&str; 3] = [".backup-", ".restore-", ".snapshot-"];

/// What a restore put in place.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub bytes: u64,
    pub tables: u64,
}

impl Database {
    /// A file for a copy of this database, beside it (so on a disk that can
    /// hold one), named with `prefix` (one of [`SCRATCH_PREFIXES`]),
    /// removed when dropped.
    pub fn scratch_file(&self, prefix: &str) -> std::io::Result<tempfile::NamedTempFile> {
        debug_assert!(SCRATCH_PREFIXES.contains(&prefix));
        let dir = self.path().parent().unwrap_or(Path::new("."));
        tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".sqlite3")
            .tempfile_in(dir)
    }

    /// Writes a copy of the database to the new (or empty) file `to`, as
    /// one self-contained file; answers its size. Blocks.
    pub fn backup_to(self: &Arc<Self>, to: &Path) -> anyhow::Result<u64> {
        let reader = self
            .reader()
            .map_err(|e| anyhow::anyhow!("cannot read the database: {e:?}"))?;
        let mut copy = Connection::open(to)?;
        // One step: one read transaction, so one snapshot, however many
        // writes land meanwhile (a step at a time would start over after each).
        let step = Backup::new(&reader.pooled().conn, &mut copy)?.step(-1)?;
        drop(reader);
        anyhow::ensure!(step == StepResult::Done, "the backup stopped halfway ({step:?})");
        // The copy keeps the source's write-ahead-log mode unless told: a
        // backup is one file, without a -wal beside it.
        copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        drop(copy);
        Ok(std::fs::metadata(to)?.len())
    }

    /// Replaces the database's content with the SQLite file at `from`,
    /// which it may rewrite (give it a copy), once that file passes
    /// SQLite's integrity check and fits the component's size cap. The file
    /// is checked and made ready before the writer is taken, so writes go
    /// on meanwhile; only the copy itself holds them.
    pub async fn restore_from(self: &Arc<Self>, from: &Path) -> Result<Restored, RestoreError> {
        self.put_back(from, Putting::Plain).await.map(|(restored, _)| restored)
    }

    /// [`Database::restore_from`] on the owner of a replicated database:
    /// the file, at the place after the file's, goes to the log (see
    /// [`CommitLog::reset`]) while the writer is held, and is put in place
    /// only once the log took it. Every copy then puts the same file in
    /// place when it reaches that entry.
    pub async fn restore_through_log(self: &Arc<Self>, from: &Path) -> Result<Restored, RestoreError> {
        let Some(log) = self.log() else {
            return self.restore_from(from).await;
        };
        self.put_back(from, Putting::ThroughLog(log))
            .await
            .map(|(restored, _)| restored)
    }

    /// Puts the file at `from`, which the log's entry `seq` names, in
    /// place, if that entry follows the file's place (checked on the
    /// writer, as [`Database::apply`] does).
    pub async fn apply_restore(self: &Arc<Self>, seq: u64, from: &Path) -> Result<Applied, RestoreError> {
        self.put_back(from, Putting::Entry(seq))
            .await
            .map(|(_, applied)| applied)
    }

    async fn put_back(self: &Arc<Self>, from: &Path, putting: Putting) -> Result<(Restored, Applied), RestoreError> {
        let stopped = |e: tokio::task::JoinError| RestoreError::Failed(format!("the restore stopped: {e}"));
        let (db, from) = (Arc::clone(self), from.to_path_buf());
        let (source, restored, from) = tokio::task::spawn_blocking(move || {
            db.prepare_restore(&from)
                .map(|(source, restored)| (source, restored, from))
        })
        .await
        .map_err(stopped)??;
        let mut writer = self.writer().await.map_err(|e| match e {
            Error::Busy => RestoreError::Busy,
            e => RestoreError::Failed(format!("cannot take the writer: {e:?}")),
        })?;
        let db = Arc::clone(self);
        let applied = tokio::task::spawn_blocking(move || {
            let failed = |e: rusqlite::Error| RestoreError::Failed(format!("cannot restore: {e}"));
            let place = (writer.host(|conn| log_place(conn.raw())))
                .map_err(|e| RestoreError::Failed(format!("cannot read the database's place in its log: {e:?}")))?;
            // The log that took the restore, and where.
            let appended = match &putting {
                Putting::Plain => None,
                Putting::ThroughLog(log) => {
                    set_log_place(&source, place + 1).map_err(failed)?;
                    Some((log, log.reset(place, &from).map_err(RestoreError::Unwritten)?))
                }
                Putting::Entry(seq) if *seq <= place => return Ok(Applied::Had),
                Putting::Entry(seq) if *seq != place + 1 => return Ok(Applied::Gap { at: place }),
                Putting::Entry(_) => None,
            };
            let step = Backup::new(&source, writer.connection_mut()).and_then(|backup| backup.step(-1));
            // Its next holder opens the writer afresh, and readers are
            // opened afresh, on the new schema.
            writer.reopen_writer();
            db.forget_readers();
            let copied = match step {
                Ok(StepResult::Done) => Ok(Applied::Done),
                Ok(StepResult::Busy | StepResult::Locked) => Err(RestoreError::Busy),
                Ok(other) => Err(RestoreError::Failed(format!("the restore stopped halfway ({other:?})"))),
                Err(e) => Err(failed(e)),
            };
            match (appended, copied) {
                (Some((log, seq)), Ok(applied)) => {
                    log.committed(seq);
                    Ok(applied)
                }
                // This copy follows the log, which has the restore: it
                // puts the file in place when it reaches the entry.
                (Some((_, seq)), Err(e)) => Err(RestoreError::Logged(seq, e.to_string())),
                (None, copied) => copied,
            }
        })
        .await
        .map_err(stopped)??;
        // The restored outbox may hold messages not yet sent.
        self.outbox.raise();
        Ok((restored, applied))
    }

    /// Opens the file at `from` and checks it whole; makes it ready to be
    /// copied in (the host's tables, the database's page size). Blocks.
    fn prepare_restore(self: &Arc<Self>, from: &Path) -> Result<(Connection, Restored), RestoreError> {
        let unusable = |e: rusqlite::Error| RestoreError::Unusable(format!("not a usable SQLite database: {e}"));
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let source = Connection::open_with_flags(from, flags).map_err(unusable)?;
        // One file, whatever mode it was saved in.
        source
            .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(unusable)?;
        let problems: Vec<String> = source
            .prepare("PRAGMA integrity_check(10)")
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .map_err(unusable)?;
        if problems != ["ok"] {
            return Err(RestoreError::Unusable(format!(
                "the file fails SQLite's integrity check: {}",
                problems.join("; ")
            )));
        }
        let pragma =
            |conn: &Connection, name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, u64>(0));
        let bytes =
            pragma(&source, "page_size").map_err(unusable)? * pragma(&source, "page_count").map_err(unusable)?;
        if bytes > self.limits.max_size_bytes {
            return Err(RestoreError::TooLarge(format!(
                "the database in the file is {bytes} bytes, over this component's limit of {} bytes (db_size_mib)",
                self.limits.max_size_bytes
            )));
        }
        let failed = |e: rusqlite::Error| RestoreError::Failed(format!("cannot restore: {e}"));
        // The host's own tables, if the copy is older than they are.
        source.execute_batch(super::outbox::SCHEMA).map_err(failed)?;
        source.execute_batch(super::replication::SCHEMA).map_err(failed)?;
        // SQLite copies into a database in write-ahead-log mode only from
        // one of the same page size (which never changes while it serves).
        let live_page_size = {
            let reader = self
                .reader()
                .map_err(|e| RestoreError::Failed(format!("cannot read the database: {e:?}")))?;
            pragma(&reader.pooled().conn, "page_size").map_err(failed)?
        };
        if pragma(&source, "page_size").map_err(failed)? != live_page_size {
            source
                .execute_batch(&format!("PRAGMA page_size = {live_page_size}; VACUUM;"))
                .map_err(failed)?;
        }
        let tables = source
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_corral\\_%' ESCAPE '\\'",
                [],
                |row| row.get(0),
            )
            .map_err(failed)?;
        Ok((source, Restored { bytes, tables }))
    }
}
