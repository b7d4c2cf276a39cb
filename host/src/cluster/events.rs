//! The cluster's [`EventLog`], on JetStream, so a subscriber may be served
//! by another host than its publisher. Each delivery (a message for one
//! subscriber) is a message of the work-queue stream `corral_events`, on
//! the subject `corral.events.<subscriber>.<source>`, replicated on
//! `cluster.replicas` NATS servers; each subscriber has one durable pull
//! consumer, shared by the hosts that serve it:
//!
//! - a claim is a fetch, the lease its ack wait (a host that dies holding
//!   a delivery loses it to whoever fetches after the lease);
//! - an ack removes it, a retry is a NAK with the backoff as its delay, a
//!   dead letter is copied to the stream `corral_dead` and then terminated;
//! - attempts are JetStream's delivery count;
//! - `ordering = "key"` is one delivery in flight per subscriber (the
//!   consumer's max ack pending is 1): every key in order, and slower than
//!   on one host, where different keys go side by side;
//! - a delivery is stored once per message id within JetStream's
//!   duplicate window (the relay sends again after a crash); exactly-once
//!   effects come, as on one host, from the ids the subscriber's own
//!   database records as processed.
//!
//! The message's fields travel as JSON in one header, its payload as the
//! body. Until the host joins its cluster, nothing can be appended (the
//! outboxes keep their messages) and nothing is claimed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::{StreamExt, TryStreamExt};

use crate::clock::now_ms;
use crate::config::resolve::check_name;
use crate::events::{Backlog, Claimed, DeadLetter, EventLog, LogFuture, Message, Selection, Settlement};

const EVENTS_STREAM: &str = "corral_events";
const DEAD_STREAM: &str = "corral_dead";
/// The header with a message's fields, as JSON.
const MESSAGE_HEADER: &str = "Corral-Message";
/// The header with why and when a dead letter died, as JSON.
const DEAD_HEADER: &str = "Corral-Dead";
/// How long a call to JetStream may take before the caller is told it
/// failed (what it was about is tried again).
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a claim waits for deliveries the server cannot hand out at
/// once; the dispatcher asks again soon.
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// The JetStream event log of a host, joined or not yet.
#[derive(Default)]
pub struct StreamEvents {
    streams: ArcSwapOption<Streams>,
    /// Each subscriber's consumer, as last made.
    consumers: tokio::sync::Mutex<HashMap<String, Consumer>>,
    /// The deliveries claimed here and not settled yet, by subscriber and
    /// message id: what they are settled through. At most the subscribers'
    /// concurrency.
    claimed: Mutex<HashMap<(Arc<str>, String), jetstream::Message>>,
}

struct Streams {
    js: jetstream::Context,
    events: stream::Stream,
    dead: stream::Stream,
}

struct Consumer {
    by_key: bool,
    lease: Duration,
    consumer: jetstream::consumer::PullConsumer,
}

/// A message's fields but its payload: what [`MESSAGE_HEADER`] holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fields {
    id: String,
    topic: String,
    source: String,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    ordering_key: Option<String>,
    published_at: u64,
}

/// What [`DEAD_HEADER`] holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Death {
    attempts: u32,
    reason: String,
    dead_at: u64,
}

fn deliveries_of(subscriber: &str) -> String {
    format!("corral.events.{subscriber}.*")
}

fn dead_of(subscriber: &str) -> String {
    format!("corral.dead.{subscriber}.*")
}

fn fields_of(message: &Message) -> String {
    let fields = Fields {
        id: message.id.clone(),
        topic: message.topic.clone(),
        source: message.source.clone(),
        content_type: message.content_type.clone(),
        headers: message.headers.clone(),
        ordering_key: message.ordering_key.clone(),
        published_at: message.published_at,
    };
    serde_json::to_string(&fields).expect("fields serialize")
}

fn header<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> anyhow::Result<&'a str> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .ok_or_else(|| anyhow::anyhow!("no {name} header"))
}

fn decode(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> anyhow::Result<Message> {
    let fields: Fields = serde_json::from_str(header(headers, MESSAGE_HEADER)?)?;
    Ok(Message {
        id: fields.id,
        topic: fields.topic,
        source: fields.source,
        payload: payload.to_vec(),
        content_type: fields.content_type,
        headers: fields.headers,
        ordering_key: fields.ordering_key,
        published_at: fields.published_at,
    })
}

async fn timed<T, E: std::fmt::Display>(work: impl IntoFuture<Output = Result<T, E>>) -> anyhow::Result<T> {
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(done) => done.map_err(|e| anyhow::anyhow!("{e}")),
        Err(_) => anyhow::bail!("JetStream did not answer within {TIMEOUT:?}"),
    }
}

