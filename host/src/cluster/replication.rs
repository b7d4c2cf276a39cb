//! Replicated databases. Each component with a database and
//! `durability = "replicated"` has a log: a JetStream stream
//! (`corral_db_<name>`, replicated on `cluster.replicas` NATS servers)
//! whose entries are its committed transactions, as SQLite session
//! changesets with the schema statements they ran (see
//! `capabilities::sqlite::replication`). The owner appends each commit
//! before it takes place, at the place its file has reached (JetStream's
//! expected last sequence: the fence); every host, the owner included,
//! follows the log into its own file, so any of them can take over.
//!
//! Snapshots of the owner's file, with the place they hold, are kept in
//! the `corral_snapshots` object store: a host whose file has no place yet
//! (new, wiped) or that cannot follow the log (its file diverged) starts
//! from the newest, then follows the log from there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::push, object_store};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::capabilities::sqlite::{AppendError, Applied, Change, CommitLog, Database, SCRATCH_PREFIXES};
use crate::clock::now_ms;

const SNAPSHOTS_BUCKET: &str = "corral_snapshots";
/// The header of an entry that lists its schema statements, as JSON.
const SCHEMA_HEADER: &str = "Corral-Schema";
/// The header of an entry that is an operator's restore: it names the
/// object of the snapshot store that holds the file.
const RESET_HEADER: &str = "Corral-Reset";
/// How long a restore waits for the snapshot store to take its file.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a commit waits for the log to take it. The writer is held
/// meanwhile, so this bounds how long one stalled append stops writes.
const APPEND_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the owner checks whether a snapshot is due.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(2);
/// How often a replica that serves reads asks where its log ends.
const FRESH_CHECK: Duration = Duration::from_millis(100);
/// How long a host waits before it tries to follow a log again.
const RETRY: Duration = Duration::from_secs(1);

/// The logs of this host's replicated databases.
pub struct Replication {
    js: jetstream::Context,
    node: String,
    replicas: usize,
    snapshots: object_store::ObjectStore,
    /// The owner takes a snapshot once its file is this many entries past
    /// the last one, and trims the log behind the one before.
    snapshot_every: u64,
    logs: Mutex<HashMap<String, Arc<StreamLog>>>,
}

/// One database's log, as its file's [`CommitLog`].
pub struct StreamLog {
    js: jetstream::Context,
    /// Where an operator's restore puts its file for the copies to fetch.
    snapshots: object_store::ObjectStore,
    component: String,
    /// This host owns the component: it may append.
    owns: AtomicBool,
    /// How far into the log the file is, as last seen: raised by each
    /// commit of an append and each entry applied, so the follower skips
    /// what the file holds already.
    place: AtomicU64,
    /// When (ms since the epoch) the file last held the whole log, as far
    /// as a replica knows: 0 until it knows.
    fresh_at: AtomicU64,
    runtime: tokio::runtime::Handle,
}

fn stream_name(component: &str) -> String {
    format!("corral_db_{component}")
}

fn subject(component: &str) -> String {
    format!("corral.db.{component}")
}

impl CommitLog for StreamLog {
    fn owns(&self) -> bool {
        self.owns.load(Ordering::Acquire)
    }

    fn committed(&self, seq: u64) {
        self.place.fetch_max(seq, Ordering::AcqRel);
    }

    fn append(&self, after: u64, change: &Change) -> Result<u64, AppendError> {
        self.check_owner()?;
        let mut message = jetstream::message::PublishMessage::build()
            .payload(change.changeset.clone().into())
            .expected_last_sequence(after);
        if !change.schema.is_empty() {
            let schema = serde_json::to_string(&change.schema).expect("strings serialize");
            message = message.header(SCHEMA_HEADER, schema.as_str());
        }
        self.block_on(self.publish(message))
    }

    fn reset(&self, after: u64, file: &Path) -> Result<u64, AppendError> {
        self.check_owner()?;
        // Named for this restore alone: a deposed owner's restore at the
        // same place must not replace the file the log's entry names.
        let name = format!(
            "{}{}.{:016x}",
            restored_prefix(&self.component),
            after + 1,
            crate::components::random::u64()
        );
        self.block_on(async {
            let stored = async {
                let metadata = object_store::ObjectMetadata {
                    name: name.clone(),
                    metadata: HashMap::from([("place".to_string(), (after + 1).to_string())]),
                    ..Default::default()
                };
                let mut file = tokio::fs::File::open(file).await?;
                self.snapshots
                    .put(metadata, &mut file)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            };
            match tokio::time::timeout(UPLOAD_TIMEOUT, stored).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(AppendError::Refused(format!("cannot store the file: {e:#}"))),
                Err(_) => {
                    return Err(AppendError::Refused(format!(
                        "cannot store the file within {UPLOAD_TIMEOUT:?}"
                    )));
                }
            }
            let message = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::new())
                .expected_last_sequence(after)
                .header(RESET_HEADER, name.as_str());
            self.publish(message).await
        })
    }
}

