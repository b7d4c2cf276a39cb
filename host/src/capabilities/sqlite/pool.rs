//! A component's database file and its connections, each opened hardened
//! (WAL, `unix-excl`, foreign keys, temporary storage in memory, the size
//! cap, [`policy`](super::policy)'s rules and limits, a deadline for its
//! statements): a pool of readers, which cannot write, and one writer per
//! file, which requests take in turn from a first-come, first-served queue
//! instead of waiting in SQLite's busy handler. Opening a connection
//! blocks; callers run it off the async workers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use rusqlite::OpenFlags;
use rusqlite::hooks::{AuthContext, Authorization};

use super::connection::Conn;
use super::group::Pending;
use super::outbox::OutboxSignal;
use super::policy;
use super::replication::CommitLog;
use super::threads::SqlThreads;
use super::watchdog::Deadline;
use crate::capabilities::bindings::corral::service::sqlite::Error;
use crate::config::ComponentLimits;

/// What [`Database::open_hooked`] runs on each connection.
pub type ConnectionHook = fn(&rusqlite::Connection) -> rusqlite::Result<()>;

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
    /// The largest string or blob SQLite makes for the component, in a
    /// table, a parameter or along the way of a statement.
    pub max_value_bytes: usize,
}

impl From<&ComponentLimits> for DbLimits {
    fn from(limits: &ComponentLimits) -> Self {
        DbLimits {
            max_size_bytes: limits.db_max_size_bytes as u64,
            statement_timeout: limits.db_statement_timeout,
            max_result_rows: limits.db_max_result_rows,
            max_result_bytes: limits.db_max_result_bytes,
            max_value_bytes: limits.db_max_value_bytes,
        }
    }
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits::from(&ComponentLimits::default())
    }
}

/// SQLite's unix VFS in exclusive mode; see [`Database::connect`].
const EXCLUSIVE_VFS: &std::ffi::CStr = c"unix-excl";
/// How long a request waits for the writer before its write fails with `busy`.
pub(super) const WRITER_WAIT: Duration = Duration::from_secs(5);
/// How long a reader waits for SQLite's own locks, which in WAL mode it
/// meets only while the log is recovered or reset.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle readers kept per database; more are opened on demand and closed after use.
const MAX_IDLE_CONNECTIONS: usize = 32;
/// SQLite calls the progress handler every this many virtual machine steps.
const PROGRESS_STEPS: i32 = 1000;
/// The host's own statements (transaction control, the outbox) run within
/// this: they are small, but nothing runs unbounded.
pub(super) const HOST_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A checkpoint is started once the write-ahead log holds this many pages
/// (SQLite's own default for its automatic checkpoints) ...
const CHECKPOINT_PAGES: i32 = 1000;
/// ... and stopped after this long, to go on at the next one.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(1);

/// One component's database file.
pub struct Database {
    path: PathBuf,
    pub(super) limits: DbLimits,
    /// Idle readers.
    idle: Mutex<Vec<Pooled>>,
    /// The file's one write connection, shared with any other `Database`
    /// of the same file (a reload that changes its limits makes one).
    writer: Arc<tokio::sync::Mutex<WriterSlot>>,
    /// Where the file's commits go first, if it is replicated; shared
    /// like the writer.
    log: Arc<RwLock<Option<Arc<dyn CommitLog>>>>,
    /// Writes outside a transaction, waiting to be committed together.
    pub(super) pending: Mutex<Pending>,
    threads: Arc<SqlThreads>,
    /// Raised when the outbox has messages for the relay.
    pub outbox: Arc<OutboxSignal>,
    /// Pages in the write-ahead log, as of the last commit.
    wal_pages: Arc<AtomicI32>,
    /// Run on every connection once it is hardened: nothing, but for the
    /// fuzzer's oracle (`crate::fuzzing`).
    hook: ConnectionHook,
    /// A checkpoint is queued or running.
    checkpointing: AtomicBool,
    /// Raised when the file's content was replaced (a restore): readers
    /// opened before are not taken back, since what they learned of it on
    /// opening (its full-text tables) may be wrong now.
    generation: AtomicU64,
}

/// The write connection, when open, and the limits it was opened with.
#[derive(Default)]
pub(super) struct WriterSlot {
    pub conn: Option<Pooled>,
    limits: Option<DbLimits>,
}

impl WriterSlot {
    /// Makes [`Database::writer`] open the connection again.
    pub(super) fn expire(&mut self) {
        self.limits = None;
    }
}

/// Whoever holds a file's writer.
pub(super) type WriterGuard = OwnedMutexGuard<WriterSlot>;

/// Whether a connection may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Reader,
    Writer,
}

/// A connection and the state its authorizer and progress handler read.
pub(super) struct Pooled {
    pub conn: rusqlite::Connection,
    pub guard: Arc<Guard>,
    /// The database's generation when it opened: one from before a
    /// restore is closed rather than taken back.
    generation: u64,
}

