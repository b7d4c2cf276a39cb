//! corral's integration tests: real HTTP against a real `corral` process
//! serving real components with real SQLite files.

mod support;

mod backup;
mod calls;
mod capacity;
mod cluster;
mod config;
mod containment;
mod deploy;
mod durable_changes;
mod events;
mod fuzz_corpus;
mod hostile_clients;
mod hostile_output;
mod hostile_sql;
mod hotswap;
mod languages;
mod observability;
mod oci;
mod orders;
mod ownership;
mod peers;
mod persistence;
mod ratelimits;
mod replication;
mod sandbox;
mod scaffold;
mod structure;
mod telemetry;
mod users;
mod wasi_http;
mod writes;
