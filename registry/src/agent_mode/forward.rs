//! What an agent sends on to the server: every request it does not answer itself, streamed
//! with its headers, and the few it rewrites first (session create, members, event list).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;

use super::AgentShared;
use crate::agent::tokens::TokenKind;
use crate::http::authz::presented_token;

/// Sessions created through an agent default to the agent's node, as in Consul.
pub(super) async fn session_create(
    State(s): State<Arc<AgentShared>>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return crate::http::plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large".into(),
        );
    };
    let mut value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            // Let the server word the decode error.
            Err(_) => {
                return forward(State(s), Request::from_parts(parts, Body::from(bytes))).await;
            }
        }
    };
    if let Some(obj) = value.as_object_mut() {
        let has_node = obj.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("node") && v.as_str().is_some_and(|n| !n.is_empty())
        });
        if !has_node {
            obj.retain(|k, _| !k.eq_ignore_ascii_case("node"));
            obj.insert("Node".into(), s.config.node_name.clone().into());
        }
    }
    let body = serde_json::to_vec(&value).unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    forward(State(s), Request::from_parts(parts, Body::from(body))).await
}

/// `/v1/agent/members` on an agent: the LAN pool is the server's list; `?wan=<non-empty>` is
/// the WAN pool, which only servers are in, so a client agent answers `null`, as Consul's
/// `WANMembers` of a client agent.
pub(super) async fn members(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
    let wan = crate::http::Params::parse(request.uri())
        .get("wan")
        .is_some_and(|v| !v.is_empty());
    if wan {
        return crate::http::json(&serde_json::Value::Null);
    }
    forward(State(s), request).await
}

/// `/v1/event/list` on an agent: the events this agent's node received, which the server
/// keeps (it answers the caller's token).
pub(super) async fn event_list(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let path = format!("/v1/internal/berth/events/{}{query}", s.config.node_name);
    match path.parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    forward(State(s), Request::from_parts(parts, body)).await
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

/// Forwards a request to the server, streaming both bodies and keeping headers (tokens and
/// `X-Consul-*` included).
pub(super) async fn forward(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut req = s
        .proxy
        .http
        .request(parts.method.clone(), format!("{}{path}", s.proxy.server));
    // Requests without a token run with the default token, never with the agent's own.
    let default_token = s
        .proxy
        .tokens
        .get(TokenKind::Default)
        .filter(|_| presented_token(&parts).is_none());
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str())
            || (default_token.is_some() && name == "x-consul-token")
        {
            continue;
        }
        req = req.header(name, value);
    }
    if let Some(t) = default_token {
        req = req.header("X-Consul-Token", t);
    }
    let stream = body.into_data_stream();
    req = req.body(reqwest::Body::wrap_stream(stream));
    match req.send().await {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if HOP_BY_HOP.contains(&name.as_str()) {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_str().as_bytes()) {
                    out = out.header(n, value.as_bytes());
                }
            }
            let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
            out.body(body)
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            // The error's text includes the URL, whose query may hold `?token=`.
            let cause = crate::client::redact_url(e);
            tracing::warn!(cause = %cause, path = %parts.uri.path(), "forwarding to the server failed");
            crate::http::plain(
                StatusCode::BAD_GATEWAY,
                "registry server unreachable".to_owned(),
            )
        }
    }
}
