//! `/v1/catalog/*`: register, deregister and the basic listings (the rest is issue 3).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::acl::{Need, Resource};
use crate::convert::{agent_service, catalog_node};
use crate::dto::{
    self, CatalogDeregistration, CatalogNode, CatalogNodeServiceList, CatalogNodeServices,
    CatalogRegistration, CatalogService, Weights,
};
use crate::http::authz::Authz;
use crate::http::cache::{Answer, keep};
use crate::http::filter::schema::{NODE, NODE_SERVICE, SERVICE_NODE};
use crate::http::filter::{meta_matches, node_meta_filter, retain, retain_values};
use crate::http::query::{Blocking, ConsulQuery};
use crate::http::{ApiError, AppState, json, read_json};
use crate::store::Registration;
use crate::store::state::{Check, CheckStatus, Node, Service, Topic};

fn bad(text: &str) -> ApiError {
    ApiError::BadRequest(text.to_owned())
}

fn registration(app: &AppState, body: CatalogRegistration) -> Result<Registration, ApiError> {
    if body.node.is_empty() {
        return Err(bad("Must provide node"));
    }
    if body.address.is_empty() && !body.skip_node_update {
        return Err(bad("Must provide address"));
    }
    let node = Node {
        name: body.node.clone(),
        id: body.id,
        address: body.address,
        datacenter: if body.datacenter.is_empty() {
            app.datacenter.clone()
        } else {
            body.datacenter
        },
        tagged_addresses: body.tagged_addresses,
        meta: body.node_meta,
        create_index: 0,
        modify_index: 0,
    };
    let service = match body.service {
        None => None,
        Some(s) => {
            if s.service.is_empty() {
                return Err(bad("Must provide service name"));
            }
            let weights = s.weights.unwrap_or_default();
            Some(Service {
                node: body.node.clone(),
                id: if s.id.is_empty() {
                    s.service.clone()
                } else {
                    s.id
                },
                name: s.service,
                tags: s.tags,
                address: s.address,
                port: s.port,
                meta: s.meta,
                tagged_addresses: s
                    .tagged_addresses
                    .into_iter()
                    .map(|(k, v)| (k, (v.address, v.port)))
                    .collect(),
                kind: s.kind,
                enable_tag_override: s.enable_tag_override,
                weights: (weights.passing, weights.warning),
                create_index: 0,
                modify_index: 0,
            })
        }
    };
    let mut checks = Vec::new();
    for c in body.check.into_iter().chain(body.checks) {
        if c.check_id.is_empty() {
            return Err(bad("Must provide check ID"));
        }
        let status = match c.status.as_str() {
            "" => CheckStatus::Critical,
            // `maintenance` is an aggregated status of Consul's agent, never a check's.
            text => CheckStatus::parse(text)
                .filter(|s| *s != CheckStatus::Maintenance)
                .ok_or_else(|| bad("Invalid check status"))?,
        };
        checks.push(Check {
            node: body.node.clone(),
            name: if c.name.is_empty() {
                c.check_id.clone()
            } else {
                c.name
            },
            id: c.check_id,
            status,
            notes: c.notes,
            output: c.output,
            service_id: c.service_id,
            check_type: c.check_type,
            definition: c
                .definition
                .unwrap_or(serde_json::Value::Object(Default::default())),
            ..Check::default()
        });
    }
    Ok(Registration {
        node,
        service,
        checks,
        skip_node_update: body.skip_node_update,
    })
}

pub(crate) async fn register(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CatalogRegistration = read_json(&headers, body)
        .await?
        .ok_or_else(|| bad("Must provide node"))?;
    let registration = registration(&app, body)?;
    vet_register(&app, &authz, &registration)?;
    app.store.catalog_register(registration).await?;
    Ok(json(&true))
}

/// Consul's `vetRegisterWithACL`: write on the node, on the service registered, on the service
/// it replaces (same ID, another name) and on the service of every check, so a registration
/// cannot take over what the token may not write.
fn vet_register(app: &AppState, authz: &Authz, reg: &Registration) -> Result<(), ApiError> {
    let node = &reg.node.name;
    authz.require(Resource::Node, node, Need::Write)?;
    if *node == app.node_name
        && reg
            .checks
            .iter()
            .any(|c| c.id == crate::agent::sync::SERF_HEALTH)
    {
        return Err(ApiError::Forbidden(format!(
            "Permission denied: {node:?} is the registry server's own node; its serfHealth check is the server's"
        )));
    }
    let existing_name = |id: &str| {
        app.store.read(|s| {
            s.services
                .get(&(node.clone(), id.to_owned()))
                .map(|s| s.name.clone())
        })
    };
    if let Some(s) = &reg.service {
        authz.require(Resource::Service, &s.name, Need::Write)?;
        if let Some(replaced) = existing_name(&s.id) {
            authz.require(Resource::Service, &replaced, Need::Write)?;
        }
    }
    for check in &reg.checks {
        let registered_with = reg
            .service
            .as_ref()
            .is_some_and(|s| s.id == check.service_id);
        if check.service_id.is_empty() || registered_with {
            continue;
        }
        // An unknown service ID is refused by the store with its own message.
        if let Some(name) = existing_name(&check.service_id) {
            authz.require(Resource::Service, &name, Need::Write)?;
        }
    }
    Ok(())
}

