//! What operators and developers use: the [`admin`] listener, its answers
//! as types ([`api`]), database backups and restores through it ([`backup`]), the CLI's client for it ([`remote`]), the
//! [`metrics`] it serves, the generator of new components ([`scaffold`]),
//! and `corral push` and `pull` ([`transfer`]).

pub mod admin;
pub mod api;
pub mod backup;
pub mod metrics;
pub mod remote;
pub mod scaffold;
pub mod transfer;
