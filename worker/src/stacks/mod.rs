//! The stack manager: build, start, stop, delete and status of instances, serialised per
//! instance, with the record of each stack in `<data>/stacks/<id>/state.json` and everything in
//! Docker found again by label.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_worker_api::ids::compose_project_name;
use berth_worker_api::{
    BuildRequest, DeleteResponse, Endpoint, ErrorDetail, ServiceStatus, StackState, StackStatus,
    StartRequest, ValidName, seed_ip_key,
};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, ImageInspect, MountPoint, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptions,
    RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::compose::plan::{self, Holder, Owner};
use crate::compose::{self, Condition, MountSource, Project, Restart, Service};
use crate::docker::{self as dk, idempotent, label_filter};
use crate::images::{self, BuildIds};
use crate::logbuf::LogBuf;
use crate::policy::{self, Policy};
use crate::registry::Agent;
use crate::source;

/// What the stack manager needs to know about its host.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub node: String,
    /// Address published in endpoints and `BERTH_*` variables.
    pub advertise: String,
    pub policy: Policy,
    pub build_timeout: Duration,
    pub start_timeout: Duration,
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

/// A 409 for an object that one of the stack's names already denotes and that is not the
/// stack's own.
fn conflict(kind: &str, name: &str, holder: &Holder) -> StackError {
    StackError::Conflict(format!(
        "{kind} {name} already exists and {holder}: berth never reuses, changes or removes it"
    ))
}

fn image_labels(image: &ImageInspect) -> Option<&HashMap<String, String>> {
    image.config.as_ref()?.labels.as_ref()
}

/// Who made `image`, when it is another berth instance (an image without berth's instance label
/// is anyone's to use).
fn foreign_berth_image(owner: &Owner, image: &ImageInspect) -> Option<Holder> {
    let labels = image_labels(image)?;
    labels.get(plan::LABEL_BERTH_INSTANCE)?;
    owner.check(Some(labels)).err()
}

/// Longest readiness timeout a start request may ask for; more is answered 400.
pub const MAX_START_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What start knows of a service once its checks passed.
#[derive(Debug, Clone)]
struct Prepared {
    /// The image reference the container is created from, and its id.
    image: String,
    image_id: String,
    /// Whether Docker runs a healthcheck: the file's, else the image's own `HEALTHCHECK`.
    healthcheck: bool,
}

/// Marks a stack failed when an operation ends with its transient state still recorded (a
/// panic, or an error before the outcome was written), so no stack stays `building`,
/// `starting` or `stopping`.
struct Unfinished<'a> {
    stacks: &'a Stacks,
    id: ValidName,
    state: StackState,
    what: &'static str,
}

impl<'a> Unfinished<'a> {
    fn new(stacks: &'a Stacks, id: &ValidName, state: StackState, what: &'static str) -> Self {
        Self {
            stacks,
            id: id.clone(),
            state,
            what,
        }
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Ok(Some(mut record)) = self.stacks.read_record(&self.id)
            && record.state == self.state
        {
            record.state = StackState::Failed;
            record.error = Some(format!("the {} did not finish (internal error)", self.what));
            if let Err(e) = self.stacks.write_record(&record) {
                tracing::error!(instance = %self.id, cause = %e, "cannot record a failed {}", self.what);
            }
        }
    }
}

/// What the worker remembers of a stack between operations and restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: ValidName,
    pub state: StackState,
    pub commit: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// `service/port/proto` -> host port, kept so endpoints survive stop/start.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

fn port_key(service: &str, port: u16, proto: &str) -> String {
    format!("{service}/{port}/{proto}")
}

pub struct Stacks {
    docker: Docker,
    settings: Settings,
    agent: Option<Agent>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    logs: Mutex<HashMap<String, Arc<LogBuf>>>,
    /// Poked after each operation so the registrator resyncs at once.
    pub changed: Arc<Notify>,
}

/// Marks the log of an operation as active for its lifetime.
struct Active(Arc<LogBuf>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.set_active(false);
    }
}

