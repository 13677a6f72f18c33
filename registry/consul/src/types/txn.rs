//! Transaction wire types: `PUT /v1/txn` operations and answers.

use serde::{Deserialize, Serialize};

use super::agent::AgentService;
use super::catalog::CatalogNode;
use super::go::base64_opt;
use super::health::HealthCheck;
use super::kv::KvEntry;

/// One operation of `PUT /v1/txn` (Consul's `api.TxnOp`): exactly one of `KV`, `Node`,
/// `Service` and `Check`; Go's client sends the others as `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnOp {
    #[serde(default, rename = "KV", skip_serializing_if = "Option::is_none")]
    pub kv: Option<TxnKvOp>,
    #[serde(default, rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<TxnNodeOp>,
    #[serde(default, rename = "Service", skip_serializing_if = "Option::is_none")]
    pub service: Option<TxnServiceOp>,
    #[serde(default, rename = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<TxnCheckOp>,
}

/// A node operation inside a transaction (`api.NodeTxnOp`): `set`, `cas`, `get`, `delete`,
/// `delete-cas`; `cas` and `delete-cas` compare `Node.ModifyIndex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnNodeOp {
    pub verb: String,
    pub node: CatalogNode,
}

/// A service operation inside a transaction (`api.ServiceTxnOp`), on the service `Service.ID`
/// of `Node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnServiceOp {
    pub verb: String,
    #[serde(default)]
    pub node: String,
    pub service: AgentService,
}

/// A check operation inside a transaction (`api.CheckTxnOp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnCheckOp {
    pub verb: String,
    pub check: HealthCheck,
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

/// One result of a transaction: the entry an operation read or wrote, under its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResultEntry {
    #[serde(default, rename = "KV", skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvEntry>,
    #[serde(default, rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<CatalogNode>,
    #[serde(default, rename = "Service", skip_serializing_if = "Option::is_none")]
    pub service: Option<AgentService>,
    #[serde(default, rename = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
}

/// Why a transaction rolled back: which operation and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnErrorEntry {
    pub op_index: usize,
    pub what: String,
}
