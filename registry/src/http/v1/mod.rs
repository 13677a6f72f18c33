//! Consul's `/v1` endpoints, one file per area; handlers only.

pub(crate) mod acl;
pub(crate) mod agent;
pub(crate) mod agent_local;
pub(crate) mod agent_token;
pub(crate) mod catalog;
pub(crate) mod connect;
pub(crate) mod event;
pub(crate) mod health;
pub(crate) mod internal;
pub(crate) mod kv;
pub(crate) mod metrics;
pub(crate) mod monitor;
pub(crate) mod session;
pub(crate) mod status;
pub(crate) mod txn;
