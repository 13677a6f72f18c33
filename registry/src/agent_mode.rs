//! `berth-registry agent`: serves the agent API locally, syncs to the server, heartbeats, and
//! forwards every other request to the server.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures::TryStreamExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::acl::{Need, Resource};
use crate::agent::local::{LocalAgent, LocalOptions};
use crate::agent::sync::agent_node;
use crate::agent::sync::{self, NodeSpec, Target};
use crate::agent::tokens::{AgentTokens, TokenKind};
use crate::client::Client;
use crate::dto::{AgentConfig as AgentConfigDto, AgentMember, AgentSelf};
use crate::http::ApiError;
use crate::http::authz::RemoteAcl;
use crate::http::authz::{Authz, presented_token};
use crate::http::v1::agent_local::{self, AgentApi};
use crate::http::v1::agent_token::{self, TokenApi};
use crate::http::v1::internal::Heartbeat;
use crate::http::v1::monitor;

/// How an agent joins and serves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server address: `host:port` or `http://host:port`.
    pub join: String,
    /// Keep retrying the first contact instead of failing.
    pub retry_join: bool,
    /// This host's node name.
    pub node_name: String,
    /// Address registered for this node (default: the listener's IP, or 127.0.0.1).
    pub advertise: Option<IpAddr>,
    /// The agent's own token (Consul's `acl.tokens.agent`): sent with its anti-entropy,
    /// heartbeats, leave and token resolutions. Never lent to callers.
    pub token: Option<String>,
    /// Token for requests that carry none (Consul's `acl.tokens.default`): checked on the
    /// agent's own endpoints and added to forwarded requests. `None`: the anonymous token.
    pub default_token: Option<String>,
    /// Run script checks.
    pub enable_script_checks: bool,
    /// Period of the full anti-entropy sync (it also runs after every change).
    pub sync_interval: Duration,
    /// Period of heartbeats to the server.
    pub heartbeat_interval: Duration,
    /// Output-only check changes are synced at most this often (status changes at once).
    pub check_update_interval: Duration,
    /// Where the node ID and registered services and checks are kept across restarts
    /// (`None`: memory only, a new node ID at each start).
    pub data_dir: Option<std::path::PathBuf>,
}

impl AgentConfig {
    /// Defaults for joining `server` as `node_name`.
    pub fn new(join: &str, node_name: &str) -> Self {
        Self {
            join: join.to_owned(),
            retry_join: false,
            node_name: node_name.to_owned(),
            advertise: None,
            token: None,
            default_token: None,
            enable_script_checks: false,
            sync_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            check_update_interval: crate::agent::local::DEFAULT_CHECK_UPDATE_INTERVAL,
            data_dir: None,
        }
    }

    fn server_url(&self) -> String {
        if self.join.starts_with("http://") {
            self.join.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", self.join)
        }
    }
}

/// Why an agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentRunError {
    /// The server address is unusable.
    #[error("invalid server address: {0}")]
    Address(String),
    /// The server could not be reached at start (without `retry_join`).
    #[error("cannot join {server}: {reason}")]
    Join { server: String, reason: String },
    /// Serving failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// The node ID cannot be kept in the data directory.
    #[error(transparent)]
    NodeId(#[from] crate::agent::node_id::NodeIdError),
}

struct Proxy {
    http: reqwest::Client,
    server: String,
    /// The agent's own token, for its own calls; the default token, added to forwarded
    /// requests that carry no token. Both may be replaced at run time (`/v1/agent/token/*`).
    tokens: Arc<AgentTokens>,
}

