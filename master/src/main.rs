//! `berth-master` binary: reads the configuration (file, then environment and flags), installs
//! tracing, binds and runs the master until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use berth_master::Config;
use berth_master::placement::Strategy;
use berth_worker_api::Secret;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The berth master: code store and the instance API the main system calls.
#[derive(Debug, Parser)]
#[command(name = "berth-master", version)]
struct Cli {
    /// JSON configuration file (keys as in `Config`, snake_case); flags and environment override it.
    #[arg(long, env = "BERTH_MASTER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BERTH_MASTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (code store, generated tokens) [default: /var/lib/berth-master].
    #[arg(long, env = "BERTH_MASTER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Registry or Consul HTTP address [default: http://127.0.0.1:8500].
    #[arg(long, env = "BERTH_MASTER_REGISTRY")]
    registry: Option<String>,
    #[arg(long, env = "BERTH_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    #[arg(long, env = "BERTH_REGISTRY_TOKEN_FILE")]
    registry_token_file: Option<PathBuf>,
    /// Bearer token of the API (generated into <data>/api-token when none is given).
    #[arg(long, env = "BERTH_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    #[arg(long, env = "BERTH_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Token presented to workers.
    #[arg(long, env = "BERTH_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    #[arg(long, env = "BERTH_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Password of the code store's basic auth (generated into <data>/git-token when none).
    #[arg(long, env = "BERTH_GIT_TOKEN", hide_env_values = true)]
    git_token: Option<String>,
    #[arg(long, env = "BERTH_GIT_TOKEN_FILE")]
    git_token_file: Option<PathBuf>,
    /// URL workers clone the embedded code store from [default: http://<listen>].
    #[arg(long, env = "BERTH_MASTER_PUBLIC_URL")]
    public_url: Option<String>,
    /// Push every commit to this forge, e.g. 'http://forge:3000/{user}/{id}.git' (http:// or git://).
    #[arg(long, env = "BERTH_MASTER_GIT_REMOTE_TEMPLATE")]
    git_remote_template: Option<String>,
    /// User name sent with the forge token [default: berth].
    #[arg(long, env = "BERTH_MASTER_GIT_REMOTE_USERNAME")]
    git_remote_username: Option<String>,
    #[arg(long, env = "BERTH_GIT_REMOTE_TOKEN", hide_env_values = true)]
    git_remote_token: Option<String>,
    #[arg(long, env = "BERTH_GIT_REMOTE_TOKEN_FILE")]
    git_remote_token_file: Option<PathBuf>,
    /// Forge user workers clone as, with the read token [default: the push user name].
    #[arg(long, env = "BERTH_MASTER_GIT_REMOTE_READ_USERNAME")]
    git_remote_read_username: Option<String>,
    /// A forge token that may only read: workers clone with it instead of the push token.
    #[arg(long, env = "BERTH_GIT_REMOTE_READ_TOKEN", hide_env_values = true)]
    git_remote_read_token: Option<String>,
    #[arg(long, env = "BERTH_GIT_REMOTE_READ_TOKEN_FILE")]
    git_remote_read_token_file: Option<PathBuf>,
    /// POST every state change here (http://), signed with the webhook secret.
    #[arg(long, env = "BERTH_MASTER_WEBHOOK_URL")]
    webhook_url: Option<String>,
    #[arg(long, env = "BERTH_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    #[arg(long, env = "BERTH_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// least-loaded or round-robin [default: least-loaded].
    #[arg(long, env = "BERTH_MASTER_PLACEMENT")]
    placement: Option<Strategy>,
    /// Cap on the compressed upload [default: 64 MiB].
    #[arg(long, env = "BERTH_MASTER_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Cap on the decompressed total [default: 256 MiB].
    #[arg(long, env = "BERTH_MASTER_MAX_UNCOMPRESSED_BYTES")]
    max_uncompressed_bytes: Option<u64>,
    /// Cap on the number of archive entries [default: 10000].
    #[arg(long, env = "BERTH_MASTER_MAX_FILES")]
    max_files: Option<u64>,
    /// Cap on one file's size [default: 64 MiB].
    #[arg(long, env = "BERTH_MASTER_MAX_FILE_BYTES")]
    max_file_bytes: Option<u64>,
    /// Cap on decompressed/compressed size past 1 MiB [default: 100].
    #[arg(long, env = "BERTH_MASTER_MAX_RATIO")]
    max_ratio: Option<u64>,
    /// Uploads handled at once; more wait before their body is read [default: 2].
    #[arg(long, env = "BERTH_MASTER_MAX_CONCURRENT_UPLOADS")]
    max_concurrent_uploads: Option<u64>,
    /// How long an operation waits for a busy instance before answering 409 [default: 30].
    #[arg(long, env = "BERTH_MASTER_LOCK_WAIT_SECS")]
    lock_wait_secs: Option<u64>,
    /// Readiness timeout passed to workers on start.
    #[arg(long, env = "BERTH_MASTER_START_TIMEOUT_SECS")]
    start_timeout_secs: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, env = "BERTH_MASTER_LOG_JSON")]
    log_json: bool,
}

