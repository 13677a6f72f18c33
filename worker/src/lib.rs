//! berth-worker: clones, builds and runs compose stacks natively through the Docker Engine API,
//! registers their containers for discovery and cleans up completely.

pub mod ancestry;
pub mod api;
pub mod compose;
pub mod context;
pub mod docker;
pub mod dockerfile;
pub mod fence;
pub mod images;
pub mod logbuf;
pub mod policy;
pub mod registrator;
pub mod registry;
pub mod source;
pub mod stacks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_worker_api::Secret;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::logbuf::LogBook;
use crate::policy::Policy;
use crate::registry::Agent;
pub use crate::stacks::BuilderChoice;
use crate::stacks::{Settings, Stacks};

/// The worker's configuration (a JSON file via `--config`, then flags and `BERTH_WORKER_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the worker API listens on (private by default).
    pub listen: String,
    /// Address published in endpoints and registrations; defaults to the listen IP, or
    /// 127.0.0.1 when listening on all interfaces.
    pub advertise: Option<String>,
    /// IP address published ports are bound on; defaults to the advertise address (resolved
    /// when it is a name). `0.0.0.0` or `::` binds all interfaces, only when asked.
    pub publish_address: Option<String>,
    pub data_dir: PathBuf,
    pub node_name: Option<String>,
    /// Consul-compatible agent to register with; `None` disables registration.
    pub registry: Option<String>,
    pub registry_token: Option<Secret>,
    /// Registry server to join with an in-process agent; the worker then registers with that
    /// agent (served on `agent_listen`) instead of `registry`.
    pub join: Option<String>,
    /// Address of the in-process agent's HTTP API (with `join`).
    pub agent_listen: String,
    pub cluster_token: Secret,
    pub capacity: u32,
    /// Memory limit of a container whose file sets none (`2g`, `512m`; empty = none).
    #[serde(alias = "memory")]
    pub default_memory: String,
    /// CPU limit of a container whose file sets none (`1.5`; empty = none).
    #[serde(alias = "cpus")]
    pub default_cpus: String,
    /// Process limit of a container whose file sets none (0 = none).
    #[serde(alias = "pids_limit")]
    pub default_pids: i64,
    /// The most memory a compose file may ask for per container (empty = no cap).
    pub max_memory: String,
    /// The most CPUs a compose file may ask for per container (empty = no cap).
    pub max_cpus: String,
    /// The most processes a compose file may ask for per container (0 = no cap).
    pub max_pids: i64,
    #[serde(with = "humantime_serde_opt")]
    pub build_timeout: Duration,
    #[serde(with = "humantime_serde_opt")]
    pub start_timeout: Duration,
    /// How many services of one stack build at the same time (at least 1).
    pub build_parallelism: usize,
    /// How many built releases of a stack keep their images, so a rollback to them builds
    /// nothing (at least 1).
    pub keep_releases: usize,
    /// Which image builder to use: `auto` (BuildKit through the Engine API, else the classic
    /// builder), `buildkit` or `classic`.
    pub builder: BuilderChoice,
    pub run_as_user: Option<String>,
    pub allowed_caps: Vec<String>,
    /// Fence stacks by the master's records (with a registry): refuse to build or start, and
    /// remove, the stacks the records place on another worker or no longer hold. Off only for a
    /// worker that runs without a master.
    pub fence: bool,
    /// The static `berth-forward` binary the forwarders are built from; `None`: `berth-forward`
    /// next to the worker's executable. When there is none, services publishing a host port
    /// roll stop-first.
    pub forwarder_bin: Option<PathBuf>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8833".to_owned(),
            advertise: None,
            publish_address: None,
            data_dir: PathBuf::from("/var/lib/berth-worker"),
            node_name: None,
            registry: Some("http://127.0.0.1:8500".to_owned()),
            registry_token: None,
            join: None,
            agent_listen: "127.0.0.1:8500".to_owned(),
            cluster_token: Secret::default(),
            capacity: 20,
            default_memory: "2g".to_owned(),
            default_cpus: "1".to_owned(),
            default_pids: 512,
            max_memory: String::new(),
            max_cpus: String::new(),
            max_pids: 0,
            build_timeout: Duration::from_secs(15 * 60),
            start_timeout: Duration::from_secs(120),
            build_parallelism: default_build_parallelism(),
            keep_releases: 3,
            builder: BuilderChoice::Auto,
            run_as_user: None,
            allowed_caps: Vec::new(),
            fence: true,
            forwarder_bin: None,
        }
    }
}

