//! Health wire types: checks and the entries of `/v1/health/service/<name>`.

use serde::{Deserialize, Serialize};

use super::agent::AgentService;
use super::catalog::CatalogNode;
use super::go::null_default;

/// A health check as the catalog and health endpoints show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub output: String,
    #[serde(default, rename = "ServiceID")]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub service_tags: Vec<String>,
    #[serde(default, rename = "Type")]
    pub check_type: String,
    #[serde(default)]
    pub definition: serde_json::Value,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// A node inside a health entry: the same shape as a catalog node.
pub type HealthNode = CatalogNode;

/// One entry of `GET /v1/health/service/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: HealthNode,
    pub service: AgentService,
    #[serde(default, deserialize_with = "null_default")]
    pub checks: Vec<HealthCheck>,
}
