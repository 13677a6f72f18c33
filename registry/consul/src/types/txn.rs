//! Transaction wire types: `PUT /v1/txn` operations and answers.

use serde::{Deserialize, Serialize};

use super::go::base64_opt;
use super::kv::KvEntry;

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
