//! Consul-shaped wire types (PascalCase JSON) shared by the server's `api` layer and the client.
//!
//! Request bodies (`*Request`, registrations, txn ops) reject unknown fields; the server decodes
//! them with [`decode_request`], which matches keys case-insensitively first. Response types are
//! lenient so the client also reads answers from a real Consul, which sends more fields.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// One KV entry as `GET /v1/kv/<key>` returns it; `Value` is base64 and `null` when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    #[serde(default)]
    pub lock_index: u64,
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    #[serde(default, with = "base64_opt")]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

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

/// One operation of `PUT /v1/txn`; only `KV` operations are supported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnOp {
    #[serde(rename = "KV")]
    pub kv: TxnKvOp,
}

/// A KV operation inside a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TxnKvOp {
    pub verb: String,
    #[serde(default)]
    pub key: String,
    #[serde(default, with = "base64_opt", skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

/// Answer of `PUT /v1/txn` (200 and 409).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnResponse {
    #[serde(default)]
    pub results: Option<Vec<TxnResultEntry>>,
    #[serde(default)]
    pub errors: Option<Vec<TxnErrorEntry>>,
}

/// One result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResultEntry {
    #[serde(rename = "KV")]
    pub kv: KvEntry,
}

/// Why a transaction rolled back: which operation and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnErrorEntry {
    pub op_index: usize,
    pub what: String,
}

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
}

/// A tagged service address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

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
}

/// Answer of `GET /v1/catalog/node/<node>` (`null` for an unknown node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNodeServices {
    pub node: CatalogNode,
    #[serde(default, deserialize_with = "null_default")]
    pub services: BTreeMap<String, AgentService>,
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
    #[serde(default, deserialize_with = "null_default")]
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

/// A service as the agent and health endpoints show it (`AgentService`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
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
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<u64>,
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
    #[serde(default, rename = "TTL", skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// Formats a duration the way Go's `time.Duration.String` does (`10s`, `1m30s`, `150ms`).
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos, 1_000_000));
    }
    let total_secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let minutes = (total_secs % 3600) / 60;
    let secs = trim_fraction(
        u128::from((total_secs % 60) as u64) * 1_000_000_000 + frac,
        1_000_000_000,
    );
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses a Go duration (`10s`, `1m30s`, `1.5h`, `100ms`, `0`); negative values are rejected.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
        rest = after;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

/// Deserialises `null` as the type's default (Go encodes empty slices and maps as `null`).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `Option<Vec<u8>>` as a base64 string or `null` (Go's `[]byte`).
mod base64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) if !bytes.is_empty() => s.serialize_str(&BASE64.encode(bytes)),
            _ => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => BASE64
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|err| serde::de::Error::custom(format!("illegal base64 data: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_round_trip() {
        for (text, d) in [
            ("10s", Duration::from_secs(10)),
            ("1m0s", Duration::from_secs(60)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("150ms", Duration::from_millis(150)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(go_duration(d), text);
            assert_eq!(parse_go_duration(text), Some(d), "{text}");
        }
        for bad in ["", "10", "-1s", "1x", "s", "1..2s", "1e400h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    }

    #[test]
    fn kv_entry_value_is_base64_and_null_when_empty() {
        let entry = KvEntry {
            lock_index: 0,
            key: "k".into(),
            flags: 0,
            value: Some(Vec::new()),
            create_index: 1,
            modify_index: 1,
            session: None,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(r#""Value":null"#), "{json}");
        assert!(!json.contains("Session"));
        let entry = KvEntry {
            value: Some(b"hi".to_vec()),
            ..entry
        };
        let back: KvEntry = serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(back, entry);
    }
}
