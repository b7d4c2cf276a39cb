//! Events: durable messages between components. [`publish`] sends a message
//! to a topic; inside a [`db::transaction`](crate::db::transaction) it is sent
//! only if the transaction commits. A component receives the topics it
//! subscribes to in [`Service::on_event`](crate::Service::on_event), at least
//! once, and answers with an [`Outcome`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::corral::service::events as wit;
pub(crate) use crate::bindings::exports::corral::service::subscriber::Delivery;
pub use crate::bindings::exports::corral::service::subscriber::Outcome;
pub use wit::{Error as PublishError, PublishOptions};

/// Publishes `value` as JSON on `topic`; returns the message's id.
pub fn publish(topic: &str, value: &impl Serialize) -> Result<String, PublishError> {
    publish_with(topic, value, None)
}

/// Publishes `value` as JSON on `topic`; messages with the same
/// `ordering_key` reach subscribers that ask for it in order.
pub fn publish_with(topic: &str, value: &impl Serialize, ordering_key: Option<&str>) -> Result<String, PublishError> {
    let payload = serde_json::to_vec(value).map_err(|e| PublishError::Invalid(e.to_string()))?;
    let options = PublishOptions {
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        ordering_key: ordering_key.map(String::from),
        idempotency_key: None,
    };
    wit::publish(topic, &payload, &options)
}

/// Publishes raw bytes with every option.
pub fn publish_raw(topic: &str, payload: &[u8], options: &PublishOptions) -> Result<String, PublishError> {
    wit::publish(topic, payload, options)
}

/// One delivery of a message to this component.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message's id, the same on every attempt.
    pub id: String,
    pub topic: String,
    /// The component that published it.
    pub source: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub ordering_key: Option<String>,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// Milliseconds since the Unix epoch.
    pub published_at: u64,
}

impl From<Delivery> for Event {
    fn from(d: Delivery) -> Self {
        Event {
            id: d.id,
            topic: d.topic,
            source: d.source,
            payload: d.payload,
            content_type: d.content_type,
            headers: d.headers,
            ordering_key: d.ordering_key,
            attempt: d.attempt,
            published_at: d.published_at,
        }
    }
}

impl Event {
    /// The payload as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A message that could not be published fails the request: 500, logged.
impl From<PublishError> for crate::Problem {
    fn from(e: PublishError) -> Self {
        crate::log::error(&format!("cannot publish: {e:?}"));
        crate::Problem::internal("cannot publish an event")
    }
}
