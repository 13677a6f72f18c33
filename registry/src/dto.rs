//! Consul-shaped wire types (PascalCase JSON) shared by the server's `http` layer and the client.
//!
//! The types and the Go-style durations live in `berth-consul` and are re-exported here, so
//! `crate::dto::X` keeps naming them. Request bodies (`*Request`, registrations, txn ops) reject
//! unknown fields; the server decodes them with `http::decode`, which matches keys
//! case-insensitively first. Response types are lenient so the client also reads answers from a
//! real Consul, which sends more fields.

pub use berth_consul::duration::{go_duration, parse_go_duration};
pub use berth_consul::types::*;
