//! berth-registry: Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
//!
//! `server` runs the HTTP API over the durable `store`. The typed client and the Consul-shaped
//! wire types live in `berth-consul` (which the master, the front door and the worker use
//! without this crate); `client` and `dto` re-export them, `dto` adds the server's request
//! decoder. `acl` and `checks` are the domain halves of ACL enforcement and the agent's check
//! runner.

pub mod acl;
pub mod agent;
mod api;
pub mod checks;
pub mod client;
pub mod dto;
mod members;
pub mod server;
mod store;
mod ui;
