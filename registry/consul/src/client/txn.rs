//! Transactions: the client's typed KV operations and `PUT /v1/txn`.

use reqwest::{Method, StatusCode};

use super::kv::KvPair;
use super::{Client, ClientError, decode, status_error};
use crate::types::{self, TxnErrorEntry, TxnKvOp, TxnResponse};

/// A transaction failed: either it rolled back (409, with Consul's reasons) or the call failed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("transaction rolled back: {}", describe_rollback(.0))]
    RolledBack(Vec<TxnErrorEntry>),
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn describe_rollback(errors: &[TxnErrorEntry]) -> String {
    errors
        .iter()
        .map(|e| format!("op {}: {}", e.op_index, e.what))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One KV operation of a transaction (Consul's verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Get {
        key: String,
    },
    GetOrEmpty {
        key: String,
    },
    GetTree {
        prefix: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckSession {
        key: String,
        session: String,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteTree {
        prefix: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
}

impl TxnOp {
    fn into_dto(self) -> types::TxnOp {
        let op = |verb: &str, key: String| TxnKvOp {
            verb: verb.to_owned(),
            key,
            ..TxnKvOp::default()
        };
        let kv = match self {
            Self::Set { key, value, flags } => TxnKvOp {
                value: Some(value),
                flags: Some(flags),
                ..op("set", key)
            },
            Self::Cas {
                key,
                value,
                flags,
                index,
            } => TxnKvOp {
                value: Some(value),
                flags: Some(flags),
                index: Some(index),
                ..op("cas", key)
            },
            Self::Lock {
                key,
                value,
                session,
            } => TxnKvOp {
                value: Some(value),
                session: Some(session),
                ..op("lock", key)
            },
            Self::Unlock {
                key,
                value,
                session,
            } => TxnKvOp {
                value: Some(value),
                session: Some(session),
                ..op("unlock", key)
            },
            Self::Get { key } => op("get", key),
            Self::GetOrEmpty { key } => op("get-or-empty", key),
            Self::GetTree { prefix } => op("get-tree", prefix),
            Self::CheckIndex { key, index } => TxnKvOp {
                index: Some(index),
                ..op("check-index", key)
            },
            Self::CheckSession { key, session } => TxnKvOp {
                session: Some(session),
                ..op("check-session", key)
            },
            Self::CheckNotExists { key } => op("check-not-exists", key),
            Self::Delete { key } => op("delete", key),
            Self::DeleteTree { prefix } => op("delete-tree", prefix),
            Self::DeleteCas { key, index } => TxnKvOp {
                index: Some(index),
                ..op("delete-cas", key)
            },
        };
        types::TxnOp {
            kv: Some(kv),
            ..types::TxnOp::default()
        }
    }
}

impl Client {
    /// Runs KV operations atomically; a rollback comes back as [`TxnError::RolledBack`].
    pub async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<KvPair>, TxnError> {
        let body: Vec<types::TxnOp> = ops.into_iter().map(TxnOp::into_dto).collect();
        let response = Self::send(self.request(Method::PUT, "/v1/txn").json(&body)).await?;
        let status = response.status();
        if status == StatusCode::CONFLICT {
            let answer: TxnResponse = decode(response).await?;
            return Err(TxnError::RolledBack(answer.errors.unwrap_or_default()));
        }
        if !status.is_success() {
            return Err(status_error(response).await.into());
        }
        let answer: TxnResponse = decode(response).await?;
        Ok(answer
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv.map(KvPair::from))
            .collect())
    }
}
