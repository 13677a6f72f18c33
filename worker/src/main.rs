//! `berth-worker` binary: parses the command line, installs tracing, binds and runs the worker.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_worker::Config;
use berth_worker_api::Secret;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The berth worker: builds and runs compose stacks through the Docker Engine API.
#[derive(Debug, Parser)]
#[command(name = "berth-worker", version)]
struct Cli {
    /// JSON config file; flags and environment variables override its values.
    #[arg(long, env = "BERTH_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the worker API [default: 127.0.0.1:8833].
    #[arg(long, env = "BERTH_WORKER_LISTEN")]
    listen: Option<String>,
    /// Address published in endpoints and registrations.
    #[arg(long, env = "BERTH_WORKER_ADVERTISE")]
    advertise: Option<String>,
    /// IP address published ports are bound on [default: the advertise address]; `0.0.0.0`
    /// binds every interface.
    #[arg(long, env = "BERTH_WORKER_PUBLISH_ADDRESS")]
    publish_address: Option<String>,
    /// Where checkouts and stack records live [default: /var/lib/berth-worker].
    #[arg(long, env = "BERTH_WORKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name in labels and registrations [default: the host name].
    #[arg(long, env = "BERTH_WORKER_NODE_NAME")]
    node_name: Option<String>,
    /// Local Consul-compatible agent [default: http://127.0.0.1:8500].
    #[arg(long, env = "BERTH_WORKER_REGISTRY")]
    registry: Option<String>,
    /// Run without any registry (no registrations, no KV keys).
    #[arg(long, env = "BERTH_WORKER_NO_REGISTRY")]
    no_registry: bool,
    /// Do not fence stacks by the master's records (for a worker used without a master): by
    /// default it refuses to build or start, and removes, stacks the records place elsewhere.
    #[arg(long, env = "BERTH_WORKER_NO_FENCE")]
    no_fence: bool,
    #[arg(long, env = "BERTH_WORKER_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    #[arg(long, env = "BERTH_WORKER_REGISTRY_TOKEN_FILE")]
    registry_token_file: Option<PathBuf>,
    /// Run the registry agent in-process, joined to this registry server (`host:port`).
    #[arg(long, env = "BERTH_WORKER_JOIN", conflicts_with = "registry")]
    join: Option<String>,
    /// Where the in-process agent serves the registry API [default: 127.0.0.1:8500].
    #[arg(long, env = "BERTH_WORKER_AGENT_LISTEN")]
    agent_listen: Option<String>,
    #[arg(long, env = "BERTH_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    #[arg(long, env = "BERTH_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Instances this worker accepts (published as meta for placement) [default: 20].
    #[arg(long, env = "BERTH_WORKER_CAPACITY")]
    capacity: Option<u32>,
    /// Memory limit of a container whose compose file sets none (empty = none) [default: 2g].
    #[arg(long, alias = "memory", env = "BERTH_WORKER_DEFAULT_MEMORY")]
    default_memory: Option<String>,
    /// CPU limit of a container whose compose file sets none (empty = none) [default: 1].
    #[arg(long, alias = "cpus", env = "BERTH_WORKER_DEFAULT_CPUS")]
    default_cpus: Option<String>,
    /// Process limit of a container whose compose file sets none (0 = none) [default: 512].
    #[arg(long, alias = "pids-limit", env = "BERTH_WORKER_DEFAULT_PIDS")]
    default_pids: Option<i64>,
    /// The most memory a compose file may ask for per container, e.g. `4g` [default: no cap].
    #[arg(long, env = "BERTH_WORKER_MAX_MEMORY")]
    max_memory: Option<String>,
    /// The most CPUs a compose file may ask for per container, e.g. `2` [default: no cap].
    #[arg(long, env = "BERTH_WORKER_MAX_CPUS")]
    max_cpus: Option<String>,
    /// The most processes a compose file may ask for per container [default: no cap].
    #[arg(long, env = "BERTH_WORKER_MAX_PIDS")]
    max_pids: Option<i64>,
    /// Build timeout per service, e.g. `15m` [default: 15m].
    #[arg(long, env = "BERTH_WORKER_BUILD_TIMEOUT", value_parser = humantime::parse_duration)]
    build_timeout: Option<Duration>,
    /// Default readiness timeout of a start, e.g. `2m` [default: 2m].
    #[arg(long, env = "BERTH_WORKER_START_TIMEOUT", value_parser = humantime::parse_duration)]
    start_timeout: Option<Duration>,
    /// Services of one stack built at the same time [default: the cores, at most 4].
    #[arg(long, env = "BERTH_BUILD_PARALLELISM", value_parser = clap::value_parser!(u64).range(1..=64))]
    build_parallelism: Option<u64>,
    /// Built releases per stack whose images are kept (rollback to them builds nothing)
    /// [default: 3].
    #[arg(long, env = "BERTH_WORKER_KEEP_RELEASES", value_parser = clap::value_parser!(u64).range(1..=100))]
    keep_releases: Option<u64>,
    /// Image builder: `auto` (BuildKit through the Engine API, falling back to the classic
    /// builder), `buildkit` or `classic` [default: auto].
    #[arg(long, env = "BERTH_WORKER_BUILDER", value_enum)]
    builder: Option<berth_worker::BuilderChoice>,
    /// Run every container as this user (services asking for root are rejected).
    #[arg(long, env = "BERTH_WORKER_RUN_AS_USER")]
    run_as_user: Option<String>,
    /// Capabilities `cap_add` may name (comma list).
    #[arg(long, env = "BERTH_WORKER_ALLOWED_CAPS", value_delimiter = ',')]
    allowed_caps: Option<Vec<String>>,
    /// The static `berth-forward` binary forwarders are built from, which hold the published
    /// TCP ports across rollouts [default: `berth-forward` next to this executable; without
    /// one, services publishing a host port roll stop-first].
    #[arg(long, env = "BERTH_WORKER_FORWARDER_BIN")]
    forwarder_bin: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "BERTH_WORKER_LOG_JSON")]
    log_json: bool,
}

