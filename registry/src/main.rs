//! `berth-registry` binary: parses the command line and runs the service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
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
        if let Some(token) = self.acl_master_token {
            config.acl_master_token = Some(AclToken::new(token));
        }
        if let Some(path) = self.acl_master_token_file {
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            config.acl_master_token = Some(AclToken::new(raw.trim_end_matches('\n')));
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Server(args) => {
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("binding {}", config.http_addr))?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown signal received");
                trigger.cancel();
            });
            server::run(config, listener, shutdown).await?;
        }
    }
    Ok(())
}
