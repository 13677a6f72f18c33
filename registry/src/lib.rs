//! berth-registry: Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
//!
//! `server` runs the HTTP API over the durable `store`; `client` is the typed client the master
//! and the worker use; `dto` holds the Consul-shaped wire types both share.

mod api;
pub mod client;
pub mod dto;
pub mod server;
mod store;
