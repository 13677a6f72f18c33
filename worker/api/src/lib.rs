//! The contract between `berth-master` and `berth-worker`, defined once and used by both sides:
//! id rules, wire types of the worker API, the worker client and the secret wrapper.

pub mod client;
pub mod ids;
pub mod secret;
pub mod types;

pub use client::{WorkerClient, WorkerClientError};
pub use ids::{IdError, ValidName};
pub use secret::Secret;
pub use types::*;
