//! HTTP layer, above the domain modules (store, acl, agent, checks), which never import it:
//! Consul's `/v1` routes in one table and the Consul-wide method rules. `query` parses Consul's
//! query parameters and answers blocking reads, `filter` the listing filters, `body` reads
//! request bodies, `decode` is the Go-compatible JSON decoder, `authz` resolves ACL tokens,
//! `v1/` holds the handlers. State-to-wire conversions are in `crate::convert`, below both this
//! layer and the agent.

pub(crate) mod authz;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod decode;
mod error;
pub(crate) mod filter;
pub(crate) mod query;
pub(crate) mod ui;
pub(crate) mod v1;

pub(crate) use body::{MAX_VALUE_SIZE, read_body, read_json};
pub(crate) use error::{ApiError, json, plain};
pub(crate) use query::{Params, path_tail};
use v1::{
    acl, agent, agent_local, agent_token, catalog, connect, event, health, internal, kv, metrics,
    monitor, session, status, txn,
};

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::store::Store;

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
    pub(crate) acl: Arc<crate::acl::store::AclStore>,
    /// The ACL tokens this server's agent uses (`/v1/agent/token/*`).
    pub(crate) tokens: Arc<crate::agent::tokens::AgentTokens>,
    /// User events fired, kept in memory.
    pub(crate) events: Arc<crate::events::Events>,
    /// Encoded answers of the large discovery reads.
    pub(crate) answers: cache::AnswerCache,
}

/// Every route of the registry API.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let routes = routes(state);
    // Wrapped from outside: the `Allow` list is only on the response once it has left the
    // route's method dispatch, which a `Router::layer` middleware runs inside of.
    let routes = axum::middleware::from_fn(method_rules).layer(routes);
    // Outermost: what a handler left of its request body is read after it answers.
    Router::new().fallback_service(axum::middleware::from_fn(body::drain_unread).layer(routes))
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
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::node_services),
        )
        .route(
            "/v1/catalog/gateway-services/{gateway}",
            get(connect::gateway_services),
        )
        .route("/v1/health/connect/{name}", get(connect::health_proxies))
        .route("/v1/health/ingress/{name}", get(connect::health_proxies))
        .route("/v1/health/checks/{name}", get(health::checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/agent/join/{addr}", put(agent::join))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/reload", put(agent::reload))
        .route("/v1/agent/force-leave/{*node}", put(agent::force_leave))
        .route("/v1/agent/metrics", get(metrics::metrics))
        .route("/v1/event/fire/{*name}", put(event::fire))
        .route("/v1/event/fire/", put(event::missing_name))
        .route("/v1/event/list", get(event::list))
        .route(
            "/v1/internal/berth/events/{node}",
            get(event::list_for_node),
        )
        .route("/v1/internal/berth/heartbeat", put(internal::heartbeat))
        .route("/v1/internal/berth/leave", put(internal::leave))
        .with_state(state.clone())
        .merge(agent_local::routes(Arc::new(agent_local::AgentApi {
            local: state.agent.clone(),
            datacenter: state.datacenter.clone(),
        })))
        .merge(acl::routes(state.acl.clone()))
        .merge(monitor::routes(Arc::new(monitor::MonitorApi {
            node: state.node_name.clone(),
            shutdown: state.shutdown.clone(),
        })))
        .merge(agent_token::routes(Arc::new(agent_token::TokenApi {
            tokens: state.tokens.clone(),
            acls_enabled: {
                let acl = state.acl.clone();
                Box::new(move || acl.is_enabled())
            },
        })))
        .layer(axum::middleware::from_fn_with_state(
            (state.acl.clone(), state.tokens.clone()),
            authz::server_layer,
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

#[cfg(test)]
mod tests;
