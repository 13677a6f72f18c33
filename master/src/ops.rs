//! The instance operations (upload, build, start, stop, delete, logs) and the rules that hold
//! across them: every operation runs under the instance lock; a transitional state found with the
//! lock free was interrupted and is recorded as such; every state change is written to the
//! registry before it is answered and announced to the webhook.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use berth_worker_api::{
    BuildRequest, DeleteResponse, ErrorDetail, RepoSource, Secret, StackState, StartRequest,
    ValidName, WorkerClient, WorkerClientError,
};
use bytes::Bytes;
use futures::Stream;
use reqwest::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::codestore::forge::{Forge, ForgeError};
use crate::codestore::{Code, CodeStore, CodeStoreError};
use crate::metrics::Metrics;
use crate::placement::{self, Strategy, WorkerInfo};
use crate::record::{InstanceRecord, Op, State};
use crate::store::{InstanceLock, Store, StoreError};
use crate::upload::{Limits, UploadError, read_upload};
use crate::webhook::{Event, Webhook};

/// Basic-auth user name the master hands to workers for its own code store.
pub const GIT_USERNAME: &str = "berth";

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("instance {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Policy {
        message: String,
        details: Vec<ErrorDetail>,
    },
    #[error("{0}")]
    NoWorker(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Worker(String),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    CodeStore(#[from] CodeStoreError),
    #[error("{0}")]
    Internal(String),
}

/// Settings the operations need, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_token: Secret,
    pub git_token: Secret,
    pub cluster_token: Secret,
    /// Base URL workers clone the embedded code store from, e.g. `http://10.0.0.2:8080`.
    pub public_url: String,
    pub limits: Limits,
    pub strategy: Strategy,
    pub forge: Option<Forge>,
    /// Readiness timeout passed to workers on start (worker default when `None`).
    pub start_timeout_secs: Option<u64>,
}

/// What a delete did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeleteOutcome {
    pub id: String,
    pub deleted: bool,
    pub code_kept: bool,
    /// What the worker removed; absent when the instance was never placed or its worker is gone.
    #[schema(value_type = Option<Object>)]
    pub worker: Option<DeleteResponse>,
    /// Why the worker was not asked, when it was not.
    pub note: Option<String>,
}

/// An upload's body, read while holding one of the master's upload slots; the slot is given
/// back once the upload is committed or refused.
#[derive(Debug)]
pub struct UploadBody {
    pub bytes: Bytes,
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

/// The master's shared state: code store, registry, settings, background tasks.
#[derive(Debug)]
pub struct Master {
    pub settings: Settings,
    pub codestore: CodeStore,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    webhook: Option<Webhook>,
    rr: AtomicUsize,
    worker_http: reqwest::Client,
    /// Upload slots (`limits.max_concurrent`), taken before an upload's body is read.
    upload_slots: Arc<tokio::sync::Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Runs blocking code (git2) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(format!("blocking task failed: {e}")))
}

fn step_of(state: State) -> &'static str {
    match state {
        State::Building => "build",
        State::Starting => "start",
        State::Stopping => "stop",
        State::Deleting => "delete",
        _ => "unknown",
    }
}

/// Maps a worker's answer to an operation error, keeping policy details and meaningful statuses.
fn worker_error(worker: &str, err: WorkerClientError) -> OpError {
    match err {
        WorkerClientError::Unreachable { .. } => {
            OpError::Worker(format!("worker {worker} unreachable: {err}"))
        }
        WorkerClientError::Api { status, body } => match status {
            StatusCode::UNPROCESSABLE_ENTITY => OpError::Policy {
                message: body.error.message,
                details: body.error.details,
            },
            StatusCode::CONFLICT => {
                OpError::Conflict(format!("worker {worker}: {}", body.error.message))
            }
            StatusCode::GATEWAY_TIMEOUT => {
                OpError::Timeout(format!("worker {worker}: {}", body.error.message))
            }
            _ => OpError::Worker(format!(
                "worker {worker} answered {status}: {}",
                body.error.message
            )),
        },
        WorkerClientError::Protocol { .. } => OpError::Worker(err.to_string()),
    }
}

fn is_not_found(err: &WorkerClientError) -> bool {
    err.status() == Some(StatusCode::NOT_FOUND)
}