/// The stream `config` names, made if it does not exist yet.
async fn stream_of(js: &jetstream::Context, config: stream::Config) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    if let Ok(stream) = js.get_stream(&name).await {
        return Ok(stream);
    }
    match js.create_stream(config).await {
        Ok(stream) => Ok(stream),
        // Another host made it first.
        Err(e) => js
            .get_stream(&name)
            .await
            .map_err(|_| anyhow::anyhow!("cannot make the cluster's {name} stream: {e}")),
    }
}

impl StreamEvents {
    /// Makes the streams if this is the first host, and serves from them.
    pub async fn join(&self, js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
        let events = stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec!["corral.events.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        };
        let dead = stream::Config {
            name: DEAD_STREAM.into(),
            subjects: vec!["corral.dead.>".into()],
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        };
        let streams = Streams {
            js: js.clone(),
            events: stream_of(js, events).await?,
            dead: stream_of(js, dead).await?,
        };
        self.consumers.lock().await.clear();
        self.streams.store(Some(Arc::new(streams)));
        Ok(())
    }

    fn joined(&self) -> anyhow::Result<Arc<Streams>> {
        self.streams
            .load_full()
            .ok_or_else(|| anyhow::anyhow!("this host has not joined its cluster yet"))
    }

    /// The consumer of `subscriber`'s deliveries, made or changed to
    /// these settings if need be.
    async fn consumer(
        &self,
        streams: &Streams,
        subscriber: &str,
        by_key: bool,
        lease: Duration,
    ) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        let mut consumers = self.consumers.lock().await;
        if let Some(known) = consumers.get(subscriber)
            && (known.by_key, known.lease) == (by_key, lease)
        {
            return Ok(known.consumer.clone());
        }
        let config = pull::Config {
            durable_name: Some(subscriber.into()),
            filter_subject: deliveries_of(subscriber),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: lease,
            max_ack_pending: if by_key { 1 } else { -1 },
            ..Default::default()
        };
        let consumer = timed(streams.events.create_consumer(config)).await?;
        let made = Consumer {
            by_key,
            lease,
            consumer: consumer.clone(),
        };
        consumers.insert(subscriber.into(), made);
        Ok(consumer)
    }

    /// The first `limit` messages on `subject` of `stream` for which
    /// `wanted` holds, with their sequence.
    async fn scan(
        stream: &stream::Stream,
        subject: &str,
        limit: usize,
        mut wanted: impl FnMut(&Message) -> bool,
    ) -> anyhow::Result<Vec<(jetstream::message::StreamMessage, Message)>> {
        let mut found = Vec::new();
        let mut next = 1;
        while found.len() < limit {
            let got = tokio::time::timeout(TIMEOUT, stream.direct_get_next_for_subject(subject, Some(next))).await;
            let message = match got {
                Ok(Ok(message)) => message,
                Ok(Err(e)) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => anyhow::bail!("JetStream did not answer within {TIMEOUT:?}"),
            };
            next = message.sequence + 1;
            let Ok(decoded) = decode(Some(&message.headers), &message.payload) else {
                continue;
            };
            if wanted(&decoded) {
                found.push((message, decoded));
            }
        }
        Ok(found)
    }

    /// How many messages each subscriber has on the subjects under `filter`.
    async fn counts(stream: &stream::Stream, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let subjects = timed(stream.info_with_subjects(filter)).await?;
        let subjects: Vec<(String, usize)> = timed(subjects.try_collect()).await?;
        let mut counts = BTreeMap::new();
        for (subject, count) in subjects {
            // corral.<events|dead>.<subscriber>.<source>
            if let Some(subscriber) = subject.split('.').nth(2) {
                *counts.entry(subscriber.to_string()).or_default() += count as u64;
            }
        }
        Ok(counts)
    }
}

/// Whether `which` selects `id`.
fn selects(which: &Selection, id: &str) -> bool {
    match which {
        Selection::All => true,
        Selection::Ids(ids) => ids.iter().any(|i| i == id),
    }
}

