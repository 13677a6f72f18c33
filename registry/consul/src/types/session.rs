//! Session wire types: `/v1/session/*` bodies and answers.

use serde::{Deserialize, Serialize};

use super::go::null_default;

/// `{"ID": "..."}` as returned by `PUT /v1/session/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdResponse {
    #[serde(rename = "ID")]
    pub id: String,
}

/// A session as `/v1/session/{info,list,node,renew}` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// Nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    #[serde(default)]
    pub behavior: String,
    /// A Go duration string such as `10s`, empty without TTL.
    #[serde(default, rename = "TTL")]
    pub ttl: String,
    #[serde(default, deserialize_with = "null_default")]
    pub node_checks: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub service_checks: Vec<ServiceCheckRef>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// A service check a session depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ServiceCheckRef {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Body of `PUT /v1/session/create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SessionCreateRequest {
    #[serde(default, rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A Go duration string, or a number (below 1000: seconds, else nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    #[serde(default, rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_checks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_checks: Option<Vec<ServiceCheckRef>>,
    /// Deprecated alias of `NodeChecks`, still sent by older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<u64>,
}
