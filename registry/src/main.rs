//! `berth-registry` binary: parses the command line and runs the service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_kit::Secret;
use berth_registry::agent::{AgentConfig, run_agent};
use berth_registry::server::{self, AclToken, Config};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
#[derive(Debug, Parser)]
#[command(name = "berth-registry", version)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "BERTH_REGISTRY_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a registry server (holds the state, serves Consul's HTTP API).
    Server(ServerArgs),
    /// Run an agent on this host, joined to a server: local services and checks, the rest
    /// forwarded.
    Agent(AgentArgs),
}

/// Agent flags; each also reads a `BERTH_AGENT_*` environment variable.
#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Server to join (`host:port` or `http://host:port`).
    #[arg(long, env = "BERTH_AGENT_JOIN")]
    join: String,
    /// Keep retrying until the server answers instead of exiting.
    #[arg(long, env = "BERTH_AGENT_RETRY_JOIN")]
    retry_join: bool,
    /// HTTP listen address of the local API.
    #[arg(long, env = "BERTH_AGENT_HTTP_ADDR", default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
    /// Node name of this host [default: the host name].
    #[arg(long, env = "BERTH_AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Address registered for this node [default: the listen address, or 127.0.0.1].
    #[arg(long, env = "BERTH_AGENT_ADVERTISE")]
    advertise: Option<std::net::IpAddr>,
    /// The agent's own ACL token (anti-entropy, heartbeats, token checks); never lent to
    /// callers.
    #[arg(long, env = "BERTH_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the agent's own ACL token.
    #[arg(long, env = "BERTH_AGENT_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// ACL token for requests that carry none [default: the anonymous token].
    #[arg(long, env = "BERTH_AGENT_DEFAULT_TOKEN", hide_env_values = true)]
    default_token: Option<String>,
    /// File holding the default ACL token.
    #[arg(
        long,
        env = "BERTH_AGENT_DEFAULT_TOKEN_FILE",
        conflicts_with = "default_token"
    )]
    default_token_file: Option<PathBuf>,
    /// Allow script checks (`Args`).
    #[arg(long, env = "BERTH_AGENT_ENABLE_SCRIPT_CHECKS")]
    enable_script_checks: bool,
    /// Period of the full anti-entropy sync (it also runs after every change).
    #[arg(long, env = "BERTH_AGENT_SYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    sync_interval: std::time::Duration,
    /// Directory keeping registered services and checks across restarts.
    #[arg(long, env = "BERTH_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Period of heartbeats to the server.
    #[arg(long, env = "BERTH_AGENT_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_interval: std::time::Duration,
    /// A check whose output changes but not its status is synced at most this often (status
    /// changes sync at once); 0s syncs every output change.
    #[arg(long, env = "BERTH_AGENT_CHECK_UPDATE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    check_update_interval: std::time::Duration,
}

impl AgentArgs {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let mut config = AgentConfig::new(
            &self.join,
            &self.node_name.unwrap_or_else(server::default_node_name),
        );
        config.retry_join = self.retry_join;
        config.advertise = self.advertise;
        config.enable_script_checks = self.enable_script_checks;
        config.sync_interval = self.sync_interval;
        config.heartbeat_interval = self.heartbeat_interval;
        config.check_update_interval = self.check_update_interval;
        config.data_dir = self.data_dir;
        config.token = secret(self.token, self.token_file)?;
        config.default_token = secret(self.default_token, self.default_token_file)?;
        Ok(config)
    }
}

/// A secret given directly or in a file (one trailing newline dropped).
fn secret(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    let secret = Secret::from_value_or_file(value, file.as_deref()).with_context(|| {
        let path = file.as_ref().map(|p| p.display().to_string());
        format!("reading {}", path.unwrap_or_default())
    })?;
    Ok(secret.map(|s| s.expose().to_owned()))
}

/// Precedence: flags, then `BERTH_REGISTRY_*` environment variables, then the `--config` file,
/// then defaults.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// JSON config file with the same keys in snake_case (`http_addr`, `data_dir`, ...).
    #[arg(long, env = "BERTH_REGISTRY_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8500].
    #[arg(long, env = "BERTH_REGISTRY_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Directory of the durable store (required unless --dev).
    #[arg(long, env = "BERTH_REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name of this server [default: the host name].
    #[arg(long, env = "BERTH_REGISTRY_NODE_NAME")]
    node_name: Option<String>,
    /// Datacenter name [default: dc1].
    #[arg(long, env = "BERTH_REGISTRY_DATACENTER")]
    datacenter: Option<String>,
    /// In-memory mode: nothing is written to disk.
    #[arg(long, env = "BERTH_REGISTRY_DEV")]
    dev: bool,
    /// ACL master (management) token.
    #[arg(long, env = "BERTH_REGISTRY_ACL_MASTER_TOKEN", hide_env_values = true)]
    acl_master_token: Option<String>,
    /// File holding the ACL master token.
    #[arg(
        long,
        env = "BERTH_REGISTRY_ACL_MASTER_TOKEN_FILE",
        conflicts_with = "acl_master_token"
    )]
    acl_master_token_file: Option<PathBuf>,
    /// Time without heartbeats before an agent's node turns critical [default: 10s].
    #[arg(long, env = "BERTH_REGISTRY_FAILURE_TIMEOUT", value_parser = humantime::parse_duration)]
    failure_timeout: Option<std::time::Duration>,
    /// Allow script checks (`Args`) on the server's own agent.
    #[arg(long, env = "BERTH_REGISTRY_ENABLE_SCRIPT_CHECKS")]
    enable_script_checks: bool,
    /// The server's own agent syncs output-only check changes at most this often [default: 5m].
    #[arg(long, env = "BERTH_REGISTRY_CHECK_UPDATE_INTERVAL", value_parser = humantime::parse_duration)]
    check_update_interval: Option<std::time::Duration>,
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(addr) = self.http_addr {
            config.http_addr = addr;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = Some(dir);
        }
        if let Some(name) = self.node_name {
            config.node_name = name;
        }
        if let Some(dc) = self.datacenter {
            config.datacenter = dc;
        }
        config.dev |= self.dev;
        config.enable_script_checks |= self.enable_script_checks;
        if let Some(timeout) = self.failure_timeout {
            config.failure_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        }
        if let Some(interval) = self.check_update_interval {
            config.check_update_interval_ms =
                u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        }
        if let Some(token) = secret(self.acl_master_token, self.acl_master_token_file)? {
            config.acl_master_token = Some(AclToken::new(token));
        }
        config.validate()?;
        Ok(config)
    }
}

/// The process's log (as every berth binary: `RUST_LOG`, default `info`; JSON with
/// `--log-json`) plus the stream `/v1/agent/monitor` reads, at the level each caller asks for.
fn init_tracing(json: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let output = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(berth_registry::logs::layer())
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    berth_kit::serve::raise_fd_limit();
    match cli.command {
        Command::Server(args) => {
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("binding {}", config.http_addr))?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                berth_kit::shutdown_signal().await;
                tracing::info!("shutdown signal received");
                trigger.cancel();
            });
            server::run(config, listener, shutdown).await?;
        }
        Command::Agent(args) => {
            let addr = args.http_addr;
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                berth_kit::shutdown_signal().await;
                tracing::info!("shutdown signal received");
                trigger.cancel();
            });
            run_agent(config, listener, shutdown).await?;
        }
    }
    Ok(())
}