fn secret(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<Secret>> {
    Secret::from_value_or_file(value, file.as_deref()).with_context(|| {
        let path = file.as_ref().map(|p| p.display().to_string());
        format!("reading {}", path.unwrap_or_default())
    })
}

fn config(cli: Cli) -> anyhow::Result<Config> {
    let mut c = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = cli.$field { c.$field = v; })* };
    }
    set!(
        listen,
        data_dir,
        capacity,
        default_memory,
        default_cpus,
        default_pids,
        max_memory,
        max_cpus,
        max_pids,
        build_timeout,
        start_timeout,
        allowed_caps
    );
    if let Some(n) = cli.build_parallelism {
        c.build_parallelism = usize::try_from(n).unwrap_or(1);
    }
    if let Some(n) = cli.keep_releases {
        c.keep_releases = usize::try_from(n).unwrap_or(3);
    }
    if cli.forwarder_bin.is_some() {
        c.forwarder_bin = cli.forwarder_bin;
    }
    if let Some(b) = cli.builder {
        c.builder = b;
    }
    if cli.join.is_some() {
        c.join = cli.join;
    }
    if let Some(a) = cli.agent_listen {
        c.agent_listen = a;
    }
    if cli.advertise.is_some() {
        c.advertise = cli.advertise;
    }
    if cli.publish_address.is_some() {
        c.publish_address = cli.publish_address;
    }
    if cli.node_name.is_some() {
        c.node_name = cli.node_name;
    }
    if cli.run_as_user.is_some() {
        c.run_as_user = cli.run_as_user;
    }
    if cli.registry.is_some() {
        c.registry = cli.registry;
    }
    if cli.no_registry {
        c.registry = None;
    }
    if cli.no_fence {
        c.fence = false;
    }
    if let Some(t) = secret(cli.registry_token, cli.registry_token_file)? {
        c.registry_token = Some(t);
    }
    if let Some(t) = secret(cli.cluster_token, cli.cluster_token_file)? {
        c.cluster_token = t;
    }
    c.validate()?;
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    berth_kit::init_tracing(cli.log_json);
    berth_kit::serve::raise_fd_limit();
    let config = config(cli)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        berth_kit::shutdown_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    berth_worker::run(config, listener, shutdown).await?;
    Ok(())
}
