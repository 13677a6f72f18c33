//! `/v1/agent/*`: this server's own description (`self`, `members`) and its operations
//! (`join`, `leave`, `force-leave`, `reload`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::acl::{Need, Resource};
use crate::dto::{AgentConfig, AgentMember, AgentSelf};
use crate::http::authz::{Authz, filtered};
use crate::http::query::ConsulQuery;
use crate::http::{ApiError, AppState, json};
use crate::members::MemberStatus;

/// The Consul API level berth implements, reported as `Config.Version`.
pub(crate) const CONSUL_API_VERSION: &str = "1.22.0";

fn member(app: &AppState) -> AgentMember {
    let (addr, port) = match app.leader_addr.rsplit_once(':') {
        Some((addr, port)) => (addr.to_owned(), port.parse().unwrap_or(0)),
        None => (app.leader_addr.clone(), 0),
    };
    let tags = BTreeMap::from([
        ("role".to_owned(), "consul".to_owned()),
        ("dc".to_owned(), app.datacenter.clone()),
        ("id".to_owned(), app.node_id.clone()),
        (
            "build".to_owned(),
            format!("{CONSUL_API_VERSION}:berth-{}", env!("CARGO_PKG_VERSION")),
        ),
        ("bootstrap".to_owned(), "1".to_owned()),
        ("port".to_owned(), port.to_string()),
    ]);
    AgentMember {
        name: app.node_name.clone(),
        addr,
        port,
        tags,
        status: 1,
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}

/// What an agent tells of itself in `DebugConfig`.
pub(crate) struct DebugFacts<'a> {
    pub(crate) datacenter: &'a str,
    pub(crate) node_name: &'a str,
    pub(crate) node_id: &'a str,
    pub(crate) server: bool,
    pub(crate) acls_enabled: bool,
    /// `ip:port` of the HTTP listener.
    pub(crate) http_addr: &'a str,
}

/// `DebugConfig` of `/v1/agent/self`: the fields of Consul's sanitized runtime configuration
/// that describe what berth runs, under Consul's names and in its encoding (durations as Go
/// text, listeners as `tcp://ip:port`, a disabled port as -1). The `xDS` block stays out, as
/// Consul leaves it out when the agent runs no xDS server.
pub(crate) fn debug_config(f: &DebugFacts<'_>) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let (ip, port) = f.http_addr.rsplit_once(':').unwrap_or((f.http_addr, "0"));
    let port: i64 = port.parse().unwrap_or(0);
    let listener = format!("tcp://{}", f.http_addr);
    BTreeMap::from([
        ("ACLsEnabled".to_owned(), json!(f.acls_enabled)),
        ("AdvertiseAddrLAN".to_owned(), json!(ip)),
        ("Bootstrap".to_owned(), json!(f.server)),
        ("ClientAddrs".to_owned(), json!([ip])),
        ("Datacenter".to_owned(), json!(f.datacenter)),
        ("DNSPort".to_owned(), json!(-1)),
        ("GRPCPort".to_owned(), json!(-1)),
        ("GRPCTLSPort".to_owned(), json!(-1)),
        ("HTTPAddrs".to_owned(), json!([listener])),
        ("HTTPPort".to_owned(), json!(port)),
        ("HTTPSPort".to_owned(), json!(-1)),
        ("NodeID".to_owned(), json!(f.node_id)),
        ("NodeName".to_owned(), json!(f.node_name)),
        ("PrimaryDatacenter".to_owned(), json!(f.datacenter)),
        ("Revision".to_owned(), json!("berth")),
        ("ServerMode".to_owned(), json!(f.server)),
        ("SessionTTLMin".to_owned(), json!("10s")),
        ("Version".to_owned(), json!(CONSUL_API_VERSION)),
    ])
}

