//! `/v1/session/*`: create, destroy, renew, info, node, list.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::acl::{Need, Resource};
use crate::convert;
use crate::dto::{self, IdResponse, SessionCreateRequest, SessionEntry};
use crate::http::authz::Authz;
use crate::http::query::{Blocking, ConsulQuery};
use crate::http::{ApiError, AppState, json, read_json};
use crate::store::NewSession;
use crate::store::StoreError;
use crate::store::state::{Behavior, Session, Topic};

const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86_400);

/// A 500 with Consul's text for a session the request describes badly.
fn rejected(text: String) -> ApiError {
    ApiError::Store(StoreError::Rejected(text))
}

/// `LockDelay` as Consul reads it: a duration string, or a number (< 1000: seconds, else ns).
fn lock_delay(value: Option<&serde_json::Value>) -> Result<Duration, ApiError> {
    let delay = match value {
        None | Some(serde_json::Value::Null) => DEFAULT_LOCK_DELAY,
        Some(serde_json::Value::String(text)) => dto::parse_go_duration(text).ok_or_else(|| {
            ApiError::BadRequest(format!("Request decode failed: invalid LockDelay {text:?}"))
        })?,
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => {
                return Err(ApiError::BadRequest(
                    "Request decode failed: invalid LockDelay".to_owned(),
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Request decode failed: invalid LockDelay".to_owned(),
            ));
        }
    };
    Ok(delay.min(MAX_LOCK_DELAY))
}

pub(crate) fn new_session(
    app: &AppState,
    request: SessionCreateRequest,
) -> Result<NewSession, ApiError> {
    let behavior = match request.behavior.as_deref().unwrap_or("") {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return Err(rejected(format!("Invalid Behavior setting '{other}'"))),
    };
    let ttl_text = request.ttl.clone().unwrap_or_default();
    let ttl = match ttl_text.as_str() {
        "" => None,
        text => {
            let ttl = dto::parse_go_duration(text)
                .ok_or_else(|| rejected(format!("Session TTL '{text}' invalid")))?;
            if !ttl.is_zero() && !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                return Err(rejected(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    ttl.as_nanos(),
                    dto::go_duration(MIN_TTL),
                    dto::go_duration(MAX_TTL)
                )));
            }
            Some(ttl).filter(|t| !t.is_zero())
        }
    };
    let node_checks = match (request.node_checks, request.checks) {
        (Some(checks), _) | (None, Some(checks)) => checks,
        (None, None) => vec!["serfHealth".to_owned()],
    };
    Ok(NewSession {
        name: request.name.unwrap_or_default(),
        node: request
            .node
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| app.node_name.clone()),
        node_checks,
        service_checks: request
            .service_checks
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
        lock_delay: lock_delay(request.lock_delay.as_ref())?,
        behavior,
        ttl_text: if ttl.is_some() {
            ttl_text
        } else {
            String::new()
        },
        ttl,
    })
}

pub(crate) async fn create(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: SessionCreateRequest = read_json(&headers, body).await?.unwrap_or_default();
    let new = new_session(&app, request)?;
    authz.require(Resource::Session, &new.node, Need::Write)?;
    let session = app.store.session_create(new).await?;
    Ok(json(&IdResponse { id: session.id }))
}

fn session_node(app: &AppState, id: &str) -> Option<String> {
    app.store
        .read(|s| s.sessions.get(id).map(|s| s.node.clone()))
}

pub(crate) async fn destroy(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(node) = session_node(&app, &id) {
        authz.require(Resource::Session, &node, Need::Write)?;
    }
    app.store.session_destroy(id).await?;
    Ok(json(&true))
}

pub(crate) async fn renew(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(node) = session_node(&app, &id) {
        authz.require(Resource::Session, &node, Need::Write)?;
    }
    match app.store.session_renew(id.clone()).await? {
        Some(session) => Ok(json(&[convert::session_entry(&session)])),
        None => Err(ApiError::NotFound(format!("Session id '{id}' not found"))),
    }
}

async fn sessions(
    app: &AppState,
    authz: &Authz,
    query: &ConsulQuery,
    select: impl Fn(&Session) -> bool,
) -> Blocking {
    let ((list, dropped), index) = query
        .block(app, Topic::Sessions, |state| {
            let selected: Vec<&Session> = state.sessions.values().filter(|s| select(s)).collect();
            let list: Vec<SessionEntry> = selected
                .iter()
                .filter(|s| authz.allows(Resource::Session, &s.node, Need::Read))
                .map(|s| convert::session_entry(s))
                .collect();
            let dropped = list.len() != selected.len();
            ((list, dropped), state.tables.sessions)
        })
        .await;
    Blocking::json(&list, index).filtered(dropped)
}

pub(crate) async fn info(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(id): Path<String>,
    query: ConsulQuery,
) -> Blocking {
    sessions(&app, &authz, &query, |s| s.id == id).await
}

pub(crate) async fn node(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(node): Path<String>,
    query: ConsulQuery,
) -> Blocking {
    sessions(&app, &authz, &query, |s| s.node == node).await
}

pub(crate) async fn list(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
) -> Blocking {
    sessions(&app, &authz, &query, |_| true).await
}

pub(crate) async fn missing_id() -> ApiError {
    ApiError::BadRequest("Missing session".to_owned())
}

pub(crate) async fn missing_node() -> ApiError {
    ApiError::BadRequest("Missing node name".to_owned())
}
