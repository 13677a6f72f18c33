//! berth-model: the facts the master, the worker and the front door share, each defined once:
//! the id rule ([`ValidName`]), the instance record kept at `berth/instances/{id}` and its states
//! ([`record`]), the KV keys and catalog names ([`keys`]) and the one error body of both APIs
//! ([`error`]).
//!
//! With the `openapi` feature the record types derive `utoipa::ToSchema` (the master's
//! `/openapi.json`); without it the crate depends on serde and little else.

pub mod error;
pub mod health;
pub mod ids;
pub mod keys;
pub mod logs;
pub mod record;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, ErrorInfo};
pub use health::{ServiceHealth, ServiceState, strip_ansi};
pub use ids::{IdError, NAME_RULE, ValidName, compose_project_name};
pub use logs::{LogQuery, LogSource};
pub use record::{
    DeployRecord, DeployState, Endpoint, InstanceRecord, Op, PlacementMove, RecordError, State,
    WorkerRef,
};