impl StreamLog {
    fn check_owner(&self) -> Result<(), AppendError> {
        if self.owns() {
            return Ok(());
        }
        Err(AppendError::NotOwner(format!(
            "{} is owned by another host",
            self.component
        )))
    }

    /// Appends `message`; answers its place.
    async fn publish(&self, message: jetstream::message::PublishMessage) -> Result<u64, AppendError> {
        let append = async {
            let ack = self.js.send_publish(subject(&self.component), message).await?;
            ack.await
        };
        match timeout(append).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(refusal(&e)),
            Err(_) => Err(AppendError::Unavailable(format!(
                "no answer within {APPEND_TIMEOUT:?}; the write may be in the log"
            ))),
        }
    }

    /// Runs `work` to its end from a thread that holds the writer: an SQL
    /// thread, or one of the runtime's (a worker, never on the request
    /// path, see `on_conn`; a blocking thread, for a restore).
    fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(work)),
            Err(_) => self.runtime.block_on(work),
        }
    }
}

/// What a failed append says of the write.
fn refusal(e: &jetstream::context::PublishError) -> AppendError {
    use jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::WrongLastSequence => AppendError::Fenced,
        // No server answers for the stream (its leader is being elected):
        // nothing stored it.
        Kind::StreamNotFound => AppendError::Refused(e.to_string()),
        // The stream's leader answered with an error: it did not store it.
        Kind::Other if std::error::Error::source(e).is_some_and(|s| s.is::<jetstream::Error>()) => {
            AppendError::Refused(e.to_string())
        }
        _ => AppendError::Unavailable(e.to_string()),
    }
}

async fn timeout<T>(work: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(APPEND_TIMEOUT, work).await
}

impl Replication {
    pub async fn new(
        js: jetstream::Context,
        node: String,
        replicas: usize,
        snapshot_every: u64,
    ) -> anyhow::Result<Replication> {
        super::object_store_of(&js, SNAPSHOTS_BUCKET, replicas).await?;
        let snapshots = read_from_leaders(&js).await?;
        Ok(Replication {
            js,
            node,
            replicas,
            snapshots,
            snapshot_every,
            logs: Mutex::default(),
        })
    }

