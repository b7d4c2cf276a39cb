//! The host's tables in a component's database, for events: the outbox a
//! publish writes to (in the guest's transaction when it has one, so a
//! message is sent exactly when its data commits), the idempotency keys it
//! has seen, and the deliveries it has processed (for exactly-once
//! effects). A guest cannot touch them (see `policy::HOST_TABLE_PREFIX`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use super::connection::{Conn, HostSql, Txn};
use crate::capabilities::bindings::corral::service::sqlite::Error;

/// How long an idempotency key or a processed delivery is remembered.
pub const REMEMBER_MS: u64 = 24 * 3600 * 1000;

pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _corral_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        content_type TEXT,
        headers TEXT NOT NULL,
        ordering_key TEXT,
        published_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS _corral_published (
        idempotency_key TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _corral_processed (
        id TEXT PRIMARY KEY,
        at INTEGER NOT NULL
    ) WITHOUT ROWID;";

/// Tells the relay that an outbox has messages to send.
#[derive(Default)]
pub struct OutboxSignal {
    pending: AtomicBool,
    /// Shared by every database of the host.
    wake: Arc<Notify>,
}

impl OutboxSignal {
    pub fn new(wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(OutboxSignal {
            // A database opened with rows left from before has them to send.
            pending: AtomicBool::new(true),
            wake,
        })
    }

    pub(super) fn raise(&self) {
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether messages may be waiting; clears the flag.
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// One published message, from the outbox it is written to through the
/// event log to its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    pub topic: String,
    /// The component that published it.
    pub source: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub ordering_key: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub published_at: u64,
}

/// A message waiting in an outbox, at its place in it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub message: Message,
}

impl Conn {
    /// Writes `message` to the outbox, in the open transaction if there is
    /// one; returns its id, or the id of the message published earlier
    /// under the same `idempotency_key`.
    pub fn publish(&mut self, message: &Message, idempotency_key: Option<&str>) -> Result<String, Error> {
        if let Txn::RolledBack { .. } = self.txn {
            return Err(Error::InvalidTransactionState(
                "the transaction was rolled back after an error".into(),
            ));
        }
        let id = self.host_write(|conn| {
            conn.execute_batch("SAVEPOINT corral_publish")?;
            let published = publish_in(conn, message, idempotency_key);
            let end = match published {
                Ok(_) => "RELEASE corral_publish",
                Err(_) => "ROLLBACK TO corral_publish; RELEASE corral_publish",
            };
            conn.execute_batch(end)?;
            published
        })?;
        if !self.txn.is_open() {
            self.db.outbox.raise();
        } else {
            self.published_in_txn = true;
        }
        Ok(id)
    }

    /// How many messages wait in the outbox.
    pub fn outbox_len(&mut self) -> Result<u64, Error> {
        self.host(|conn| conn.query_row("SELECT count(*) FROM _corral_outbox", [], |row| row.get(0)))
    }

    /// Up to `limit` messages waiting in the outbox, oldest first; this is
    /// the database of component `source`.
    pub fn outbox(&mut self, limit: usize, source: &str) -> Result<Vec<Stored>, Error> {
        self.host(|conn| {
            let mut statement = conn.prepare(
                "SELECT seq, id, topic, payload, content_type, headers, ordering_key, published_at
                 FROM _corral_outbox ORDER BY seq LIMIT ?",
            )?;
            let rows = statement.query_map([limit as i64], |row| {
                let headers: String = row.get(5)?;
                Ok(Stored {
                    seq: row.get(0)?,
                    message: Message {
                        id: row.get(1)?,
                        topic: row.get(2)?,
                        source: source.to_string(),
                        payload: row.get(3)?,
                        content_type: row.get(4)?,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        ordering_key: row.get(6)?,
                        published_at: row.get(7)?,
                    },
                })
            })?;
            rows.collect()
        })
    }

    /// Removes the messages up to `seq` from the outbox, once they are
    /// sent, if the database is still the `generation` they were read
    /// from: after a restore, the places are another outbox's, and what
    /// was read is sent again (the event log takes each id once).
    pub fn sent(&mut self, seq: i64, generation: u64) -> Result<(), Error> {
        if self.db.generation() != generation {
            return Ok(());
        }
        self.host_write(|conn| {
            conn.execute("DELETE FROM _corral_outbox WHERE seq <= ?", [seq])
                .map(drop)
        })
    }

    /// Records that delivery `id` is being processed, in the open
    /// transaction; `false` if it already was, which the caller skips.
    pub fn first_processing(&mut self, id: &str, now_ms: u64) -> Result<bool, Error> {
        self.host(|conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO _corral_processed (id, at) VALUES (?, ?)",
                params![id, now_ms],
            )?;
            Ok(inserted == 1)
        })
    }

    /// Forgets idempotency keys and processed deliveries older than a day.
    pub fn forget_old(&mut self, now_ms: u64) -> Result<(), Error> {
        let before = now_ms.saturating_sub(REMEMBER_MS);
        self.host_write(|conn| {
            conn.execute("DELETE FROM _corral_published WHERE at < ?", [before])?;
            conn.execute("DELETE FROM _corral_processed WHERE at < ?", [before])?;
            Ok(())
        })
    }
}

fn publish_in(conn: &HostSql<'_>, message: &Message, idempotency_key: Option<&str>) -> rusqlite::Result<String> {
    if let Some(key) = idempotency_key {
        let earlier: Option<String> = conn
            .query_row(
                "SELECT id FROM _corral_published WHERE idempotency_key = ? AND at >= ?",
                params![key, message.published_at.saturating_sub(REMEMBER_MS)],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(earlier) = earlier {
            return Ok(earlier);
        }
        conn.execute(
            "INSERT OR REPLACE INTO _corral_published (idempotency_key, id, at) VALUES (?, ?, ?)",
            params![key, message.id, message.published_at],
        )?;
    }
    let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT INTO _corral_outbox (id, topic, payload, content_type, headers, ordering_key, published_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            message.id,
            message.topic,
            message.payload,
            message.content_type,
            headers,
            message.ordering_key,
            message.published_at
        ],
    )?;
    Ok(message.id.clone())
}
