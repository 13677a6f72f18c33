//! berth-registry: Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
//!
//! `server` runs the HTTP API over the durable `store`; `client` is the typed client the master
//! and the worker use; `dto` holds the Consul-shaped wire types both share. `acl` and `checks`
//! are the domain halves of ACL enforcement and the agent's check runner.

pub mod acl;
pub mod agent;
mod agent_mode;
pub mod checks;
pub mod client;
mod convert;
pub mod dto;
mod http;
mod members;
pub mod server;
mod store;