/// The forwarder binary to use: `configured`, else `berth-forward` next to the worker's
/// executable; `None` (said once in the log) when it is not there.
fn forwarder_bin(configured: Option<&std::path::Path>) -> Option<PathBuf> {
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .join("berth-forward"),
    };
    match std::fs::read(&path) {
        Ok(binary) if static_elf(&binary) => {
            tracing::info!(forwarder = %path.display(), "forwarders hold published TCP ports");
            Some(path)
        }
        Ok(_) => {
            tracing::warn!(
                forwarder = %path.display(),
                "the forwarder binary is not a static executable (it runs FROM scratch; build it with --target x86_64-unknown-linux-musl): containers publish their ports themselves and services publishing a host port roll stop-first"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                forwarder = %path.display(),
                "no forwarder binary: containers publish their ports themselves and services publishing a host port roll stop-first"
            );
            None
        }
    }
}

/// Whether `binary` is a 64-bit little-endian ELF executable without an interpreter (no
/// `PT_INTERP`: it needs no dynamic loader, so it runs in an empty image).
fn static_elf(binary: &[u8]) -> bool {
    let u16_at = |at: usize| {
        binary
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        binary
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        binary
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if binary.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(count)).all(|i| {
        u32_at(phoff + i * usize::from(size)).is_some_and(|kind| kind != 3 /* PT_INTERP */)
    })
}

