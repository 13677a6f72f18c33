//! berth's agent-to-server liveness routes (`/v1/internal/berth/*`): heartbeat and leave.
//!
//! Only `berth-registry agent` calls these; master and worker never do (they use Consul's own
//! API), so a real Consul can still replace the registry.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::acl::{Need, Resource};
use crate::agent::sync::agent_node;
use crate::http::authz::Authz;
use crate::http::{ApiError, AppState, json, read_body};
use crate::members::Beat;
use crate::store::Registration;
use crate::store::state::{Check, CheckStatus};

/// Output of a live node's `serfHealth`.
pub(crate) const ALIVE_OUTPUT: &str = "Agent alive and reachable";
/// Output of a failed node's `serfHealth` (Consul's text).
pub(crate) const FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// Body of a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Heartbeat {
    /// Node name.
    pub(crate) node: String,
    /// Node id.
    #[serde(rename = "ID")]
    pub(crate) id: String,
    /// Advertised address.
    pub(crate) address: String,
    /// HTTP port of the agent.
    pub(crate) port: u16,
}

pub(crate) fn serf_health(status: CheckStatus, output: &str) -> Check {
    Check {
        id: "serfHealth".to_owned(),
        name: "Serf Health Status".to_owned(),
        status,
        output: output.to_owned(),
        definition: serde_json::json!({}),
        ..Check::default()
    }
}

async fn decode(headers: &HeaderMap, body: Body) -> Result<Heartbeat, ApiError> {
    let bytes = read_body(headers, body, 64 * 1024).await?;
    let beat: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    if beat.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    Ok(beat)
}

pub(crate) async fn heartbeat(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let beat = decode(&headers, body).await?;
    authz.require(Resource::Node, &beat.node, Need::Write)?;
    if beat.node == app.node_name {
        return Err(ApiError::BadRequest("node name is the server's own".into()));
    }
    let outcome = app
        .members
        .heartbeat(
            &beat.node,
            &beat.id,
            &beat.address,
            beat.port,
            tokio::time::Instant::now(),
        )
        .map_err(|conflict| {
            tracing::debug!(node = %beat.node, addr = %beat.address, live_addr = %conflict.addr, "heartbeat refused: node name in use by another live agent");
            ApiError::Conflict(conflict.to_string())
        })?;
    let healthy = app.store.read(|s| {
        s.nodes.contains_key(&beat.node)
            && s.checks
                .get(&(beat.node.clone(), "serfHealth".to_owned()))
                .is_some_and(|c| c.status == CheckStatus::Passing)
    });
    if outcome == Beat::Revived || !healthy {
        tracing::info!(node = %beat.node, addr = %beat.address, "member alive");
        app.store
            .catalog_register(Registration {
                node: agent_node(&beat.node, &beat.id, &beat.address, &app.datacenter),
                service: None,
                checks: vec![serf_health(CheckStatus::Passing, ALIVE_OUTPUT)],
                skip_node_update: false,
            })
            .await?;
    }
    Ok(json(&true))
}

pub(crate) async fn leave(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let beat = decode(&headers, body).await?;
    authz.require(Resource::Node, &beat.node, Need::Write)?;
    // The server's node is not a member: its leave would deregister it and end every session.
    if beat.node == app.node_name {
        return Err(ApiError::BadRequest("node name is the server's own".into()));
    }
    app.members
        .leave(&beat.node, &beat.id)
        .map_err(|conflict| ApiError::Conflict(conflict.to_string()))?;
    tracing::info!(node = %beat.node, "member left");
    app.store.catalog_deregister(beat.node, None, None).await?;
    Ok(json(&true))
}

/// Marks silent members failed and their `serfHealth` critical, until `shutdown`.
pub(crate) async fn run_liveness(
    app: Arc<AppState>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let period = (app.members.failure_timeout / 4).max(std::time::Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for m in app.members.expire(tokio::time::Instant::now()) {
            tracing::warn!(node = %m.name, "member failed: no heartbeat");
            let exists = app.store.read(|s| s.nodes.contains_key(&m.name));
            if !exists {
                continue;
            }
            let reg = Registration {
                node: agent_node(&m.name, &m.id, &m.addr, &app.datacenter),
                service: None,
                checks: vec![serf_health(CheckStatus::Critical, FAILED_OUTPUT)],
                skip_node_update: true,
            };
            if let Err(err) = app.store.catalog_register(reg).await {
                tracing::error!(cause = %err, node = %m.name, "marking member failed");
            }
        }
    }
}
