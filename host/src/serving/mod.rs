//! The public front door, knowing components only through the registry's
//! snapshot: the accept loop ([`server`]), one request from arrival to
//! response ([`gateway`]), request bodies within their limits and deadlines
//! ([`body`]), who the client is ([`client`]), which headers are the
//! host's ([`headers`]), requests sent on to another host of a cluster
//! ([`forward`]) and calls between components on two hosts ([`calls`]), host errors as problem+json ([`problem`]), and what is
//! counted ([`stats`]).

pub mod body;
pub mod calls;
pub mod charged;
pub mod client;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod problem;
pub mod server;
pub mod stats;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// An error that ends a response body early.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the host sends: whole, or streamed from a
/// `wasi:http` component.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type HttpResponse = http::Response<ResponseBody>;

/// A body of `bytes`, known in full.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}
