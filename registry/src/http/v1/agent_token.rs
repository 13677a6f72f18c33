//! `PUT /v1/agent/token/<kind>`: replaces one of the ACL tokens the agent uses, served the same
//! way by a server (its own agent) and by `berth-registry agent`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde::Deserialize;

use crate::acl::Need;
use crate::agent::tokens::{AgentTokens, TokenKind};
use crate::http::authz::Authz;
use crate::http::{ApiError, read_json};

/// What the token endpoint needs.
pub(crate) struct TokenApi {
    pub(crate) tokens: Arc<AgentTokens>,
    /// Whether ACLs are on (a server: its own setting; an agent: its server's last answer).
    pub(crate) acls_enabled: Box<dyn Fn() -> bool + Send + Sync>,
}

pub(crate) fn routes(api: Arc<TokenApi>) -> Router {
    Router::new()
        .route("/v1/agent/token/{*kind}", put(update))
        .with_state(api)
}

/// Body of `PUT /v1/agent/token/<kind>` (`api.AgentToken`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentTokenBody {
    #[serde(default)]
    token: String,
}

/// As Consul's `AgentToken`: 401 with ACLs off, `acl:write`, then the body, then the kind (404
/// `Token "<kind>" is unknown`). 200 with an empty body; a changed default or agent token
/// triggers a full anti-entropy sync.
async fn update(
    State(api): State<Arc<TokenApi>>,
    authz: Authz,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !(api.acls_enabled)() {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    authz.require_ok(authz.0.acl(Need::Write))?;
    let body: AgentTokenBody = read_json(&headers, body)
        .await?
        .ok_or_else(|| ApiError::BadRequest("Request decode failed: EOF".into()))?;
    let Some(which) = TokenKind::from_path(&kind) else {
        return Err(ApiError::NotFound(format!("Token {kind:?} is unknown")));
    };
    api.tokens.set(which, &body.token);
    tracing::info!(token = %kind, "Updated agent's ACL token");
    Ok(StatusCode::OK.into_response())
}
