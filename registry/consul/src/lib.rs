//! berth-consul: a client for Consul's HTTP API, as the berth registry serves it (and as a real
//! Consul answers it).
//!
//! `types` holds the wire types (PascalCase JSON) that the registry server and this client share,
//! `duration` the Go-style durations they carry (`10s`, `1m30s`), and `client` the typed
//! [`Client`]. The crate depends on serde and reqwest only, so the master and the front door talk
//! to the registry without linking its server.

pub mod client;
pub mod duration;
pub mod types;

pub use client::{Client, ClientError};
pub use duration::{go_duration, parse_go_duration};
