//! The registry server: configuration and `run`, which serves the API until shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::acl::SecretId;
use crate::acl::store::AclStore;
use crate::agent::sync;
use crate::agent::{LocalAgent, LocalOptions};
use crate::http::{self, AppState};
use crate::members::Members;
use crate::store::state::{Check, CheckStatus, Node, Service};
use crate::store::{Registration, Store, StoreError};

/// How long in-flight requests may take to finish after shutdown starts.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ACL master token (reserved for ACL support); never printed.
pub use berth_kit::Secret as AclToken;

/// Server configuration: file, then environment, then flags (see `main.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens (default `127.0.0.1:8500`).
    pub http_addr: SocketAddr,
    /// Directory of the durable store; required unless `dev`.
    pub data_dir: Option<PathBuf>,
    /// This server's node name in the catalog.
    pub node_name: String,
    pub datacenter: String,
    /// Keep everything in memory (for tests and trials).
    pub dev: bool,
    pub acl_master_token: Option<AclToken>,
    /// Milliseconds without a heartbeat before an agent's node turns critical (default 10 s).
    pub failure_timeout_ms: u64,
    /// Run script checks (`Args`) registered with this server's own agent.
    pub enable_script_checks: bool,
    /// Milliseconds between syncs of output-only check changes of the server's own agent
    /// (Consul's `check_update_interval`, default 5 min; status changes sync at once).
    pub check_update_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8500)),
            data_dir: None,
            node_name: default_node_name(),
            datacenter: "dc1".to_owned(),
            dev: false,
            acl_master_token: None,
            failure_timeout_ms: 10_000,
            enable_script_checks: false,
            check_update_interval_ms: 300_000,
        }
    }
}

/// The host name, or `berth` when it cannot be read.
pub fn default_node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".to_owned())
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("data_dir is required unless dev mode is on")]
    MissingDataDir,
    #[error("invalid node name {0:?}: use letters, digits, '-', '_' and '.' (1 to 128)")]
    InvalidNodeName(String),
    #[error("invalid datacenter {0:?}: use lowercase letters, digits, '-' and '_'")]
    InvalidDatacenter(String),
}

impl Config {
    /// An in-memory server for tests and trials.
    pub fn dev(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_owned(),
            dev: true,
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.dev && self.data_dir.is_none() {
            return Err(ConfigError::MissingDataDir);
        }
        let name_ok = !self.node_name.is_empty()
            && self.node_name.len() <= 128
            && self
                .node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(ConfigError::InvalidNodeName(self.node_name.clone()));
        }
        let dc_ok = !self.datacenter.is_empty()
            && self
                .datacenter
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !dc_ok {
            return Err(ConfigError::InvalidDatacenter(self.datacenter.clone()));
        }
        Ok(())
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// `acl.json` cannot be read or parsed (the message names the file).
    #[error("acl data: {0}")]
    Acl(std::io::Error),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the registry API on `listener` until `shutdown` is cancelled, then drains requests,
/// stops the writer and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let local = listener.local_addr()?;
    let advertise = if local.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        local.ip()
    };
    let writer_stop = CancellationToken::new();
    let (app, writer) = build(
        &config,
        advertise,
        local.port(),
        shutdown.clone(),
        writer_stop.clone(),
    )
    .await?;
    tracing::info!(addr = %local, node = %config.node_name, dev = config.dev, "registry listening");
    let app = app.layer(
        tower_http::trace::TraceLayer::new_for_http()
            .make_span_with(crate::http::authz::request_span),
    );
    let serve = berth_kit::serve::serve(
        listener,
        app,
        berth_kit::serve::Limits::from_env(),
        shutdown.clone().cancelled_owned(),
    );
    let drain_bound = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let served = tokio::select! {
        served = serve => served,
        () = drain_bound => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still open at shutdown; closing them");
            Ok(())
        }
    };
    writer_stop.cancel();
    let _ = writer.await;
    served?;
    tracing::info!("registry stopped");
    Ok(())
}

