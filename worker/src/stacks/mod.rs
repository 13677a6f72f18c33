//! The stack manager: build, start, stop, delete and status of instances, serialised per
//! instance, with the record of each stack in `<data>/stacks/<id>/state.json` and everything in
//! Docker found again by label.
//!
//! One file per concern, each adding to `impl Stacks`: `record.rs` (the on-disk record),
//! `build.rs`, `start.rs` (orchestration), `converge.rs` (networks, volumes, reuse or
//! recreate), `spec.rs` (the container spec), `ports.rs`, `readiness.rs` (the wait before a
//! start answers), `ownership.rs` (`owned_*`: whose is an object found by name), `freeze.rs`
//! (writers paused around checkout access), `forward.rs` (the forwarders holding published TCP
//! ports), `stop.rs` and `delete.rs` (with pruning),
//! `rollout.rs` (deploys), `tidy.rs` (an interrupted rollout brought to one release),
//! `watcher.rs` (what each service of a running stack is doing), `applogs.rs` (the
//! containers' own output) and `status.rs` (status and list). This file holds `Stacks`
//! itself: the per-instance lock, the listings by label, adoption at start-up.

mod applogs;
mod build;
mod buildkit;
mod converge;
mod delete;
mod faults;
mod forward;
mod freeze;
mod ownership;
mod ports;
mod readiness;
mod record;
mod rollout;
mod spec;
mod start;
mod status;
mod stop;
mod tidy;
mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_worker_api::ids::compose_project_name;
use berth_worker_api::{Endpoint, ErrorDetail, ServiceStatus, StackState, StackStatus, ValidName};
use bollard::Docker;
use bollard::models::RestartPolicyNameEnum;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
};
use tokio::sync::watch;

use crate::compose::plan::{self, Owner};
use crate::compose::{self, Project, service_env};
use crate::docker::label_filter;
use crate::logbuf::{LogBook, LogBuf};
use crate::policy::Policy;
use crate::source;

pub use build::LABEL_BUILD_DIGEST;
pub use buildkit::BuilderChoice;
pub use faults::AppFault;
pub use forward::{LABEL_FORWARD, LABEL_HOST_PORTS, parse_host_ports};
pub use record::Record;
pub use tidy::RolloutNote;
pub use watcher::{INTERVAL as WATCH_INTERVAL, RESTART_WINDOW, Verdicts};

/// What the stack manager needs to know about its host.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub node: String,
    /// Address published in endpoints and `BERTH_*` variables.
    pub advertise: String,
    /// IP address published ports are bound on (`0.0.0.0` / `::` only when the operator asks).
    pub publish_address: String,
    pub policy: Policy,
    pub build_timeout: Duration,
    pub start_timeout: Duration,
    /// How many services of one stack build at the same time (at least 1).
    pub build_parallelism: usize,
    pub builder: BuilderChoice,
    /// How many built releases of a stack keep their images (at least 1).
    pub keep_releases: usize,
    /// The `berth-forward` binary (static) forwarders are built from; `None`: no forwarders,
    /// services publishing a host port roll stop-first.
    pub forwarder_bin: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no stack {0} on this worker")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Rejected {
        message: String,
        details: Vec<ErrorDetail>,
    },
    /// A compose file that cannot be read (422 `invalid_compose`).
    #[error("{message}")]
    InvalidCompose {
        message: String,
        details: Vec<ErrorDetail>,
    },
    /// The app is to blame: its build, image or services (422 with the fault's code).
    #[error("{0}")]
    App(Box<AppFault>),
    #[error("{step} failed: {message}")]
    Failed { step: String, message: String },
    #[error("{0}")]
    Timeout(String),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
    let context = context.into();
    move |source| StackError::Io { context, source }
}

fn failed(step: &str, message: impl Into<String>) -> StackError {
    StackError::Failed {
        step: step.to_owned(),
        message: message.into(),
    }
}

/// A 422 with one detail.
fn rejected(service: &str, field: String, reason: String) -> StackError {
    StackError::Rejected {
        message: format!("{field}: {reason}"),
        details: vec![ErrorDetail {
            service: Some(service.to_owned()),
            field,
            reason,
        }],
    }
}

