//! berth-master: the API the main system calls (upload, build, start, stop, delete), the git code
//! store, placement on workers and instance state kept in the registry.
//!
//! [`run`] serves a [`Config`] on a bound listener until the shutdown token fires.

pub mod api;
pub mod codestore;
pub mod config;
pub mod metrics;
pub mod ops;
pub mod placement;
pub mod records;

/// The instance record and its states (defined in `berth-model`, shared with the front door).
pub use berth_model::record;
pub mod upload;
pub mod webhook;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_worker_api::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError};

use crate::codestore::CodeStore;
use crate::codestore::forge::Forge;
use crate::metrics::Metrics;
use crate::ops::{Master, Settings};
use crate::records::{LockSettings, Records};
use crate::webhook::Webhook;

/// Time in-flight requests and background tasks get after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry client: {0}")]
    Registry(#[from] berth_consul::client::ClientError),
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// The configured secret, else the one in `path`, else a new one written there (mode 0600).
/// Only the path is ever logged.
pub fn token_or_file(
    given: Option<Secret>,
    path: &Path,
    what: &'static str,
) -> Result<Secret, RunError> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    let io = |source| RunError::Io {
        what: "token file",
        path: path.to_owned(),
        source,
    };
    if path.is_file() {
        tracing::info!(path = %path.display(), "{what} token read from file");
        return Secret::from_file(path).map_err(io);
    }
    let mut raw = [0u8; 32];
    rand::fill(&mut raw[..]);
    let token = hex::encode(raw);
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?
    };
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(io)?;
    tracing::warn!(path = %path.display(), "no {what} token configured; generated one into this file");
    Ok(Secret::new(token))
}

/// Builds the shared state from a validated configuration.
pub fn build_master(
    config: Config,
    public_url: String,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> Result<Arc<Master>, RunError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RunError::Io {
        what: "data dir",
        path: config.data_dir.clone(),
        source,
    })?;
    let api_token = token_or_file(config.api_token, &config.data_dir.join("api-token"), "api")?;
    let git_token = token_or_file(config.git_token, &config.data_dir.join("git-token"), "git")?;
    let client = berth_consul::client::Client::new(
        &config.registry,
        config.registry_token.map(|t| t.expose().to_owned()),
    )?;
    let holder = config.name.clone().unwrap_or_else(|| {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "berth-master".into())
    });
    let records = Records::new(
        client,
        LockSettings {
            ttl: Duration::from_secs(config.lock_ttl_secs),
            lock_delay: Duration::from_secs(config.lock_delay_secs),
            wait: Duration::from_secs(config.lock_wait_secs),
        },
        holder,
    );
    let metrics = Arc::new(Metrics::new());
    let webhook = match (config.webhook_url, config.webhook_secret) {
        (Some(url), Some(secret)) => Some(Webhook::spawn(
            url,
            secret,
            metrics.clone(),
            &tracker,
            shutdown.clone(),
        )),
        _ => None,
    };
    let read_username = config
        .git_remote_read_username
        .unwrap_or_else(|| config.git_remote_username.clone());
    let forge = config.git_remote_template.map(|template| {
        if config.git_remote_read_token.is_none() && config.git_remote_token.is_some() {
            tracing::warn!(
                "workers clone from the forge with its push token; give them a read-only one \
                 (--git-remote-read-token)"
            );
        }
        Forge {
            template,
            username: config.git_remote_username,
            token: config.git_remote_token,
            read: config.git_remote_read_token.map(|t| (read_username, t)),
        }
    });
    let settings = Settings {
        api_token,
        git_token,
        cluster_token: config.cluster_token.unwrap_or_default(),
        public_url,
        limits: config.limits,
        strategy: config.placement,
        forge,
        start_timeout_secs: config.start_timeout_secs,
    };
    let codestore = CodeStore::new(config.data_dir.join("git"));
    Ok(Arc::new(Master::new(
        settings, codestore, records, metrics, webhook, tracker, shutdown,
    )))
}

/// Serves the master on `listener` until `shutdown` fires, then drains for at most
/// [`SHUTDOWN_GRACE`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let tracker = TaskTracker::new();
    let master = build_master(
        config,
        public_url.clone(),
        tracker.clone(),
        shutdown.clone(),
    )?;
    tracker.spawn(master.clone().observe(shutdown.clone()));
    let app = api::router(master);
    tracing::info!(%addr, %public_url, "berth-master listening");
    let serve = berth_kit::serve::serve(
        listener,
        app,
        berth_kit::serve::Limits::from_env(),
        shutdown.clone().cancelled_owned(),
    );
    tokio::select! {
        result = serve => result.map_err(RunError::Serve)?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("requests still open after the shutdown grace; closing them");
        }
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after the shutdown grace");
    }
    tracing::info!("berth-master stopped");
    Ok(())
}
