//! `PUT /v1/txn`: KV operations applied all or nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::kv;
use crate::acl::{Need, Resource};
use crate::convert;
use crate::dto::{self, TxnErrorEntry, TxnResponse, TxnResultEntry};
use crate::http::authz::Authz;
use crate::http::{ApiError, AppState, MAX_VALUE_SIZE, json, read_body};
use crate::store::{TxnOp, TxnOutcome};

/// Most operations in one transaction, as Consul.
const MAX_OPS: usize = 128;

pub(crate) async fn apply(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, MAX_VALUE_SIZE).await?;
    let ops: Vec<dto::TxnOp> = crate::http::decode::decode_request(&body).map_err(|text| {
        ApiError::BadRequest(text.replacen("Request decode failed", "Failed to parse body", 1))
    })?;
    if ops.len() > MAX_OPS {
        return Err(ApiError::TooLarge(format!(
            "Transaction contains too many operations ({} > {MAX_OPS})",
            ops.len()
        )));
    }
    for op in &ops {
        kv::validate_key(&op.kv.key)?;
        let allowed = match op.kv.verb.as_str() {
            "get" | "get-or-empty" | "check-index" | "check-session" | "check-not-exists" => {
                authz.allows(Resource::Key, &op.kv.key, Need::Read)
            }
            // As Consul: no check up front; every entry is filtered by read below.
            "get-tree" => true,
            "delete-tree" => authz.0.key_write_prefix(&op.kv.key),
            _ => authz.allows(Resource::Key, &op.kv.key, Need::Write),
        };
        authz.require_ok(allowed)?;
    }
    let ops: Vec<TxnOp> = ops
        .into_iter()
        .map(|op| TxnOp {
            verb: op.kv.verb,
            key: op.kv.key,
            value: Bytes::from(op.kv.value.unwrap_or_default()),
            flags: op.kv.flags.unwrap_or(0),
            index: op.kv.index.unwrap_or(0),
            session: op.kv.session.unwrap_or_default(),
        })
        .collect();
    let answer = match app.store.txn(ops).await? {
        // Consul's `FilterTxnResults`: a result whose key the token may not read is left out,
        // whatever the verb (a `get-tree` under a readable prefix may reach denied keys).
        TxnOutcome::Applied(entries) => json(&TxnResponse {
            results: Some(
                entries
                    .iter()
                    .filter(|e| authz.allows(Resource::Key, &e.key, Need::Read))
                    .map(|e| TxnResultEntry {
                        kv: convert::kv_entry(e),
                    })
                    .collect(),
            ),
            errors: None,
        }),
        TxnOutcome::RolledBack(errors) => {
            let body = TxnResponse {
                results: None,
                errors: Some(
                    errors
                        .into_iter()
                        .map(|(op_index, what)| TxnErrorEntry { op_index, what })
                        .collect(),
                ),
            };
            let mut response = json(&body);
            *response.status_mut() = StatusCode::CONFLICT;
            response.into_response()
        }
    };
    Ok(answer)
}