struct AgentShared {
    proxy: Proxy,
    /// Token resolution through the server (also tells whether ACLs are on).
    acl: Arc<RemoteAcl>,
    local: Arc<LocalAgent>,
    config: AgentConfig,
    node_id: String,
    datacenter: String,
    advertise: String,
    port: u16,
    shutdown: CancellationToken,
    /// False while the server refuses this agent's heartbeats because another live agent holds
    /// the node name (other heartbeat failures leave it alone); anti-entropy and the leave wait
    /// for it. The first heartbeat is answered before anti-entropy starts.
    admitted: watch::Sender<bool>,
    in_conflict: AtomicBool,
    /// The last heartbeat failed: the next one that succeeds triggers a full anti-entropy
    /// round at once.
    beat_failing: AtomicBool,
}

/// Runs an agent on `listener` until `shutdown`; on shutdown it leaves the cluster gracefully.
pub async fn run_agent(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentRunError> {
    let server = config.server_url();
    let client = Client::new(&server, config.token.clone())
        .map_err(|e| AgentRunError::Address(e.to_string()))?;
    let local_addr = listener.local_addr()?;
    let advertise = config
        .advertise
        .unwrap_or(if local_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local_addr.ip()
        });
    let node_id = crate::agent::node_id::load_or_create(config.data_dir.as_deref())?;
    // First contact: the server's datacenter.
    let datacenter = loop {
        match client.catalog_datacenter().await {
            Ok(dc) => break dc,
            Err(e) if config.retry_join => {
                tracing::warn!(server = %server, cause = %e, "join failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                return Err(AgentRunError::Join {
                    server,
                    reason: e.to_string(),
                });
            }
        }
    };
    tracing::info!(server = %server, node = %config.node_name, node_id = %node_id, "joined");
    let tasks = CancellationToken::new();
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir)?;
    }
    let options = LocalOptions {
        enable_script_checks: config.enable_script_checks,
        check_update_interval: config.check_update_interval,
        file: config
            .data_dir
            .as_ref()
            .map(|d| d.join("agent-services.json")),
    };
    let local = LocalAgent::with_options(&config.node_name, options, tasks.clone());
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| AgentRunError::Address(e.to_string()))?;
    let tokens = Arc::new(AgentTokens::new(
        config.default_token.clone(),
        config.token.clone(),
    ));
    let acl = Arc::new(RemoteAcl::new(
        http.clone(),
        &server,
        &config.node_name,
        tokens.clone(),
    ));
    let shared = Arc::new(AgentShared {
        proxy: Proxy {
            http,
            server: server.clone(),
            tokens: tokens.clone(),
        },
        acl: acl.clone(),
        local: local.clone(),
        config: config.clone(),
        node_id: node_id.clone(),
        datacenter: datacenter.clone(),
        advertise: advertise.to_string(),
        port: local_addr.port(),
        shutdown: shutdown.clone(),
        admitted: watch::Sender::new(true),
        in_conflict: AtomicBool::new(false),
        beat_failing: AtomicBool::new(false),
    });
    heartbeat(&shared).await;
    acl.warm().await;
    let spec = NodeSpec {
        node: agent_node(
            &config.node_name,
            &node_id,
            &advertise.to_string(),
            &datacenter,
        ),
        protected_services: vec![],
        skip_node_update: false,
    };
    let token_task = tokio::spawn(use_new_tokens(
        shared.clone(),
        client.clone(),
        tasks.clone(),
    ));
    let sync_task = tokio::spawn(sync::run(
        local.clone(),
        Target::Remote(client),
        spec,
        config.sync_interval,
        shared.admitted.subscribe(),
        tasks.clone(),
    ));
    let reaper = tokio::spawn(sync::run_reaper(local.clone(), tasks.clone()));
    let beats = tokio::spawn(heartbeat_loop(shared.clone(), tasks.clone()));
    let app = router(shared.clone(), acl).layer(
        tower_http::trace::TraceLayer::new_for_http()
            .make_span_with(crate::http::authz::request_span),
    );
    let served = berth_kit::serve::serve(
        listener,
        app,
        berth_kit::serve::Limits::from_env(),
        shutdown.clone().cancelled_owned(),
    )
    .await;
    tasks.cancel();
    let _ = tokio::join!(sync_task, reaper, beats, token_task);
    local.close().await;
    // A refused duplicate must not deregister the live agent's node.
    if *shared.admitted.borrow() {
        leave(&shared).await;
    }
    served?;
    Ok(())
}

