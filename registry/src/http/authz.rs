//! ACLs over HTTP: the [`Authz`] extractor every handler takes and the server's middleware
//! ([`layer`]) that resolves the request's token through the [`AclStore`].
//!
//! ACLs on an agent: the agent's own endpoints are checked exactly as on the server, with
//! tokens resolved by the server (`PUT /v1/internal/berth/acl/resolve`, authenticated with the
//! agent's own token) and cached for [`TOKEN_TTL`].
//!
//! Requests without a token use the agent's default token, else the anonymous token. When the
//! server cannot be reached, a token resolved before keeps its last answer (Consul's
//! `extend-cache` down policy); any other token is refused (fail closed), unless the server's
//! last answer said ACLs are off there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::acl::store::AclStore;
use crate::acl::{Authorizer, Need, Resource};
use crate::agent::tokens::{AgentTokens, TokenKind};
use crate::http::query::ConsulQuery;
use crate::http::v1::acl::{ResolveAnswer, ResolveRequest};
use crate::http::{ApiError, plain};

/// The resolved authorizer of the request (everything allowed when ACLs are off), put in the
/// request's extensions by the ACL middleware.
#[derive(Clone)]
pub(crate) struct Authz(pub(crate) Arc<Authorizer>);

impl Authz {
    pub(crate) fn allows(&self, resource: Resource, name: &str, need: Need) -> bool {
        self.0.allows(resource, name, need)
    }

    pub(crate) fn require(
        &self,
        resource: Resource,
        name: &str,
        need: Need,
    ) -> Result<(), ApiError> {
        if self.allows(resource, name, need) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("Permission denied".into()))
        }
    }

    pub(crate) fn require_ok(&self, ok: bool) -> Result<(), ApiError> {
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden("Permission denied".into()))
        }
    }
}

/// Fails closed: a route whose router lacks the resolving middleware answers 500 instead of
/// running without ACLs (the server's [`layer`], or the agent's, must wrap every route that
/// takes an `Authz`).
impl<S: Send + Sync> FromRequestParts<S> for Authz {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Authz>().cloned().ok_or_else(|| {
            tracing::error!(path = %parts.uri.path(), "route without ACL resolution refused");
            ApiError::Internal("ACL resolution missing for this route".into())
        })
    }
}

/// The secret presented with the request: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer`; empty values count as absent.
pub(crate) fn presented_token(parts: &Parts) -> Option<String> {
    let from_query = parts
        .uri
        .query()
        .and_then(|_| ConsulQuery::parse(&parts.uri).token);
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
    [from_query, header("x-consul-token"), bearer]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
}

/// Request span without the query string, which may carry `?token=`: tokens never reach logs.
pub(crate) fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}

