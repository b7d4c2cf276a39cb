//! The relay: moves committed messages from each publisher's outbox into the
//! log, with a delivery for every subscriber whose topics match, then removes
//! them from the outbox. A crash between the two sends a message again, and
//! the log keeps it once (by id): nothing is lost and nothing doubles.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::stats::{EventStats, OTHER_TOPIC, PublishedLabels};
use super::{EventLog, Message};
use crate::capabilities::sqlite::Database;
use crate::clock::now_ms;
use crate::components::registry::Registry;
use crate::components::snapshot::{Entry, Snapshot};

/// Messages moved in one batch.
const BATCH: usize = 256;
/// Outboxes are looked at this often even without a wake-up, for messages
/// left from before a restart.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Old idempotency keys and processed deliveries are forgotten this often.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// Moves messages until the task is dropped.
pub async fn run(
    registry: Arc<Registry>,
    log: Arc<dyn EventLog>,
    wake: Arc<Notify>,
    dispatch: Arc<Notify>,
    stats: Arc<EventStats>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut forget = tokio::time::interval(FORGET_EVERY);
    loop {
        let all = tokio::select! {
            () = wake.notified() => false,
            _ = sweep.tick() => true,
            _ = forget.tick() => {
                forget_old(&registry).await;
                continue;
            }
        };
        let snapshot = registry.snapshot();
        // Another host owns the rest: a replica's outbox is its owner's
        // copy, sent by the owner.
        for entry in snapshot.entries.iter().filter(|e| registry.placement.serves_here(e)) {
            let db = &entry.shared.capabilities.sqlite.db;
            if !db.outbox.take() && !all {
                continue;
            }
            match drain(db, &entry.name, &snapshot, log.as_ref(), &stats).await {
                Ok(moved) => {
                    if moved > 0 {
                        dispatch.notify_one();
                    }
                    recount_unsettled(entry, log.as_ref()).await;
                }
                // What is left in the outbox is in neither count: the
                // count in memory stands until the outbox is empty.
                Err(e) => {
                    tracing::warn!(component = %entry.name, "cannot move published messages yet: {e:#}");
                    db.outbox.take();
                }
            }
        }
    }
}

/// Moves everything in `db`'s outbox; returns how many messages moved.
async fn drain(
    db: &Arc<Database>,
    source: &Arc<str>,
    snapshot: &Snapshot,
    log: &dyn EventLog,
    stats: &EventStats,
) -> anyhow::Result<usize> {
    let mut moved = 0;
    loop {
        let named = source.to_string();
        // Read first: a restore after this makes the delete below a no-op.
        let generation = db.generation();
        let waiting = with_conn(db, move |conn| conn.outbox(BATCH, &named)).await?;
        let Some(last) = waiting.last().map(|m| m.seq) else {
            return Ok(moved);
        };
        let count = waiting.len();
        let batch: Vec<(Message, Vec<Arc<str>>)> = waiting
            .into_iter()
            .map(|stored| {
                let subscribers = subscribers_of(snapshot, &stored.message.topic);
                (stored.message, subscribers)
            })
            .collect();
        let publishes = snapshot.get(source).map(|e| &e.config.events);
        for (message, _) in &batch {
            let pattern = publishes.and_then(|events| events.published_pattern(&message.topic));
            let labels = PublishedLabels {
                topic: pattern.map_or(OTHER_TOPIC, |p| p.as_str()).to_string(),
                source: Arc::clone(source),
            };
            stats.published.get_or_create(&labels).inc();
        }
        log.append(batch).await?;
        with_conn(db, move |conn| conn.sent(last, generation)).await?;
        moved += count;
        if count < BATCH {
            return Ok(moved);
        }
    }
}

/// Reads how many of `entry`'s messages are unsettled, once the count kept
/// in memory (which only grows between reads) nears the component's bound:
/// then a publisher held back by it is let go as soon as its subscribers
/// catch up, and nothing is counted otherwise. What the log holds is read
/// first, then what waits in the outbox: only this task moves messages from
/// one to the other, so none is missed; a publish that lands meanwhile
/// may be counted twice, for a moment, never none.
async fn recount_unsettled(entry: &Entry, log: &dyn EventLog) {
    let events = &entry.shared.capabilities.events;
    if events.unsettled.count() < events.max_unsettled / 2 {
        return;
    }
    let counted = async {
        let logged = log.published_backlog(entry.name.to_string()).await?;
        let waiting = with_conn(&entry.shared.capabilities.sqlite.db, |conn| conn.outbox_len()).await?;
        anyhow::Ok(logged + waiting)
    };
    match counted.await {
        Ok(count) => events.unsettled.set(count),
        Err(e) => tracing::warn!(component = %entry.name, "cannot count its unsettled messages: {e:#}"),
    }
}

/// The components subscribed to `topic` now.
fn subscribers_of(snapshot: &Snapshot, topic: &str) -> Vec<Arc<str>> {
    snapshot
        .entries
        .iter()
        .filter(|e| e.config.events.subscription.as_ref().is_some_and(|s| s.matches(topic)))
        .map(|e| Arc::clone(&e.name))
        .collect()
}

/// Runs `work` on the writer of `db`, on an SQL thread.
async fn with_conn<R: Send + 'static>(
    db: &Arc<Database>,
    work: impl FnOnce(
        &mut crate::capabilities::sqlite::Conn,
    ) -> Result<R, crate::capabilities::bindings::corral::service::sqlite::Error>
    + Send
    + 'static,
) -> anyhow::Result<R> {
    let mut writer = db.writer().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let done = db
        .threads()
        .run(move |_| work(&mut writer))
        .await
        .map_err(|_| anyhow::anyhow!("the SQL threads are busy"))?;
    done.map_err(|e| anyhow::anyhow!("{e:?}"))
}

async fn forget_old(registry: &Registry) {
    let snapshot = registry.snapshot();
    for entry in snapshot.entries.iter().filter(|e| registry.placement.serves_here(e)) {
        let now = now_ms();
        if let Err(e) = with_conn(&entry.shared.capabilities.sqlite.db, move |conn| conn.forget_old(now)).await {
            tracing::warn!(component = %entry.name, "cannot forget old idempotency keys: {e:#}");
        }
    }
}