/// Puts a new agent token into the anti-entropy client and starts a full sync round with it
/// (a new default token too), as Consul's `SyncFull.Trigger` after `/v1/agent/token/*`.
async fn use_new_tokens(s: Arc<AgentShared>, client: Client, stop: CancellationToken) {
    let mut changes = s.proxy.tokens.subscribe();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        client.set_token(s.proxy.tokens.get(TokenKind::Agent));
        // Wakes the sync loop for a full round; the admission itself is unchanged.
        s.admitted.send_modify(|_| {});
        tracing::info!("ACL token changed; anti-entropy re-syncs with it");
    }
}

/// The agent's own endpoints, checked against ACLs here as on the server; everything else is
/// forwarded with the caller's token (or the default token) and checked by the server.
fn router(shared: Arc<AgentShared>, acl: Arc<RemoteAcl>) -> Router {
    let api = Arc::new(AgentApi {
        local: shared.local.clone(),
        datacenter: shared.datacenter.clone(),
    });
    let own = Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/join/{addr}", put(join))
        .route("/v1/agent/leave", put(leave_handler))
        .route("/v1/agent/reload", put(reload))
        .with_state(shared.clone())
        .merge(agent_local::routes(api))
        .merge(monitor::routes(Arc::new(monitor::MonitorApi {
            node: shared.config.node_name.clone(),
            shutdown: shared.shutdown.clone(),
        })))
        .merge(agent_token::routes(Arc::new(TokenApi {
            tokens: shared.proxy.tokens.clone(),
            acls_enabled: {
                let acl = acl.clone();
                Box::new(move || acl.acls_enabled())
            },
        })))
        .layer(axum::middleware::from_fn_with_state(
            acl,
            crate::http::authz::agent_layer,
        ));
    Router::new()
        .route("/v1/session/create", put(session_create))
        .route("/v1/event/list", get(event_list))
        .route("/v1/agent/members", get(members))
        .fallback(forward)
        .with_state(shared)
        .merge(own)
        // The web UI is served by the agent itself; its API calls go through `forward`.
        .merge(crate::http::ui::routes())
}

fn member(s: &AgentShared) -> AgentMember {
    AgentMember {
        name: s.config.node_name.clone(),
        addr: s.advertise.clone(),
        port: s.port,
        tags: [
            ("role".to_owned(), "node".to_owned()),
            ("dc".to_owned(), s.datacenter.clone()),
            ("id".to_owned(), s.node_id.clone()),
        ]
        .into(),
        status: 1,
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}

async fn agent_self(State(s): State<Arc<AgentShared>>, authz: Authz) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &s.config.node_name, Need::Read)?;
    let answer = AgentSelf {
        config: AgentConfigDto {
            datacenter: s.datacenter.clone(),
            primary_datacenter: s.datacenter.clone(),
            node_name: s.config.node_name.clone(),
            node_id: s.node_id.clone(),
            server: false,
            revision: "berth".to_owned(),
            version: "1.22.0".to_owned(),
        },
        debug_config: crate::http::v1::agent::debug_config(&crate::http::v1::agent::DebugFacts {
            datacenter: &s.datacenter,
            node_name: &s.config.node_name,
            node_id: &s.node_id,
            server: false,
            acls_enabled: s.acl.acls_enabled(),
            http_addr: &format!("{}:{}", s.advertise, s.port),
        }),
        coord: None,
        member: member(&s),
        stats: [(
            "consul".to_owned(),
            [
                ("server".to_owned(), "false".to_owned()),
                ("known_servers".to_owned(), "1".to_owned()),
            ]
            .into(),
        )]
        .into(),
        meta: [(
            "berth-version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]
        .into(),
    };
    Ok(crate::http::json(&answer))
}

/// `PUT /v1/agent/reload`: as on the server, nothing to reload (the flags are read at start);
/// checked against this agent's node, as Consul's `agent:write`.
async fn reload(State(s): State<Arc<AgentShared>>, authz: Authz) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &s.config.node_name, Need::Write)?;
    Ok(StatusCode::OK.into_response())
}

