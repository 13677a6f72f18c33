//! HTTP layer: Consul's `/v1` routes in one table, request parsing helpers and the one error type.

pub(crate) mod authz;
pub(crate) mod query;
pub(crate) mod ui;
pub(crate) mod v1;

use v1::{acl, agent, agent_local, catalog, health, internal, kv, session, status, txn};

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use futures::StreamExt as _;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::store::{Store, StoreError};

/// Largest KV value and txn body, as Consul (512 KiB).
pub(crate) const MAX_VALUE_SIZE: usize = 512 * 1024;
/// Largest JSON body of other requests.
const MAX_JSON_BODY: usize = 1024 * 1024;
/// How much of a too-large body is read and dropped before the 413 is sent.
const MAX_DRAIN: usize = 1024 * 1024;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) node_name: String,
    pub(crate) node_id: String,
    pub(crate) datacenter: String,
    /// `ip:port` of the HTTP listener, reported as the leader.
    pub(crate) leader_addr: String,
    /// Cancelled at shutdown: blocked queries answer at once.
    pub(crate) shutdown: CancellationToken,
    /// The server's own agent (its `/v1/agent/*` services and checks).
    pub(crate) agent: Arc<crate::agent::LocalAgent>,
    /// Joined agents and their liveness.
    pub(crate) members: Arc<crate::members::Members>,
    /// ACL tokens and policies.
    pub(crate) acl: Arc<acl::AclStore>,
}

/// Every route of the registry API.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let routes = routes(state);
    // Wrapped from outside: the `Allow` list is only on the response once it has left the
    // route's method dispatch, which a `Router::layer` middleware runs inside of.
    Router::new().fallback_service(axum::middleware::from_fn(method_rules).layer(routes))
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(txn::apply))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/session/destroy/", put(session::missing_id))
        .route("/v1/session/renew/", put(session::missing_id))
        .route("/v1/session/info/", get(session::missing_id))
        .route("/v1/session/node/", get(session::missing_node))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route("/v1/agent/self", get(agent::self_info))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route("/v1/health/checks/{name}", get(health::checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/agent/join/{addr}", put(agent::join))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/internal/berth/heartbeat", put(internal::heartbeat))
        .route("/v1/internal/berth/leave", put(internal::leave))
        .with_state(state.clone())
        .merge(agent_local::routes(Arc::new(agent_local::AgentApi {
            local: state.agent.clone(),
            datacenter: state.datacenter.clone(),
        })))
        .merge(acl::routes(state.acl.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.acl.clone(),
            acl::layer,
        ))
        // Outside the ACL layer: Consul checks these parameters before it resolves the token.
        .layer(axum::middleware::from_fn_with_state(
            state,
            query::query_rules,
        ))
        // The web UI: `/`, `/ui` and `/ui/*` (static files embedded in the binary). Added after
        // the ACL layer: the files are public, the API calls they make carry the token.
        .merge(ui::routes())
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::disable())
}

/// 404 for a path no route serves, with Consul's text.
async fn unknown_route(uri: Uri) -> Response {
    let text = if uri.path().contains("/v1/") {
        "Invalid URL path: not a recognized HTTP API endpoint\n"
    } else {
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
    };
    plain(StatusCode::NOT_FOUND, text.to_owned())
}

/// Consul's answers for a method a route does not serve: `OPTIONS` gets 200 and the `Allow`
/// header, any other method 405 `method X not allowed` with it. The router answers 405 with an
/// `Allow` list and no body; this fills in the rest.
async fn method_rules(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let served = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allow = if served.is_empty() {
        "OPTIONS".to_owned()
    } else {
        format!("OPTIONS,{served}")
    };
    let mut answer = if method == axum::http::Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        )
    };
    if let Ok(value) = HeaderValue::from_str(&allow) {
        answer.headers_mut().insert(header::ALLOW, value);
    }
    answer
}

/// Every error an endpoint answers with: plain text and Consul's status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// 500 with a text clients match (e.g. `does not have associated TTL`).
    #[error("{0}")]
    Internal(String),
    /// 403 `Permission denied` / `ACL not found`.
    #[error("{0}")]
    Forbidden(String),
    /// 401 `ACL support disabled`.
    #[error("{0}")]
    Unauthorized(String),
    /// 409: the request clashes with what exists (an agent's node name in use).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::BadRequest(text) => (StatusCode::BAD_REQUEST, text),
            Self::NotFound(text) => (StatusCode::NOT_FOUND, text),
            Self::TooLarge(text) => (StatusCode::PAYLOAD_TOO_LARGE, text),
            Self::Internal(text) => (StatusCode::INTERNAL_SERVER_ERROR, text),
            Self::Forbidden(text) => (StatusCode::FORBIDDEN, text),
            Self::Unauthorized(text) => (StatusCode::UNAUTHORIZED, text),
            Self::Conflict(text) => (StatusCode::CONFLICT, text),
            Self::Store(StoreError::Rejected(text)) => (StatusCode::INTERNAL_SERVER_ERROR, text),
            Self::Store(StoreError::Closed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "registry is shutting down".to_owned(),
            ),
            Self::Store(err) => {
                tracing::error!(cause = %err, "registry store failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal store error".to_owned(),
                )
            }
        };
        plain(status, text)
    }
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response with Consul's content type.
pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => ApiError::Store(StoreError::Corrupt(err.to_string())).into_response(),
    }
}

/// Query parameters, decoded; flags count by presence.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(uri: &Uri) -> Self {
        let Some(query) = uri.query() else {
            return Self::default();
        };
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(pair), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `u64` parameter; `Err(message)` when present but unparsable.
    pub(crate) fn u64(&self, name: &str, message: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(message.to_owned())),
        }
    }
}

/// Reads a body of at most `limit` bytes; larger ones get Consul's 413 text, a body that cannot
/// be read (broken chunked encoding, a connection cut mid-body) a 400.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = |n: String| {
        ApiError::TooLarge(format!(
            "Request body({n} bytes) too large, max size: {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut chunks = body.into_data_stream();
    let mut read = Vec::new();
    let mut total = 0usize;
    // Past the limit the rest is read and dropped (up to MAX_DRAIN) before answering, so a
    // client still sending its body reads the 413 instead of a connection reset, as with Go's
    // net/http.
    let mut cut_short = false;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::BadRequest(format!("Failed to read request body: {err}")))?;
        total = total.saturating_add(chunk.len());
        if total > limit.saturating_add(MAX_DRAIN) {
            cut_short = true;
            break;
        }
        if total <= limit && declared.is_none_or(|n| n <= limit) {
            read.extend_from_slice(&chunk);
        }
    }
    match declared {
        Some(n) if n > limit => Err(too_large(n.to_string())),
        // A body without Content-Length is only counted up to the drain limit.
        _ if cut_short => Err(too_large(format!("at least {total}"))),
        _ if total > limit => Err(too_large(total.to_string())),
        _ => Ok(Bytes::from(read)),
    }
}

/// Reads and decodes a JSON request body the way Consul does (see [`crate::dto::decode_request`]).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Option<T>, ApiError> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    crate::dto::decode_request(&bytes)
        .map(Some)
        .map_err(ApiError::BadRequest)
}

/// The percent-decoded path after `prefix` (e.g. the KV key after `/v1/kv/`).
pub(crate) fn path_tail(uri: &Uri, prefix: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest("Invalid key name: not valid UTF-8".to_owned()))
}

#[cfg(test)]
mod tests;