/// Opens the store, registers this server in its catalog and builds the router. The writer
/// stops when `writer_stop` is cancelled; blocked queries end when `shutdown` is.
pub(crate) async fn build(
    config: &Config,
    advertise: IpAddr,
    port: u16,
    shutdown: CancellationToken,
    writer_stop: CancellationToken,
) -> Result<(axum::Router, tokio::task::JoinHandle<()>), Error> {
    let data_dir = if config.dev {
        None
    } else {
        config.data_dir.clone()
    };
    let (store, writer) = Store::open(data_dir.clone(), writer_stop)?;
    let node_id = register_self(&store, config, &advertise.to_string(), port).await?;
    let acl = match &config.acl_master_token {
        Some(token) => AclStore::enabled(
            SecretId::new(token.expose()),
            data_dir.clone(),
            &config.datacenter,
        )
        .map_err(Error::Acl)?,
        None => AclStore::disabled(),
    };
    let members = Members::new(Duration::from_millis(config.failure_timeout_ms));
    let now = tokio::time::Instant::now();
    // Only agents' nodes are members (they carry the server-owned `serfHealth`); nodes
    // registered straight into the catalog have no agent and must not fail for lack of one.
    store.read(|s| {
        let agent_nodes = s.nodes.values().filter(|n| {
            n.name != config.node_name
                && s.checks
                    .contains_key(&(n.name.clone(), sync::SERF_HEALTH.to_owned()))
        });
        for n in agent_nodes {
            members.seed(&n.name, &n.id, &n.address, now);
        }
    });
    let agent = LocalAgent::with_options(
        &config.node_name,
        LocalOptions {
            enable_script_checks: config.enable_script_checks,
            check_update_interval: Duration::from_millis(config.check_update_interval_ms),
            // Kept across restarts, as an agent's `--data-dir` keeps them: a worker registers
            // through the server's own agent (scripts/up.sh), and with the registrations in
            // memory only, anti-entropy removed its service at every restart until the
            // worker's next resync, up to 30 s later.
            file: data_dir.as_ref().map(|d| d.join("agent-services.json")),
        },
        shutdown.clone(),
    );
    let state = Arc::new(AppState {
        store: store.clone(),
        node_name: config.node_name.clone(),
        node_id,
        datacenter: config.datacenter.clone(),
        leader_addr: SocketAddr::new(advertise, port).to_string(),
        shutdown: shutdown.clone(),
        agent: agent.clone(),
        members: Arc::new(members),
        acl: Arc::new(acl),
        tokens: Arc::new(crate::agent::tokens::AgentTokens::new(None, None)),
        events: Default::default(),
        answers: Default::default(),
    });
    let own_node = store
        .read(|s| s.nodes.get(&config.node_name).cloned())
        .unwrap_or_default();
    let spec = sync::NodeSpec {
        node: own_node,
        protected_services: vec!["consul".to_owned()],
        skip_node_update: true,
    };
    tokio::spawn(sync::run(
        agent.clone(),
        sync::Target::Store(store),
        spec,
        Duration::from_secs(60),
        // The server's own node is always its member.
        tokio::sync::watch::Sender::new(true).subscribe(),
        shutdown.clone(),
    ));
    tokio::spawn(sync::run_reaper(agent, shutdown.clone()));
    tokio::spawn(crate::http::v1::internal::run_liveness(
        state.clone(),
        shutdown,
    ));
    Ok((http::router(state), writer))
}

/// Puts this server's node in the catalog with a passing `serfHealth` check and the `consul`
/// service, so default sessions work. Keeps the node id across restarts.
async fn register_self(
    store: &Store,
    config: &Config,
    address: &str,
    port: u16,
) -> Result<String, StoreError> {
    let existing_id = store.read(|s| s.nodes.get(&config.node_name).map(|n| n.id.clone()));
    let node_id = existing_id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let registration = Registration {
        node: Node {
            name: config.node_name.clone(),
            id: node_id.clone(),
            address: address.to_owned(),
            datacenter: config.datacenter.clone(),
            tagged_addresses: [
                ("lan".to_owned(), address.to_owned()),
                ("wan".to_owned(), address.to_owned()),
            ]
            .into(),
            meta: [("consul-network-segment".to_owned(), String::new())].into(),
            ..Node::default()
        },
        service: Some(Service {
            id: "consul".to_owned(),
            name: "consul".to_owned(),
            port,
            weights: (1, 1),
            ..Service::default()
        }),
        checks: vec![Check {
            id: "serfHealth".to_owned(),
            name: "Serf Health Status".to_owned(),
            status: CheckStatus::Passing,
            output: "Agent alive and reachable".to_owned(),
            definition: serde_json::json!({}),
            ..Check::default()
        }],
        skip_node_update: false,
    };
    store.catalog_register(registration).await?;
    Ok(node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_file_and_validation() {
        let defaults = Config::default();
        assert_eq!(defaults.http_addr, "127.0.0.1:8500".parse().unwrap());
        assert_eq!(defaults.datacenter, "dc1");
        assert!(matches!(
            defaults.validate(),
            Err(ConfigError::MissingDataDir)
        ));
        assert!(Config::dev("n1").validate().is_ok());
        let from_file: Config = serde_json::from_str(
            r#"{"data_dir":"/tmp/x","node_name":"reg-1","acl_master_token":"s3cret"}"#,
        )
        .unwrap();
        assert!(from_file.validate().is_ok());
        assert_eq!(
            from_file.acl_master_token.as_ref().map(AclToken::expose),
            Some("s3cret")
        );
        assert!(!format!("{from_file:?}").contains("s3cret"));
        assert!(serde_json::from_str::<Config>(r#"{"bogus":1}"#).is_err());
        let bad_name = Config {
            node_name: "a b".into(),
            ..Config::dev("x")
        };
        assert!(matches!(
            bad_name.validate(),
            Err(ConfigError::InvalidNodeName(_))
        ));
        let bad_dc = Config {
            datacenter: "DC 1".into(),
            ..Config::dev("x")
        };
        assert!(matches!(
            bad_dc.validate(),
            Err(ConfigError::InvalidDatacenter(_))
        ));
    }

    /// Issue 14, finding 10: a damaged `acl.json` was refused as `http server: EOF while
    /// parsing...`, naming neither the file nor the ACL data.
    #[tokio::test]
    async fn damaged_acl_json_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A store existed here (the store refuses an acl.json without one).
        drop(redb::Database::create(dir.path().join("registry.redb")).unwrap());
        std::fs::write(dir.path().join("acl.json"), b"{\"tokens\": [").unwrap();
        let config = Config {
            data_dir: Some(dir.path().to_owned()),
            dev: false,
            acl_master_token: Some(AclToken::new("root".to_owned())),
            ..Config::dev("n1")
        };
        let stop = CancellationToken::new();
        let Err(err) = build(
            &config,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8500,
            stop.clone(),
            stop.clone(),
        )
        .await
        else {
            panic!("a damaged acl.json must be refused");
        };
        let text = err.to_string();
        stop.cancel();
        assert!(text.contains("acl.json"), "{text}");
        assert!(text.starts_with("acl data: "), "{text}");
        assert!(!text.contains("http server"), "{text}");
    }
}
