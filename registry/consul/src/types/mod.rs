//! Consul-shaped wire types (PascalCase JSON), one file per API area.
//!
//! Request bodies (`*Request`, registrations, txn ops) reject unknown fields; the registry server
//! decodes them with its Go-compatible decoder, which matches keys case-insensitively first.
//! Response types are lenient so the client also reads answers from a real Consul, which sends
//! more fields.

mod agent;
mod catalog;
mod go;
mod health;
mod kv;
mod session;
mod txn;

pub use agent::{
    AgentCheckRegistration, AgentConfig, AgentMember, AgentSelf, AgentService,
    AgentServiceRegistration,
};
pub use catalog::{
    CatalogCheckRegistration, CatalogDeregistration, CatalogNode, CatalogNodeServiceList,
    CatalogNodeServices, CatalogRegistration, CatalogService, CatalogServiceRegistration,
    ServiceAddress, Weights,
};
pub use health::{HealthCheck, HealthNode, ServiceEntry};
pub use kv::KvEntry;
pub use session::{IdResponse, ServiceCheckRef, SessionCreateRequest, SessionEntry};
pub use txn::{
    TxnCheckOp, TxnErrorEntry, TxnKvOp, TxnNodeOp, TxnOp, TxnResponse, TxnResultEntry, TxnServiceOp,
};