fn name(field: &'static str, value: &str) -> Result<ValidName, OpError> {
    ValidName::parse(field, value).map_err(|e| OpError::Internal(format!("record holds {e}")))
}

impl Master {
    pub fn new(
        settings: Settings,
        codestore: CodeStore,
        store: Store,
        metrics: Arc<Metrics>,
        webhook: Option<Webhook>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let worker_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client without TLS always builds");
        let slots = usize::try_from(settings.limits.max_concurrent)
            .unwrap_or(usize::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            settings,
            codestore,
            store,
            metrics,
            webhook,
            rr: AtomicUsize::new(0),
            worker_http,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            tasks,
            shutdown,
        }
    }

    /// Waits for an upload slot; hold it until the upload is committed.
    pub async fn upload_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(permit) = self.upload_slots.clone().try_acquire_owned() {
            return permit;
        }
        self.metrics.upload_waiting(true);
        let permit = self.upload_slots.clone().acquire_owned().await;
        self.metrics.upload_waiting(false);
        permit.expect("the upload semaphore is never closed")
    }

    /// Clone URL of an instance (no credentials): the forge's when one is configured.
    pub fn repo_url(&self, user: &ValidName, id: &ValidName) -> String {
        match &self.settings.forge {
            Some(forge) => forge.url(user, id),
            None => format!(
                "{}/git/{user}/{id}.git",
                self.settings.public_url.trim_end_matches('/')
            ),
        }
    }

    fn repo_source(&self, user: &ValidName, id: &ValidName) -> RepoSource {
        match &self.settings.forge {
            Some(forge) => RepoSource {
                url: forge.url(user, id),
                username: forge.token.as_ref().map(|_| forge.username.clone()),
                password: forge.token.clone(),
            },
            None => RepoSource {
                url: self.repo_url(user, id),
                username: Some(GIT_USERNAME.to_owned()),
                password: Some(self.settings.git_token.clone()),
            },
        }
    }

    fn worker_client(&self, url: &str) -> WorkerClient {
        WorkerClient::with_http(
            url,
            self.settings.cluster_token.clone(),
            self.worker_http.clone(),
        )
    }

    /// Writes the record (stamping `updated_at`), only while `lock` is held, and announces a
    /// state change.
    async fn save(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
        previous: Option<State>,
    ) -> Result<(), OpError> {
        rec.touch();
        self.store.put(lock, rec).await?;
        if previous != Some(rec.state) {
            tracing::info!(id = %rec.id, from = ?previous.map(State::as_str), to = %rec.state, "state change");
            if let Some(hook) = &self.webhook {
                hook.notify(&Event {
                    event: "state_changed",
                    id: rec.id.clone(),
                    previous_state: previous.map(|s| s.as_str().to_owned()),
                    state: Some(rec.state.as_str().to_owned()),
                    record: Some(rec.clone()),
                    at: rec.updated_at.clone(),
                });
            }
        }
        Ok(())
    }

    async fn lock(&self, id: &ValidName) -> Result<InstanceLock, OpError> {
        match self.store.lock(id).await? {
            Some(lock) => Ok(lock),
            None => {
                let state = self.store.get(id).await.ok().flatten().map(|r| r.state);
                let state = state.map(|s| format!(" (state {s})")).unwrap_or_default();
                Err(OpError::Conflict(format!(
                    "instance {id} is busy with another operation{state}; retry later"
                )))
            }
        }
    }

    async fn get_or_404(&self, id: &ValidName) -> Result<InstanceRecord, OpError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))
    }

    /// A transitional state seen under the lock was left by a master that stopped: record it.
    async fn recover(&self, lock: &InstanceLock, rec: &mut InstanceRecord) -> Result<(), OpError> {
        if rec.state.is_transitional() {
            let previous = rec.state;
            let step = step_of(previous);
            tracing::warn!(id = %rec.id, state = %previous, "found an interrupted operation");
            rec.fail(
                step,
                format!("interrupted: the master running this {step} stopped before it ended"),
            );
            self.save(lock, rec, Some(previous)).await?;
        }
        Ok(())
    }

    fn finish<T>(&self, op: Op, started: Instant, result: &Result<T, OpError>) {
        self.metrics
            .operation(op, result.is_ok(), started.elapsed());
        if let Err(err) = result {
            match err {
                OpError::Store(_)
                | OpError::CodeStore(_)
                | OpError::Internal(_)
                | OpError::Forge(_) => {
                    tracing::error!(op = op.as_str(), cause = %err, "operation failed")
                }
                _ => tracing::info!(op = op.as_str(), cause = %err, "operation refused or failed"),
            }
        }
    }

    // ---- upload ----

    /// Validates and commits an upload, then (with `build`) starts a build of a new commit.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn upload(
        self: &Arc<Self>,
        id: ValidName,
        user: ValidName,
        project: ValidName,
        body: UploadBody,
        build: bool,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let limits = self.settings.limits;
        let UploadBody { bytes: body, slot } = body;
        let size = body.len() as u64;
        let tree = match blocking(move || read_upload(&body, &limits)).await {
            Ok(Ok(tree)) => tree,
            Ok(Err(err)) => {
                let result = Err(OpError::from(err));
                self.finish(Op::Upload, started, &result);
                return result;
            }
            Err(err) => return Err(err),
        };
        self.upload_code(
            id,
            user,
            project,
            Code::Tree(tree),
            size,
            slot,
            started,
            build,
            wait,
        )
        .await
    }

    /// [`Master::upload`] once the code is read and checked: a tree, or a pushed commit.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_code(
        self: &Arc<Self>,
        id: ValidName,
        user: ValidName,
        project: ValidName,
        code: Code,
        size: u64,
        slot: tokio::sync::OwnedSemaphorePermit,
        started: Instant,
        build: bool,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let lock = self.lock(&id).await?;
        let result = self.upload_locked(&lock, &id, &user, &project, code).await;
        // Committed (or refused): the tree is no longer held, the next upload may be read.
        drop(slot);
        self.finish(Op::Upload, started, &result);
        let (rec, changed) = match result {
            Ok(ok) => ok,
            Err(err) => {
                lock.release().await;
                return Err(err);
            }
        };
        self.metrics.uploaded(size);
        // New code is built; so is code a previous upload stored without getting it built (no
        // healthy worker then, or its build failed), so retrying that upload does the build.
        let unbuilt = rec.state == State::Uploaded
            || (rec.state == State::Failed
                && rec.error.as_ref().is_some_and(|e| e.step == "build"));
        match (build, changed || unbuilt, rec.commit.clone()) {
            (true, true, Some(commit)) => {
                let state = rec.state;
                self.start_build(lock, rec, commit.clone(), wait, Instant::now())
                    .await
                    .map_err(|err| match err {
                        OpError::NoWorker(m) => OpError::NoWorker(format!(
                            "{m}; the code was stored as commit {commit} (instance {id} is {state}): \
                             retry the upload, or POST /v1/instances/{id}/build, once a worker is \
                             healthy"
                        )),
                        other => other,
                    })
            }
            _ => {
                lock.release().await;
                Ok(rec)
            }
        }
    }

    async fn upload_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        user: &ValidName,
        project: &ValidName,
        code: Code,
    ) -> Result<(InstanceRecord, bool), OpError> {
        let mut existing = self.store.get(id).await?;
        if let Some(rec) = &existing
            && (rec.user != user.as_str() || rec.project != project.as_str())
        {
            return Err(OpError::Conflict(format!(
                "instance {id} belongs to user {} and project {}",
                rec.user, rec.project
            )));
        }
        if let Some(rec) = existing.as_mut() {
            self.recover(lock, rec).await?;
        }
        let state = existing.as_ref().map(|r| r.state);
        let allow_change = state.is_none_or(|s| Op::Upload.allows(s));
        let (store, u, i) = (self.codestore.clone(), user.clone(), id.clone());
        let message = format!("upload of {user}/{project} instance {id}");
        let (previous_head, committed) = blocking(move || {
            let previous = store.head(&u, &i)?;
            let committed = store.commit_code(&u, &i, &code, &message, allow_change)?;
            Ok::<_, CodeStoreError>((previous, committed))
        })
        .await??;
        let Some(committed) = committed else {
            let state = state.unwrap_or(State::Uploaded);
            return Err(OpError::Conflict(format!(
                "{}; upload new code after stopping it",
                Op::Upload.explain(state)
            )));
        };
        if let Some(forge) = self.settings.forge.clone() {
            let path = self.codestore.repo_path(user, id);
            let (u, i) = (user.clone(), id.clone());
            if let Err(err) = blocking(move || forge.push(&path, &u, &i)).await? {
                // Workers clone from the forge, which does not have this commit: undo it, so the
                // code store and the record keep agreeing and a retry pushes again.
                if committed.changed {
                    let (store, u, i) = (self.codestore.clone(), user.clone(), id.clone());
                    let commit = committed.commit.clone();
                    blocking(move || store.roll_back(&u, &i, &commit, previous_head.as_deref()))
                        .await??;
                }
                return Err(err.into());
            }
        }
        match existing {
            Some(rec) if rec.commit.as_deref() == Some(committed.commit.as_str()) => {
                Ok((rec, false))
            }
            Some(mut rec) => {
                let previous = rec.state;
                rec.commit = Some(committed.commit);
                rec.repo = self.repo_url(user, id);
                rec.state = State::Uploaded;
                rec.error = None;
                self.save(lock, &mut rec, Some(previous)).await?;
                Ok((rec, true))
            }
            None => {
                let mut rec = InstanceRecord::new(
                    id.as_str(),
                    user.as_str(),
                    project.as_str(),
                    self.repo_url(user, id),
                );
                rec.commit = Some(committed.commit);
                self.save(lock, &mut rec, None).await?;
                Ok((rec, true))
            }
        }
    }

    // ---- build ----

    /// Builds `commit` (default: the latest upload) on the instance's worker, or a newly chosen
    /// one. Returns at once in `building`, or the final record when `wait` is given.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn build(
        self: &Arc<Self>,
        id: ValidName,
        commit: Option<String>,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let lock = self.lock(&id).await?;
        let prepared = async {
            let mut rec = self.get_or_404(&id).await?;
            self.recover(&lock, &mut rec).await?;
            if !Op::Build.allows(rec.state) {
                return Err(OpError::Conflict(Op::Build.explain(rec.state)));
            }
            let commit = match commit {
                Some(c) => {
                    let (store, u, i) =
                        (self.codestore.clone(), name("user", &rec.user)?, id.clone());
                    blocking(move || store.resolve_commit(&u, &i, &c))
                        .await?
                        .map_err(|e| match e {
                            CodeStoreError::UnknownCommit(_) | CodeStoreError::NotFound { .. } => {
                                OpError::Invalid {
                                    field: "commit",
                                    message: format!("invalid commit: {e}"),
                                }
                            }
                            other => other.into(),
                        })?
                }
                None => rec.commit.clone().ok_or_else(|| {
                    OpError::Conflict(format!("instance {id} has no uploaded code"))
                })?,
            };
            Ok((rec, commit))
        }
        .await;
        match prepared {
            Ok((rec, commit)) => self.start_build(lock, rec, commit, wait, started).await,
            Err(err) => {
                lock.release().await;
                let result = Err(err);
                self.finish(Op::Build, started, &result);
                result
            }
        }
    }

    /// With the lock held and the state checked: chooses the worker, records `building` and hands
    /// lock and record to a background build.
    async fn start_build(
        self: &Arc<Self>,
        lock: InstanceLock,
        mut rec: InstanceRecord,
        commit: String,
        wait: Option<Duration>,
        started: Instant,
    ) -> Result<InstanceRecord, OpError> {
        let prepared = async {
            let workers = self.store.workers().await?;
            let current = self.current_worker(&rec, &workers);
            if rec.state == State::Built
                && rec.built_commit.as_deref() == Some(commit.as_str())
                && current.is_some()
            {
                return Ok(None);
            }
            let worker = match current {
                Some(w) => w,
                None => self.place(&mut rec, &workers)?,
            };
            self.mark_building(&lock, &mut rec, &worker).await?;
            Ok(Some(worker))
        }
        .await;
        let worker = match prepared {
            Ok(Some(worker)) => worker,
            Ok(None) => {
                lock.release().await;
                self.finish(Op::Build, started, &Ok::<(), OpError>(()));
                return Ok(rec);
            }
            Err(err) => {
                lock.release().await;
                let result = Err(err);
                self.finish(Op::Build, started, &result);
                return result;
            }
        };
        let snapshot = rec.clone();
        let (tx, rx) = oneshot::channel();
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let result = tokio::select! {
                r = this.finish_build(&lock, &mut rec, &worker, &commit) => r.map(|()| rec),
                () = this.shutdown.cancelled() => {
                    // Leave `building` in the record: the next operation sees it interrupted.
                    Err(OpError::Internal("master shutting down".into()))
                }
            };
            lock.release().await;
            this.finish(Op::Build, started, &result);
            let _ = tx.send(result);
        });
        let Some(wait) = wait else {
            return Ok(snapshot);
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OpError::Internal(
                "build task ended without an answer".into(),
            )),
            Err(_) => Err(OpError::Timeout(format!(
                "build of {} still running after {}; GET /v1/instances/{} shows its state",
                snapshot.id,
                humantime::format_duration(wait),
                snapshot.id
            ))),
        }
    }

    /// The record's worker if it is still registered and healthy.
    fn current_worker(&self, rec: &InstanceRecord, workers: &[WorkerInfo]) -> Option<WorkerInfo> {
        let placed = rec.worker.as_ref()?;
        workers
            .iter()
            .find(|w| w.id == placed.id && w.healthy)
            .cloned()
    }

    /// Chooses a worker and records the move (with why, when it replaces a lost worker).
    fn place(
        &self,
        rec: &mut InstanceRecord,
        workers: &[WorkerInfo],
    ) -> Result<WorkerInfo, OpError> {
        let chosen = placement::choose(workers, self.settings.strategy, &self.rr)
            .ok_or_else(|| {
                OpError::NoWorker(
                    "no healthy berth-worker with free capacity in the registry".into(),
                )
            })?
            .clone();
        let reason = match &rec.worker {
            Some(old) => format!(
                "worker {} is gone or critical; rebuilding from the code store",
                old.id
            ),
            None => "first placement".to_owned(),
        };
        if rec.worker.is_some() {
            tracing::warn!(id = %rec.id, to = %chosen.id, %reason, "moving instance");
        }
        rec.record_move(&chosen.to_ref(), &reason);
        Ok(chosen)
    }

    async fn mark_building(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
        worker: &WorkerInfo,
    ) -> Result<(), OpError> {
        let previous = rec.state;
        rec.state = State::Building;
        rec.error = None;
        rec.endpoints.clear();
        self.save(lock, rec, Some(previous)).await?;
        self.store
            .put_seed_ip(lock, &name("id", &rec.id)?, &worker.address)
            .await?;
        Ok(())
    }

    /// Runs the build on the worker and records `built` or `failed`.
    async fn finish_build(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
        worker: &WorkerInfo,
        commit: &str,
    ) -> Result<(), OpError> {
        let (id, user) = (name("id", &rec.id)?, name("user", &rec.user)?);
        let request = BuildRequest {
            user: user.clone(),
            project: name("project", &rec.project)?,
            commit: commit.to_owned(),
            repo: self.repo_source(&user, &id),
        };
        let outcome = match self.worker_client(&worker.url).build(&id, &request).await {
            Ok(status) if status.state == StackState::Failed => Err(OpError::Worker(format!(
                "worker {}: build failed: {}",
                worker.id,
                status.error.unwrap_or_default()
            ))),
            Ok(status) => Ok(status.commit.unwrap_or_else(|| commit.to_owned())),
            Err(err) => Err(worker_error(&worker.id, err)),
        };
        let previous = rec.state;
        match outcome {
            Ok(built) => {
                rec.state = State::Built;
                rec.built_commit = Some(built);
                rec.error = None;
                self.save(lock, rec, Some(previous)).await
            }
            Err(err) => {
                rec.fail("build", err.to_string());
                self.save(lock, rec, Some(previous)).await?;
                Err(err)
            }
        }
    }

    // ---- start ----

    /// Starts the stack and answers once it runs, with its endpoints. A worker that is gone or
    /// critical is replaced: the instance is rebuilt from the code store on a healthy one.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn start(self: &Arc<Self>, id: ValidName) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let lock = self.lock(&id).await?;
        let result = self.start_locked(&lock, &id).await;
        lock.release().await;
        self.finish(Op::Start, started, &result);
        result
    }

    async fn start_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
    ) -> Result<InstanceRecord, OpError> {
        let mut rec = self.get_or_404(id).await?;
        self.recover(lock, &mut rec).await?;
        if !Op::Start.allows(rec.state) {
            return Err(OpError::Conflict(Op::Start.explain(rec.state)));
        }
        let workers = self.store.workers().await?;
        let current = self.current_worker(&rec, &workers);
        if rec.state == State::Running && current.is_some() {
            return Ok(rec);
        }
        let (worker, mut need_build) = match current {
            Some(w) => (w, rec.built_commit.is_none()),
            None => (self.place(&mut rec, &workers)?, true),
        };
        let mut retried = false;
        loop {
            if need_build {
                let commit = rec
                    .built_commit
                    .clone()
                    .or_else(|| rec.commit.clone())
                    .ok_or_else(|| {
                        OpError::Conflict(format!("instance {id} has no uploaded code"))
                    })?;
                self.mark_building(lock, &mut rec, &worker).await?;
                let started = Instant::now();
                let built = self.finish_build(lock, &mut rec, &worker, &commit).await;
                self.finish(Op::Build, started, &built);
                built?;
            }
            let previous = rec.state;
            rec.state = State::Starting;
            self.save(lock, &mut rec, Some(previous)).await?;
            let request = StartRequest {
                commit: rec.built_commit.clone(),
                timeout_secs: self.settings.start_timeout_secs,
            };
            let outcome = self.worker_client(&worker.url).start(id, &request).await;
            let err = match outcome {
                Ok(status) if status.state != StackState::Failed => {
                    rec.state = State::Running;
                    rec.endpoints = status.endpoints;
                    rec.error = None;
                    self.save(lock, &mut rec, Some(State::Starting)).await?;
                    return Ok(rec);
                }
                Ok(status) => OpError::Worker(format!(
                    "worker {}: start failed: {}",
                    worker.id,
                    status.error.unwrap_or_default()
                )),
                Err(err) if is_not_found(&err) && !retried => {
                    // The worker lost the stack (e.g. it was reinstalled): build it there again.
                    tracing::warn!(%id, worker = %worker.id, "worker holds no stack; rebuilding");
                    retried = true;
                    need_build = true;
                    continue;
                }
                Err(err) => worker_error(&worker.id, err),
            };
            rec.fail("start", err.to_string());
            self.save(lock, &mut rec, Some(State::Starting)).await?;
            return Err(err);
        }
    }

    // ---- stop ----

    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn stop(self: &Arc<Self>, id: ValidName) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let lock = self.lock(&id).await?;
        let result = self.stop_locked(&lock, &id).await;
        lock.release().await;
        self.finish(Op::Stop, started, &result);
        result
    }

    async fn stop_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
    ) -> Result<InstanceRecord, OpError> {
        let mut rec = self.get_or_404(id).await?;
        self.recover(lock, &mut rec).await?;
        if !Op::Stop.allows(rec.state) {
            return Err(OpError::Conflict(Op::Stop.explain(rec.state)));
        }
        if rec.state == State::Stopped {
            return Ok(rec);
        }
        let previous = rec.state;
        let Some(worker) = rec.worker.clone() else {
            rec.state = State::Stopped;
            rec.endpoints.clear();
            self.save(lock, &mut rec, Some(previous)).await?;
            return Ok(rec);
        };
        rec.state = State::Stopping;
        self.save(lock, &mut rec, Some(previous)).await?;
        let workers = self.store.workers().await?;
        let alive = self.current_worker(&rec, &workers).is_some();
        match self.worker_client(&worker.url).stop(id).await {
            Ok(_) => rec.error = None,
            Err(err) if is_not_found(&err) => rec.error = None,
            Err(err) if !alive => {
                rec.error = Some(crate::record::RecordError {
                    step: "stop".into(),
                    message: format!(
                        "worker {} is gone or critical ({err}); its stack is presumed stopped",
                        worker.id
                    ),
                });
            }
            Err(err) => {
                let err = worker_error(&worker.id, err);
                rec.fail("stop", err.to_string());
                self.save(lock, &mut rec, Some(State::Stopping)).await?;
                return Err(err);
            }
        }
        rec.state = State::Stopped;
        rec.endpoints.clear();
        self.save(lock, &mut rec, Some(State::Stopping)).await?;
        Ok(rec)
    }

    // ---- delete ----

    /// Removes the stack from its worker, the KV records and (unless `keep_code`) the repository.
    /// An unknown id answers `NotFound`.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn delete(
        self: &Arc<Self>,
        id: ValidName,
        keep_code: bool,
    ) -> Result<DeleteOutcome, OpError> {
        let started = Instant::now();
        let lock = self.lock(&id).await?;
        let result = self.delete_locked(&lock, &id, keep_code).await;
        if matches!(result, Err(OpError::NotFound(_))) {
            // No record, but maybe a repository a stopped first upload left: remove it.
            let (store, i) = (self.codestore.clone(), id.clone());
            blocking(move || store.remove_wedged(&i)).await??;
        }
        lock.release().await;
        self.finish(Op::Delete, started, &result);
        result
    }

    async fn delete_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        keep_code: bool,
    ) -> Result<DeleteOutcome, OpError> {
        let mut rec = self.get_or_404(id).await?;
        self.recover(lock, &mut rec).await?;
        if !Op::Delete.allows(rec.state) {
            return Err(OpError::Conflict(Op::Delete.explain(rec.state)));
        }
        let previous = rec.state;
        rec.state = State::Deleting;
        self.save(lock, &mut rec, Some(previous)).await?;
        let mut outcome = DeleteOutcome {
            id: id.to_string(),
            deleted: true,
            code_kept: keep_code,
            worker: None,
            note: None,
        };
        if let Some(worker) = rec.worker.clone() {
            let workers = self.store.workers().await?;
            let alive = self.current_worker(&rec, &workers).is_some();
            match self.worker_client(&worker.url).delete(id, false).await {
                Ok(resp) => outcome.worker = Some(resp),
                Err(err) if !alive => {
                    outcome.note = Some(format!(
                        "worker {} is gone or critical ({err}); nothing removed there",
                        worker.id
                    ));
                }
                Err(err) => {
                    let err = worker_error(&worker.id, err);
                    rec.fail("delete", err.to_string());
                    self.save(lock, &mut rec, Some(State::Deleting)).await?;
                    return Err(err);
                }
            }
        } else {
            outcome.note = Some("instance was never placed on a worker".into());
        }
        if !keep_code {
            self.store
                .ensure_held(lock, id, "removing its repository")
                .await?;
            let (store, u, i) = (self.codestore.clone(), name("user", &rec.user)?, id.clone());
            blocking(move || store.delete(&u, &i)).await??;
        }
        self.store.delete(lock, id).await?;
        tracing::info!(%id, keep_code, "instance deleted");
        if let Some(hook) = &self.webhook {
            hook.notify(&Event {
                event: "deleted",
                id: id.to_string(),
                previous_state: Some(previous.as_str().to_owned()),
                state: None,
                record: None,
                at: crate::record::now(),
            });
        }
        Ok(outcome)
    }

    // ---- reads ----

    pub async fn get(&self, id: &ValidName) -> Result<InstanceRecord, OpError> {
        self.get_or_404(id).await
    }

    pub async fn list(
        &self,
        user: Option<&ValidName>,
        state: Option<State>,
    ) -> Result<Vec<InstanceRecord>, OpError> {
        Ok(self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|r| user.is_none_or(|u| r.user == u.as_str()))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect())
    }

    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, OpError> {
        Ok(self.store.workers().await?)
    }

    /// The worker's build and start log stream of the instance.
    pub async fn logs(
        &self,
        id: &ValidName,
        follow: bool,
    ) -> Result<impl Stream<Item = reqwest::Result<Bytes>> + use<>, OpError> {
        let rec = self.get_or_404(id).await?;
        let worker = rec.worker.ok_or_else(|| {
            OpError::Conflict(format!("instance {id} is not placed on a worker yet"))
        })?;
        self.worker_client(&worker.url)
            .logs(id, follow)
            .await
            .map_err(|e| worker_error(&worker.id, e))
    }
}
