//! Agent wire types: services, check definitions, registrations, `/v1/agent/self` and members.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::{ServiceAddress, Weights};
use super::go::{duration_text, null_default};

/// A service as the agent and health endpoints show it (`AgentService`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub address: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<u64>,
}

/// A check definition inside an agent service registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AgentCheckRegistration {
    #[serde(default, rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    #[serde(default, rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "duration_text",
        rename = "TTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<String>,
    #[serde(default, rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(
        default,
        rename = "TLSSkipVerify",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_skip_verify: Option<bool>,
    #[serde(
        default,
        rename = "TLSServerName",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_redirects: Option<bool>,
    #[serde(default, rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `Args`; HashiCorp's Go client sends it as `ScriptArgs`.
    #[serde(default, alias = "ScriptArgs", skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<String>,
    #[serde(
        default,
        deserialize_with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_before_passing: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_critical: Option<u32>,
}

/// Body of `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AgentServiceRegistration {
    #[serde(default, rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tag_override: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<AgentCheckRegistration>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub checks: Vec<AgentCheckRegistration>,
}

/// Answer of `GET /v1/agent/self` (the parts berth fills in).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelf {
    pub config: AgentConfig,
    /// Consul's sanitized runtime configuration (`DebugConfig`), keyed by its field names.
    #[serde(default, deserialize_with = "null_default")]
    pub debug_config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub coord: Option<serde_json::Value>,
    #[serde(default)]
    pub member: AgentMember,
    #[serde(default)]
    pub stats: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
}

/// `Config` part of `/v1/agent/self`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentConfig {
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub primary_datacenter: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default, rename = "NodeID")]
    pub node_id: String,
    #[serde(default)]
    pub server: bool,
    #[serde(default)]
    pub revision: String,
    #[serde(default)]
    pub version: String,
}

/// A cluster member as `/v1/agent/members` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMember {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: BTreeMap<String, String>,
    /// 1 alive, 2 leaving, 3 left, 4 failed.
    #[serde(default)]
    pub status: u8,
    #[serde(default)]
    pub protocol_min: u8,
    #[serde(default)]
    pub protocol_max: u8,
    #[serde(default)]
    pub protocol_cur: u8,
    #[serde(default)]
    pub delegate_min: u8,
    #[serde(default)]
    pub delegate_max: u8,
    #[serde(default)]
    pub delegate_cur: u8,
}
