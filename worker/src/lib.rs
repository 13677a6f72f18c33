//! berth-worker: clones, builds and runs compose stacks natively through the Docker Engine API,
//! registers their containers for discovery and cleans up completely.

pub mod api;
pub mod compose;
pub mod context;
pub mod docker;
pub mod logbuf;
pub mod policy;
pub mod registrator;
pub mod registry;
pub mod source;
pub mod stacks;
