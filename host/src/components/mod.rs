//! The components being served and their life: each [`version`] of their
//! code, the [`snapshot`] requests read, the [`registry`] that changes it
//! all at once or not at all, the state machine of the [`versions`] each
//! serves, the versions [`saved`] across restarts, calls between
//! components ([`peers`]), on other hosts too ([`remote`]), and, in a
//! cluster, which of them another host owns ([`placement`]), the operator's [`control`] (reloads and
//! watched files), components in OCI registries ([`oci`]), and what it all
//! counts ([`stats`]).

pub mod control;
pub mod interfaces;
pub mod oci;
pub mod peers;
pub mod placement;
pub mod random;
pub mod registry;
pub mod remote;
pub mod saved;
pub mod snapshot;
pub mod stats;
pub mod version;
pub mod versions;
