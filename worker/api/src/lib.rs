//! The contract between `berth-master` and `berth-worker`, defined once and used by both sides:
//! wire types of the worker API, the worker client and the routes. The id rule, the endpoint and
//! the error body come from `berth-model`, the secret type from `berth-kit`; both re-exported here.

pub mod auth;
pub mod client;
pub mod routes;
pub mod types;

pub use berth_kit::Secret;
/// The id rule, shared with the master (defined in `berth-model`).
pub use berth_model::ids;
/// Catalog names and meta keys of a worker (defined in `berth-model`).
pub use berth_model::keys::{
    META_CAPACITY, META_INSTANCES, META_VERSION, RECORD_PREFIX, WORKER_SERVICE,
    instance_record_key, worker_service_id,
};
/// The master's instance record, which the worker reads to fence copies it must not hold.
pub use berth_model::{InstanceRecord, WorkerRef};
pub use client::{WorkerClient, WorkerClientError};
pub use ids::{IdError, ValidName};
pub use types::*;
