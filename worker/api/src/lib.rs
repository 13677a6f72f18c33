//! The contract between `berth-master` and `berth-worker`, defined once and used by both sides:
//! id rules, wire types of the worker API and the worker client (the secret type is `berth-kit`'s,
//! re-exported).

pub mod client;
pub mod ids;
pub mod types;

pub use berth_kit::Secret;
pub use client::{WorkerClient, WorkerClientError};
pub use ids::{IdError, ValidName};
pub use types::*;