/// What the hooks installed on a connection consult.
pub(super) struct Guard {
    /// Set while the host runs its own statements (transaction control),
    /// which the authorizer otherwise denies.
    pub trusted: AtomicBool,
    /// When the running statement must stop.
    pub deadline: Arc<Deadline>,
    /// Why the authorizer last said no, for the error the guest sees.
    pub denied: Mutex<Option<String>>,
    /// The full-text search tables the file had when the connection
    /// opened, which a guest may only drop (see `policy::full_text_tables`).
    full_text: Vec<String>,
}

impl Database {
    /// Opens (creating it if needed) the database file at `path`, with the
    /// host's own tables; its statements run on `threads`, and its outbox
    /// wakes `relay`.
    pub fn open(
        path: PathBuf,
        limits: DbLimits,
        threads: Arc<SqlThreads>,
        relay: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Arc<Database>> {
        Self::open_hooked(path, limits, threads, relay, |_| Ok(()))
    }

    /// [`Database::open`], with `hook` run on every connection it opens.
    pub fn open_hooked(
        path: PathBuf,
        limits: DbLimits,
        threads: Arc<SqlThreads>,
        relay: Arc<tokio::sync::Notify>,
        hook: ConnectionHook,
    ) -> anyhow::Result<Arc<Database>> {
        let (writer, log) = shared_by_file(&path);
        let db = Arc::new(Database {
            hook,
            writer,
            log,
            path,
            limits,
            idle: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending::default()),
            threads,
            outbox: OutboxSignal::new(relay),
            wal_pages: Arc::default(),
            checkpointing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        let mut slot = db.writer.blocking_lock();
        db.open_writer(&mut slot)?;
        let first = slot.conn.as_ref().expect("just opened");
        first.guard.trusted.store(true, Ordering::Relaxed);
        let created = (first.conn.execute_batch(super::outbox::SCHEMA))
            .and_then(|()| first.conn.execute_batch(super::replication::SCHEMA));
        first.guard.trusted.store(false, Ordering::Relaxed);
        created.map_err(|e| anyhow::anyhow!("cannot create the host's tables in {}: {e}", db.path.display()))?;
        drop(slot);
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The threads this database's statements run on.
    pub fn threads(&self) -> &Arc<SqlThreads> {
        &self.threads
    }

    /// A reader for one request, from the pool or newly opened (blocking).
    pub fn reader(self: &Arc<Self>) -> Result<Conn, Error> {
        match self.idle_reader() {
            Some(conn) => Ok(conn),
            None => {
                let pooled = self
                    .connect(Role::Reader)
                    .map_err(|e| Error::Io(format!("cannot open the database: {e:#}")))?;
                Ok(Conn::reader(Arc::clone(self), pooled))
            }
        }
    }

    /// A pooled reader, if one is idle; never blocks.
    pub fn idle_reader(self: &Arc<Self>) -> Option<Conn> {
        let pooled = self.idle.lock().expect("pool lock").pop()?;
        Some(Conn::reader(Arc::clone(self), pooled))
    }

    /// The writer, once the requests before this one are done with it, or
    /// `busy` after [`WRITER_WAIT`]. Held until the returned connection is
    /// dropped.
    pub async fn writer(self: &Arc<Self>) -> Result<Conn, Error> {
        let mut slot = tokio::time::timeout(WRITER_WAIT, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| Error::Busy)?;
        if !self.writer_ready(&slot) {
            let db = Arc::clone(self);
            slot = tokio::task::spawn_blocking(move || db.open_writer(&mut slot).map(|()| slot))
                .await
                .map_err(|e| Error::Io(format!("cannot open the database: {e}")))?
                .map_err(|e| Error::Io(format!("cannot open the database: {e:#}")))?;
        }
        Ok(Conn::writer(Arc::clone(self), slot))
    }

    /// The writer, for code that may block (tests, the host's own jobs).
    pub fn writer_blocking(self: &Arc<Self>) -> Result<Conn, Error> {
        let mut slot = Arc::clone(&self.writer).blocking_lock_owned();
        if !self.writer_ready(&slot) {
            self.open_writer(&mut slot)
                .map_err(|e| Error::Io(format!("cannot open the database: {e:#}")))?;
        }
        Ok(Conn::writer(Arc::clone(self), slot))
    }

    /// Whether the slot holds a writer opened with this database's limits.
    fn writer_ready(&self, slot: &WriterSlot) -> bool {
        slot.conn.is_some() && slot.limits.as_ref() == Some(&self.limits)
    }

    /// (Re)opens the writer with this database's limits.
    fn open_writer(&self, slot: &mut WriterSlot) -> anyhow::Result<()> {
        slot.conn = None;
        slot.conn = Some(self.connect(Role::Writer)?);
        slot.limits = Some(self.limits.clone());
        Ok(())
    }

    fn connect(&self, role: Role) -> anyhow::Result<Pooled> {
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
        // Temporary tables and sorts stay in memory, under SQLite's heap cap,
        // instead of in files a statement could grow without bound.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;")?;
        if role == Role::Reader {
            // A reader that cannot write can never need the write lock.
            conn.execute_batch("PRAGMA query_only = ON")?;
        } else {
            // No checkpoint inside a commit, where it would hold the writer,
            // run past the commit's deadline, or fail a commit that took
            // place: the log's size is noted, and the host checkpoints off
            // the writer (see `checkpoint_if_due`).
            let pages = Arc::clone(&self.wal_pages);
            conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: std::os::raw::c_int| {
                pages.store(n, Ordering::Relaxed);
                Ok(())
            }))?;
        }
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let max_pages = (self.limits.max_size_bytes / page_size.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |_| Ok(()))?;
        let full_text = policy::full_text_tables(&conn)?;
        policy::harden(&conn, &self.limits)?;
        (self.hook)(&conn)?;

        let guard = Arc::new(Guard {
            trusted: AtomicBool::new(false),
            deadline: Deadline::watch(&conn),
            denied: Mutex::new(None),
            full_text,
        });
        let auth_guard = Arc::clone(&guard);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&auth_guard, ctx)))?;
        let deadline = Arc::clone(&guard.deadline);
        conn.progress_handler(PROGRESS_STEPS, Some(move || deadline.passed()))?;
        Ok(Pooled {
            conn,
            guard,
            generation: self.generation.load(Ordering::Acquire),
        })
    }

    /// Queues a checkpoint on an SQL thread if the write-ahead log has
    /// grown past [`CHECKPOINT_PAGES`] and none is queued yet.
    pub(super) fn checkpoint_if_due(self: &Arc<Self>) {
        if self.wal_pages.load(Ordering::Relaxed) < CHECKPOINT_PAGES || self.checkpointing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let db = Arc::clone(self);
        if self.threads.spawn(move || db.checkpoint()).is_err() {
            self.checkpointing.store(false, Ordering::Release);
        }
    }

    /// Copies what it can of the write-ahead log into the file, on a
    /// reader (a passive checkpoint waits for no one), within
    /// [`CHECKPOINT_TIMEOUT`]; what is left goes at the next one.
    fn checkpoint(self: &Arc<Self>) {
        let checkpointed = self.reader().map(|conn| {
            let pooled = conn.pooled();
            pooled.guard.trusted.store(true, Ordering::Relaxed);
            let done = pooled.guard.deadline.within(CHECKPOINT_TIMEOUT, || {
                pooled
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(2))
            });
            pooled.guard.trusted.store(false, Ordering::Relaxed);
            done
        });
        match checkpointed {
            Ok(Ok(_)) => self.wal_pages.store(0, Ordering::Relaxed),
            Ok(Err(e)) => tracing::debug!(db = %self.path.display(), "checkpoint stopped: {e}"),
            Err(e) => tracing::warn!(db = %self.path.display(), "cannot checkpoint: {e:?}"),
        }
        self.checkpointing.store(false, Ordering::Release);
    }

    /// Takes back a reader.
    pub(super) fn checkin(&self, pooled: Pooled) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE_CONNECTIONS && pooled.generation == self.generation.load(Ordering::Acquire) {
            idle.push(pooled);
        }
    }

    /// The file's log, if its commits are replicated.
    pub fn log(&self) -> Option<Arc<dyn CommitLog>> {
        self.log.read().expect("log lock").clone()
    }

    pub(super) fn set_log(&self, log: Arc<dyn CommitLog>) {
        *self.log.write().expect("log lock") = Some(log);
    }

    /// How many times the file's content was replaced (by restores).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Closes every reader once it is idle: the file's content was replaced.
    pub(super) fn forget_readers(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.idle.lock().expect("pool lock").clear();
    }
}

