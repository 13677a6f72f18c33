//! `GET /v1/agent/monitor?loglevel=&logjson`: the registry's own log, streamed (see
//! `crate::logs`), served the same way by a server and by `berth-registry agent`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::acl::{Need, Resource};
use crate::http::ApiError;
use crate::http::authz::Authz;
use crate::http::query::ConsulQuery;
use crate::logs::{Listener, parse_level, rank};

/// What the monitor needs.
pub(crate) struct MonitorApi {
    /// The agent's node (`agent:read` on it).
    pub(crate) node: String,
    /// Ends every stream at shutdown, so open monitors do not hold the drain.
    pub(crate) shutdown: CancellationToken,
}

pub(crate) fn routes(api: Arc<MonitorApi>) -> Router {
    Router::new()
        .route("/v1/agent/monitor", get(monitor))
        .with_state(api)
}

/// As Consul's `AgentMonitor`: `agent:read`, then `loglevel` (default `INFO`; unknown: 400
/// `Unknown log level: <level>`), `logjson` by presence. 200 at once, then one line per log
/// event at that level or less verbose, until the caller goes away or the registry stops. A
/// caller that falls more than 512 lines behind loses the oldest.
async fn monitor(
    State(api): State<Arc<MonitorApi>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &api.node, Need::Read)?;
    let asked = query
        .params
        .get("loglevel")
        .filter(|l| !l.is_empty())
        .unwrap_or("INFO");
    let level = parse_level(asked)
        .ok_or_else(|| ApiError::BadRequest(format!("Unknown log level: {asked}")))?;
    let json = query.params.has("logjson");
    let listener = Listener::new(level);
    let stream = futures::stream::unfold(
        (listener, api.shutdown.clone()),
        move |(mut listener, shutdown)| async move {
            loop {
                let line = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    line = listener.lines.recv() => line,
                };
                match line {
                    Ok(line) if rank(line.level) <= rank(listener.level) => {
                        let text = if json { &line.json } else { &line.text };
                        let chunk = Bytes::from(text.clone());
                        return Some((Ok::<_, Infallible>(chunk), (listener, shutdown)));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