/// `GET /v1/agent/self`: needs `agent:read` on this server's node, as in Consul.
pub(crate) async fn self_info(
    State(app): State<Arc<AppState>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &app.node_name, Need::Read)?;
    let consul_stats = BTreeMap::from([
        ("server".to_owned(), "true".to_owned()),
        ("leader".to_owned(), "true".to_owned()),
        ("leader_addr".to_owned(), app.leader_addr.clone()),
        ("bootstrap".to_owned(), "true".to_owned()),
        ("known_datacenters".to_owned(), "1".to_owned()),
    ]);
    let berth_stats = BTreeMap::from([
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("index".to_owned(), app.store.read(|s| s.index).to_string()),
    ]);
    let answer = AgentSelf {
        config: AgentConfig {
            datacenter: app.datacenter.clone(),
            primary_datacenter: app.datacenter.clone(),
            node_name: app.node_name.clone(),
            node_id: app.node_id.clone(),
            server: true,
            revision: "berth".to_owned(),
            version: CONSUL_API_VERSION.to_owned(),
        },
        debug_config: debug_config(&DebugFacts {
            datacenter: &app.datacenter,
            node_name: &app.node_name,
            node_id: &app.node_id,
            server: true,
            acls_enabled: app.acl.is_enabled(),
            http_addr: &app.leader_addr,
        }),
        coord: None,
        member: member(&app),
        stats: BTreeMap::from([
            ("consul".to_owned(), consul_stats),
            ("berth".to_owned(), berth_stats),
        ]),
        meta: BTreeMap::from([(
            "berth-version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    };
    Ok(json(&answer))
}

/// The server, then every agent that ever heartbeated (alive, failed or left); only the members
/// whose node the token may read (Consul's filterMembers). `?wan=<anything but empty>` lists the
/// WAN pool instead, as Consul does: servers only, each named `<node>.<datacenter>`.
pub(crate) async fn members(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
) -> Response {
    if query.params.get("wan").is_some_and(|v| !v.is_empty()) {
        let mut server = member(&app);
        server.name = format!("{}.{}", app.node_name, app.datacenter);
        let readable = authz.allows(Resource::Node, &app.node_name, Need::Read);
        let list = if readable { vec![server] } else { Vec::new() };
        return filtered(json(&list), !readable);
    }
    let mut list = vec![member(&app)];
    for m in app.members.list() {
        let mut entry = member(&app);
        entry.name = m.name;
        entry.addr = m.addr;
        entry.port = m.port;
        entry.status = m.status as u8;
        entry.tags.insert("role".to_owned(), "node".to_owned());
        entry.tags.insert("id".to_owned(), m.id);
        entry.tags.remove("bootstrap");
        entry.tags.insert("port".to_owned(), m.port.to_string());
        list.push(entry);
    }
    let total = list.len();
    list.retain(|m| authz.allows(Resource::Node, &m.name, Need::Read));
    let dropped = list.len() != total;
    filtered(json(&list), dropped)
}

/// `PUT /v1/agent/join/<addr>`: a single server has no peers to join; joining itself succeeds.
/// Needs `agent:write`, as in Consul.
pub(crate) async fn join(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(addr): Path<String>,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &app.node_name, Need::Write)?;
    let own_host = app.leader_addr.rsplit_once(':').map_or("", |(h, _)| h);
    if addr == app.leader_addr || addr == own_host {
        return Ok(StatusCode::OK.into_response());
    }
    Err(ApiError::Internal(format!(
        "berth servers do not join other servers (asked to join {addr}); run `berth-registry agent --join` on other hosts"
    )))
}

/// `PUT /v1/agent/leave`: the server leaves by shutting down gracefully, as Consul's does.
pub(crate) async fn leave(
    State(app): State<Arc<AppState>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &app.node_name, Need::Write)?;
    tracing::info!("leave requested: shutting down");
    app.shutdown.cancel();
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/reload`: Consul rereads its configuration files; a berth server takes its
/// configuration once, at start, so there is nothing to reload and it answers as Consul does
/// after a reload that changed nothing (200, empty body). Needs `agent:write`, as in Consul.
pub(crate) async fn reload(
    State(app): State<Arc<AppState>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &app.node_name, Need::Write)?;
    tracing::info!("reload requested: berth has no configuration to reload");
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/force-leave/<node>[?prune]`: a failed member turns `left` and its node leaves
/// the catalog, as after a graceful leave; `prune` also drops it from `/v1/agent/members`. A
/// live member stays (Consul's live member refutes the leave). Needs `operator:write`, as in
/// Consul. The registry server's own node is refused: it is never deregistered.
pub(crate) async fn force_leave(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(node): Path<String>,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    authz.require_ok(authz.0.operator(Need::Write))?;
    if node == app.node_name {
        return Err(ApiError::Forbidden(format!(
            "Permission denied: {node:?} is the registry server's own node; it cannot be force-left"
        )));
    }
    let prune = query.params.has("prune");
    let Some(before) = app.members.force_leave(&node, prune) else {
        return Err(ApiError::Internal(format!(
            "agent: No node found with name '{node}'"
        )));
    };
    tracing::info!(node = %node, prune, ?before, "force leave");
    if before != MemberStatus::Alive && app.store.read(|s| s.nodes.contains_key(&node)) {
        app.store.catalog_deregister(node, None, None).await?;
    }
    Ok(StatusCode::OK.into_response())
}