/// The cores of the machine, at most 4: builds are mostly disk and CPU bound, and more at once
/// only makes each slower.
pub fn default_build_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("a cluster token is required (--cluster-token, BERTH_CLUSTER_TOKEN or its _FILE)")]
    NoToken,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_token.is_empty() {
            return Err(ConfigError::NoToken);
        }
        self.policy()?;
        if let Some(addr) = &self.publish_address
            && addr.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ConfigError::Invalid {
                field: "publish-address",
                reason: format!("{addr:?} is not an IP address"),
            });
        }
        if let Some(node) = &self.node_name {
            berth_worker_api::ids::validate("node name", node).map_err(|e| {
                ConfigError::Invalid {
                    field: "node-name",
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    pub fn policy(&self) -> Result<Policy, ConfigError> {
        fn value(
            field: &'static str,
            text: &str,
            parse: fn(&str) -> Result<i64, String>,
        ) -> Result<i64, ConfigError> {
            if text.trim().is_empty() {
                return Ok(0);
            }
            parse(text).map_err(|reason| ConfigError::Invalid { field, reason })
        }
        let count = |field: &'static str, n: i64| {
            if n < 0 {
                Err(ConfigError::Invalid {
                    field,
                    reason: format!("{n} is negative (0 means none)"),
                })
            } else {
                Ok(n)
            }
        };
        Ok(Policy {
            allowed_caps: self.allowed_caps.clone(),
            memory_bytes: value("default-memory", &self.default_memory, policy::parse_size)?,
            nano_cpus: value("default-cpus", &self.default_cpus, policy::parse_cpus)?,
            pids_limit: count("default-pids", self.default_pids)?,
            max_memory_bytes: value("max-memory", &self.max_memory, policy::parse_size)?,
            max_nano_cpus: value("max-cpus", &self.max_cpus, policy::parse_cpus)?,
            max_pids: count("max-pids", self.max_pids)?,
            run_as_user: self.run_as_user.clone(),
        })
    }

    /// The node name: configured, else the host name (lower-cased, invalid characters dropped).
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let clean: String = host
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            if clean.is_empty() {
                "worker".to_owned()
            } else {
                clean
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("adopting stacks: {0}")]
    Adopt(#[from] stacks::StackError),
    #[error("serving: {0}")]
    Serve(#[from] std::io::Error),
    #[error("registry agent: {0}")]
    Agent(#[from] berth_registry::agent::AgentRunError),
}

/// The IP address published ports are bound on: `configured` (validated as an IP), else the
/// advertise address, resolved when it is a host name.
async fn publish_address(
    configured: Option<&str>,
    advertise: &str,
) -> Result<std::net::IpAddr, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        field: "publish-address",
        reason,
    };
    if let Some(addr) = configured {
        return addr
            .parse()
            .map_err(|_| invalid(format!("{addr:?} is not an IP address")));
    }
    if let Ok(ip) = advertise.trim_matches(['[', ']']).parse() {
        return Ok(ip);
    }
    tokio::net::lookup_host((advertise, 0))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| {
            invalid(format!(
                "the advertise address {advertise:?} does not resolve; set --publish-address"
            ))
        })
}

/// How long running operations may continue after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the worker on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let local = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local.ip().to_string()
        }
    });
    let publish_address = publish_address(config.publish_address.as_deref(), &advertise).await?;
    // What endpoints and registrations name: the advertise address, unless ports are bound on
    // one specific other address (then only that one reaches them).
    let public_host = match &config.publish_address {
        Some(_) if !publish_address.is_unspecified() => publish_address.to_string(),
        _ => advertise.clone(),
    };
    let node = config.node();
    let docker = docker::connect().await?;
    let mut tasks = Vec::new();
    // `--join`: run the registry agent in-process and register with it.
    let registry_url = match &config.join {
        Some(server) => {
            let agent_listener = tokio::net::TcpListener::bind(&config.agent_listen).await?;
            let url = format!("http://{}", agent_listener.local_addr()?);
            let mut agent_config = berth_registry::agent::AgentConfig::new(server, &node);
            agent_config.retry_join = true;
            // Its node ID and registrations survive a restart, so a restarted worker is the same
            // node to the server at once (not a name conflict until the old one times out).
            agent_config.data_dir = Some(config.data_dir.join("agent"));
            agent_config.advertise = advertise.parse().ok();
            agent_config.token = config
                .registry_token
                .as_ref()
                .map(|t| t.expose().to_owned());
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) =
                    berth_registry::agent::run_agent(agent_config, agent_listener, stop).await
                {
                    tracing::error!(cause = %e, "registry agent stopped");
                }
            }));
            tracing::info!(
                server,
                agent = url,
                "joined the registry with an in-process agent"
            );
            Some(url)
        }
        None => config.registry.clone(),
    };
    let agent = match &registry_url {
        Some(url) => Some(Agent::new(url, config.registry_token.clone()).map_err(|e| {
            ConfigError::Invalid {
                field: "registry",
                reason: e.to_string(),
            }
        })?),
        None => None,
    };
    let settings = Settings {
        data_dir: config.data_dir.clone(),
        node: node.clone(),
        advertise: public_host.clone(),
        publish_address: publish_address.to_string(),
        policy: config.policy()?,
        build_timeout: config.build_timeout,
        start_timeout: config.start_timeout,
        build_parallelism: config.build_parallelism.max(1),
        builder: config.builder,
        keep_releases: config.keep_releases.max(1),
        forwarder_bin: forwarder_bin(config.forwarder_bin.as_deref()),
    };
    std::fs::create_dir_all(config.data_dir.join("stacks"))?;
    let logs = LogBook::default();
    let stacks = Arc::new(Stacks::new(docker.clone(), settings, logs.clone()));
    let adopted = stacks.adopt().await?;
    tracing::info!(node, %local, advertise, adopted, "worker starting");
    let fence = match &registry_url {
        Some(url) if config.fence => Some(Arc::new(
            fence::Fence::new(url, config.registry_token.clone(), stacks.clone()).map_err(|e| {
                ConfigError::Invalid {
                    field: "registry",
                    reason: e.to_string(),
                }
            })?,
        )),
        _ => None,
    };
    tasks.push(tokio::spawn(stacks.clone().watch(shutdown.clone())));
    if let Some(f) = &fence {
        tasks.push(tokio::spawn(f.clone().follow(shutdown.clone())));
    }
    if let Some(agent) = agent {
        let check_host = if local.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local.ip().to_string()
        };
        let registrator = registrator::Registrator {
            docker: docker.clone(),
            agent,
            logs,
            stack_count: stacks.watch_count(),
            node: node.clone(),
            advertise: advertise.clone(),
            public_host: public_host.clone(),
            api_port: local.port(),
            check_url: format!("http://{check_host}:{}/healthz", local.port()),
            capacity: config.capacity,
            fence: fence.clone(),
            verdicts: stacks.watch_verdicts(),
        };
        tasks.push(tokio::spawn(registrator.run(shutdown.clone())));
    }
    let app = api::router(api::AppState {
        stacks,
        token: config.cluster_token.clone(),
        capacity: config.capacity,
        fence,
    });
    let stop = shutdown.clone();
    let server = berth_kit::serve::serve(
        listener,
        app,
        berth_kit::serve::Limits::from_env(),
        async move { stop.cancelled().await },
    );
    // Graceful, with a bound: running operations get this long to finish after a signal.
    tokio::select! {
        served = server => served?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("operations still running after the shutdown grace period; leaving"),
    }
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_static_executables_make_forwarders() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is linked against glibc (an interpreter); garbage is no ELF at all.
        assert!(!static_elf(&me));
        assert!(!static_elf(b"#!/bin/sh\n"));
        let musl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/x86_64-unknown-linux-musl/release/berth-forward");
        if let Ok(bin) = std::fs::read(musl) {
            assert!(static_elf(&bin));
        }
    }

    #[test]
    fn config_file_and_validation() {
        let c: Config = serde_json::from_str(
            r#"{"listen":"0.0.0.0:9000","cluster_token":"t","memory":"512m","cpus":"0.5",
                "build_timeout":"2m","allowed_caps":["NET_ADMIN"],"node_name":"w1"}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.build_timeout, Duration::from_secs(120));
        assert_eq!(c.start_timeout, Config::default().start_timeout);
        let p = c.policy().unwrap();
        assert_eq!(p.memory_bytes, 512 << 20);
        assert_eq!(p.nano_cpus, 500_000_000);
        assert_eq!((p.max_memory_bytes, p.max_nano_cpus, p.max_pids), (0, 0, 0));
        let capped: Config = serde_json::from_str(
            r#"{"cluster_token":"t","default_memory":"","max_memory":"1.5g","max_cpus":"2","max_pids":100}"#,
        )
        .unwrap();
        let p = capped.policy().unwrap();
        assert_eq!(
            (
                p.memory_bytes,
                p.max_memory_bytes,
                p.max_nano_cpus,
                p.max_pids
            ),
            (0, 3 << 29, 2_000_000_000, 100)
        );
        assert_eq!(c.node(), "w1");
        assert!(serde_json::from_str::<Config>(r#"{"bogus":1}"#).is_err());

        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "a cluster token is required"),
            (
                r#"{"cluster_token":"t","memory":"lots"}"#,
                "invalid default-memory",
            ),
            (
                r#"{"cluster_token":"t","cpus":"-2"}"#,
                "invalid default-cpus",
            ),
            (
                r#"{"cluster_token":"t","max_memory":"1q"}"#,
                "invalid max-memory",
            ),
            (r#"{"cluster_token":"t","max_pids":-1}"#, "invalid max-pids"),
            (
                r#"{"cluster_token":"t","publish_address":"here"}"#,
                "invalid publish-address",
            ),
            (
                r#"{"cluster_token":"t","node_name":"Bad Name"}"#,
                "invalid node-name",
            ),
        ];
        for (json, want) in cases {
            let err = serde_json::from_str::<Config>(json)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().starts_with(want), "{json}: {err}");
        }
    }
}
