//! What guests import, each a context on the store plus a host
//! implementation of its WIT interface: their [`bindings`], the component's
//! own database ([`sqlite`]), its [`log`] (stdout and stderr too), the
//! [`events`] it publishes, and outgoing requests through `wasi:http`
//! ([`http`]).

pub mod bindings;
pub mod events;
pub mod http;
pub mod log;
pub mod sqlite;
