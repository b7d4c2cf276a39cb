//! What guests import, each a context on the store plus a host
//! implementation of its WIT interface: their [`bindings`] (the one
//! `bindgen!`), the component's own database ([`sqlite`]) and its [`log`]
//! (stdout and stderr too).

pub mod bindings;
pub mod log;
pub mod sqlite;
