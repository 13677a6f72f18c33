//! berth-registry: Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
//!
//! Layers, top down (a module imports only from below it):
//! - `server` (the `berth-registry` server process) and `agent_mode` (the `berth-registry agent`
//!   process) wire the HTTP layer to the domain.
//! - `http`: Consul's `/v1` API over the domain (router, query extractor, decoder, handlers).
//! - `convert`: every state <-> wire conversion, shared by `http` and `agent`.
//! - Domain: `store` (durable state and its write rules), `acl` (rules, authorizer, token
//!   store), `agent` (one host's services and checks, anti-entropy), `checks` (the runner),
//!   `members` (agent liveness). None of them imports `http`.
//! - `dto` (Consul-shaped wire types) and `client` (the typed client) at the bottom: both
//!   re-export `berth-consul`, which the master, the front door and the worker use without this
//!   crate.

pub mod acl;
pub mod agent;
mod agent_mode;
pub mod checks;
pub mod client;
mod convert;
pub mod dto;
mod events;
mod http;
pub mod logs;
mod members;
pub mod server;
mod store;