impl EventLog for StreamEvents {
    fn append(&self, batch: Vec<(Message, Vec<Arc<str>>)>) -> LogFuture<'_, ()> {
        Box::pin(async move {
            let streams = self.joined()?;
            let mut acks = Vec::new();
            for (message, subscribers) in &batch {
                let fields = fields_of(message);
                for subscriber in subscribers {
                    let delivery = jetstream::message::PublishMessage::build()
                        .payload(message.payload.clone().into())
                        .header(MESSAGE_HEADER, fields.as_str())
                        .message_id(format!("{subscriber}:{}", message.id));
                    let subject = format!("corral.events.{subscriber}.{}", message.source);
                    acks.push(timed(streams.js.send_publish(subject, delivery)).await?);
                }
            }
            for ack in acks {
                timed(ack).await?;
            }
            Ok(())
        })
    }

    fn claim(&self, subscriber: String, max: usize, by_key: bool, lease: Duration) -> LogFuture<'_, Vec<Claimed>> {
        Box::pin(async move {
            let Ok(streams) = self.joined() else {
                return Ok(Vec::new());
            };
            let consumer = self.consumer(&streams, &subscriber, by_key, lease).await?;
            // One in flight at a time in key order: while this host holds
            // it there is nothing to ask for.
            let held = |claimed: &HashMap<(Arc<str>, String), _>| claimed.keys().any(|(s, _)| **s == *subscriber);
            if by_key && held(&self.claimed.lock().expect("claimed lock")) {
                return Ok(Vec::new());
            }
            // In key order, one at a time, and a bound on the wait: a
            // request the server cannot fill (another host holds what is
            // next) stays open until it expires, and what comes meanwhile
            // goes to it. Otherwise nothing bounds what may be in flight,
            // and a request gets what is due at once.
            let fetch = if by_key {
                consumer.fetch().max_messages(1).expires(FETCH_WAIT)
            } else {
                consumer.fetch().max_messages(max)
            };
            let mut batch = match timed(fetch.messages()).await {
                Ok(batch) => batch,
                Err(e) => {
                    // Made again next time, in case it was deleted.
                    self.consumers.lock().await.remove(&subscriber);
                    return Err(e);
                }
            };
            let name: Arc<str> = subscriber.into();
            let mut claimed = Vec::new();
            while let Ok(Some(next)) = tokio::time::timeout(TIMEOUT, batch.next()).await {
                // The end of what is due (or what the consumer may have in flight).
                let Ok(delivery) = next else { break };
                let Ok(attempt) = delivery.info().map(|info| info.delivered) else {
                    continue;
                };
                match decode(delivery.headers.as_ref(), &delivery.payload) {
                    Ok(message) => {
                        let key = (Arc::clone(&name), message.id.clone());
                        self.claimed.lock().expect("claimed lock").insert(key, delivery);
                        claimed.push(Claimed {
                            message,
                            attempt: attempt.max(1) as u32,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(subscriber = %name, "dropping a delivery that is not corral's: {e:#}");
                        let _ = delivery.ack_with(AckKind::Term).await;
                    }
                }
            }
            Ok(claimed)
        })
    }

    fn settle(&self, settled: Vec<(Arc<str>, String, Settlement)>) -> LogFuture<'_, ()> {
        Box::pin(async move {
            let streams = self.joined()?;
            for (subscriber, id, settlement) in settled {
                let taken = self.claimed.lock().expect("claimed lock").remove(&(subscriber, id));
                let Some(delivery) = taken else { continue };
                let later = |at_ms: u64| AckKind::Nak(Some(Duration::from_millis(at_ms.saturating_sub(now_ms()))));
                let kind = match settlement {
                    Settlement::Ack => AckKind::Ack,
                    Settlement::Retry { at_ms, .. } | Settlement::Requeue { at_ms } => later(at_ms),
                    Settlement::Dead { reason } => {
                        let info = delivery.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                        let death = Death {
                            attempts: info.delivered.max(1) as u32,
                            reason,
                            dead_at: now_ms(),
                        };
                        let death = serde_json::to_string(&death).expect("death serializes");
                        let fields = header(delivery.headers.as_ref(), MESSAGE_HEADER)?;
                        let letter = jetstream::message::PublishMessage::build()
                            .payload(delivery.payload.clone())
                            .header(MESSAGE_HEADER, fields)
                            .header(DEAD_HEADER, death.as_str())
                            .message_id(format!("dead:{}", info.stream_sequence));
                        let subject = delivery.subject.replacen("corral.events.", "corral.dead.", 1);
                        let ack = timed(streams.js.send_publish(subject, letter)).await?;
                        timed(ack).await?;
                        AckKind::Term
                    }
                };
                delivery.ack_with(kind).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok(())
        })
    }

    /// JetStream hands out again, itself, what was claimed and not settled
    /// within its lease.
    fn recover(&self, _all: bool) -> LogFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }

    fn backlogs(&self) -> LogFuture<'_, Vec<Backlog>> {
        Box::pin(async move {
            let streams = self.joined()?;
            let waiting = Self::counts(&streams.events, "corral.events.>").await?;
            let dead = Self::counts(&streams.dead, "corral.dead.>").await?;
            // What this host handles now: JetStream counts a delivery
            // waiting for its retry as pending, like one being handled.
            let mut in_flight: HashMap<String, u64> = HashMap::new();
            for (subscriber, _) in self.claimed.lock().expect("claimed lock").keys() {
                *in_flight.entry(subscriber.to_string()).or_default() += 1;
            }
            let retrying: HashMap<String, u64> = timed(streams.events.consumers().try_collect::<Vec<_>>())
                .await?
                .into_iter()
                .map(|info| (info.name, info.num_redelivered as u64))
                .collect();
            let mut subscribers: Vec<&String> = waiting.keys().chain(dead.keys()).collect();
            subscribers.sort();
            subscribers.dedup();
            let mut backlogs = Vec::new();
            for subscriber in subscribers {
                let all = waiting.get(subscriber).copied().unwrap_or(0);
                let held = in_flight.get(subscriber).copied().unwrap_or(0).min(all);
                let oldest = if all == 0 {
                    None
                } else {
                    Self::scan(&streams.events, &deliveries_of(subscriber), 1, |_| true)
                        .await?
                        .first()
                        .map(|(_, m)| now_ms().saturating_sub(m.published_at))
                };
                backlogs.push(Backlog {
                    subscriber: subscriber.clone(),
                    ready: all - held,
                    retrying: retrying.get(subscriber).copied().unwrap_or(0).min(all - held),
                    in_flight: held,
                    dead: dead.get(subscriber).copied().unwrap_or(0),
                    oldest_age_ms: oldest,
                });
            }
            Ok(backlogs)
        })
    }

    fn published_backlog(&self, source: String) -> LogFuture<'_, u64> {
        Box::pin(async move {
            let streams = self.joined()?;
            if check_name(&source).is_err() {
                return Ok(0);
            }
            let waiting = Self::counts(&streams.events, &format!("corral.events.*.{source}")).await?;
            let dead = Self::counts(&streams.dead, &format!("corral.dead.*.{source}")).await?;
            Ok(waiting.values().chain(dead.values()).sum())
        })
    }

    fn dead_letters(&self, subscriber: Option<String>, limit: usize) -> LogFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move {
            let streams = self.joined()?;
            let subject = match &subscriber {
                Some(s) if check_name(s).is_err() => return Ok(Vec::new()),
                Some(s) => dead_of(s),
                None => "corral.dead.>".into(),
            };
            let found = Self::scan(&streams.dead, &subject, limit, |_| true).await?;
            let letters = found.into_iter().filter_map(|(stored, message)| {
                let death: Death = serde_json::from_str(header(Some(&stored.headers), DEAD_HEADER).ok()?).ok()?;
                Some(DeadLetter {
                    id: message.id,
                    subscriber: stored.subject.split('.').nth(2).unwrap_or_default().to_string(),
                    topic: message.topic,
                    source: message.source,
                    attempts: death.attempts,
                    reason: death.reason,
                    dead_at: death.dead_at,
                    published_at: message.published_at,
                    payload: String::from_utf8_lossy(&message.payload).into_owned(),
                })
            });
            Ok(letters.collect())
        })
    }

    fn redrive(&self, subscriber: String, which: Selection) -> LogFuture<'_, u64> {
        Box::pin(async move {
            let streams = self.joined()?;
            if check_name(&subscriber).is_err() {
                return Ok(0);
            }
            let found = Self::scan(&streams.dead, &dead_of(&subscriber), usize::MAX, |m| {
                selects(&which, &m.id)
            })
            .await?;
            let mut redriven = 0;
            for (stored, message) in found {
                let seq = stored.sequence;
                let delivery = jetstream::message::PublishMessage::build()
                    .payload(message.payload.clone().into())
                    .header(MESSAGE_HEADER, fields_of(&message).as_str())
                    .message_id(format!("redrive:{seq}"));
                let subject = format!("corral.events.{subscriber}.{}", message.source);
                let ack = timed(streams.js.send_publish(subject, delivery)).await?;
                timed(ack).await?;
                timed(streams.dead.delete_message(seq)).await?;
                redriven += 1;
            }
            Ok(redriven)
        })
    }

    fn purge(&self, subscriber: String, which: Selection, pending: bool) -> LogFuture<'_, u64> {
        Box::pin(async move {
            let streams = self.joined()?;
            if check_name(&subscriber).is_err() {
                return Ok(0);
            }
            let mut kinds = vec![(&streams.dead, dead_of(&subscriber))];
            if pending {
                kinds.push((&streams.events, deliveries_of(&subscriber)));
            }
            let mut purged = 0;
            for (stream, subject) in kinds {
                if matches!(which, Selection::All) {
                    purged += timed(stream.purge().filter(subject)).await?.purged;
                    continue;
                }
                for (stored, _) in Self::scan(stream, &subject, usize::MAX, |m| selects(&which, &m.id)).await? {
                    if timed(stream.delete_message(stored.sequence)).await? {
                        purged += 1;
                    }
                }
            }
            Ok(purged)
        })
    }
}