/// Sets `X-Consul-Results-Filtered-By-ACLs: true` when something was dropped.
pub(crate) fn filtered(mut response: Response, dropped: bool) -> Response {
    if dropped {
        response.headers_mut().insert(
            HeaderName::from_static("x-consul-results-filtered-by-acls"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Middleware: resolves the request's token once and stores the [`Authz`] in its extensions.
/// A request without a token runs with the agent's default token, if one is set, else as
/// anonymous. Unknown tokens get 403 `ACL not found`.
pub(crate) async fn server_layer(
    State((acl, tokens)): State<(Arc<AclStore>, Arc<AgentTokens>)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let secret = presented_token(&parts).or_else(|| tokens.get(TokenKind::Default));
    match acl.resolve(secret.as_deref()) {
        Ok(authorizer) => {
            parts.extensions.insert(Authz(Arc::new(authorizer)));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(err) => ApiError::Forbidden(err.to_string()).into_response(),
    }
}

/// How long a resolved token is trusted before the server is asked again (Consul's
/// `token_ttl` is 30 s; shorter here, so revocations reach agents sooner).
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(10);
/// Most tokens cached; past it, expired ones are dropped, then all.
const MAX_CACHED: usize = 1024;
/// Bound on one resolution call to the server.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a token resolved.
#[derive(Clone)]
enum Outcome {
    Known(Arc<Authorizer>),
    NotFound,
}

struct Cached {
    at: Instant,
    outcome: Outcome,
}

/// Why a token could not be resolved.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("ACL not found")]
    NotFound,
    #[error("cannot check the ACL token: registry server unreachable")]
    Unreachable,
    #[error("cannot check the ACL token: the registry server refused this agent ({0})")]
    Refused(String),
}

impl IntoResponse for ResolveError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => ApiError::Forbidden(self.to_string()).into_response(),
            Self::Unreachable => plain(StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            Self::Refused(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, self.to_string()),
        }
    }
}

/// Resolves the tokens presented to an agent through its server.
pub(crate) struct RemoteAcl {
    http: reqwest::Client,
    url: String,
    node: String,
    /// The agent's tokens: its own authenticates the resolution calls and is never lent to
    /// callers; the default one is used for requests that carry no token.
    tokens: Arc<AgentTokens>,
    cache: Mutex<HashMap<String, Cached>>,
    /// The server's last answer said ACLs are off.
    acls_off: AtomicBool,
}

impl RemoteAcl {
    pub(crate) fn new(
        http: reqwest::Client,
        server: &str,
        node: &str,
        tokens: Arc<AgentTokens>,
    ) -> Self {
        Self {
            http,
            url: format!("{server}/v1/internal/berth/acl/resolve"),
            node: node.to_owned(),
            tokens,
            cache: Mutex::default(),
            acls_off: AtomicBool::new(false),
        }
    }

    /// Whether the server's last answer said ACLs are on.
    pub(crate) fn acls_enabled(&self) -> bool {
        !self.acls_off.load(Ordering::Relaxed)
    }

    /// Resolves the token of requests without one, so a server outage right after start
    /// finds it cached (and knows whether ACLs are on).
    pub(crate) async fn warm(&self) {
        if let Err(err) = self.resolve(None).await {
            tracing::warn!(cause = %err, "the default ACL token could not be resolved");
        }
    }

    fn cached(&self, secret: &str) -> Option<(bool, Outcome)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(secret)
            .map(|c| (c.at.elapsed() < TOKEN_TTL, c.outcome.clone()))
    }

    fn remember(&self, secret: &str, outcome: Outcome) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED && !cache.contains_key(secret) {
            cache.retain(|_, c| c.at.elapsed() < TOKEN_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            secret.to_owned(),
            Cached {
                at: Instant::now(),
                outcome,
            },
        );
    }

    /// The authorizer of `presented` (`None`: the default token, else anonymous).
    async fn resolve(&self, presented: Option<&str>) -> Result<Arc<Authorizer>, ResolveError> {
        let default = self.tokens.get(TokenKind::Default);
        let secret = presented.or(default.as_deref()).unwrap_or_default();
        let stale = match self.cached(secret) {
            Some((true, outcome)) => return known(outcome),
            Some((false, outcome)) => Some(outcome),
            None => None,
        };
        match (self.ask(secret).await, stale) {
            (Ok(outcome), _) => {
                self.remember(secret, outcome.clone());
                known(outcome)
            }
            (Err(ResolveError::Unreachable), Some(outcome)) => {
                tracing::debug!("registry server unreachable; using a token's cached ACL");
                known(outcome)
            }
            (Err(ResolveError::Unreachable), None) if self.acls_off.load(Ordering::Relaxed) => {
                Ok(Arc::new(Authorizer::AllowAll))
            }
            (Err(err), _) => Err(err),
        }
    }

    async fn ask(&self, secret: &str) -> Result<Outcome, ResolveError> {
        let mut req = self
            .http
            .put(&self.url)
            .timeout(RESOLVE_TIMEOUT)
            .json(&ResolveRequest {
                node: self.node.clone(),
                secret_id: secret.to_owned(),
            });
        if let Some(t) = self.tokens.get(TokenKind::Agent) {
            req = req.header("X-Consul-Token", t);
        }
        let resp = req.send().await.map_err(|e| {
            tracing::warn!(cause = %e.without_url(), "resolving an ACL token failed");
            ResolveError::Unreachable
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let reason = format!("{}: {}", status.as_u16(), text.trim());
            tracing::warn!(
                reason = %reason,
                "the registry server refused to resolve an ACL token for this agent; its --token needs node:write on its node"
            );
            return Err(ResolveError::Refused(reason));
        }
        let answer: ResolveAnswer = resp.json().await.map_err(|e| {
            tracing::warn!(cause = %e.without_url(), "undecodable ACL resolution");
            ResolveError::Unreachable
        })?;
        self.acls_off.store(!answer.enabled, Ordering::Relaxed);
        Ok(match answer {
            ResolveAnswer { found: false, .. } => Outcome::NotFound,
            ResolveAnswer {
                management: true, ..
            } => Outcome::Known(Arc::new(Authorizer::AllowAll)),
            ResolveAnswer { rules, .. } => Outcome::Known(Arc::new(Authorizer::from_rule_texts(
                rules.iter().map(String::as_str),
            ))),
        })
    }
}

fn known(outcome: Outcome) -> Result<Arc<Authorizer>, ResolveError> {
    match outcome {
        Outcome::Known(authorizer) => Ok(authorizer),
        Outcome::NotFound => Err(ResolveError::NotFound),
    }
}

/// Middleware of the agent's own endpoints: resolves the request's token and stores the
/// [`Authz`] the handlers check, as the server's middleware does.
pub(crate) async fn agent_layer(
    State(acl): State<Arc<RemoteAcl>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let secret = presented_token(&parts);
    match acl.resolve(secret.as_deref()).await {
        Ok(authorizer) => {
            parts.extensions.insert(Authz(authorizer));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(err) => err.into_response(),
    }
}