    /// Replicates `component`'s database `db` from now on, owned here if
    /// `owns`: its log is made if it has none, the file follows it, and
    /// the owner keeps snapshots of it; with `serves_reads`, this host
    /// keeps track of how fresh its copy is. Once per component.
    pub async fn start(
        self: &Arc<Self>,
        component: &str,
        db: Arc<Database>,
        owns: bool,
        serves_reads: bool,
    ) -> anyhow::Result<()> {
        if self.logs.lock().expect("logs lock").contains_key(component) {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: stream_name(component),
            subjects: vec![subject(component)],
            num_replicas: self.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot make {component}'s log: {e}"))?;
        let log = Arc::new(StreamLog {
            js: self.js.clone(),
            snapshots: self.snapshots.clone(),
            component: component.to_string(),
            owns: AtomicBool::new(owns),
            place: AtomicU64::new(0),
            fresh_at: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
        });
        let attached = {
            let (db, log) = (Arc::clone(&db), Arc::clone(&log));
            tokio::task::spawn_blocking(move || db.attach_log(log)).await?
        };
        attached.map_err(|e| anyhow::anyhow!("{component} cannot be replicated: {e:#}"))?;
        self.logs
            .lock()
            .expect("logs lock")
            .insert(component.to_string(), Arc::clone(&log));
        if serves_reads {
            tokio::spawn(Arc::clone(self).keep_fresh(component.to_string(), Arc::clone(&log)));
        }
        tokio::spawn(Arc::clone(self).follow(component.to_string(), db, log));
        Ok(())
    }

    /// Whether this host's copy of `component` may serve a read that may
    /// miss at most the writes of the last `max_lag`: it is the owner's,
    /// or it held the whole log that recently.
    pub fn fresh_within(&self, component: &str, max_lag: Duration) -> bool {
        let logs = self.logs.lock().expect("logs lock");
        let Some(log) = logs.get(component) else {
            return false;
        };
        let fresh_at = log.fresh_at.load(Ordering::Acquire);
        log.owns() || (fresh_at > 0 && now_ms().saturating_sub(fresh_at) <= max_lag.as_millis() as u64)
    }

    /// Keeps `fresh_at` of a replica that serves reads: every
    /// `FRESH_CHECK` it asks where the log ends, and once its file has
    /// reached that place, the file held the whole log as of the asking.
    async fn keep_fresh(self: Arc<Self>, component: String, log: Arc<StreamLog>) {
        let mut check = tokio::time::interval(FRESH_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The end of the log and when it was asked for, not reached yet.
        let mut waiting: Option<(u64, u64)> = None;
        loop {
            check.tick().await;
            let place = log.place.load(Ordering::Acquire);
            if let Some((end, asked)) = waiting
                && place >= end
            {
                log.fresh_at.fetch_max(asked, Ordering::AcqRel);
                waiting = None;
            }
            let asked = now_ms();
            let Ok(Ok(end)) = timeout(self.last_entry(&component)).await else {
                continue;
            };
            if log.place.load(Ordering::Acquire) >= end {
                log.fresh_at.fetch_max(asked, Ordering::AcqRel);
            } else if waiting.is_none() {
                waiting = Some((end, asked));
            }
        }
    }

    /// Makes this host the owner of `component`'s log, or not.
    pub fn set_owner(&self, component: &str, owns: bool) {
        if let Some(log) = self.logs.lock().expect("logs lock").get(component)
            && log.owns.swap(owns, Ordering::AcqRel) != owns
        {
            tracing::info!(component, owns, node = %self.node, "ownership of the replicated database changed");
        }
    }

    /// How far into its log this host's copy of `component` is, if it
    /// replicates it.
    pub fn place(&self, component: &str) -> Option<u64> {
        let logs = self.logs.lock().expect("logs lock");
        logs.get(component).map(|log| log.place.load(Ordering::Acquire))
    }

    /// Applies what this host's copy of `component` lacks of its log, up
    /// to the log's end as of now, reading each entry by its place: a host
    /// about to take over need not wait for its consumer (which may be
    /// stalled on a NATS server that is gone).
    pub async fn catch_up(&self, component: &str, db: &Arc<Database>) -> anyhow::Result<()> {
        // Fetched with the stream's state as of now.
        let stream = self.js.get_stream(stream_name(component)).await?;
        let state = stream.cached_info().state.clone();
        let mut place = place_of(db).await?;
        // A copy that never started from a snapshot holds an unknown base.
        if place == 0 || place + 1 < state.first_sequence {
            place = self.restore(component, db).await?;
        }
        let last = state.last_sequence;
        while place < last {
            let entry = stream.get_raw_message(place + 1).await?;
            let entry = decode(Some(&entry.headers), &entry.payload)?;
            match self.apply(component, db, place + 1, entry).await? {
                Ok(Applied::Done | Applied::Had) => place += 1,
                Ok(Applied::Gap { at }) => anyhow::bail!("entry {} does not follow the file's place {at}", place + 1),
                Err(e) => anyhow::bail!("cannot apply entry {}: {e:?}", place + 1),
            }
        }
        if let Some(log) = self.logs.lock().expect("logs lock").get(component) {
            log.place.fetch_max(place, Ordering::AcqRel);
        }
        Ok(())
    }

    /// How far `component`'s log goes.
    pub async fn last_entry(&self, component: &str) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(stream_name(component)).await?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Follows the log into the file, for good, starting again after any
    /// failure; the owner takes snapshots meanwhile.
    async fn follow(self: Arc<Self>, component: String, db: Arc<Database>, log: Arc<StreamLog>) {
        let mut last_snapshot = None;
        loop {
            if let Err(e) = self.follow_once(&component, &db, &log, &mut last_snapshot).await {
                tracing::warn!(%component, "following the replicated log: {e:#}");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn follow_once(
        &self,
        component: &str,
        db: &Arc<Database>,
        log: &StreamLog,
        last_snapshot: &mut Option<u64>,
    ) -> anyhow::Result<()> {
        // The owner keeps a snapshot from the start: the others begin there.
        if log.owns() && self.snapshot_place(component).await?.is_none() {
            *last_snapshot = Some(self.snapshot(component, db).await?);
        }
        let mut place = place_of(db).await?;
        log.place.store(place, Ordering::Release);
        let stream = self.js.get_stream(stream_name(component)).await?;
        let first = stream.cached_info().state.first_sequence;
        // A file with no place yet, or behind what the log still holds,
        // starts from a snapshot.
        if (place == 0 || place + 1 < first) && !log.owns() {
            place = self.restore(component, db).await?;
            log.place.store(place, Ordering::Release);
        }
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js_inbox(),
                filter_subject: subject(component),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: place + 1,
                },
                ..Default::default()
            })
            .await?;
        let mut entries = consumer.messages().await?;
        let mut check = tokio::time::interval(SNAPSHOT_CHECK);
        loop {
            tokio::select! {
                entry = entries.next() => {
                    let Some(entry) = entry else {
                        anyhow::bail!("the log's consumer ended");
                    };
                    let entry = entry?;
                    let seq = entry.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                    // Appended here, or applied by a catch-up: in the file.
                    if seq <= log.place.load(Ordering::Acquire) {
                        continue;
                    }
                    let entry = decode(entry.headers.as_ref(), &entry.payload)?;
                    match self.apply(component, db, seq, entry).await? {
                        Ok(Applied::Done | Applied::Had) => {
                            log.place.fetch_max(seq, Ordering::AcqRel);
                        }
                        Ok(Applied::Gap { at }) => anyhow::bail!("entry {seq} does not follow the file's place {at}"),
                        Err(e) => {
                            // The file is not the prefix of the log it should be.
                            tracing::error!(component, seq, "cannot apply the log ({e:?}); starting again from the newest snapshot");
                            self.restore(component, db).await?;
                            return Ok(());
                        }
                    }
                }
                _ = check.tick() => {
                    if log.owns() {
                        self.snapshot_if_due(component, db, last_snapshot).await;
                    }
                }
            }
        }
    }

    fn js_inbox(&self) -> String {
        format!("_INBOX.corral.{}.{}", self.node, crate::components::random::u64())
    }

    async fn snapshot_if_due(&self, component: &str, db: &Arc<Database>, last: &mut Option<u64>) {
        let due = async {
            let last_place = match *last {
                Some(place) => place,
                None => self.snapshot_place(component).await?.unwrap_or(0),
            };
            *last = Some(last_place);
            if place_of(db).await? < last_place + self.snapshot_every {
                return anyhow::Ok(());
            }
            *last = Some(self.snapshot(component, db).await?);
            // Kept: the entries after the snapshot before this one, so a
            // copy that started from it can still follow the log.
            // (Nothing is behind a snapshot at place 0, and JetStream
            // takes a purge up to sequence 1 as a purge of everything,
            // entries after this snapshot included.)
            if last_place == 0 {
                return anyhow::Ok(());
            }
            let stream = self.js.get_stream(stream_name(component)).await?;
            stream.purge().sequence(last_place + 1).await?;
            self.forget_restores(component, last_place + 1).await
        };
        if let Err(e) = due.await {
            tracing::warn!(component, "cannot take a snapshot: {e:#}");
        }
    }

    /// The place the newest snapshot of `component` holds, if there is one.
    async fn snapshot_place(&self, component: &str) -> anyhow::Result<Option<u64>> {
        match self.snapshots.info(component).await {
            Ok(info) => Ok(info.metadata.get("place").and_then(|p| p.parse().ok())),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {component}'s snapshot: {e}")),
        }
    }

    /// Stores a copy of the file as `component`'s newest snapshot; answers
    /// the place it holds.
    async fn snapshot(&self, component: &str, db: &Arc<Database>) -> anyhow::Result<u64> {
        let scratch = db.scratch_file(SCRATCH_PREFIXES[2])?;
        let (copy, path) = (Arc::clone(db), scratch.path().to_path_buf());
        let place = tokio::task::spawn_blocking(move || {
            copy.backup_to(&path)?;
            let file = rusqlite::Connection::open(&path)?;
            let place: Option<i64> = file
                .query_row("SELECT seq FROM _corral_log WHERE id = 1", [], |row| row.get(0))
                .ok();
            anyhow::Ok(place.unwrap_or(0) as u64)
        })
        .await??;
        let metadata = object_store::ObjectMetadata {
            name: component.to_string(),
            metadata: HashMap::from([("place".to_string(), place.to_string())]),
            ..Default::default()
        };
        let mut file = tokio::fs::File::open(scratch.path()).await?;
        self.snapshots
            .put(metadata, &mut file)
            .await
            .map_err(|e| anyhow::anyhow!("cannot store {component}'s snapshot: {e}"))?;
        tracing::info!(component, place, "took a snapshot of the replicated database");
        Ok(place)
    }

    /// Replaces the file with `component`'s newest snapshot; answers the
    /// place it holds.
    async fn restore(&self, component: &str, db: &Arc<Database>) -> anyhow::Result<u64> {
        let Some(place) = self.snapshot_place(component).await? else {
            anyhow::bail!("no snapshot of {component} yet: waiting for its owner to take one");
        };
        let scratch = self.fetch(db, component, component).await?;
        db.restore_from(scratch.path())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start from {component}'s snapshot: {e}"))?;
        tracing::info!(component, place, "started from the newest snapshot");
        Ok(place)
    }

    /// Applies entry `seq` of `component`'s log to the file; fails only if
    /// the entry's file cannot be fetched (the outer error) or the change
    /// does not apply (the inner one: the file is not the log's prefix).
    async fn apply(
        &self,
        component: &str,
        db: &Arc<Database>,
        seq: u64,
        entry: Entry,
    ) -> anyhow::Result<Result<Applied, anyhow::Error>> {
        match entry {
            Entry::Change(change) => Ok(db.apply(seq, change).await.map_err(|e| anyhow::anyhow!("{e:?}"))),
            Entry::Restore(name) => {
                let scratch = self.fetch(db, component, &name).await?;
                let applied = db.apply_restore(seq, scratch.path()).await;
                if let Ok(Applied::Done) = applied {
                    tracing::info!(component, seq, "put an operator's restore in place");
                }
                Ok(applied.map_err(|e| anyhow::anyhow!("{e}")))
            }
        }
    }

    /// The object `name` of the snapshot store, in a file beside
    /// `component`'s database `db`.
    async fn fetch(&self, db: &Database, component: &str, name: &str) -> anyhow::Result<tempfile::NamedTempFile> {
        let scratch = db.scratch_file(SCRATCH_PREFIXES[2])?;
        let mut object = self
            .snapshots
            .get(name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {component}'s snapshot {name}: {e}"))?;
        let mut file = tokio::fs::File::create(scratch.path()).await?;
        tokio::io::copy(&mut object, &mut file).await?;
        file.flush().await?;
        Ok(scratch)
    }

    /// Removes the files of `component`'s restores at places before
    /// `first`, which its log no longer holds.
    async fn forget_restores(&self, component: &str, first: u64) -> anyhow::Result<()> {
        let prefix = restored_prefix(component);
        let mut objects = self.snapshots.list().await?;
        let mut old = Vec::new();
        while let Some(object) = objects.next().await {
            let name = object?.name;
            let place = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next()?.parse::<u64>().ok());
            if place.is_some_and(|place| place < first) {
                old.push(name);
            }
        }
        for name in old {
            self.snapshots.delete(&name).await?;
        }
        Ok(())
    }
}

/// How the names of the files of `component`'s restores begin.
fn restored_prefix(component: &str) -> String {
    format!("{component}.restored.")
}

/// The snapshot store, read from its stream's leader. An object store is
/// made to answer reads from any of its servers, and one that lags (after
/// a server's loss, say) can name a snapshot older than the one the log
/// was trimmed behind: a copy that starts from it cannot follow the log.
/// A store's handle reads as its stream was configured when it was got,
/// so it is got only once the stream says so (another host may be making
/// the same change at the same time).
async fn read_from_leaders(js: &jetstream::Context) -> anyhow::Result<object_store::ObjectStore> {
    let name = format!("OBJ_{SNAPSHOTS_BUCKET}");
    for _ in 0..50 {
        let mut config = js.get_stream(&name).await?.cached_info().config.clone();
        if !config.allow_direct {
            return Ok(js.get_object_store(SNAPSHOTS_BUCKET).await?);
        }
        config.allow_direct = false;
        js.update_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot make the snapshot store read from its leader: {e}"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the snapshot store still reads from any server after 5 s")
}

/// How far into its log `db` is.
async fn place_of(db: &Arc<Database>) -> anyhow::Result<u64> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || db.log_place()).await?
}

/// An entry of a log.
enum Entry {
    /// A committed transaction.
    Change(Change),
    /// An operator's restore: the file is the object of this name.
    Restore(String),
}

/// An entry of the log, as what it carries.
fn decode(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> anyhow::Result<Entry> {
    if let Some(name) = headers.and_then(|h| h.get(RESET_HEADER)) {
        return Ok(Entry::Restore(name.as_str().to_string()));
    }
    let schema = match headers.and_then(|h| h.get(SCHEMA_HEADER)) {
        Some(schema) => serde_json::from_str(schema.as_str())?,
        None => Vec::new(),
    };
    Ok(Entry::Change(Change {
        schema,
        changeset: payload.to_vec(),
    }))
}
