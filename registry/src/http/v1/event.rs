//! `/v1/event/*`: user events, fired through the server and listed per agent (see
//! `crate::events`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;

use crate::acl::{Need, Resource};
use crate::events::{UserEvent, VERSION, index_of};
use crate::http::authz::{Authz, presented_token};
use crate::http::query::ConsulQuery;
use crate::http::{ApiError, AppState, MAX_VALUE_SIZE, json, read_body};

/// Consul's `UserEvent` JSON (`Payload` base64 or `null`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireEvent {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    payload: Option<String>,
    node_filter: String,
    service_filter: String,
    tag_filter: String,
    version: u32,
    #[serde(rename = "LTime")]
    ltime: u64,
}

fn wire(e: &UserEvent) -> WireEvent {
    WireEvent {
        id: e.id.clone(),
        name: e.name.clone(),
        payload: e
            .payload
            .as_ref()
            .map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        node_filter: e.node_filter.clone(),
        service_filter: e.service_filter.clone(),
        tag_filter: e.tag_filter.clone(),
        version: e.version,
        ltime: e.ltime,
    }
}

/// `PUT /v1/event/fire/` without a name.
pub(crate) async fn missing_name() -> ApiError {
    ApiError::BadRequest("Missing name".into())
}

/// `PUT /v1/event/fire/<name>[?node=&service=&tag=]`, body = payload: the filters are checked
/// (500 with Consul's text), then `event:write` on the name, then the size; the answer is the
/// event with `LTime` 0, as Consul's. The event reaches the agents it names when fired: the
/// server's own and every joined agent's node.
pub(crate) async fn fire(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(name): Path<String>,
    query: ConsulQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let param = |p: &str| query.params.get(p).unwrap_or_default().to_owned();
    let payload = read_body(&headers, body, MAX_VALUE_SIZE).await?;
    let event = UserEvent {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        payload: (!payload.is_empty()).then(|| payload.to_vec()),
        node_filter: param("node"),
        service_filter: param("service"),
        tag_filter: param("tag"),
        version: VERSION,
        ltime: 0,
    };
    event
        .validate()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    authz.require(Resource::Event, &event.name, Need::Write)?;
    event
        .check_size()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // The server's own agent decides on its local services, as a Consul agent does; joined
    // agents on their services in the catalog (which their anti-entropy keeps equal).
    let mut receivers: BTreeSet<String> = BTreeSet::new();
    {
        let local = app.agent.lock();
        let services = local
            .services
            .values()
            .map(|sv| (sv.id.as_str(), sv.tags.as_slice()));
        if event.processed_by(&app.node_name, services) {
            receivers.insert(app.node_name.clone());
        }
    }
    app.store.read(|s| {
        let agents = s.nodes.keys().filter(|n| {
            **n != app.node_name
                && s.checks
                    .contains_key(&((*n).clone(), crate::agent::sync::SERF_HEALTH.to_owned()))
        });
        for n in agents {
            let services = s
                .node_services(n)
                .map(|sv| (sv.id.as_str(), sv.tags.as_slice()));
            if event.processed_by(n, services) {
                receivers.insert(n.clone());
            }
        }
    });
    tracing::info!(event = %event.name, id = %event.id, receivers = receivers.len(), "user event fired");
    let answer = wire(&event);
    app.events.fire(event, receivers);
    Ok(json(&answer))
}

/// `GET /v1/event/list[?name=]`: what the server's own agent received.
pub(crate) async fn list(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
    parts: Parts,
) -> Response {
    let node = app.node_name.clone();
    list_of(&app, &authz, &query, &parts, &node).await
}

/// `GET /v1/internal/berth/events/<node>`: what the agent of `node` received (an agent
/// answers its `/v1/event/list` through it).
pub(crate) async fn list_for_node(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(node): Path<String>,
    query: ConsulQuery,
    parts: Parts,
) -> Response {
    list_of(&app, &authz, &query, &parts, &node).await
}

/// As Consul's `EventList`: the name filter, then `event:read` on each (the filtered header only
/// when a token was presented), index = the last event's [`index_of`] (1 when none); a blocking
/// call waits while that index equals the one asked for. Only `X-Consul-Index` is set.
async fn list_of(
    app: &AppState,
    authz: &Authz,
    query: &ConsulQuery,
    parts: &Parts,
    node: &str,
) -> Response {
    let name = query.params.get("name").filter(|n| !n.is_empty());
    let opts = query.blocking();
    let compute = || {
        let mut events = app.events.received_by(node);
        if let Some(name) = name {
            events.retain(|e| e.name == name);
        }
        let total = events.len();
        events.retain(|e| authz.allows(Resource::Event, &e.name, Need::Read));
        let removed = events.len() != total;
        let index = events.last().map_or(1, |e| index_of(&e.id));
        (events, removed, index)
    };
    let mut changes = app.events.subscribe();
    let mut answer = compute();
    if opts.index > 0 && answer.2 == opts.index {
        let deadline = tokio::time::Instant::now() + opts.wait;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = app.shutdown.cancelled() => break,
            }
            answer = compute();
            if answer.2 != opts.index {
                break;
            }
        }
    }
    let (events, removed, index) = answer;
    let list: Vec<WireEvent> = events.iter().map(wire).collect();
    let mut response = json(&list).into_response();
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index),
    );
    if presented_token(parts).is_some() {
        headers.insert(
            HeaderName::from_static("x-consul-results-filtered-by-acls"),
            HeaderValue::from_static(if removed { "true" } else { "false" }),
        );
    }
    response
}
