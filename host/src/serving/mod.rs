//! The public front door, knowing components only through the registry's
//! snapshot: the accept loop ([`server`]), one request from arrival to
//! response ([`gateway`]), request bodies within their limits and deadlines
//! ([`body`]), who the client is ([`client`]), host errors as problem+json
//! ([`problem`]), and what is counted ([`stats`]).

pub mod body;
pub mod client;
pub mod gateway;
pub mod problem;
pub mod server;
pub mod stats;
