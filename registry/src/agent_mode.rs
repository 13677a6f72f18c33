//! `berth-registry agent`: serves the agent API locally, syncs to the server, heartbeats, and
//! forwards every other request to the server. This file holds the config, `run_agent`, the
//! route table and the agent's own handlers; heartbeats and leave are in `heartbeat.rs`, the
//! forwarding in `forward.rs`.

mod forward;
mod heartbeat;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
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
use crate::http::authz::Authz;
use crate::http::authz::RemoteAcl;
use crate::http::v1::agent_local::{self, AgentApi};
use crate::http::v1::agent_token::{self, TokenApi};
use crate::http::v1::monitor;
use forward::{event_list, forward, members, session_create};
use heartbeat::{heartbeat, heartbeat_loop, leave};

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