pub(crate) async fn deregister(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut body: CatalogDeregistration = read_json(&headers, body)
        .await?
        .ok_or_else(|| bad("Must provide node"))?;
    // Go clients send every field: an empty `ServiceID` or `CheckID` is no ID, as in Consul.
    body.service_id = body.service_id.filter(|id| !id.is_empty());
    body.check_id = body.check_id.filter(|id| !id.is_empty());
    if body.node.is_empty() {
        return Err(bad("Must provide node"));
    }
    authz.require(Resource::Node, &body.node, Need::Write)?;
    protect_server_node(&app, &body)?;
    app.store
        .catalog_deregister(body.node, body.service_id, body.check_id)
        .await?;
    Ok(json(&true))
}

/// The registry server's own node, its `serfHealth` check and its `consul` service stay: with
/// them gone every session on the node ends and no new one can be created (`Missing check
/// 'serfHealth' registration`) until the server restarts. Other services and checks a client
/// registered on the server's node may still be removed.
fn protect_server_node(app: &AppState, body: &CatalogDeregistration) -> Result<(), ApiError> {
    if body.node != app.node_name {
        return Ok(());
    }
    let what = match (&body.service_id, &body.check_id) {
        (Some(service), _) if service == "consul" => "its consul service",
        (Some(_), _) => return Ok(()),
        (None, Some(check)) if check == crate::agent::sync::SERF_HEALTH => "its serfHealth check",
        (None, Some(_)) => return Ok(()),
        (None, None) => "the node",
    };
    Err(ApiError::Forbidden(format!(
        "Permission denied: {:?} is the registry server's own node; {what} cannot be deregistered",
        body.node
    )))
}

/// `GET /v1/catalog/datacenters`: berth serves one datacenter. No ACL, as in Consul (agents
/// read it at join with a token that need not read the server's agent).
pub(crate) async fn datacenters(State(app): State<Arc<AppState>>) -> Response {
    json(&[&app.datacenter])
}

pub(crate) async fn nodes(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(NODE)?;
    let params = &query.params;
    let meta = node_meta_filter(params);
    let peered = query.peered();
    let ((list, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let matching: Vec<&Node> = state
                .nodes
                .values()
                .filter(|_| !peered)
                .filter(|n| meta_matches(n, &meta))
                .collect();
            let mut list: Vec<CatalogNode> = matching
                .iter()
                .filter(|n| authz.allows(Resource::Node, &n.name, Need::Read))
                .map(|n| catalog_node(n))
                .collect();
            let dropped = list.len() != matching.len();
            retain(filter.as_ref(), &mut list);
            ((list, dropped), state.tables.nodes)
        })
        .await;
    Ok(Blocking::json(&list, index).filtered(dropped))
}

pub(crate) async fn node(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    // Consul's filterNodeServices: a node the token may not read is `null` (filtered), and
    // services it may not read are dropped.
    let filter = query.filter(NODE_SERVICE)?;
    let node_readable = authz.allows(Resource::Node, &name, Need::Read);
    let peered = query.peered();
    let ((answer, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let Some(n) = state.nodes.get(&name).filter(|_| !peered) else {
                return ((None, false), state.tables.catalog());
            };
            if !node_readable {
                return ((None, true), state.tables.catalog());
            }
            let mut dropped = false;
            let mut services = state
                .node_services(&name)
                .filter(|s| {
                    let ok = authz.allows(Resource::Service, &s.name, Need::Read);
                    dropped |= !ok;
                    ok
                })
                .map(|s| (s.id.clone(), agent_service(s, &n.datacenter)))
                .collect();
            retain_values(filter.as_ref(), &mut services);
            let answer = CatalogNodeServices {
                node: catalog_node(n),
                services,
            };
            ((Some(answer), dropped), state.tables.catalog())
        })
        .await;
    Ok(Blocking::json(&answer, index).filtered(dropped))
}

/// `GET /v1/catalog/node-services/<node>` (Consul 1.7+): the node and its services as a list,
/// ordered by ID. An unknown node, one the token may not read, or a `?peer=` (none is
/// imported) answer `{"Node":null,"Services":[]}`, as Consul's handler turns a missing list
/// into an empty one.
pub(crate) async fn node_services(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(NODE_SERVICE)?;
    let node_readable = authz.allows(Resource::Node, &name, Need::Read);
    let peered = query.peered();
    let ((answer, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let empty = CatalogNodeServiceList {
                node: None,
                services: Vec::new(),
            };
            let Some(n) = state.nodes.get(&name).filter(|_| !peered) else {
                return ((empty, false), state.tables.catalog());
            };
            if !node_readable {
                return ((empty, true), state.tables.catalog());
            }
            let mut dropped = false;
            let mut services: Vec<_> = state
                .node_services(&name)
                .filter(|s| {
                    let ok = authz.allows(Resource::Service, &s.name, Need::Read);
                    dropped |= !ok;
                    ok
                })
                .map(|s| agent_service(s, &n.datacenter))
                .collect();
            services.sort_by(|a, b| a.id.cmp(&b.id));
            retain(filter.as_ref(), &mut services);
            let answer = CatalogNodeServiceList {
                node: Some(catalog_node(n)),
                services,
            };
            ((answer, dropped), state.tables.catalog())
        })
        .await;
    Ok(Blocking::json(&answer, index).filtered(dropped))
}

