//! Where limits live, enforced: what one store may grow to ([`store`]), how
//! many instances of a component may run at once ([`gate`]), and how often
//! a client may call ([`rates`]). The values come from `config`.

pub mod gate;
pub mod rates;
pub mod shared;
pub mod store;
