//! `/v1/health/service/<name>`: service instances with their node and checks (more in issue 3).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;

use super::blocking::{QueryOptions, block, with_meta};
use super::{ApiError, AppState, Params, json};
use crate::dto::{AgentService, HealthCheck, HealthNode, ServiceAddress, ServiceEntry, Weights};
use crate::store::state::{Check, CheckStatus, Node, Service, State as StoreState, Topic};

pub(crate) fn check_dto(c: &Check) -> HealthCheck {
    HealthCheck {
        node: c.node.clone(),
        check_id: c.id.clone(),
        name: c.name.clone(),
        status: c.status.as_str().to_owned(),
        notes: c.notes.clone(),
        output: c.output.clone(),
        service_id: c.service_id.clone(),
        service_name: c.service_name.clone(),
        service_tags: c.service_tags.clone(),
        check_type: c.check_type.clone(),
        definition: c.definition.clone(),
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

pub(crate) fn service_dto(s: &Service, datacenter: &str) -> AgentService {
    AgentService {
        id: s.id.clone(),
        service: s.name.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone(),
        port: s.port,
        address: s.address.clone(),
        tagged_addresses: s
            .tagged_addresses
            .iter()
            .map(|(k, (a, p))| {
                (
                    k.clone(),
                    ServiceAddress {
                        address: a.clone(),
                        port: *p,
                    },
                )
            })
            .collect(),
        weights: Weights {
            passing: s.weights.0,
            warning: s.weights.1,
        },
        enable_tag_override: s.enable_tag_override,
        kind: s.kind.clone(),
        datacenter: datacenter.to_owned(),
        create_index: Some(s.create_index),
        modify_index: Some(s.modify_index),
    }
}

fn node_dto(n: &Node) -> HealthNode {
    HealthNode {
        id: n.id.clone(),
        node: n.name.clone(),
        address: n.address.clone(),
        datacenter: n.datacenter.clone(),
        tagged_addresses: n.tagged_addresses.clone(),
        meta: n.meta.clone(),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

/// Entries of service `name`: node-level checks and the service's own checks.
fn entries(state: &StoreState, name: &str, passing_only: bool) -> Vec<ServiceEntry> {
    state
        .services
        .values()
        .filter(|s| s.name == name)
        .filter_map(|s| {
            let node = state.nodes.get(&s.node)?;
            let checks: Vec<&Check> = state
                .node_checks(&s.node)
                .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                .collect();
            if passing_only && checks.iter().any(|c| c.status != CheckStatus::Passing) {
                return None;
            }
            Some(ServiceEntry {
                node: node_dto(node),
                service: service_dto(s, &node.datacenter),
                checks: checks.into_iter().map(check_dto).collect(),
            })
        })
        .collect()
}

pub(crate) async fn service(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::parse(&uri);
    let opts = QueryOptions::parse(&params)?;
    let passing_only = match params.get("passing") {
        None => false,
        Some("" | "true" | "1" | "True" | "TRUE" | "t" | "T") => true,
        Some("false" | "0" | "False" | "FALSE" | "f" | "F") => false,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Invalid value for ?passing".to_owned(),
            ));
        }
    };
    let (list, index) = block(&app, Topic::Catalog, opts, |state| {
        (entries(state, &name, passing_only), state.tables.catalog())
    })
    .await;
    Ok(with_meta(json(&list), index))
}
