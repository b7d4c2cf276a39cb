//! What operators use: the [`admin`] listener, the CLI's client for it
//! ([`remote`]), and the [`metrics`] it serves.

pub mod admin;
pub mod metrics;
pub mod remote;