fn authorize(guard: &Guard, ctx: AuthContext<'_>) -> Authorization {
    if guard.trusted.load(Ordering::Relaxed) {
        return Authorization::Allow;
    }
    match policy::authorize(&ctx.action, &guard.full_text) {
        Ok(()) => Authorization::Allow,
        Err(reason) => {
            *guard.denied.lock().expect("denial lock") = Some(reason);
            Authorization::Deny
        }
    }
}

/// What every `Database` of the file at `path` shares: its writer slot,
/// so that two of one file (during a reload) never race for SQLite's
/// write lock, and its log.
fn shared_by_file(path: &Path) -> (Arc<tokio::sync::Mutex<WriterSlot>>, SharedLog) {
    type Shared = (
        Weak<tokio::sync::Mutex<WriterSlot>>,
        Weak<RwLock<Option<Arc<dyn CommitLog>>>>,
    );
    static FILES: OnceLock<Mutex<HashMap<PathBuf, Shared>>> = OnceLock::new();
    let mut files = FILES.get_or_init(Mutex::default).lock().expect("files lock");
    files.retain(|_, (slot, _)| slot.strong_count() > 0);
    if let Some((slot, log)) = files.get(path)
        && let (Some(slot), Some(log)) = (slot.upgrade(), log.upgrade())
    {
        return (slot, log);
    }
    let slot = Arc::new(tokio::sync::Mutex::new(WriterSlot::default()));
    let log = SharedLog::default();
    files.insert(path.to_path_buf(), (Arc::downgrade(&slot), Arc::downgrade(&log)));
    (slot, log)
}

type SharedLog = Arc<RwLock<Option<Arc<dyn CommitLog>>>>;