/// Longest readiness timeout a start request may ask for; more is answered 400.
pub const MAX_START_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub struct Stacks {
    docker: Docker,
    settings: Settings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    logs: LogBook,
    /// The number of stacks held, sent again after each operation so the registrator resyncs at
    /// once.
    count: watch::Sender<usize>,
    /// Set once a BuildKit build found that the engine cannot run BuildKit (with the `auto`
    /// builder): later builds go to the classic builder at once.
    buildkit_off: std::sync::atomic::AtomicBool,
    /// What the watcher last saw of each running stack.
    watched: watcher::Watched,
    /// The forwarder image's tag, once built or found.
    forward_image: tokio::sync::OnceCell<String>,
    /// Containers (by id) whose healthcheck passed when the worker ran it, before Docker's
    /// first check (`readiness`): a later wait does not run it again.
    probed: readiness::Probed,
}

/// Marks the log of an operation as active for its lifetime.
struct Active(Arc<LogBuf>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.set_active(false);
    }
}

impl Stacks {
    pub fn new(docker: Docker, settings: Settings, logs: LogBook) -> Self {
        let stacks = Self {
            docker,
            settings,
            locks: Mutex::new(HashMap::new()),
            logs,
            count: watch::Sender::new(0),
            buildkit_off: Default::default(),
            watched: Default::default(),
            forward_image: Default::default(),
            probed: Default::default(),
        };
        stacks.count.send_replace(stacks.count());
        stacks
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn stacks_dir(&self) -> PathBuf {
        self.settings.data_dir.join("stacks")
    }

    fn stack_dir(&self, id: &ValidName) -> PathBuf {
        self.stacks_dir().join(id.as_str())
    }

    fn src_dir(&self, id: &ValidName) -> PathBuf {
        self.checkout(id).work_tree().to_path_buf()
    }

    fn checkout(&self, id: &ValidName) -> source::Checkout {
        source::Checkout::in_stack(&self.stack_dir(id))
    }

    fn owner(&self, id: &ValidName) -> Owner {
        Owner {
            instance: id.to_string(),
            node: self.settings.node.clone(),
        }
    }

    fn lock(&self, id: &ValidName) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn log(&self, id: &ValidName) -> Arc<LogBuf> {
        self.logs.get(id)
    }

    fn begin(&self, id: &ValidName, what: &str) -> Active {
        let log = self.log(id);
        log.set_active(true);
        log.line(&format!("== {what} {id}"));
        Active(log)
    }

    /// Ids of every stack this worker holds (a state file or containers carrying its labels).
    pub async fn ids(&self) -> Result<Vec<ValidName>, StackError> {
        let mut ids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.stacks_dir()) {
            for entry in entries.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| ValidName::parse("id", n).ok())
                    && entry.path().join("state.json").exists()
                {
                    ids.push(id);
                }
            }
        }
        for c in self
            .containers_by(&[
                (plan::LABEL_BERTH_MANAGED, "true"),
                (plan::LABEL_BERTH_NODE, &self.settings.node),
            ])
            .await?
        {
            if let Some(id) = c
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::LABEL_BERTH_INSTANCE))
                .and_then(|v| ValidName::parse("id", v).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Crash recovery at start-up: an interrupted rollout is tidied to one release
    /// (`tidy.rs`), an interrupted build is marked failed, a stack caught mid-start or mid-stop
    /// takes the state its containers show, and stacks known only by their containers' labels
    /// get a record again.
    pub async fn adopt(&self) -> Result<usize, StackError> {
        let ids = self.ids().await?;
        for id in &ids {
            self.recover_checkout(id).await?;
            self.tidy(id, &self.log(id)).await?;
            let mut record = match self.read_record(id)? {
                Some(r) => r,
                None => {
                    let containers = self.containers_of(id).await?;
                    let commit = containers
                        .iter()
                        .find_map(|c| c.labels.as_ref()?.get(plan::LABEL_BERTH_COMMIT).cloned());
                    Record {
                        id: id.clone(),
                        state: StackState::Stopped,
                        commit: commit.clone(),
                        error: None,
                        ports: BTreeMap::new(),
                        releases: Vec::new(),
                        running: commit,
                        rollout: None,
                    }
                }
            };
            match record.state {
                StackState::Building => {
                    record.state = StackState::Failed;
                    record.error = Some("build interrupted by a worker restart".to_owned());
                }
                StackState::Starting
                | StackState::Stopping
                | StackState::Running
                | StackState::Degraded
                | StackState::Stopped => {
                    let running = self
                        .containers_of(id)
                        .await?
                        .iter()
                        .any(|c| c.state.map(|s| s.to_string()).as_deref() == Some("running"));
                    record.state = if running {
                        StackState::Running
                    } else {
                        StackState::Stopped
                    };
                }
                StackState::Built | StackState::Failed => {}
            }
            self.write_record(&record)?;
        }
        self.changed();
        Ok(ids.len())
    }

    async fn containers_by(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<bollard::models::ContainerSummary>, StackError> {
        Ok(self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&label_filter(labels))
                    .build(),
            ))
            .await?)
    }

    /// The stack's app containers (its forwarders left out).
    async fn containers_of(
        &self,
        id: &ValidName,
    ) -> Result<Vec<bollard::models::ContainerSummary>, StackError> {
        let mut all = self.every_container_of(id).await?;
        all.retain(|c| !forward::is_forwarder(c.labels.as_ref()));
        Ok(all)
    }

    /// The stack's forwarder containers.
    async fn forwarders_of(
        &self,
        id: &ValidName,
    ) -> Result<Vec<bollard::models::ContainerSummary>, StackError> {
        let mut all = self.every_container_of(id).await?;
        all.retain(|c| forward::is_forwarder(c.labels.as_ref()));
        Ok(all)
    }

    /// Every container of the stack, forwarders included.
    async fn every_container_of(
        &self,
        id: &ValidName,
    ) -> Result<Vec<bollard::models::ContainerSummary>, StackError> {
        self.containers_by(&[
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ])
        .await
    }

    fn load_project(&self, id: &ValidName) -> Result<Project, StackError> {
        let src = self.src_dir(id);
        let mut project = compose::load(&src, &compose_project_name(id)).map_err(|e| {
            StackError::InvalidCompose {
                message: berth_worker_api::strip_ansi(&e.to_string()),
                details: e.details(),
            }
        })?;
        self.settings
            .policy
            .check(&mut project, &src)
            .and_then(|()| service_env::check_project(&project))
            .map_err(|details| StackError::Rejected {
                message: format!("rejected by policy: {}", compose::summary(&details)),
                details,
            })?;
        plan::start_order(&project).map_err(|d| StackError::InvalidCompose {
            message: format!("{}: {}", d.field, d.reason),
            details: vec![d],
        })?;
        Ok(project)
    }

    /// The number of stacks held, now and after every operation: a new value (also the same
    /// number again, after a start, stop or delete) means the stack's containers may have
    /// changed.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Sends the stack count to [`Self::watch_count`]'s receivers after an operation that
    /// changed the stack's containers.
    fn changed(&self) {
        self.count.send_replace(self.count());
    }

    /// Sends the stack count only if it is new (the first build of a stack).
    fn recount(&self) {
        let count = self.count();
        self.count
            .send_if_modified(|n| std::mem::replace(n, count) != count);
    }

    /// Number of stacks held (for health and self-registration).
    pub fn count(&self) -> usize {
        std::fs::read_dir(self.stacks_dir())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("state.json").exists())
                    .count()
            })
            .unwrap_or(0)
    }

    /// The images (tagged or dangling, no intermediate layers) matching `filters`.
    async fn images_matching(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ImageSummary>, bollard::errors::Error> {
        self.docker
            .list_images(Some(
                ListImagesOptionsBuilder::default().filters(filters).build(),
            ))
            .await
    }
}

/// Removal of a container even while it runs, with its anonymous volumes (which nothing else
/// would ever find again).
fn force_with_volumes() -> Option<bollard::query_parameters::RemoveContainerOptions> {
    Some(
        RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build(),
    )
}
