//! What guests import, each a context on the store plus a host
//! implementation of its WIT interface: their [`bindings`], the component's
//! own database ([`sqlite`]), its [`log`] (stdout and stderr too), and the
//! [`events`] it publishes.

pub mod bindings;
pub mod events;
pub mod log;
pub mod sqlite;
