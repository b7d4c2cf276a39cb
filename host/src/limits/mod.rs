//! Where limits live, enforced: what one store may grow to ([`store`]), how
//! many instances of a component may run at once ([`gate`]), how often a
//! client may call ([`rates`], and [`shared`] across hosts), and how many
//! response bytes clients may leave unread ([`responses`]), and how many
//! bytes a streamed body may carry ([`body`]). The values
//! come from `config`.

pub mod body;
pub mod gate;
pub mod rates;
pub mod responses;
pub mod shared;
pub mod store;
