//! berth-registry: Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
pub mod ui;