/// A secret from its value or its file; the value wins.
fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Option<Secret>> {
    Secret::from_value_or_file(value, file.as_deref()).with_context(|| {
        let path = file.as_ref().map(|p| p.display().to_string());
        format!("reading {what} from {}", path.unwrap_or_default())
    })
}

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = self.$field {
                    c.$field = v;
                }
            };
            ($field:ident, opt) => {
                if let Some(v) = self.$field {
                    c.$field = Some(v);
                }
            };
        }
        set!(listen);
        set!(data_dir);
        set!(registry);
        set!(public_url, opt);
        set!(git_remote_template, opt);
        set!(git_remote_username);
        set!(git_remote_read_username, opt);
        set!(webhook_url, opt);
        set!(placement);
        set!(lock_wait_secs);
        set!(start_timeout_secs, opt);
        if let Some(v) = self.max_upload_bytes {
            c.limits.max_compressed_bytes = v;
        }
        if let Some(v) = self.max_uncompressed_bytes {
            c.limits.max_uncompressed_bytes = v;
        }
        if let Some(v) = self.max_files {
            c.limits.max_files = v;
        }
        if let Some(v) = self.max_file_bytes {
            c.limits.max_file_bytes = v;
        }
        if let Some(v) = self.max_ratio {
            c.limits.max_ratio = v;
        }
        if let Some(v) = self.max_concurrent_uploads {
            c.limits.max_concurrent = v;
        }
        let pairs = [
            (
                self.registry_token,
                self.registry_token_file,
                "registry token",
                &mut c.registry_token,
            ),
            (
                self.api_token,
                self.api_token_file,
                "api token",
                &mut c.api_token,
            ),
            (
                self.cluster_token,
                self.cluster_token_file,
                "cluster token",
                &mut c.cluster_token,
            ),
            (
                self.git_token,
                self.git_token_file,
                "git token",
                &mut c.git_token,
            ),
            (
                self.git_remote_token,
                self.git_remote_token_file,
                "git remote token",
                &mut c.git_remote_token,
            ),
            (
                self.git_remote_read_token,
                self.git_remote_read_token_file,
                "git remote read token",
                &mut c.git_remote_read_token,
            ),
            (
                self.webhook_secret,
                self.webhook_secret_file,
                "webhook secret",
                &mut c.webhook_secret,
            ),
        ];
        for (value, file, what, slot) in pairs {
            if let Some(s) = secret(value, file, what)? {
                *slot = Some(s);
            }
        }
        c.log_json |= self.log_json;
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config()?;
    berth_kit::init_tracing(config.log_json);
    berth_kit::serve::raise_fd_limit();
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        berth_kit::shutdown_signal().await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    berth_master::run(config, listener, shutdown).await?;
    Ok(())
}
