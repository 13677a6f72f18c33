//! The project model: plain Rust types for what a compose file describes, as the parser
//! (`parse/`) reads it and the planner, policy and stack manager use it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// Docker Compose project name (the instance's, never the file's `name`).
    pub name: String,
    /// Directory holding the compose file; relative paths resolve against it.
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
    /// Services in file order.
    pub services: Vec<Service>,
    /// Declared networks (keys), plus `default` when a service uses it.
    pub networks: Vec<String>,
    /// Declared named volumes (keys).
    pub volumes: Vec<String>,
}

impl Project {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Build {
    /// Absolute context directory (not yet checked against the checkout: that is policy's job).
    pub context: PathBuf,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    /// Host port the file asked for; the worker allocates its own host ports (see docs/WORKER.md).
    pub requested_host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MountSource {
    /// Absolute host path as written (joined with the project dir), not yet resolved.
    Bind(PathBuf),
    /// Key of a top-level named volume.
    Named(String),
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Restart {
    No,
    Always,
    OnFailure(Option<i64>),
    UnlessStopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// Engine form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<i64>,
    pub start_period: Option<Duration>,
}

/// A limit the worker's caps apply to, with the key and text it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// Bytes, billionths of a CPU, or processes (`-1` = unlimited, for pids).
    pub value: i64,
    /// The key as written, e.g. `services.web.deploy.resources.limits.memory`.
    pub field: String,
    /// The value as written, e.g. `1.5g`.
    pub text: String,
}

/// Resource limits and kernel settings of a service (`mem_limit`, `cpus`, ..., and
/// `deploy.resources`, which wins over the top-level keys as in Docker Compose).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// `mem_limit` / `deploy.resources.limits.memory`, bytes.
    pub memory: Option<Limit>,
    /// `memswap_limit`, bytes (`-1` = unlimited swap).
    pub memswap: Option<i64>,
    /// `mem_reservation` / `deploy.resources.reservations.memory`, bytes.
    pub memory_reservation: Option<i64>,
    /// `cpus` / `deploy.resources.limits.cpus`, billionths of a CPU.
    pub nano_cpus: Option<Limit>,
    pub cpu_shares: Option<i64>,
    /// `cpuset`, e.g. `0-1` or `0,2`.
    pub cpuset: Option<String>,
    /// `pids_limit` / `deploy.resources.limits.pids`.
    pub pids: Option<Limit>,
    /// `shm_size`, bytes.
    pub shm_size: Option<i64>,
    /// `ulimits`: name -> (soft, hard).
    pub ulimits: BTreeMap<String, (i64, i64)>,
    /// `tmpfs`: mount path -> options (empty for Docker's defaults).
    pub tmpfs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub build: Option<Build>,
    pub image: Option<String>,
    pub ports: Vec<PortSpec>,
    /// `port/proto` strings, ranges expanded.
    pub expose: Vec<String>,
    /// `env_file` contents first, then `environment` on top; a key without a value takes it
    /// from `.env` (the interpolation source) and is `None` (unset) when `.env` lacks it.
    pub environment: BTreeMap<String, Option<String>>,
    pub volumes: Vec<Mount>,
    /// Network key -> aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    pub network_mode: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub restart: Restart,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: BTreeMap<String, Condition>,
    pub container_name: Option<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `host:ip` entries.
    pub extra_hosts: Vec<String>,
    pub stop_grace_period: Option<Duration>,
    /// `stop_signal` as written (`SIGTERM`, `TERM`, `9`); Docker's default when unset.
    /// Skipped when unset so the config hash of services without it stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `init`: run Docker's init (docker-init) as PID 1, forwarding signals and reaping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    pub resources: Resources,
    /// `links` as (service, alias); the parser turns them into network aliases of the linked
    /// service and `service_started` dependencies.
    pub links: Vec<(String, String)>,
    // Keys parsed only so that policy can reject them by name.
    pub privileged: bool,
    pub pid: Option<String>,
    pub ipc: Option<String>,
    pub devices: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `x-berth-rollout: stop-first` (or, without it, `deploy.update_config.order:
    /// stop-first`): a rollout stops the old container before the new one
    /// starts even when the service could run twice. Not part of the config hash (a rollout
    /// rule, not the container's configuration).
    #[serde(skip)]
    pub stop_first: bool,
}

impl Service {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            build: None,
            image: None,
            ports: Vec::new(),
            expose: Vec::new(),
            environment: BTreeMap::new(),
            volumes: Vec::new(),
            networks: BTreeMap::new(),
            network_mode: None,
            command: None,
            entrypoint: None,
            labels: BTreeMap::new(),
            restart: Restart::No,
            healthcheck: None,
            depends_on: BTreeMap::new(),
            container_name: None,
            working_dir: None,
            user: None,
            extra_hosts: Vec::new(),
            stop_grace_period: None,
            stop_signal: None,
            init: None,
            resources: Resources::default(),
            links: Vec::new(),
            privileged: false,
            pid: None,
            ipc: None,
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            stop_first: false,
        }
    }

    /// Whether the service has a healthcheck that Docker will run.
    pub fn has_healthcheck(&self) -> bool {
        self.healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().map(String::as_str) != Some("NONE"))
    }
}
