//! The embedded [`EventLog`]: one SQLite file under `data_dir`, owned by the
//! host, with a table of messages and one of deliveries (one row per message
//! and subscriber). Its statements run on the host's SQL threads, one at a
//! time on one connection.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::{Backlog, Claimed, DeadLetter, EventLog, LogFuture, Message, Selection, Settlement};
use crate::capabilities::sqlite::SqlThreads;
use crate::clock::now_ms;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        source TEXT NOT NULL,
        payload BLOB NOT NULL,
        content_type TEXT,
        headers TEXT NOT NULL,
        ordering_key TEXT,
        published_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS deliveries (
        subscriber TEXT NOT NULL,
        message_seq INTEGER NOT NULL REFERENCES messages (seq),
        ordering_key TEXT,
        state TEXT NOT NULL CHECK (state IN ('ready', 'leased', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at INTEGER NOT NULL,
        lease_until INTEGER,
        error TEXT,
        dead_at INTEGER,
        PRIMARY KEY (subscriber, message_seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS deliveries_in_order ON deliveries (subscriber, state, message_seq);
    CREATE INDEX IF NOT EXISTS deliveries_by_key ON deliveries (subscriber, ordering_key, message_seq);
    CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries (message_seq);
    CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source);";

/// The embedded log.
pub struct SqliteLog {
    conn: Arc<Mutex<rusqlite::Connection>>,
    threads: Arc<SqlThreads>,
}

impl SqliteLog {
    /// Opens (creating it if needed) the log at `path`.
    pub fn open(path: &Path, threads: Arc<SqlThreads>) -> anyhow::Result<SqliteLog> {
        use anyhow::Context;
        let conn = rusqlite::Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot set up {}", path.display()))?;
        Ok(SqliteLog {
            conn: Arc::new(Mutex::new(conn)),
            threads,
        })
    }

    /// Runs `work` on the log's connection on an SQL thread.
    fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> LogFuture<'_, R> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let done = self
                .threads
                .run(move |_| work(&mut conn.lock().expect("event log lock")))
                .await
                .map_err(|_| anyhow::anyhow!("the SQL threads are busy"))?;
            Ok(done?)
        })
    }
}

fn selected(which: &Selection) -> Option<String> {
    match which {
        Selection::All => None,
        Selection::Ids(ids) => Some(serde_json::to_string(ids).unwrap_or_default()),
    }
}

/// Messages no delivery needs any more.
const FORGET_DELIVERED: &str = "DELETE FROM messages WHERE seq NOT IN (SELECT message_seq FROM deliveries)";

