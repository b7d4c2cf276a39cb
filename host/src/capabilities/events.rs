//! `corral:service/events`: a guest publishes a message. It is checked
//! (the topic is one this component may publish to, the payload within its
//! limit) and written to the outbox in the component's own database, in the
//! guest's open transaction if it has one. The relay (`events::relay`) sends
//! it on once it is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::{HasData, Linker};

use super::bindings::corral::service::events::{self as wit, Error, Host, PublishOptions};
use super::sqlite::SqliteCtx;
use super::sqlite::outbox::Message;
use super::{Call, Capability, StoreData};
use crate::clock::now_ms;
use crate::config::events::check_topic;
use crate::config::{ComponentConfig, EventsConfig};
use crate::telemetry;

/// Most headers one message may carry.
const MAX_HEADERS: usize = 64;
/// The longest ordering or idempotency key.
const MAX_KEY_LEN: usize = 256;

/// Who publishes, and what it may publish.
pub struct Publisher {
    pub component: Arc<str>,
    pub events: EventsConfig,
    /// Payload and headers together, at most.
    pub max_bytes: usize,
    /// Messages not yet settled by every subscriber, at most: a publisher
    /// cannot fill the disk faster than its subscribers drain it.
    pub max_unsettled: u64,
    /// Kept across changes to the component.
    pub unsettled: Arc<Unsettled>,
}

/// How many of a component's messages subscribers have not settled yet:
/// counted up as it publishes and set from the log by the relay when it
/// nears the bound (`events::relay`). Never below the truth, so the bound
/// holds; a message rolled back with its transaction counts until the next
/// read of the log.
#[derive(Debug, Default)]
pub struct Unsettled(AtomicU64);

impl Unsettled {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, count: u64) {
        self.0.store(count, Ordering::Relaxed);
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What `publish` works with: the publisher's database handle in this store.
pub struct PublishView<'a> {
    pub sqlite: &'a mut SqliteCtx,
    pub publisher: &'a Publisher,
}

/// [`HasData`] for the events interface, which borrows two parts of the store.
struct Publishing;

impl HasData for Publishing {
    type Data<'a> = PublishView<'a>;
}

/// `corral:service/events`. It builds on the database: a message goes to
/// the outbox in the publisher's own transaction.
pub struct Events;

impl Capability for Events {
    type Component = Publisher;
    type Instance = Arc<Publisher>;
    type Metrics = ();

    fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, Publishing>(linker, |data| {
            let (capabilities, _) = data.capabilities();
            PublishView {
                sqlite: &mut capabilities.sqlite,
                publisher: &capabilities.events,
            }
        })
    }

    /// The publisher keeps its count of unsettled messages across changes.
    async fn configure(
        _: &super::Host,
        _: &(),
        config: &ComponentConfig,
        previous: Option<&Arc<Publisher>>,
        _: &mut Vec<std::path::PathBuf>,
    ) -> anyhow::Result<Arc<Publisher>> {
        Ok(Arc::new(Publisher {
            component: config.name.as_str().into(),
            events: config.events.clone(),
            max_bytes: config.limits.max_event_bytes,
            max_unsettled: config.limits.max_event_backlog as u64,
            unsettled: previous.map_or_else(Arc::default, |previous| Arc::clone(&previous.unsettled)),
        }))
    }

    fn prepare(publisher: &Arc<Publisher>, _: &Call<'_>) -> Arc<Publisher> {
        Arc::clone(publisher)
    }
}

/// A new message id: the time it was made, then randomness, so ids sort
/// by time.
pub fn new_id(now_ms: u64) -> String {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    format!("{now_ms:012x}{:016x}", u64::from_le_bytes(random))
}

impl Publisher {
    /// The message a guest asks to publish, checked, and its idempotency key.
    fn message(
        &self,
        topic: String,
        payload: Vec<u8>,
        options: PublishOptions,
    ) -> Result<(Message, Option<String>), Error> {
        check_topic(&topic).map_err(Error::Invalid)?;
        if !self.events.may_publish(&topic) {
            return Err(Error::NotAllowed(format!(
                "{} may not publish to {topic}: add it to components.{}.publishes",
                self.component, self.component
            )));
        }
        if options.headers.len() > MAX_HEADERS {
            return Err(Error::Invalid(format!("more than {MAX_HEADERS} headers")));
        }
        let keys = [&options.ordering_key, &options.idempotency_key];
        if keys
            .iter()
            .any(|k| k.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN))
        {
            return Err(Error::Invalid(format!("keys are 1 to {MAX_KEY_LEN} bytes")));
        }
        let header_bytes: usize = options.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let size = payload.len() + header_bytes + options.content_type.as_ref().map_or(0, String::len);
        if size > self.max_bytes {
            return Err(Error::TooLarge(format!(
                "the message is {size} bytes, more than the limit of {}",
                self.max_bytes
            )));
        }
        let published_at = now_ms();
        // The trace of the request that published it goes with it, so its
        // handler's span can link to it; a guest's own trace headers do not.
        let mut headers = options.headers;
        headers.retain(|(name, _)| !telemetry::is_trace_name(name));
        if let Some(traceparent) = telemetry::traceparent(&tracing::Span::current()) {
            headers.push((telemetry::TRACEPARENT.as_str().to_string(), traceparent));
        }
        let message = Message {
            id: new_id(published_at),
            topic,
            source: self.component.to_string(),
            payload,
            content_type: options.content_type,
            headers,
            ordering_key: options.ordering_key,
            published_at,
        };
        Ok((message, options.idempotency_key))
    }
}

impl Host for PublishView<'_> {
    async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        options: PublishOptions,
    ) -> wasmtime::Result<Result<String, Error>> {
        let (message, key) = match self.publisher.message(topic, payload, options) {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        let publisher = self.publisher;
        if publisher.unsettled.count() >= publisher.max_unsettled {
            return Ok(Err(Error::Unavailable(format!(
                "{} has {} messages its subscribers have not settled, the most allowed \
                 (limits.event_backlog); publish again once they catch up",
                publisher.component, publisher.max_unsettled
            ))));
        }
        let stored = self
            .sqlite
            .with_writer(move |conn| conn.publish(&message, key.as_deref()))
            .await;
        Ok(match stored {
            Ok(Ok(id)) => {
                publisher.unsettled.add();
                Ok(id)
            }
            Ok(Err(e)) => Err(Error::Unavailable(format!("{e:?}"))),
            Err(super::sqlite::SqliteError::Guest(e)) => Err(Error::Unavailable(format!("{e:?}"))),
            Err(super::sqlite::SqliteError::Trap(e)) => return Err(e),
        })
    }
}
