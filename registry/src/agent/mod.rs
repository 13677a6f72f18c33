//! The agent's domain: the services and checks of one host, kept in sync with the catalog.
//!
//! [`LocalAgent`] holds `/v1/agent/*` state and runs checks; `sync` pushes it into the catalog
//! (the local store on a server, a remote server in agent mode). Nothing here knows HTTP.
//!
//! The `berth-registry agent` process (local agent API, anti-entropy, heartbeats and a reverse
//! proxy of every other request to the server) is `crate::agent_mode`, above the HTTP layer;
//! [`run_agent`] and its types are re-exported here so `berth_registry::agent::run_agent` stays
//! the public path (the worker embeds the agent through it).

pub(crate) mod local;
pub(crate) mod node_id;
pub(crate) mod sync;
pub(crate) mod tokens;

pub use crate::agent_mode::{AgentConfig, AgentRunError, run_agent};
pub(crate) use local::worst;
pub use local::{AgentError, DEFAULT_CHECK_UPDATE_INTERVAL, LocalAgent, LocalOptions};
pub use node_id::NodeIdError;