impl EventLog for SqliteLog {
    fn append(&self, batch: Vec<(Message, Vec<Arc<str>>)>) -> LogFuture<'_, ()> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for (message, subscribers) in &batch {
                if subscribers.is_empty() {
                    continue;
                }
                let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "[]".into());
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO messages
                     (id, topic, source, payload, content_type, headers, ordering_key, published_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    params![
                        message.id,
                        message.topic,
                        message.source,
                        message.payload,
                        message.content_type,
                        headers,
                        message.ordering_key,
                        message.published_at
                    ],
                )?;
                if inserted == 0 {
                    continue;
                }
                let seq = tx.last_insert_rowid();
                for subscriber in subscribers {
                    tx.execute(
                        "INSERT OR IGNORE INTO deliveries (subscriber, message_seq, ordering_key, state, due_at)
                         VALUES (?, ?, ?, 'ready', ?)",
                        params![&**subscriber, seq, message.ordering_key, message.published_at],
                    )?;
                }
            }
            tx.commit()
        })
    }

    fn claim(&self, subscriber: String, max: usize, by_key: bool, lease: Duration) -> LogFuture<'_, Vec<Claimed>> {
        self.run(move |conn| {
            let now = now_ms();
            let tx = conn.transaction()?;
            let claimed = {
                let mut due = tx.prepare_cached(
                    "SELECT d.message_seq, d.attempts, m.id, m.topic, m.source, m.payload, m.content_type,
                            m.headers, m.ordering_key, m.published_at
                     FROM deliveries d JOIN messages m ON m.seq = d.message_seq
                     WHERE d.subscriber = ?1 AND d.state = 'ready' AND d.due_at <= ?2
                       AND (?3 = 0 OR d.ordering_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM deliveries e
                            WHERE e.subscriber = d.subscriber AND e.ordering_key = d.ordering_key
                              AND e.message_seq < d.message_seq AND e.state != 'dead'))
                     ORDER BY d.message_seq LIMIT ?4",
                )?;
                let rows = due.query_map(params![subscriber, now, by_key, max as i64], |row| {
                    let headers: String = row.get(7)?;
                    let attempts: u32 = row.get(1)?;
                    Ok((
                        row.get::<_, i64>(0)?,
                        Claimed {
                            attempt: attempts + 1,
                            message: Message {
                                id: row.get(2)?,
                                topic: row.get(3)?,
                                source: row.get(4)?,
                                payload: row.get(5)?,
                                content_type: row.get(6)?,
                                headers: serde_json::from_str(&headers).unwrap_or_default(),
                                ordering_key: row.get(8)?,
                                published_at: row.get(9)?,
                            },
                        },
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let lease_until = now + lease.as_millis() as u64;
            for (seq, _) in &claimed {
                tx.execute(
                    "UPDATE deliveries SET state = 'leased', attempts = attempts + 1, lease_until = ?
                     WHERE subscriber = ? AND message_seq = ?",
                    params![lease_until, subscriber, seq],
                )?;
            }
            tx.commit()?;
            Ok(claimed.into_iter().map(|(_, c)| c).collect())
        })
    }

    fn settle(&self, settled: Vec<(Arc<str>, String, Settlement)>) -> LogFuture<'_, ()> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for (subscriber, id, settlement) in settled {
                let seq: Option<i64> = tx
                    .query_row("SELECT seq FROM messages WHERE id = ?", [&id], |row| row.get(0))
                    .optional()?;
                let Some(seq) = seq else { continue };
                let key = params![&*subscriber, seq];
                match settlement {
                    Settlement::Ack => {
                        tx.execute("DELETE FROM deliveries WHERE subscriber = ? AND message_seq = ?", key)?;
                        tx.execute(
                            "DELETE FROM messages WHERE seq = ?1 AND NOT EXISTS
                             (SELECT 1 FROM deliveries WHERE message_seq = ?1)",
                            [seq],
                        )?;
                    }
                    Settlement::Retry { at_ms, error } => {
                        tx.execute(
                            "UPDATE deliveries SET state = 'ready', due_at = ?, error = ?, lease_until = NULL
                             WHERE subscriber = ? AND message_seq = ?",
                            params![at_ms, error, &*subscriber, seq],
                        )?;
                    }
                    Settlement::Requeue { at_ms } => {
                        tx.execute(
                            "UPDATE deliveries SET state = 'ready', due_at = ?, attempts = max(attempts - 1, 0),
                             lease_until = NULL WHERE subscriber = ? AND message_seq = ?",
                            params![at_ms, &*subscriber, seq],
                        )?;
                    }
                    Settlement::Dead { reason } => {
                        tx.execute(
                            "UPDATE deliveries SET state = 'dead', error = ?, dead_at = ?, lease_until = NULL
                             WHERE subscriber = ? AND message_seq = ?",
                            params![reason, now_ms(), &*subscriber, seq],
                        )?;
                    }
                }
            }
            tx.commit()
        })
    }

    fn recover(&self, all: bool) -> LogFuture<'_, u64> {
        self.run(move |conn| {
            let now = now_ms();
            let changed = conn.execute(
                "UPDATE deliveries SET state = 'ready', lease_until = NULL, due_at = min(due_at, ?1)
                 WHERE state = 'leased' AND (?2 OR lease_until < ?1)",
                params![now, all],
            )?;
            Ok(changed as u64)
        })
    }

    fn backlogs(&self) -> LogFuture<'_, Vec<Backlog>> {
        self.run(move |conn| {
            let now = now_ms();
            let mut statement = conn.prepare_cached(
                "SELECT d.subscriber,
                        sum(d.state = 'ready'), sum(d.state = 'ready' AND d.attempts > 0),
                        sum(d.state = 'leased'), sum(d.state = 'dead'),
                        min(CASE WHEN d.state != 'dead' THEN m.published_at END)
                 FROM deliveries d JOIN messages m ON m.seq = d.message_seq
                 GROUP BY d.subscriber ORDER BY d.subscriber",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(Backlog {
                    subscriber: row.get(0)?,
                    ready: row.get::<_, i64>(1)? as u64,
                    retrying: row.get::<_, i64>(2)? as u64,
                    in_flight: row.get::<_, i64>(3)? as u64,
                    dead: row.get::<_, i64>(4)? as u64,
                    oldest_age_ms: row.get::<_, Option<u64>>(5)?.map(|at| now.saturating_sub(at)),
                })
            })?;
            rows.collect()
        })
    }

    fn published_backlog(&self, source: String) -> LogFuture<'_, u64> {
        self.run(move |conn| {
            conn.query_row("SELECT count(*) FROM messages WHERE source = ?", [source], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        })
    }

    fn dead_letters(&self, subscriber: Option<String>, limit: usize) -> LogFuture<'_, Vec<DeadLetter>> {
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT m.id, d.subscriber, m.topic, m.source, d.attempts, coalesce(d.error, ''), d.dead_at,
                        m.published_at, m.payload
                 FROM deliveries d JOIN messages m ON m.seq = d.message_seq
                 WHERE d.state = 'dead' AND (?1 IS NULL OR d.subscriber = ?1)
                 ORDER BY d.dead_at LIMIT ?2",
            )?;
            let rows = statement.query_map(params![subscriber, limit as i64], |row| {
                let payload: Vec<u8> = row.get(8)?;
                Ok(DeadLetter {
                    id: row.get(0)?,
                    subscriber: row.get(1)?,
                    topic: row.get(2)?,
                    source: row.get(3)?,
                    attempts: row.get(4)?,
                    reason: row.get(5)?,
                    dead_at: row.get(6)?,
                    published_at: row.get(7)?,
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                })
            })?;
            rows.collect()
        })
    }

    fn redrive(&self, subscriber: String, which: Selection) -> LogFuture<'_, u64> {
        let ids = selected(&which);
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE deliveries SET state = 'ready', attempts = 0, due_at = ?, dead_at = NULL
                 WHERE subscriber = ? AND state = 'dead' AND (?3 IS NULL OR message_seq IN
                    (SELECT seq FROM messages WHERE id IN (SELECT value FROM json_each(?3))))",
                params![now_ms(), subscriber, ids],
            )?;
            Ok(changed as u64)
        })
    }

    fn purge(&self, subscriber: String, which: Selection, pending: bool) -> LogFuture<'_, u64> {
        let ids = selected(&which);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let changed = tx.execute(
                "DELETE FROM deliveries WHERE subscriber = ?1 AND (state = 'dead' OR ?3) AND (?2 IS NULL OR message_seq IN
                    (SELECT seq FROM messages WHERE id IN (SELECT value FROM json_each(?2))))",
                params![subscriber, ids, pending],
            )?;
            tx.execute(FORGET_DELIVERED, [])?;
            tx.commit()?;
            Ok(changed as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, key: Option<&str>) -> Message {
        Message {
            id: id.into(),
            topic: "t.x".into(),
            source: "p".into(),
            payload: id.as_bytes().to_vec(),
            content_type: None,
            headers: vec![("h".into(), "v".into())],
            ordering_key: key.map(String::from),
            published_at: now_ms() - 10,
        }
    }

    fn ids(claimed: &[Claimed]) -> Vec<&str> {
        claimed.iter().map(|c| c.message.id.as_str()).collect()
    }

    async fn log() -> (tempfile::TempDir, SqliteLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(&dir.path().join("events.sqlite3"), SqlThreads::start(1).unwrap()).unwrap();
        (dir, log)
    }

    #[tokio::test]
    async fn deliveries_are_claimed_settled_and_retried() {
        let (_dir, log) = log().await;
        let both: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let batch = vec![(message("1", None), both.clone()), (message("2", None), both)];
        log.append(batch.clone()).await.unwrap();
        log.append(batch).await.unwrap();
        let lease = Duration::from_secs(30);
        let claimed = log.claim("a".into(), 10, false, lease).await.unwrap();
        assert_eq!(
            ids(&claimed),
            ["1", "2"],
            "each message once, despite the second append"
        );
        assert_eq!(claimed[0].attempt, 1);
        assert_eq!(claimed[0].message.headers, [("h".to_string(), "v".to_string())]);
        assert!(
            log.claim("a".into(), 10, false, lease).await.unwrap().is_empty(),
            "leased"
        );
        log.settle(vec![("a".into(), "1".into(), Settlement::Ack)])
            .await
            .unwrap();
        let soon = now_ms() - 1;
        let retry = Settlement::Retry {
            at_ms: soon,
            error: "boom".into(),
        };
        log.settle(vec![("a".into(), "2".into(), retry)]).await.unwrap();
        let again = log.claim("a".into(), 10, false, lease).await.unwrap();
        assert_eq!((ids(&again), again[0].attempt), (vec!["2"], 2));
        let dead = Settlement::Dead { reason: "no".into() };
        log.settle(vec![("a".into(), "2".into(), dead)]).await.unwrap();
        let dead = log.dead_letters(None, 10).await.unwrap();
        assert_eq!(
            (dead[0].id.as_str(), dead[0].attempts, dead[0].reason.as_str()),
            ("2", 2, "no")
        );
        assert_eq!(log.redrive("a".into(), Selection::All).await.unwrap(), 1);
        assert_eq!(log.claim("a".into(), 10, false, lease).await.unwrap()[0].attempt, 1);
        // b has its own deliveries of both messages.
        assert_eq!(ids(&log.claim("b".into(), 10, false, lease).await.unwrap()), ["1", "2"]);
        assert_eq!(log.recover(true).await.unwrap(), 3);
        let backlogs = log.backlogs().await.unwrap();
        assert_eq!((backlogs[0].subscriber.as_str(), backlogs[0].ready), ("a", 1));
    }

    #[tokio::test]
    async fn deliveries_with_a_key_wait_for_the_one_before() {
        let (_dir, log) = log().await;
        let a: Vec<Arc<str>> = vec!["a".into()];
        log.append(vec![
            (message("1", Some("k")), a.clone()),
            (message("2", Some("k")), a.clone()),
            (message("3", Some("j")), a.clone()),
            (message("4", None), a),
        ])
        .await
        .unwrap();
        let lease = Duration::from_secs(30);
        let first = log.claim("a".into(), 10, true, lease).await.unwrap();
        assert_eq!(ids(&first), ["1", "3", "4"]);
        assert!(log.claim("a".into(), 10, true, lease).await.unwrap().is_empty());
        log.settle(vec![("a".into(), "1".into(), Settlement::Ack)])
            .await
            .unwrap();
        assert_eq!(ids(&log.claim("a".into(), 10, true, lease).await.unwrap()), ["2"]);
    }
}
