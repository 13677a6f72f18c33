//! The typed client of the Consul-compatible HTTP API, re-exported from `berth-consul` so
//! `crate::client::X` keeps naming it inside the registry (the agent syncs through it).

pub use berth_consul::client::*;
