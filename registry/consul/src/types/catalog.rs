//! Catalog wire types: registrations, nodes and service entries of `/v1/catalog/*`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::agent::AgentService;
use super::go::null_default;

/// Service weights used by DNS and load balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// The service part of a catalog registration (`AgentService` in Consul).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CatalogServiceRegistration {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    // Fields of Consul's `NodeService` taken and not kept (mesh, sockets, enterprise scoping,
    // the raft indexes a client echoes back).
    #[serde(default, skip_serializing)]
    pub socket_path: Option<String>,
    /// Sent by Go's client, whose `api.AgentService` carries it.
    #[serde(default, skip_serializing)]
    pub datacenter: Option<String>,
    #[serde(default, skip_serializing)]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing)]
    pub proxy: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub connect: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub locality: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub peer_name: Option<String>,
    #[serde(default, skip_serializing)]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing)]
    pub partition: Option<String>,
    #[serde(default, skip_serializing)]
    pub create_index: Option<u64>,
    #[serde(default, skip_serializing)]
    pub modify_index: Option<u64>,
}

/// A tagged service address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// A check inside a catalog registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CatalogCheckRegistration {
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
    /// `ttl`, `http`, `tcp`, `script`, ...; empty for plain catalog checks.
    #[serde(default, rename = "Type", skip_serializing_if = "String::is_empty")]
    pub check_type: String,
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
    // Fields of Consul's `HealthCheck` taken and not kept: the service's name and tags come
    // from the service, the rest is mesh, enterprise scoping and echoed raft indexes.
    #[serde(default, skip_serializing)]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing)]
    pub service_tags: Option<Vec<String>>,
    #[serde(default, skip_serializing)]
    pub interval: Option<String>,
    #[serde(default, skip_serializing)]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing)]
    pub exposed_port: Option<u16>,
    #[serde(default, skip_serializing)]
    pub peer_name: Option<String>,
    #[serde(default, skip_serializing)]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing)]
    pub partition: Option<String>,
    #[serde(default, skip_serializing)]
    pub create_index: Option<u64>,
    #[serde(default, skip_serializing)]
    pub modify_index: Option<u64>,
}

/// Answer of `GET /v1/catalog/node/<node>` (`null` for an unknown node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNodeServices {
    pub node: CatalogNode,
    #[serde(default, deserialize_with = "null_default")]
    pub services: BTreeMap<String, AgentService>,
}

/// Answer of `GET /v1/catalog/node-services/<node>` (`{"Node":null,"Services":[]}` for an
/// unknown node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNodeServiceList {
    #[serde(default)]
    pub node: Option<CatalogNode>,
    #[serde(default, deserialize_with = "null_default")]
    pub services: Vec<AgentService>,
}

/// Body of `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CatalogRegistration {
    #[serde(default, rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub node: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<CatalogServiceRegistration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CatalogCheckRegistration>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub checks: Vec<CatalogCheckRegistration>,
    #[serde(default)]
    pub skip_node_update: bool,
}

/// Body of `PUT /v1/catalog/deregister`: a node alone removes the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CatalogDeregistration {
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datacenter: String,
    #[serde(default, rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(default, rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
}

/// A node as `GET /v1/catalog/nodes` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// One entry of `GET /v1/catalog/service/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(default, rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub service_tags: Vec<String>,
    #[serde(default)]
    pub service_address: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default, deserialize_with = "null_default")]
    pub service_meta: BTreeMap<String, String>,
    #[serde(default)]
    pub service_port: u16,
    #[serde(default)]
    pub service_kind: String,
    #[serde(default)]
    pub service_enable_tag_override: bool,
    #[serde(default)]
    pub service_weights: Weights,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}