impl Stacks {
    pub fn new(docker: Docker, settings: Settings, agent: Option<Agent>) -> Self {
        Self {
            docker,
            settings,
            agent,
            locks: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
        }
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
        self.logs
            .lock()
            .expect("logs")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn begin(&self, id: &ValidName, what: &str) -> Active {
        let log = self.log(id);
        log.set_active(true);
        log.line(&format!("== {what} {id}"));
        Active(log)
    }

    pub fn read_record(&self, id: &ValidName) -> Result<Option<Record>, StackError> {
        let path = self.stack_dir(id).join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StackError::Io {
                    context: format!("reading {}", path.display()),
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_record(&self, record: &Record) -> Result<(), StackError> {
        let dir = self.stack_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = dir.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        std::fs::write(&tmp, json).map_err(io("writing state"))?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io("writing state"))
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

    /// Crash recovery at start-up: an interrupted build is marked failed, a stack caught
    /// mid-start or mid-stop takes the state its containers show, and stacks known only by
    /// their containers' labels get a record again.
    pub async fn adopt(&self) -> Result<usize, StackError> {
        let ids = self.ids().await?;
        for id in &ids {
            self.recover_checkout(id).await?;
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
                        commit,
                        error: None,
                        ports: BTreeMap::new(),
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

    async fn containers_of(
        &self,
        id: &ValidName,
    ) -> Result<Vec<bollard::models::ContainerSummary>, StackError> {
        self.containers_by(&[
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ])
        .await
    }

    /// Pauses the stack's running containers that can write into its checkout (a writable bind)
    /// while the worker reads or writes the checkout by path, so none can swap a path for a
    /// symlink under its feet; a crash-looping one is stopped instead. `thaw` undoes it, and
    /// `adopt` unpauses what a worker crash left paused.
    async fn freeze_writers(
        &self,
        id: &ValidName,
        log: &LogBuf,
    ) -> Result<Vec<String>, StackError> {
        let mut paused = Vec::new();
        for c in self.containers_of(id).await? {
            let writes = c
                .mounts
                .iter()
                .flatten()
                .any(|m| writable_bind(m).is_some());
            let Some(cid) = c.id.filter(|_| writes) else {
                continue;
            };
            let done = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") => self.docker.pause_container(&cid).await.map(|()| true),
                Some("restarting") => {
                    log.line(&format!("stopping crash-looping container {cid} meanwhile"));
                    idempotent(self.docker.stop_container(&cid, None).await).map(|_| false)
                }
                _ => Ok(false),
            };
            match done {
                Ok(true) => paused.push(cid),
                Ok(false) => {}
                Err(e) => {
                    self.thaw(paused).await;
                    return Err(e.into());
                }
            }
        }
        Ok(paused)
    }

    async fn thaw(&self, paused: Vec<String>) {
        for cid in paused {
            if let Err(e) = self.docker.unpause_container(&cid).await {
                tracing::warn!(container = %cid, cause = %e, "cannot unpause");
            }
        }
    }

    /// Unpauses containers a crash left frozen and moves a checkout made by an earlier worker
    /// (git metadata in `src/.git`) to the current layout.
    async fn recover_checkout(&self, id: &ValidName) -> Result<(), StackError> {
        let containers = self.containers_of(id).await?;
        for c in &containers {
            if c.state.map(|s| s.to_string()).as_deref() == Some("paused")
                && let Some(cid) = &c.id
                && let Err(e) = self.docker.unpause_container(cid).await
            {
                tracing::warn!(instance = %id, container = %cid, cause = %e, "cannot unpause");
            }
        }
        let co = self.checkout(id);
        let legacy = policy::resolve(co.work_tree()).join(".git");
        let bound = containers
            .iter()
            .flat_map(|c| c.mounts.iter().flatten())
            .filter_map(|m| m.source.as_deref())
            .any(|src| Path::new(src).starts_with(&legacy));
        let migrated = tokio::task::spawn_blocking(move || co.migrate_legacy(bound))
            .await
            .map_err(|e| failed("migrate checkout", e.to_string()))?;
        match migrated {
            Ok(source::Migration::None) => {}
            Ok(source::Migration::Moved) => {
                tracing::info!(instance = %id, "moved the git metadata out of the checkout");
            }
            Ok(source::Migration::Discarded(reason)) => {
                tracing::warn!(instance = %id, %reason, "removed the git metadata of the checkout; the next build fetches afresh");
            }
            Err(e) => {
                tracing::warn!(instance = %id, cause = %e, "cannot migrate the checkout");
            }
        }
        Ok(())
    }

    /// Whether the network `name` exists and is the stack's own; another's is a conflict.
    async fn owned_network(&self, name: &str, owner: &Owner) -> Result<bool, StackError> {
        match self.docker.inspect_network(name, None).await {
            Ok(n) => owner
                .check(n.labels.as_ref())
                .map(|()| true)
                .map_err(|holder| conflict("network", name, &holder)),
            Err(e) if dk::already(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the volume `name` exists and is the stack's own; another's is a conflict.
    async fn owned_volume(&self, name: &str, owner: &Owner) -> Result<bool, StackError> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => owner
                .check(Some(&v.labels))
                .map(|()| true)
                .map_err(|holder| conflict("volume", name, &holder)),
            Err(e) if dk::already(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The container `name` if it exists and is the stack's own; another's is a conflict.
    async fn owned_container(
        &self,
        name: &str,
        owner: &Owner,
    ) -> Result<Option<ContainerInspectResponse>, StackError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                owner
                    .check(labels)
                    .map_err(|holder| conflict("container", name, &holder))?;
                Ok(Some(c))
            }
            Err(e) if dk::already(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The image `tag` if it exists and is the stack's own; another's is a conflict.
    async fn owned_image(
        &self,
        tag: &str,
        owner: &Owner,
    ) -> Result<Option<ImageInspect>, StackError> {
        match self.docker.inspect_image(tag).await {
            Ok(i) => {
                owner
                    .check(image_labels(&i))
                    .map_err(|holder| conflict("image", tag, &holder))?;
                Ok(Some(i))
            }
            Err(e) if dk::already(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn load_project(&self, id: &ValidName) -> Result<Project, StackError> {
        let src = self.src_dir(id);
        let mut project =
            compose::load(&src, &compose_project_name(id)).map_err(|e| StackError::Rejected {
                message: e.to_string(),
                details: e.details(),
            })?;
        self.settings
            .policy
            .check(&mut project, &src)
            .and_then(|()| crate::registrator::check_project(&project))
            .map_err(|details| StackError::Rejected {
                message: format!("rejected by policy: {}", compose::summary(&details)),
                details,
            })?;
        plan::start_order(&project).map_err(|d| StackError::Rejected {
            message: format!("{}: {}", d.field, d.reason),
            details: vec![d],
        })?;
        Ok(project)
    }

    // ---- status ----------------------------------------------------------------------------

    pub async fn status(&self, id: &ValidName) -> Result<StackStatus, StackError> {
        let record = self.read_record(id)?;
        let containers = self.containers_of(id).await?;
        let Some(record) = record.or_else(|| {
            (!containers.is_empty()).then(|| Record {
                id: id.clone(),
                state: StackState::Stopped,
                commit: None,
                error: None,
                ports: BTreeMap::new(),
            })
        }) else {
            return Err(StackError::NotFound(id.to_string()));
        };
        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        let mut containers = containers;
        containers.sort_by_key(|c| c.names.clone());
        for c in &containers {
            let labels = c.labels.clone().unwrap_or_default();
            let service = labels.get(plan::LABEL_SERVICE).cloned().unwrap_or_default();
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned());
            let state = c
                .state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into());
            let health = c
                .health
                .as_ref()
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| s != "none" && !s.is_empty())
                .or_else(|| health_from_status(c.status.as_deref().unwrap_or_default()));
            if state == "running" {
                for p in c.ports.clone().unwrap_or_default() {
                    if let Some(public) = p.public_port {
                        // IPv4 and IPv6 bindings are listed separately; keep one.
                        let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
                        let e = Endpoint {
                            service: service.clone(),
                            container_port: p.private_port,
                            protocol: proto,
                            host: self.settings.advertise.clone(),
                            host_port: public,
                        };
                        if !endpoints.contains(&e) {
                            endpoints.push(e);
                        }
                    }
                }
            }
            services.push(ServiceStatus {
                name: service,
                container: name,
                state,
                health,
            });
        }
        endpoints
            .sort_by(|a, b| (&a.service, a.container_port).cmp(&(&b.service, b.container_port)));
        Ok(StackStatus {
            id: id.clone(),
            state: record.state,
            commit: record.commit,
            project_name: compose_project_name(id),
            services,
            endpoints,
            error: record.error,
        })
    }

    pub async fn list(&self) -> Result<Vec<StackStatus>, StackError> {
        let mut out = Vec::new();
        for id in self.ids().await? {
            match self.status(&id).await {
                Ok(s) => out.push(s),
                Err(StackError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
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

    // ---- build -----------------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn build(
        &self,
        id: &ValidName,
        req: &BuildRequest,
    ) -> Result<StackStatus, StackError> {
        if !source::valid_commit(&req.commit) {
            return Err(StackError::BadRequest(format!(
                "invalid commit {:?}: must be 40 lower-case hex characters",
                req.commit.chars().take(64).collect::<String>()
            )));
        }
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let previous = self.read_record(id)?;
        if let Some(r) = &previous
            && r.commit.as_deref() == Some(req.commit.as_str())
            && matches!(
                r.state,
                StackState::Built | StackState::Running | StackState::Stopped
            )
            && self.images_present(id, &req.commit).await?
        {
            return self.status(id).await;
        }
        let _active = self.begin(id, "build");
        let log = self.log(id);
        let mut record = previous.unwrap_or(Record {
            id: id.clone(),
            state: StackState::Building,
            commit: None,
            error: None,
            ports: BTreeMap::new(),
        });
        let keep_state = record.state;
        let keep_commit = record.commit.clone();
        record.state = StackState::Building;
        record.error = None;
        self.write_record(&record)?;
        let _unfinished = Unfinished::new(self, id, StackState::Building, "build");
        match self.build_inner(id, req, &log).await {
            Ok(()) => {
                record.state = match keep_state {
                    StackState::Running | StackState::Stopped if keep_commit.is_some() => {
                        keep_state
                    }
                    _ => StackState::Built,
                };
                record.commit = Some(req.commit.clone());
                self.write_record(&record)?;
                log.line("build finished");
                if let Some(agent) = &self.agent
                    && let Err(e) = agent
                        .kv_put(&seed_ip_key(id), &self.settings.advertise)
                        .await
                {
                    tracing::warn!(instance = %id, cause = %e, "cannot record the instance address");
                }
                self.status(id).await
            }
            Err(e) => {
                log.line(&format!("build failed: {e}"));
                record.state = StackState::Failed;
                record.error = Some(e.to_string());
                self.write_record(&record)?;
                Err(e)
            }
        }
    }

    async fn images_present(&self, id: &ValidName, commit: &str) -> Result<bool, StackError> {
        let src = self.src_dir(id);
        if self.checkout(id).commit().as_deref() != Some(commit) {
            return Ok(false);
        }
        let Ok(project) = compose::load(&src, &compose_project_name(id)) else {
            return Ok(false);
        };
        let owner = self.owner(id);
        for s in project.services.iter().filter(|s| s.build.is_some()) {
            let tag = plan::image_tag(&project.name, &s.name, commit);
            match self.docker.inspect_image(&tag).await {
                Ok(image) if owner.check(image_labels(&image)).is_ok() => {}
                Ok(_) => return Ok(false),
                Err(e) if dk::already(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    async fn build_inner(
        &self,
        id: &ValidName,
        req: &BuildRequest,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        log.line(&format!("fetching commit {}", req.commit));
        let (co, repo, commit) = (self.checkout(id), req.repo.clone(), req.commit.clone());
        tokio::task::spawn_blocking(move || co.fetch(&repo, &commit))
            .await
            .map_err(|e| failed("fetch", e.to_string()))?
            .map_err(|e| failed("fetch", e.to_string()))?;
        let frozen = self.freeze_writers(id, log).await?;
        let (co, commit) = (self.checkout(id), req.commit.clone());
        let project = match tokio::task::spawn_blocking(move || co.checkout(&commit)).await {
            Ok(Ok(())) => self.load_project(id),
            Ok(Err(e)) => Err(failed("checkout", e.to_string())),
            Err(e) => Err(failed("checkout", e.to_string())),
        };
        self.thaw(frozen).await;
        let project = project?;
        let owner = self.owner(id);
        // Everything is checked before the first build: images named by `image:`, the images
        // each Dockerfile builds on, and the tags the builds will take.
        for s in &project.services {
            let Some(build) = &s.build else {
                self.service_image(&owner, s).await?;
                continue;
            };
            self.check_build_bases(&owner, s, build).await?;
            let latest = format!("{}:latest", plan::image_name(&project.name, &s.name));
            for tag in [plan::image_tag(&project.name, &s.name, &req.commit), latest] {
                self.owned_image(&tag, &owner).await?;
            }
        }
        let mut built_tags = Vec::new();
        for s in &project.services {
            let Some(build) = &s.build else { continue };
            let tag = plan::image_tag(&project.name, &s.name, &req.commit);
            log.line(&format!("building service {} as {tag}", s.name));
            let mut ids = BuildIds::default();
            let result = self
                .build_service(id, s, build, &tag, &owner, log, &mut ids)
                .await;
            let image_id = match &result {
                Ok(()) => self
                    .docker
                    .inspect_image(&tag)
                    .await
                    .ok()
                    .and_then(|i| i.id),
                Err(_) => None,
            };
            self.remove_intermediates(&ids, image_id.as_deref()).await;
            result?;
            if image_id.is_none() {
                return Err(failed(
                    &format!("build of service {}", s.name),
                    format!(
                        "image {tag} missing after build; last log lines:\n{}",
                        log.tail(20)
                    ),
                ));
            }
            let latest = plan::image_name(&project.name, &s.name);
            built_tags.push(tag.clone());
            built_tags.push(format!("{latest}:latest"));
            self.docker
                .tag_image(
                    &tag,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&latest)
                            .tag("latest")
                            .build(),
                    ),
                )
                .await?;
        }
        self.remove_stale_images(id, &built_tags).await;
        Ok(())
    }

    /// Builds one service's image as `tag`, noting the image ids the build reports in `ids`.
    #[allow(clippy::too_many_arguments)]
    async fn build_service(
        &self,
        id: &ValidName,
        s: &Service,
        build: &compose::model::Build,
        tag: &str,
        owner: &Owner,
        log: &LogBuf,
        ids: &mut BuildIds,
    ) -> Result<(), StackError> {
        let step = format!("build of service {}", s.name);
        let context = build.context.clone();
        let dockerfile = build.dockerfile.clone();
        let target = build.target.clone();
        let labels: BTreeMap<String, String> = plan::image_labels(owner).into_iter().collect();
        let to_label = labels.clone();
        // The Dockerfile is read, amended and tarred with the context in one go while the
        // stack's writers are paused: the text checked below is the text Docker builds.
        let frozen = self.freeze_writers(id, log).await?;
        let read = tokio::task::spawn_blocking(move || {
            let text = crate::context::read_dockerfile(&context, &dockerfile)?;
            let labelled = images::with_labels(&text, target.as_deref(), &to_label);
            let tar = crate::context::tar_context(
                &context,
                &dockerfile,
                labelled.as_deref().unwrap_or(&text),
            )?;
            Ok::<_, crate::context::ContextError>((text, labelled.is_some(), tar))
        })
        .await;
        self.thaw(frozen).await;
        let (text, labelled, tar) = read
            .map_err(|e| failed("build context", e.to_string()))?
            .map_err(|e| failed(&step, e.to_string()))?;
        self.check_bases(owner, s, build, &text).await?;
        let build_labels: HashMap<String, String> = if labelled {
            HashMap::new()
        } else {
            labels.into_iter().collect()
        };
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let mut opts = BuildImageOptionsBuilder::default()
            .dockerfile(&build.dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(&build_labels);
        if let Some(target) = &build.target {
            opts = opts.target(target);
        }
        let long = dk::long(
            &self.docker,
            self.settings.build_timeout + Duration::from_secs(30),
        );
        let mut stream = long.build_image(opts.build(), None, Some(bollard::body_full(tar.into())));
        let run = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(text) = info.stream.as_deref() {
                            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                                ids.observe(line);
                                log.line(line);
                            }
                        }
                        if let Some(status) = info.status.as_deref() {
                            log.line(status);
                        }
                    }
                    Err(e) if e.to_string().contains("bytes remaining on stream") => break,
                    // A failing step arrives as an error (bollard turns `errorDetail` into one);
                    // the answer carries the build's last lines like any other failure.
                    Err(e) => {
                        let tail = log.tail(20);
                        let message = dk::message(&e);
                        log.line(&message);
                        return Err(failed(&step, format!("{message}; last log lines:\n{tail}")));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.settings.build_timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StackError::Timeout(format!(
                "build of service {} timed out after {}",
                s.name,
                humantime::format_duration(self.settings.build_timeout)
            ))),
        }
    }

    /// Removes the images a build made that its final image does not build on: stage images of
    /// multi-stage builds, and everything a failed build made. Docker refuses to remove an image
    /// with children or in use (the cached steps of this stack's other images, a build running
    /// meanwhile), and those refusals are fine: the image is still needed.
    async fn remove_intermediates(&self, ids: &BuildIds, image_id: Option<&str>) {
        let ancestors: Vec<String> = match image_id {
            Some(image) => self
                .docker
                .image_history(image)
                .await
                .map(|h| h.into_iter().map(|i| i.id).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for short in ids.intermediates() {
            let is_ancestor = ancestors
                .iter()
                .any(|a| a.trim_start_matches("sha256:").starts_with(short));
            if is_ancestor {
                continue;
            }
            // Never an image someone tagged (a base named by id, another stack's image).
            match self.docker.inspect_image(short).await {
                Ok(i)
                    if i.repo_tags.as_ref().is_none_or(Vec::is_empty)
                        && i.repo_digests.as_ref().is_none_or(Vec::is_empty) => {}
                _ => continue,
            }
            if let Err(e) = self
                .docker
                .remove_image(short, None::<RemoveImageOptions>, None)
                .await
            {
                tracing::debug!(image = short, cause = %e, "intermediate image stays");
            }
        }
    }

    /// The image a service without `build` names, refused when another berth instance made it:
    /// a stack may use its own images and images that are not berth's, never another's.
    async fn service_image(&self, owner: &Owner, s: &Service) -> Result<ImageInspect, StackError> {
        let image = s.image.clone().unwrap_or_default();
        let inspect = match self.docker.inspect_image(&image).await {
            Ok(i) => i,
            Err(e) if dk::already(&e) => {
                return Err(failed(
                    &format!("image of service {}", s.name),
                    format!(
                        "image {image:?} is not present on this worker (images are never pulled)"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(holder) = foreign_berth_image(owner, &inspect) {
            return Err(rejected(
                &s.name,
                format!("services.{}.image", s.name),
                format!(
                    "image {image} {holder}: a stack may only use its own images and images that are not berth's"
                ),
            ));
        }
        Ok(inspect)
    }

    /// Refuses a Dockerfile that builds on another berth instance's image (`FROM`,
    /// `COPY --from=`); see [`images::image_refs`] for what is read.
    async fn check_build_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
    ) -> Result<(), StackError> {
        // A missing or unreadable Dockerfile fails the build itself, with a message saying why.
        let Ok(text) = crate::context::read_dockerfile(&build.context, &build.dockerfile) else {
            return Ok(());
        };
        self.check_bases(owner, s, build, &text).await
    }

    /// Refuses a Dockerfile `text` that builds on another berth instance's image.
    async fn check_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
        text: &str,
    ) -> Result<(), StackError> {
        for image in images::image_refs(text, &build.args) {
            let Ok(inspect) = self.docker.inspect_image(&image).await else {
                continue;
            };
            if let Some(holder) = foreign_berth_image(owner, &inspect) {
                return Err(rejected(
                    &s.name,
                    format!("services.{}.build", s.name),
                    format!(
                        "{} builds on image {image}, which {holder}: a build may only use its own images and images that are not berth's",
                        build.dockerfile
                    ),
                ));
            }
        }
        Ok(())
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

    /// Removes this instance's images of earlier commits. Images still used by a container stay
    /// (Docker refuses) and go with the stack's delete, which finds them by label.
    async fn remove_stale_images(&self, id: &ValidName, keep: &[String]) {
        let filters = label_filter(&[
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ]);
        let Ok(images) = self.images_matching(&filters).await else {
            return;
        };
        for image in images {
            if image.repo_tags.iter().any(|t| keep.contains(t)) {
                continue;
            }
            for tag in image.repo_tags.iter().filter(|t| !t.ends_with(":<none>")) {
                let _ = self
                    .docker
                    .remove_image(tag, None::<RemoveImageOptions>, None)
                    .await;
            }
        }
    }

    // ---- start -----------------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn start(
        &self,
        id: &ValidName,
        req: &StartRequest,
    ) -> Result<StackStatus, StackError> {
        let timeout = match req.timeout_secs {
            Some(secs) if secs > MAX_START_TIMEOUT.as_secs() => {
                return Err(StackError::BadRequest(format!(
                    "timeout_secs {secs} is above the maximum of {} (one day)",
                    MAX_START_TIMEOUT.as_secs()
                )));
            }
            Some(secs) => Duration::from_secs(secs),
            None => self.settings.start_timeout,
        };
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let Some(mut record) = self.read_record(id)? else {
            return Err(StackError::NotFound(id.to_string()));
        };
        let Some(commit) = record.commit.clone() else {
            return Err(StackError::Conflict(format!(
                "stack {id} has no built commit"
            )));
        };
        if record.state == StackState::Building {
            return Err(StackError::Conflict(format!("stack {id} is building")));
        }
        if let Some(want) = &req.commit
            && want != &commit
        {
            return Err(StackError::Conflict(format!(
                "stack {id} holds commit {commit}, not {want}: build it first"
            )));
        }
        if self.checkout(id).commit().as_deref() != Some(commit.as_str()) {
            return Err(StackError::Conflict(format!(
                "the checkout of stack {id} is not at its built commit {commit} (a later build failed): build again"
            )));
        }
        let _active = self.begin(id, "start");
        let log = self.log(id);
        let frozen = self.freeze_writers(id, &log).await?;
        let project = self.load_project(id);
        self.thaw(frozen).await;
        let project = project?;
        // Refusals (another's object under one of the stack's names, another instance's image, a
        // `service_healthy` dependency without a healthcheck) come before anything changes.
        let prepared = self.prepare(id, &project, &commit).await?;
        record.state = StackState::Starting;
        record.error = None;
        self.write_record(&record)?;
        let _unfinished = Unfinished::new(self, id, StackState::Starting, "start");
        let deadline = Instant::now() + timeout.min(MAX_START_TIMEOUT);
        let mut created = Vec::new();
        let mut result = self
            .start_inner(
                id,
                &project,
                &prepared,
                &commit,
                &mut record,
                deadline,
                &log,
                &mut created,
            )
            .await;
        if result.as_ref().is_err_and(port_taken) {
            // Someone bound a host port between choosing and publishing it: drop what this call
            // made, choose every port afresh (all containers see all addresses) and try once more.
            log.line("a chosen host port was taken meanwhile; choosing new ports");
            if let Err(e) = self.stop_all(Some(&project), id).await {
                tracing::warn!(instance = %id, cause = %e, "cannot stop the stack");
            }
            self.remove_created(&mut created).await;
            record.ports.clear();
            result = self
                .start_inner(
                    id,
                    &project,
                    &prepared,
                    &commit,
                    &mut record,
                    deadline,
                    &log,
                    &mut created,
                )
                .await;
        }
        match result {
            Ok(()) => {
                record.state = StackState::Running;
                self.write_record(&record)?;
                log.line("stack ready");
                self.changed.notify_one();
                self.status(id).await
            }
            Err(e) => {
                log.line(&format!("start failed: {e}"));
                // Leave nothing half-started: stop the stack, remove what this call created.
                if let Err(e) = self.stop_all(Some(&project), id).await {
                    tracing::warn!(instance = %id, cause = %e, "cannot stop the stack");
                }
                self.remove_created(&mut created).await;
                record.state = StackState::Failed;
                record.error = Some(e.to_string());
                self.write_record(&record)?;
                self.changed.notify_one();
                Err(e)
            }
        }
    }

    /// Removes containers of an earlier configuration that can write above a bind source of
    /// `project`: left running while the new containers start, they could swap that source for a
    /// symlink before Docker mounts it. The policy lets no service of `project` mount a writable
    /// ancestor of another bind, so these are recreated anyway.
    async fn remove_stale_writers(
        &self,
        project: &Project,
        id: &ValidName,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let sources: Vec<&Path> = project
            .services
            .iter()
            .flat_map(|s| &s.volumes)
            .filter_map(|m| match &m.source {
                MountSource::Bind(src) => Some(src.as_path()),
                _ => None,
            })
            .collect();
        for c in self.containers_of(id).await? {
            let above = c
                .mounts
                .iter()
                .flatten()
                .filter_map(writable_bind)
                .any(|outer| sources.iter().any(|s| *s != outer && s.starts_with(outer)));
            if above && let Some(cid) = c.id {
                log.line(&format!(
                    "removing container {cid} first: it can write above a bind source of the new configuration"
                ));
                idempotent(
                    self.docker
                        .remove_container(&cid, force_with_volumes())
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// Removes the containers (by id) this start created, with their anonymous volumes.
    async fn remove_created(&self, created: &mut Vec<String>) {
        for cid in created.drain(..) {
            let _ = self
                .docker
                .remove_container(&cid, force_with_volumes())
                .await;
        }
    }

    /// Everything start checks before it changes anything: each service's image (its own build,
    /// or an `image:` that no other berth instance made) and whether it has a healthcheck (the
    /// file's, else the image's `HEALTHCHECK`), `service_healthy` dependencies on services
    /// without one, and every network, volume and container name the stack uses, which must be
    /// free or the stack's own.
    async fn prepare(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
    ) -> Result<HashMap<String, Prepared>, StackError> {
        let owner = self.owner(id);
        let mut prepared = HashMap::new();
        for s in &project.services {
            let (image, inspect) = match &s.build {
                Some(_) => {
                    let tag = plan::image_tag(&project.name, &s.name, commit);
                    let Some(inspect) = self.owned_image(&tag, &owner).await? else {
                        return Err(failed(
                            &format!("image of service {}", s.name),
                            format!("image {tag} is missing: build again"),
                        ));
                    };
                    (tag, inspect)
                }
                None => (
                    s.image.clone().unwrap_or_default(),
                    self.service_image(&owner, s).await?,
                ),
            };
            let healthcheck = match &s.healthcheck {
                Some(_) => s.has_healthcheck(),
                None => inspect
                    .config
                    .as_ref()
                    .and_then(|c| c.healthcheck.as_ref()?.test.as_ref()?.first().cloned())
                    .is_some_and(|t| t != "NONE"),
            };
            prepared.insert(
                s.name.clone(),
                Prepared {
                    image,
                    image_id: inspect.id.unwrap_or_default(),
                    healthcheck,
                },
            );
        }
        for s in &project.services {
            for (dep, cond) in &s.depends_on {
                if *cond == Condition::Healthy && prepared.get(dep).is_some_and(|p| !p.healthcheck)
                {
                    return Err(rejected(
                        dep,
                        format!("services.{dep}.healthcheck"),
                        format!(
                            "service {dep} has no healthcheck (in the file or its image) but {} waits for service_healthy",
                            s.name
                        ),
                    ));
                }
            }
        }
        for key in &project.networks {
            self.owned_network(&plan::network_name(&project.name, key), &owner)
                .await?;
        }
        for key in &project.volumes {
            self.owned_volume(&plan::volume_name(&project.name, key), &owner)
                .await?;
        }
        for s in &project.services {
            self.owned_container(&plan::container_name(&project.name, &s.name), &owner)
                .await?;
        }
        Ok(prepared)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_inner(
        &self,
        id: &ValidName,
        project: &Project,
        prepared: &HashMap<String, Prepared>,
        commit: &str,
        record: &mut Record,
        deadline: Instant,
        log: &LogBuf,
        created: &mut Vec<String>,
    ) -> Result<(), StackError> {
        let owner = self.owner(id);
        // Networks and volumes: the stack's own are reused, others' are never touched.
        for key in &project.networks {
            let name = plan::network_name(&project.name, key);
            if self.owned_network(&name, &owner).await? {
                continue;
            }
            let made = self
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(plan::network_labels(&project.name, key, &owner)),
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => log.line(&format!("created network {name}")),
                // Made meanwhile under the same name: fine only if it is the stack's own.
                Err(e) if dk::status_of(&e) == Some(409) => {
                    if !self.owned_network(&name, &owner).await? {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        for key in &project.volumes {
            let name = plan::volume_name(&project.name, key);
            if self.owned_volume(&name, &owner).await? {
                continue;
            }
            // Docker answers an existing volume of the same name instead of an error.
            let volume = self
                .docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(plan::volume_labels(&project.name, key, &owner)),
                    ..Default::default()
                })
                .await?;
            owner
                .check(Some(&volume.labels))
                .map_err(|holder| conflict("volume", &name, &holder))?;
            log.line(&format!("created volume {name}"));
        }
        // Orphans: containers of services no longer in the file, with their anonymous volumes.
        for c in self.containers_of(id).await? {
            let service = c
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::LABEL_SERVICE))
                .cloned();
            if service.is_none_or(|s| project.service(&s).is_none())
                && let Some(cid) = c.id
            {
                log.line(&format!("removing orphan container {cid}"));
                idempotent(
                    self.docker
                        .remove_container(&cid, force_with_volumes())
                        .await,
                )?;
            }
        }
        self.remove_stale_writers(project, id, log).await?;
        // Host ports first, so every container knows every public address before it starts.
        let mut existing: HashMap<String, ContainerInspectResponse> = HashMap::new();
        for s in &project.services {
            let name = plan::container_name(&project.name, &s.name);
            if let Some(c) = self.owned_container(&name, &owner).await? {
                existing.insert(s.name.clone(), c);
            }
        }
        let mut ports = BTreeMap::new();
        // Chosen ports stay bound until all are chosen, so no two services get the same one.
        let mut holds = Vec::new();
        for s in &project.services {
            for p in &s.ports {
                let key = port_key(&s.name, p.container_port, &p.protocol);
                let held = existing
                    .get(&s.name)
                    .is_some_and(|c| c.state.as_ref().and_then(|st| st.running) == Some(true));
                let port = match record.ports.get(&key) {
                    Some(&port) if held || port_free(port, &p.protocol) => port,
                    _ => {
                        let hold =
                            allocate_port(&p.protocol).map_err(io("allocating a host port"))?;
                        let port = hold.port();
                        holds.push(hold);
                        port
                    }
                };
                ports.insert(key, port);
            }
        }
        drop(holds);
        record.ports = ports.clone();
        self.write_record(record)?;
        let mut public_env = Vec::new();
        public_env.push(format!("BERTH_ADVERTISE_HOST={}", self.settings.advertise));
        for s in &project.services {
            for p in &s.ports {
                let port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
                public_env.push(format!(
                    "BERTH_PUBLIC_ADDR_{}_{}={}:{port}",
                    env_name(&s.name),
                    p.container_port,
                    self.settings.advertise
                ));
            }
        }
        let order = plan::start_order(project).map_err(|d| StackError::Rejected {
            message: d.reason.clone(),
            details: vec![d],
        })?;
        for s in order {
            for (dep, cond) in &s.depends_on {
                self.wait_condition(project, dep, *cond, deadline, log)
                    .await?;
            }
            let name = plan::container_name(&project.name, &s.name);
            let Prepared {
                image, image_id, ..
            } = &prepared[&s.name];
            let (body, hash) = self.container_spec(
                project,
                s,
                image,
                image_id,
                &ports,
                &public_env,
                commit,
                &owner,
            );
            policy::recheck_binds(s, &self.src_dir(id)).map_err(|d| StackError::Rejected {
                message: format!("rejected by policy: {}: {}", d.field, d.reason),
                details: vec![d],
            })?;
            let current = existing.get(&s.name);
            let current_hash = current.and_then(|c| {
                c.config
                    .as_ref()?
                    .labels
                    .as_ref()?
                    .get(plan::LABEL_CONFIG_HASH)
                    .cloned()
            });
            if let Some(old) = current.and_then(|c| c.id.as_deref())
                && current_hash.as_deref() != Some(hash.as_str())
            {
                // The old container's anonymous volumes go with it (nothing else would find
                // them: Docker labels them with nothing).
                log.line(&format!("recreating {name} (configuration changed)"));
                self.docker
                    .remove_container(old, force_with_volumes())
                    .await?;
            }
            if current.is_none() || current_hash.as_deref() != Some(hash.as_str()) {
                let made = self
                    .docker
                    .create_container(
                        Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                        body,
                    )
                    .await;
                let made = match made {
                    Ok(made) => made,
                    // Made meanwhile under the same name by someone else.
                    Err(e) if dk::status_of(&e) == Some(409) => {
                        self.owned_container(&name, &owner).await?;
                        return Err(failed(
                            &format!("create service {}", s.name),
                            dk::message(&e),
                        ));
                    }
                    Err(e) => {
                        return Err(failed(
                            &format!("create service {}", s.name),
                            dk::message(&e),
                        ));
                    }
                };
                created.push(made.id);
                for (net, aliases) in s.networks.iter().skip(1) {
                    self.docker
                        .connect_network(
                            &plan::network_name(&project.name, net),
                            NetworkConnectRequest {
                                container: name.clone(),
                                endpoint_config: Some(endpoint(s, &name, aliases)),
                            },
                        )
                        .await?;
                }
                log.line(&format!("created {name}"));
            }
            let running = current
                .filter(|_| current_hash.as_deref() == Some(hash.as_str()))
                .and_then(|c| c.state.as_ref()?.running)
                == Some(true);
            if !running {
                self.docker
                    .start_container(&name, None)
                    .await
                    .map_err(|e| failed(&format!("start service {}", s.name), dk::message(&e)))?;
                log.line(&format!("started {name}"));
            }
        }
        // Readiness: running, healthy where there is a healthcheck, published TCP ports accept.
        let one_shot: Vec<&str> = project
            .services
            .iter()
            .flat_map(|s| s.depends_on.iter())
            .filter(|(_, c)| **c == Condition::CompletedSuccessfully)
            .map(|(d, _)| d.as_str())
            .collect();
        for s in &project.services {
            if one_shot.contains(&s.name.as_str()) {
                continue;
            }
            self.wait_condition(project, &s.name, Condition::Started, deadline, log)
                .await?;
            if prepared[&s.name].healthcheck {
                self.wait_condition(project, &s.name, Condition::Healthy, deadline, log)
                    .await?;
            }
            for p in s.ports.iter().filter(|p| p.protocol == "tcp") {
                let port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
                let ip = p
                    .host_ip
                    .as_deref()
                    .filter(|ip| *ip != "0.0.0.0" && *ip != "::")
                    .unwrap_or("127.0.0.1");
                let addr: SocketAddr = format!("{ip}:{port}")
                    .parse()
                    .or_else(|_| format!("[{ip}]:{port}").parse())
                    .map_err(|_| failed("readiness", format!("bad host ip {ip:?}")))?;
                loop {
                    // Docker's userland proxy accepts on the host port before the app listens, so
                    // the container's own address must accept too.
                    let inner = self.running_ip(project, &s.name).await?;
                    let inner_ok = match inner {
                        Some(ip) => tokio::net::TcpStream::connect((ip, p.container_port))
                            .await
                            .is_ok(),
                        None => true,
                    };
                    if inner_ok && tokio::net::TcpStream::connect(addr).await.is_ok() {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(self
                            .timeout_error(
                                project,
                                &s.name,
                                &format!(
                                    "port {} ({addr}) accepting connections",
                                    p.container_port
                                ),
                            )
                            .await);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn container_spec(
        &self,
        project: &Project,
        s: &Service,
        image: &str,
        image_id: &str,
        ports: &BTreeMap<String, u16>,
        public_env: &[String],
        commit: &str,
        owner: &Owner,
    ) -> (ContainerCreateBody, String) {
        let name = plan::container_name(&project.name, &s.name);
        let policy = &self.settings.policy;
        let mut env: Vec<String> = s
            .environment
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        env.extend(public_env.iter().cloned());
        let mut exposed: Vec<String> = s.expose.clone();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &s.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            let host_port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
            env.push(format!(
                "BERTH_PUBLIC_ADDR_{}={}:{host_port}",
                p.container_port, self.settings.advertise
            ));
            exposed.push(key.clone());
            bindings
                .entry(key)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(host_port.to_string()),
                });
        }
        exposed.sort();
        exposed.dedup();
        let mut binds = Vec::new();
        let mut anonymous = Vec::new();
        for m in &s.volumes {
            let mode = if m.read_only { ":ro" } else { "" };
            match &m.source {
                // The path the policy resolved and admitted, rechecked right before create.
                MountSource::Bind(src) => {
                    binds.push(format!("{}:{}{mode}", src.display(), m.target))
                }
                MountSource::Named(v) => binds.push(format!(
                    "{}:{}{mode}",
                    plan::volume_name(&project.name, v),
                    m.target
                )),
                MountSource::Anonymous => anonymous.push(m.target.clone()),
            }
        }
        let restart = match &s.restart {
            Restart::No => RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            Restart::Always => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            },
            Restart::UnlessStopped => RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            },
            Restart::OnFailure(n) => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: *n,
            },
        };
        let healthcheck = s.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: h.interval.map(|d| d.as_nanos() as i64),
            timeout: h.timeout.map(|d| d.as_nanos() as i64),
            retries: h.retries,
            start_period: h.start_period.map(|d| d.as_nanos() as i64),
            start_interval: None,
        });
        let user = policy.user_for(s.user.as_deref());
        let network_mode = match s.network_mode.as_deref() {
            Some("none") => Some("none".to_owned()),
            _ => s
                .networks
                .keys()
                .next()
                .map(|n| plan::network_name(&project.name, n)),
        };
        let networking_config = s
            .networks
            .iter()
            .next()
            .map(|(net, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    plan::network_name(&project.name, net),
                    endpoint(s, &name, aliases),
                )])),
            });
        let host_config = HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            restart_policy: Some(restart),
            ipc_mode: s.ipc.clone(),
            network_mode,
            extra_hosts: (!s.extra_hosts.is_empty()).then(|| s.extra_hosts.clone()),
            cap_add: (!s.cap_add.is_empty()).then(|| s.cap_add.clone()),
            cap_drop: (!s.cap_drop.is_empty()).then(|| s.cap_drop.clone()),
            memory: (policy.memory_bytes > 0).then_some(policy.memory_bytes),
            nano_cpus: (policy.nano_cpus > 0).then_some(policy.nano_cpus),
            pids_limit: (policy.pids_limit > 0).then_some(policy.pids_limit),
            ..Default::default()
        };
        #[derive(Serialize)]
        struct Extra<'a> {
            image_id: &'a str,
            env: &'a [String],
            user: &'a Option<String>,
            limits: (i64, i64, i64),
        }
        let hash = plan::config_hash(
            s,
            &Extra {
                image_id,
                env: &env,
                user: &user,
                limits: (policy.memory_bytes, policy.nano_cpus, policy.pids_limit),
            },
        );
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            env: Some(env),
            cmd: s.command.clone(),
            entrypoint: s.entrypoint.clone(),
            working_dir: s.working_dir.clone(),
            user,
            labels: Some(plan::container_labels(project, s, &hash, owner, commit)),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            volumes: (!anonymous.is_empty()).then_some(anonymous),
            stop_timeout: s.stop_grace_period.map(|d| d.as_secs() as i64),
            hostname: None,
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        (body, hash)
    }

    /// Waits until `service` meets `cond`; fails early when it never can.
    async fn wait_condition(
        &self,
        project: &Project,
        service: &str,
        cond: Condition,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let name = plan::container_name(&project.name, service);
        loop {
            let c = self.docker.inspect_container(&name, None).await?;
            let state = c.state.unwrap_or_default();
            let running = state.running == Some(true);
            let exited = !running
                && state
                    .finished_at
                    .as_deref()
                    .is_some_and(|f| !f.starts_with("0001"));
            let health = state.health.and_then(|h| h.status);
            match cond {
                Condition::Started if running => return Ok(()),
                Condition::Healthy if health == Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Condition::Healthy if health == Some(HealthStatusEnum::UNHEALTHY) => {
                    return Err(self.failure(project, service, "became unhealthy").await);
                }
                Condition::CompletedSuccessfully if exited && state.exit_code == Some(0) => {
                    return Ok(());
                }
                Condition::CompletedSuccessfully if exited => {
                    return Err(self
                        .failure(
                            project,
                            service,
                            &format!("exited with code {}", state.exit_code.unwrap_or(-1)),
                        )
                        .await);
                }
                Condition::Started | Condition::Healthy if exited => {
                    return Err(self
                        .failure(
                            project,
                            service,
                            &format!("exited with code {}", state.exit_code.unwrap_or(-1)),
                        )
                        .await);
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let what = match cond {
                    Condition::Started => "running",
                    Condition::Healthy => "healthy",
                    Condition::CompletedSuccessfully => "completed",
                };
                log.line(&format!("timed out waiting for {service} to be {what}"));
                return Err(self.timeout_error(project, service, what).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The container's address on its first network, failing if it no longer runs.
    async fn running_ip(
        &self,
        project: &Project,
        service: &str,
    ) -> Result<Option<std::net::IpAddr>, StackError> {
        let name = plan::container_name(&project.name, service);
        let c = self.docker.inspect_container(&name, None).await?;
        if c.state.and_then(|s| s.running) != Some(true) {
            return Err(self.failure(project, service, "stopped running").await);
        }
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| {
                nets.values()
                    .find_map(|e| e.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            }))
    }

    async fn last_lines(&self, project: &Project, service: &str) -> String {
        let name = plan::container_name(&project.name, service);
        let mut out = String::new();
        let mut stream = self.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail("20")
                    .build(),
            ),
        );
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    async fn failure(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        failed(
            &format!("start of service {service}"),
            format!("service {service} {what}; last log lines:\n{lines}"),
        )
    }

    async fn timeout_error(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        StackError::Timeout(format!(
            "timed out waiting for service {service} to be {what}; last log lines:\n{lines}"
        ))
    }

    // ---- stop ------------------------------------------------------------------------------

    /// Stops the stack's containers, found by label (never by name: a name may be another's):
    /// orphans first, then the services in reverse start order, each with its grace period.
    async fn stop_all(&self, project: Option<&Project>, id: &ValidName) -> Result<(), StackError> {
        let long = dk::long(&self.docker, Duration::from_secs(300));
        let order: Vec<&Service> = project
            .map(|p| plan::start_order(p).unwrap_or_else(|_| p.services.iter().collect()))
            .unwrap_or_default();
        let rank = |c: &ContainerSummary| {
            let service = c.labels.as_ref()?.get(plan::LABEL_SERVICE)?;
            order.iter().position(|s| &s.name == service)
        };
        let mut containers = self.containers_of(id).await?;
        containers.sort_by_key(|c| std::cmp::Reverse(rank(c).unwrap_or(usize::MAX)));
        for c in containers {
            let Some(cid) = c.id.as_deref() else { continue };
            let grace = rank(&c).and_then(|i| order[i].stop_grace_period);
            let opts = grace.map(|d| {
                StopContainerOptionsBuilder::default()
                    .t(i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
                    .build()
            });
            if let Err(e) = idempotent(long.stop_container(cid, opts).await) {
                tracing::warn!(instance = %id, container = cid, cause = %e, "stop failed");
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn stop(&self, id: &ValidName) -> Result<StackStatus, StackError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let Some(mut record) = self.read_record(id)? else {
            return Err(StackError::NotFound(id.to_string()));
        };
        let _active = self.begin(id, "stop");
        record.state = StackState::Stopping;
        self.write_record(&record)?;
        let _unfinished = Unfinished::new(self, id, StackState::Stopping, "stop");
        let project = self.load_project(id).ok();
        self.stop_all(project.as_ref(), id).await?;
        record.state = StackState::Stopped;
        self.write_record(&record)?;
        self.changed.notify_one();
        self.status(id).await
    }

    // ---- delete ----------------------------------------------------------------------------

    /// Removes everything of the stack it can find by label and goes on past failures: what it
    /// could not remove is listed in `not_removed` (and the log) instead of failing half-way.
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn delete(
        &self,
        id: &ValidName,
        keep_volumes: bool,
    ) -> Result<DeleteResponse, StackError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let _active = self.begin(id, "delete");
        let log = self.log(id);
        let instance = [
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, self.settings.node.as_str()),
        ];
        let dir = self.stack_dir(id);
        let mut resp = DeleteResponse {
            id: id.clone(),
            existed: dir.exists(),
            removed_containers: 0,
            removed_images: 0,
            removed_volumes: 0,
            removed_networks: 0,
            not_removed: Vec::new(),
        };
        let mut left = Vec::new();
        let long = dk::long(&self.docker, Duration::from_secs(300));
        match self.containers_of(id).await {
            Ok(containers) => {
                for c in containers {
                    let Some(cid) = c.id else { continue };
                    let removed = long.remove_container(&cid, force_with_volumes()).await;
                    match idempotent(removed) {
                        Ok(true) => resp.removed_containers += 1,
                        Ok(false) => {}
                        Err(e) => {
                            let name = c.names.and_then(|n| n.into_iter().next());
                            let name = name
                                .as_deref()
                                .map_or(cid.as_str(), |n| n.trim_start_matches('/'));
                            left.push(format!("container {name}: {}", dk::message(&e)));
                        }
                    }
                }
            }
            Err(e) => left.push(format!("containers: cannot list them: {e}")),
        }
        let filters = label_filter(&instance);
        if !keep_volumes {
            let listed = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await;
            match listed {
                Ok(volumes) => {
                    for v in volumes.volumes.unwrap_or_default() {
                        let removed = self
                            .docker
                            .remove_volume(
                                &v.name,
                                Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
                            )
                            .await;
                        match idempotent(removed) {
                            Ok(true) => resp.removed_volumes += 1,
                            Ok(false) => {}
                            Err(e) => left.push(format!("volume {}: {}", v.name, dk::message(&e))),
                        }
                    }
                }
                Err(e) => left.push(format!("volumes: cannot list them: {}", dk::message(&e))),
            }
        }
        resp.removed_images = self.remove_images(&filters, &mut left).await;
        let listed = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await;
        match listed {
            Ok(networks) => {
                for n in networks {
                    let Some(nid) = n.id else { continue };
                    match idempotent(self.docker.remove_network(&nid).await) {
                        Ok(true) => resp.removed_networks += 1,
                        Ok(false) => {}
                        Err(e) => left.push(format!(
                            "network {}: {}",
                            n.name.unwrap_or(nid),
                            dk::message(&e)
                        )),
                    }
                }
            }
            Err(e) => left.push(format!("networks: cannot list them: {}", dk::message(&e))),
        }
        resp.existed |= resp.removed_containers
            + resp.removed_images
            + resp.removed_networks
            + resp.removed_volumes
            > 0;
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(instance = %id, cause = %e, path = %dir.display(), "cannot remove the stack directory");
            left.push(format!("the stack's directory on the worker: {e}"));
        }
        if let Some(agent) = &self.agent
            && let Err(e) = agent.kv_delete_tree(&format!("instance/{id}/")).await
        {
            tracing::warn!(instance = %id, cause = %e, "cannot remove the instance's KV keys");
            left.push(format!("KV keys instance/{id}/: {e}"));
        }
        match self.prune_networks().await {
            Ok(n) => resp.removed_networks += n,
            Err(e) => tracing::warn!(cause = %e, "cannot prune networks"),
        }
        self.prune_images().await;
        for what in &left {
            log.line(&format!("not removed: {what}"));
            tracing::warn!(instance = %id, what = %what, "delete could not remove");
        }
        resp.not_removed = left;
        self.logs.lock().expect("logs").remove(id.as_str());
        self.changed.notify_one();
        Ok(resp)
    }

    /// Removes the images matching `filters`. An image Docker refuses to remove (a child image
    /// or a container of someone else builds on it) loses its tags, so nothing can start from
    /// its name, and is reported in `left`; [`Self::prune_images`] removes it once it is free.
    async fn remove_images(
        &self,
        filters: &HashMap<String, Vec<String>>,
        left: &mut Vec<String>,
    ) -> u32 {
        let listed = self.images_matching(filters).await;
        let images = match listed {
            Ok(images) => images,
            Err(e) => {
                left.push(format!("images: cannot list them: {}", dk::message(&e)));
                return 0;
            }
        };
        let mut removed = 0;
        for image in images {
            let result = self
                .docker
                .remove_image(
                    &image.id,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
            match idempotent(result) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    let tags: Vec<&String> = image
                        .repo_tags
                        .iter()
                        .filter(|t| !t.ends_with(":<none>"))
                        .collect();
                    for tag in &tags {
                        let _ = self
                            .docker
                            .remove_image(
                                tag,
                                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                                None,
                            )
                            .await;
                    }
                    let short = image.id.trim_start_matches("sha256:");
                    let tags = if tags.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (untagged {})",
                            tags.iter()
                                .map(|t| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    left.push(format!(
                        "image {}{tags}: {}",
                        &short[..short.len().min(12)],
                        dk::message(&e)
                    ));
                }
            }
        }
        removed
    }

    /// Removes this node's untagged berth images whose stack is gone: what a delete could only
    /// untag because something still used the image. Docker refuses while it is in use.
    async fn prune_images(&self) {
        let filters = HashMap::from([
            ("dangling".to_owned(), vec!["true".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{}={}", plan::LABEL_BERTH_NODE, self.settings.node)],
            ),
        ]);
        let Ok(images) = self.images_matching(&filters).await else {
            return;
        };
        for image in images {
            let live = image
                .labels
                .get(plan::LABEL_BERTH_INSTANCE)
                .and_then(|i| ValidName::parse("id", i).ok())
                .is_some_and(|i| self.stack_dir(&i).exists());
            if !live
                && let Err(e) = self
                    .docker
                    .remove_image(&image.id, None::<RemoveImageOptions>, None)
                    .await
            {
                tracing::debug!(image = %image.id, cause = %e, "leftover image still in use");
            }
        }
    }

    /// Removes this node's berth-labelled networks that have no endpoints and whose stack is
    /// gone; networks of others (and unlabelled ones) are never touched.
    pub async fn prune_networks(&self) -> Result<u32, StackError> {
        let filters = label_filter(&[
            (plan::LABEL_BERTH_MANAGED, "true"),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ]);
        let mut removed = 0;
        for n in self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?
        {
            let (Some(nid), Some(labels)) = (n.id, n.labels) else {
                continue;
            };
            let live = labels
                .get(plan::LABEL_BERTH_INSTANCE)
                .and_then(|i| ValidName::parse("id", i).ok())
                .is_some_and(|i| self.stack_dir(&i).exists());
            if live {
                continue;
            }
            let Ok(inspect) = self.docker.inspect_network(&nid, None).await else {
                continue;
            };
            if inspect.containers.is_none_or(|c| c.is_empty())
                && idempotent(self.docker.remove_network(&nid).await)?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn endpoint(s: &Service, container: &str, aliases: &[String]) -> EndpointSettings {
    let mut all = vec![s.name.clone(), container.to_owned()];
    if let Some(cn) = &s.container_name {
        all.push(cn.clone());
    }
    all.extend(aliases.iter().cloned());
    all.dedup();
    EndpointSettings {
        aliases: Some(all),
        ..Default::default()
    }
}

/// The host path of a bind mount the container can write to.
fn writable_bind(m: &MountPoint) -> Option<&Path> {
    (m.typ.as_deref() == Some("bind") && m.rw == Some(true))
        .then_some(m.source.as_deref().map(Path::new))
        .flatten()
}

/// Whether a start failed because a host port it chose was bound by someone else meanwhile.
fn port_taken(err: &StackError) -> bool {
    let text = err.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

/// Older engines (API < 1.52) report health only inside the status text: `Up 3s (healthy)`.
fn health_from_status(status: &str) -> Option<String> {
    if status.contains("(healthy)") {
        Some("healthy".into())
    } else if status.contains("(unhealthy)") {
        Some("unhealthy".into())
    } else if status.contains("(health: starting)") {
        Some("starting".into())
    } else {
        None
    }
}

/// `web-api.v2` -> `WEB_API_V2`.
fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn port_free(port: u16, proto: &str) -> bool {
    match proto {
        "udp" => UdpSocket::bind(("0.0.0.0", port)).is_ok(),
        _ => TcpListener::bind(("0.0.0.0", port)).is_ok(),
    }
}

/// A host port the kernel picked, bound until dropped (then Docker binds it).
enum PortHold {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PortHold {
    fn port(&self) -> u16 {
        let addr = match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(u) => u.local_addr(),
        };
        addr.map_or(0, |a| a.port())
    }
}

fn allocate_port(proto: &str) -> std::io::Result<PortHold> {
    match proto {
        "udp" => Ok(PortHold::Udp(UdpSocket::bind(("0.0.0.0", 0))?)),
        _ => Ok(PortHold::Tcp(TcpListener::bind(("0.0.0.0", 0))?)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_operation_leaves_the_stack_failed() {
        let data = tempfile::tempdir().unwrap();
        let stacks = Stacks::new(
            Docker::connect_with_local_defaults().unwrap(),
            Settings {
                data_dir: data.path().to_path_buf(),
                node: "n1".into(),
                advertise: "127.0.0.1".into(),
                policy: Policy::default(),
                build_timeout: Duration::from_secs(1),
                start_timeout: Duration::from_secs(1),
            },
            None,
        );
        let id = ValidName::parse("id", "s1").unwrap();
        let record = |state| Record {
            id: id.clone(),
            state,
            commit: None,
            error: None,
            ports: BTreeMap::new(),
        };
        // A panic while starting (the audit's `timeout_secs` overflow was one).
        stacks.write_record(&record(StackState::Starting)).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _unfinished = Unfinished::new(&stacks, &id, StackState::Starting, "start");
            panic!("overflow when adding duration to instant");
        }));
        assert!(panicked.is_err());
        let after = stacks.read_record(&id).unwrap().unwrap();
        assert_eq!(after.state, StackState::Failed);
        assert_eq!(
            after.error.as_deref(),
            Some("the start did not finish (internal error)")
        );
        // An operation that recorded its outcome is left alone.
        stacks.write_record(&record(StackState::Running)).unwrap();
        drop(Unfinished::new(&stacks, &id, StackState::Starting, "start"));
        assert_eq!(
            stacks.read_record(&id).unwrap().unwrap().state,
            StackState::Running
        );
    }
}