pub(crate) async fn services(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(SERVICE_NODE)?;
    let params = &query.params;
    let meta = node_meta_filter(params);
    let peered = query.peered();
    let ((map, dropped), index) = query
        .block(&app, Topic::Catalog, |state| {
            let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut dropped = false;
            for service in state.services.values().filter(|_| !peered) {
                if !meta.is_empty()
                    && !state
                        .nodes
                        .get(&service.node)
                        .is_some_and(|n| meta_matches(n, &meta))
                {
                    continue;
                }
                if !authz.allows(Resource::Service, &service.name, Need::Read) {
                    dropped = true;
                    continue;
                }
                // Consul filters the instances, then lists the names and tags of those kept.
                if let Some(f) = &filter
                    && !state
                        .nodes
                        .get(&service.node)
                        .is_some_and(|n| f.keeps(&catalog_service(n, service)))
                {
                    continue;
                }
                map.entry(service.name.clone())
                    .or_default()
                    .extend(service.tags.iter().cloned());
            }
            ((map, dropped), state.tables.services)
        })
        .await;
    Ok(Blocking::json(&map, index).filtered(dropped))
}

pub(crate) async fn service(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let filter = query.filter(SERVICE_NODE)?;
    let params = &query.params;
    let tags: Vec<String> = params.all("tag").map(str::to_owned).collect();
    let meta = node_meta_filter(params);
    // Consul's filterServiceNodes: an entry needs read on both its service and its node.
    let readable = authz.allows(Resource::Service, &name, Need::Read);
    let peered = query.peered();
    // The encoded answer is kept per query shape and catalog index (see `http::cache`); a
    // `?filter=` or `?peer=` answer is built each time.
    let cacheable = filter.is_none() && !peered;
    let shape = format!("catalog\0{name}\0{tags:?}\0{meta:?}");
    let (answer, index) = query
        .block(&app, Topic::Catalog, |state| {
            let index = state.tables.catalog();
            if readable
                && cacheable
                && let Some(kept) = app.answers.get(&shape, index)
                && kept.readable_by(&authz)
            {
                return (Answer::Kept(kept), index);
            }
            let mut dropped = !readable;
            let mut list: Vec<CatalogService> = state
                .services_named(&name)
                .filter(|_| readable && !peered)
                .filter(|s| tags.iter().all(|t| s.tags.contains(t)))
                .filter_map(|s| state.nodes.get(&s.node).map(|n| (n, s)))
                .filter(|(n, _)| meta_matches(n, &meta))
                .filter(|(n, _)| {
                    let ok = authz.allows(Resource::Node, &n.name, Need::Read);
                    dropped |= !ok;
                    ok
                })
                .map(|(n, s)| catalog_service(n, s))
                .collect();
            retain(filter.as_ref(), &mut list);
            (Answer::Fresh(list, dropped), index)
        })
        .await;
    Ok(match answer {
        Answer::Kept(kept) => Blocking::new(kept.response(), index),
        Answer::Fresh(list, false) if cacheable => {
            let nodes = list.iter().map(|e| e.node.clone()).collect();
            keep(&app, shape, index, &name, nodes, &list)
        }
        Answer::Fresh(list, dropped) => Blocking::json(&list, index).filtered(dropped),
    })
}

/// The `structs.ServiceNode` wire row of instance `s` on node `n`.
fn catalog_service(n: &Node, s: &Service) -> CatalogService {
    CatalogService {
        id: n.id.clone(),
        node: n.name.clone(),
        address: n.address.clone(),
        datacenter: n.datacenter.clone(),
        tagged_addresses: n.tagged_addresses.clone(),
        node_meta: n.meta.clone(),
        service_id: s.id.clone(),
        service_name: s.name.clone(),
        service_tags: s.tags.clone(),
        service_address: s.address.clone(),
        service_tagged_addresses: s
            .tagged_addresses
            .iter()
            .map(|(k, (a, p))| {
                (
                    k.clone(),
                    dto::ServiceAddress {
                        address: a.clone(),
                        port: *p,
                    },
                )
            })
            .collect(),
        service_meta: s.meta.clone(),
        service_port: s.port,
        service_kind: s.kind.clone(),
        service_enable_tag_override: s.enable_tag_override,
        service_weights: Weights {
            passing: s.weights.0,
            warning: s.weights.1,
        },
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}