async fn join(
    State(s): State<Arc<AgentShared>>,
    authz: Authz,
    Path(addr): Path<String>,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &s.config.node_name, Need::Write)?;
    let wanted = s.config.server_url();
    if wanted == addr || wanted.ends_with(&format!("//{addr}")) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::Internal(format!(
            "this agent is joined to {wanted}; restart it with --join {addr} to move"
        )))
    }
}

async fn leave_handler(
    State(s): State<Arc<AgentShared>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &s.config.node_name, Need::Write)?;
    s.shutdown.cancel();
    Ok(StatusCode::OK.into_response())
}

fn beat_body(s: &AgentShared) -> Heartbeat {
    Heartbeat {
        node: s.config.node_name.clone(),
        id: s.node_id.clone(),
        address: s.advertise.clone(),
        port: s.port,
    }
}

/// Why the server did not take a heartbeat or leave.
enum Refused {
    /// 409: another live agent has this node name.
    Conflict(String),
    /// Anything else (unreachable, ACLs, ...).
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict(text) | Self::Failed(text) => f.write_str(text),
        }
    }
}

async fn internal(s: &AgentShared, path: &str) -> Result<(), Refused> {
    let mut req = s
        .proxy
        .http
        .put(format!("{}{path}", s.proxy.server))
        .timeout(Duration::from_secs(5))
        .json(&beat_body(s));
    if let Some(t) = s.proxy.tokens.get(TokenKind::Agent) {
        req = req.header("X-Consul-Token", t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Refused::Failed(crate::client::redact_url(e).to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = format!("{status}: {}", resp.text().await.unwrap_or_default());
    Err(if status == StatusCode::CONFLICT {
        Refused::Conflict(text)
    } else {
        Refused::Failed(text)
    })
}

/// One heartbeat. A name conflict is logged when it starts and when it ends; the agent keeps
/// heartbeating and is let in once the other agent with its node name leaves or fails.
async fn heartbeat(s: &AgentShared) {
    match internal(s, "/v1/internal/berth/heartbeat").await {
        Ok(()) => {
            let recovered = s.beat_failing.swap(false, Ordering::Relaxed);
            if recovered {
                tracing::info!("server reachable again; re-syncing at once");
            }
            s.admitted.send_if_modified(|admitted| {
                let notify = !*admitted || recovered;
                *admitted = true;
                notify
            });
            if s.in_conflict.swap(false, Ordering::Relaxed) {
                tracing::info!(node = %s.config.node_name, "node name conflict over; syncing");
            }
        }
        Err(Refused::Conflict(text)) => {
            s.admitted.send_replace(false);
            if !s.in_conflict.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    node = %s.config.node_name,
                    cause = %text,
                    "node name conflict: another live agent uses this node name; not syncing \
                     until it leaves or fails (retrying every heartbeat)"
                );
            }
        }
        Err(e) => {
            s.beat_failing.store(true, Ordering::Relaxed);
            tracing::warn!(cause = %e, "heartbeat failed");
        }
    }
}

async fn heartbeat_loop(s: Arc<AgentShared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(s.config.heartbeat_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => heartbeat(&s).await,
        }
    }
}

async fn leave(s: &AgentShared) {
    match internal(s, "/v1/internal/berth/leave").await {
        Ok(()) => tracing::info!("left the cluster"),
        Err(e) => tracing::warn!(cause = %e, "graceful leave failed"),
    }
}

/// Sessions created through an agent default to the agent's node, as in Consul.
async fn session_create(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
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
async fn members(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
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
async fn event_list(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
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
async fn forward(State(s): State<Arc<AgentShared>>, request: Request) -> Response {
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
