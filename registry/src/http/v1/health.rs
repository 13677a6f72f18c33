//! `/v1/health/service/<name>`: service instances with their node and checks (more in issue 3).

use std::sync::Arc;

use axum::extract::{Path, State};

use crate::acl::{Need, Resource};
use crate::convert::{agent_service, catalog_node, health_check};
use crate::dto::{HealthCheck, ServiceEntry};
use crate::http::authz::Authz;
use crate::http::cache::{Answer, keep};
use crate::http::filter::schema::{CHECK_SERVICE_NODE, HEALTH_CHECK};
use crate::http::filter::{ListFilter, meta_matches, node_meta_filter, retain};
use crate::http::query::{Blocking, ConsulQuery};
use crate::http::{ApiError, AppState};
use crate::store::state::{Check, CheckStatus, State as StoreState, Topic};

/// Entries of service `name`: node-level checks and the service's own checks.
fn entries(
    state: &StoreState,
    name: &str,
    passing_only: bool,
    tags: &[String],
    meta: &[(String, String)],
) -> Vec<ServiceEntry> {
    state
        .services_named(name)
        .filter(|s| tags.iter().all(|t| s.tags.contains(t)))
        .filter_map(|s| {
            let node = state.nodes.get(&s.node)?;
            if !meta_matches(node, meta) {
                return None;
            }
            let checks: Vec<&Check> = state
                .node_checks(&s.node)
                .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                .collect();
            if passing_only && checks.iter().any(|c| c.status != CheckStatus::Passing) {
                return None;
            }
            Some(ServiceEntry {
                node: catalog_node(node),
                service: agent_service(s, &node.datacenter),
                checks: checks.into_iter().map(health_check).collect(),
            })
        })
        .collect()
}

pub(crate) async fn service(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(CHECK_SERVICE_NODE)?;
    let params = &query.params;
    let tags: Vec<String> = params.all("tag").map(str::to_owned).collect();
    let meta = node_meta_filter(params);
    let readable = authz.allows(Resource::Service, &name, Need::Read);
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
    // The encoded answer is kept per query shape and catalog index (see `http::cache`); a
    // `?filter=` answer is built each time.
    let peered = query.peered();
    let cacheable = filter.is_none() && !peered;
    let shape = format!("health\0{name}\0{passing_only}\0{tags:?}\0{meta:?}");
    let (answer, index) = query
        .block(&app, Topic::Catalog, |state| {
            let index = state.tables.catalog();
            if !readable {
                return (Answer::Fresh(Vec::new(), true), index);
            }
            if peered {
                return (Answer::Fresh(Vec::new(), false), index);
            }
            if cacheable
                && let Some(kept) = app.answers.get(&shape, index)
                && kept.readable_by(&authz)
            {
                return (Answer::Kept(kept), index);
            }
            // Consul's filterCheckServiceNodes: an entry needs read on its node too.
            let mut list = entries(state, &name, passing_only, &tags, &meta);
            let total = list.len();
            list.retain(|e| authz.allows(Resource::Node, &e.node.node, Need::Read));
            let dropped = list.len() != total;
            retain(filter.as_ref(), &mut list);
            (Answer::Fresh(list, dropped), index)
        })
        .await;
    Ok(match answer {
        Answer::Kept(kept) => Blocking::new(kept.response(), index),
        Answer::Fresh(list, false) if cacheable => {
            let nodes = list.iter().map(|e| e.node.node.clone()).collect();
            keep(&app, shape, index, &name, nodes, &list)
        }
        Answer::Fresh(list, dropped) => Blocking::json(&list, index).filtered(dropped),
    })
}

/// Checks readable by `authz` that `filter` keeps, and whether ACLs dropped any. As Consul's filterHealthChecks, a
/// check needs read on its node and, for a service check, on its service.
fn readable_checks<'a>(
    authz: &Authz,
    checks: impl Iterator<Item = &'a Check>,
    filter: Option<&ListFilter>,
) -> (Vec<HealthCheck>, bool) {
    let mut dropped = false;
    let mut list: Vec<HealthCheck> = checks
        .filter(|c| {
            let ok = authz.allows(Resource::Node, &c.node, Need::Read)
                && (c.service_id.is_empty()
                    || authz.allows(Resource::Service, &c.service_name, Need::Read));
            dropped |= !ok;
            ok
        })
        .map(health_check)
        .collect();
    retain(filter, &mut list);
    (list, dropped)
}

/// `GET /v1/health/checks/<service>`.
pub(crate) async fn checks(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(HEALTH_CHECK)?;
    let params = &query.params;
    let meta = node_meta_filter(params);
    let peered = query.peered();
    let ((list, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let checks = state.checks.values().filter(|c| {
                !peered
                    && c.service_name == name
                    && state
                        .nodes
                        .get(&c.node)
                        .is_some_and(|n| meta_matches(n, &meta))
            });
            (
                readable_checks(&authz, checks, filter.as_ref()),
                state.tables.catalog(),
            )
        })
        .await;
    Ok(Blocking::json(&list, index).filtered(dropped))
}

/// `GET /v1/health/node/<node>`.
pub(crate) async fn node(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(HEALTH_CHECK)?;
    let peered = query.peered();
    let ((list, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let checks = state.node_checks(&name).filter(|_| !peered);
            (
                readable_checks(&authz, checks, filter.as_ref()),
                state.tables.catalog(),
            )
        })
        .await;
    Ok(Blocking::json(&list, index).filtered(dropped))
}

/// `GET /v1/health/state/<any|passing|warning|critical>`.
pub(crate) async fn state(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(wanted): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(HEALTH_CHECK)?;
    let params = &query.params;
    let meta = node_meta_filter(params);
    let pick: Option<CheckStatus> = match wanted.as_str() {
        "any" => None,
        "passing" | "warning" | "critical" => CheckStatus::parse(&wanted),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "Invalid check state: {wanted:?}"
            )));
        }
    };
    let peered = query.peered();
    let ((list, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let checks = state.checks.values().filter(|c| {
                !peered
                    && pick.is_none_or(|p| c.status == p)
                    && state
                        .nodes
                        .get(&c.node)
                        .is_some_and(|n| meta_matches(n, &meta))
            });
            (
                readable_checks(&authz, checks, filter.as_ref()),
                state.tables.catalog(),
            )
        })
        .await;
    Ok(Blocking::json(&list, index).filtered(dropped))
}
