//! Running wasm, knowing nothing of HTTP: the [`engine`] and its epoch
//! ticker, what a store holds and how it is made ([`state`]), and one call
//! into a component in a fresh store ([`invoke`]).

pub mod engine;
pub mod invoke;
pub mod state;
