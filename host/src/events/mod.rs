//! Durable messages between components. A guest publishes into the outbox
//! in its own database, committed with its data (`capabilities::events`);
//! the [`relay`] moves committed messages into the [`log`], with one
//! delivery for every subscriber whose topics match; the [`dispatch`]er
//! hands each delivery to a fresh instance of its subscriber and settles it:
//! acked, retried with backoff, or dead-lettered. Every message is
//! delivered at least once, across crashes: nothing leaves an outbox
//! before the log has it, and a delivery in flight when the host died is
//! delivered again.
//!
//! The log is a trait, [`EventLog`]; the embedded one keeps everything in
//! one SQLite file under `data_dir` ([`SqliteLog`]); a cluster's is on
//! JetStream (`cluster::events`), shared by its hosts.

pub mod dispatch;
pub mod log;
pub mod relay;
pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use log::SqliteLog;

/// The boxed future an [`EventLog`] returns.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// One published message: written to its publisher's outbox first.
pub use crate::capabilities::sqlite::outbox::Message;

/// A delivery taken for handling.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: Message,
    /// 1 on the first attempt.
    pub attempt: u32,
}

/// What becomes of a claimed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Handled: gone.
    Ack,
    /// Failed: due again at `at_ms`.
    Retry { at_ms: u64, error: String },
    /// Not attempted (the subscriber had no free instance): due again at
    /// `at_ms`, this attempt not counted.
    Requeue { at_ms: u64 },
    /// Never again, until an operator redrives it.
    Dead { reason: String },
}

/// Where a subscriber stands.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Backlog {
    pub subscriber: String,
    /// Waiting, including those waiting to be retried.
    pub ready: u64,
    /// Waiting to be retried after a failed attempt.
    pub retrying: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// Milliseconds since the oldest undelivered message was published.
    pub oldest_age_ms: Option<u64>,
}

/// A message that will not be delivered again unless redriven.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    pub subscriber: String,
    pub topic: String,
    pub source: String,
    pub attempts: u32,
    pub reason: String,
    pub dead_at: u64,
    pub published_at: u64,
    /// The payload, as text when it is UTF-8.
    pub payload: String,
}

/// Which dead letters an operator acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// The store of messages and deliveries.
pub trait EventLog: Send + Sync + 'static {
    /// Stores each message with one delivery per named subscriber; a
    /// message stored before (by id) is left as it is.
    fn append(&self, batch: Vec<(Message, Vec<Arc<str>>)>) -> LogFuture<'_, ()>;
    /// Takes up to `max` deliveries of `subscriber` that are due, for
    /// `lease`. With `by_key`, a delivery waits while an earlier one with
    /// its ordering key is undelivered.
    fn claim(&self, subscriber: String, max: usize, by_key: bool, lease: Duration) -> LogFuture<'_, Vec<Claimed>>;
    /// Settles deliveries (subscriber, message id, what became of it), in one go.
    fn settle(&self, settled: Vec<(Arc<str>, String, Settlement)>) -> LogFuture<'_, ()>;
    /// Makes deliveries whose lease ran out due again; at start, all of
    /// them (their host is gone). Returns how many.
    fn recover(&self, all: bool) -> LogFuture<'_, u64>;
    fn backlogs(&self) -> LogFuture<'_, Vec<Backlog>>;
    /// How many messages `source` published that some subscriber has not
    /// settled yet (dead letters included: they are kept until purged).
    fn published_backlog(&self, source: String) -> LogFuture<'_, u64>;
    fn dead_letters(&self, subscriber: Option<String>, limit: usize) -> LogFuture<'_, Vec<DeadLetter>>;
    /// Makes dead letters due again, with their attempts counted from zero.
    fn redrive(&self, subscriber: String, which: Selection) -> LogFuture<'_, u64>;
    /// Deletes dead letters; with `pending`, deliveries still waiting too.
    fn purge(&self, subscriber: String, which: Selection, pending: bool) -> LogFuture<'_, u64>;
}
