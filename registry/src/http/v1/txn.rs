//! `PUT /v1/txn`: KV, node, service and check operations applied all or nothing.

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
use crate::store::{TxnItem, TxnOp, TxnOutcome, TxnResult};

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
    let mut items = Vec::with_capacity(ops.len());
    for op in ops {
        // As Consul's `convertOps`: an op naming none of the four kinds is skipped.
        let Some(item) = vet(&app, &authz, op)? else {
            continue;
        };
        items.push(item);
    }
    let answer = match app.store.txn(items).await? {
        // Consul's `FilterTxnResults`: a result the token may not read is left out, whatever
        // the verb (a `get-tree` under a readable prefix may reach denied keys).
        TxnOutcome::Applied(entries) => json(&TxnResponse {
            results: Some(
                entries
                    .iter()
                    .filter_map(|e| readable(&authz, &app.datacenter, e))
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

/// One wire op checked against the token (Consul's `vet*TxnOp`: KV by key and verb; node ops
/// need `node:write`, service ops `service:write` on the service's name, check ops the write
/// right of their service, or of their node for a node check) and turned into a store op. A
/// service named by ID is also checked under the name it is stored with, so an op cannot take
/// over or attach to a service the token may not write.
fn vet(app: &AppState, authz: &Authz, op: dto::TxnOp) -> Result<Option<TxnItem>, ApiError> {
    let stored_name = |node: &str, id: &str| {
        app.store.read(|s| {
            s.services
                .get(&(node.to_owned(), id.to_owned()))
                .map(|s| s.name.clone())
        })
    };
    if let Some(kv) = op.kv {
        kv::validate_key(&kv.key)?;
        let allowed = match kv.verb.as_str() {
            "get" | "get-or-empty" | "check-index" | "check-session" | "check-not-exists" => {
                authz.allows(Resource::Key, &kv.key, Need::Read)
            }
            // As Consul: no check up front; every entry is filtered by read below.
            "get-tree" => true,
            "delete-tree" => authz.0.key_write_prefix(&kv.key),
            _ => authz.allows(Resource::Key, &kv.key, Need::Write),
        };
        authz.require_ok(allowed)?;
        return Ok(Some(TxnItem::Kv(TxnOp {
            verb: kv.verb,
            key: kv.key,
            value: Bytes::from(kv.value.unwrap_or_default()),
            flags: kv.flags.unwrap_or(0),
            index: kv.index.unwrap_or(0),
            session: kv.session.unwrap_or_default(),
        })));
    }
    if let Some(op) = op.node {
        authz.require_ok(authz.allows(Resource::Node, &op.node.node, Need::Write))?;
        let mut node = convert::node_from_wire(op.node);
        if node.datacenter.is_empty() {
            node.datacenter = app.datacenter.clone();
        }
        return Ok(Some(TxnItem::Node {
            verb: op.verb,
            node,
        }));
    }
    if let Some(op) = op.service {
        let id = if op.service.id.is_empty() {
            &op.service.service
        } else {
            &op.service.id
        };
        let stored = stored_name(&op.node, id);
        let allowed = authz.allows(Resource::Service, &op.service.service, Need::Write)
            && stored.is_none_or(|name| authz.allows(Resource::Service, &name, Need::Write));
        authz.require_ok(allowed)?;
        let modify_index = op.service.modify_index.unwrap_or(0);
        let mut service = convert::service_from_wire(&op.node, op.service);
        service.modify_index = modify_index;
        return Ok(Some(TxnItem::Service {
            verb: op.verb,
            node: op.node,
            service,
        }));
    }
    if let Some(op) = op.check {
        let allowed = if op.check.service_id.is_empty() {
            authz.allows(Resource::Node, &op.check.node, Need::Write)
        } else {
            let name = stored_name(&op.check.node, &op.check.service_id)
                .unwrap_or_else(|| op.check.service_name.clone());
            authz.allows(Resource::Service, &name, Need::Write)
        };
        // the check it would replace belongs to its own service (or node)
        let replaced = app.store.read(|s| {
            s.checks
                .get(&(op.check.node.clone(), op.check.check_id.clone()))
                .map(|c| (c.service_id.is_empty(), c.service_name.clone()))
        });
        let allowed = allowed
            && replaced.is_none_or(|(node_check, service)| {
                if node_check {
                    authz.allows(Resource::Node, &op.check.node, Need::Write)
                } else {
                    authz.allows(Resource::Service, &service, Need::Write)
                }
            });
        authz.require_ok(allowed)?;
        return Ok(Some(TxnItem::Check {
            verb: op.verb,
            check: convert::check_from_wire(op.check),
        }));
    }
    Ok(None)
}

/// A result as the answer carries it, if the token may read it.
fn readable(authz: &Authz, datacenter: &str, result: &TxnResult) -> Option<TxnResultEntry> {
    let entry = match result {
        TxnResult::Kv(e) if authz.allows(Resource::Key, &e.key, Need::Read) => TxnResultEntry {
            kv: Some(convert::kv_entry(e)),
            ..TxnResultEntry::default()
        },
        TxnResult::Node(n) if authz.allows(Resource::Node, &n.name, Need::Read) => TxnResultEntry {
            node: Some(convert::catalog_node(n)),
            ..TxnResultEntry::default()
        },
        TxnResult::Service(s) if authz.allows(Resource::Service, &s.name, Need::Read) => {
            TxnResultEntry {
                service: Some(convert::agent_service(s, datacenter)),
                ..TxnResultEntry::default()
            }
        }
        TxnResult::Check(c)
            if (c.service_id.is_empty() && authz.allows(Resource::Node, &c.node, Need::Read))
                || (!c.service_id.is_empty()
                    && authz.allows(Resource::Service, &c.service_name, Need::Read)) =>
        {
            TxnResultEntry {
                check: Some(convert::health_check(c)),
                ..TxnResultEntry::default()
            }
        }
        _ => return None,
    };
    Some(entry)
}
