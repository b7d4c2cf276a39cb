//! corral's integration tests: real HTTP against a real `corral` process
//! serving real components with real SQLite files.

mod support;

mod config;
mod orders;
mod persistence;
mod sandbox;
mod users;
