//! The instance operations (upload, build, start, stop, delete, logs) and the rules that hold
//! across them: every operation runs under the instance lock; a transitional state found with the
//! lock free was interrupted and is recorded as such; every state change is written to the
//! registry before it is answered and announced to the webhook.

mod build;
mod delete;
mod deploy;
mod observe;
mod release;
mod start;
mod stop;
mod upload;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_worker_api::{
    ErrorCode, ErrorDetail, LogQuery, RepoSource, Secret, ValidName, WorkerClient,
    WorkerClientError,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use delete::Deleted;
pub use deploy::DEFAULT_DEPLOY_WAIT;
pub use observe::OBSERVE_INTERVAL;
pub use release::{MAX_RELEASES, Release};

use crate::codestore::credential;
use crate::codestore::forge::{Forge, ForgeError};
use crate::codestore::{CodeStore, CodeStoreError};
use crate::metrics::Metrics;
use crate::placement::{self, Strategy, WorkerInfo};
use crate::record::{InstanceRecord, Op, State};
use crate::records::{InstanceLock, Records, RecordsError};
use crate::upload::{Limits, UploadError};
use crate::webhook::{Event, Webhook};

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
    /// A commit that is not a release of the instance (the message names both).
    #[error("{0}")]
    UnknownCommit(String),
    /// Something of a known instance that does not exist (the message names it), such as a
    /// service without a container.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Policy {
        message: String,
        details: Vec<ErrorDetail>,
    },
    /// The app is to blame (its compose file, build, image or services): the worker's 422
    /// answer, passed on as it is.
    #[error("{}", .0.message)]
    App(Box<berth_worker_api::ErrorInfo>),
    #[error("{0}")]
    NoWorker(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Worker(String),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error(transparent)]
    Records(#[from] RecordsError),
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
    pub records: Records,
    pub metrics: Arc<Metrics>,
    webhook: Option<Webhook>,
    rr: AtomicUsize,
    worker_http: reqwest::Client,
    /// Upload slots (`limits.max_concurrent`), taken before an upload's body is read.
    upload_slots: Arc<tokio::sync::Semaphore>,
    /// Workers that proved they hold the cluster token, by (URL, node), with when: a call that
    /// hands a worker a credential or takes its answer into the record asks again after
    /// [`PROOF_TTL`] or when the catalog gives the worker another address.
    proven: Mutex<HashMap<(String, String), Instant>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How long a worker's proof of the cluster token is trusted before it is asked again.
pub const PROOF_TTL: Duration = Duration::from_secs(30);

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
            StatusCode::UNPROCESSABLE_ENTITY if body.error.code == ErrorCode::PolicyRejected => {
                OpError::Policy {
                    message: body.error.message,
                    details: body.error.details,
                }
            }
            StatusCode::UNPROCESSABLE_ENTITY if body.error.code.is_app_fault() => {
                OpError::App(Box::new(body.error))
            }
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
        WorkerClientError::Protocol { .. } | WorkerClientError::Unproven { .. } => {
            OpError::Worker(err.to_string())
        }
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
        records: Records,
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
            records,
            metrics,
            webhook,
            rr: AtomicUsize::new(0),
            worker_http,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            proven: Mutex::new(HashMap::new()),
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
            // The forge checks its own credentials: a read-only one when configured.
            Some(forge) => {
                let (username, password) = forge.clone_credential();
                RepoSource {
                    url: forge.url(user, id),
                    username,
                    password,
                }
            }
            // A credential for this repository alone, for fetching only, for one build.
            None => RepoSource {
                url: self.repo_url(user, id),
                username: Some(credential::USERNAME.to_owned()),
                password: Some(credential::issue(
                    &self.settings.git_token,
                    user,
                    id,
                    berth_worker_api::auth::unix_now() + credential::TTL_SECS,
                )),
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

    /// Makes sure `worker` (at the URL and node the catalog names now) proved it holds the
    /// cluster token within [`PROOF_TTL`], with a fresh challenge when it did not; then answers
    /// its client. Nothing is sent to a worker that cannot prove it.
    async fn proven_client(&self, worker: &WorkerInfo) -> Result<WorkerClient, WorkerClientError> {
        let key = (worker.url.clone(), worker.node.clone());
        let client = self.worker_client(&worker.url);
        let fresh = {
            let proven = self
                .proven
                .lock()
                .expect("the proof cache is never poisoned");
            proven.get(&key).is_some_and(|at| at.elapsed() < PROOF_TTL)
        };
        if fresh {
            return Ok(client);
        }
        let answer = client.health().await;
        let mut proven = self
            .proven
            .lock()
            .expect("the proof cache is never poisoned");
        proven.retain(|_, at| at.elapsed() < PROOF_TTL);
        match answer {
            Ok(health) if health.node == worker.node => {
                proven.insert(key, Instant::now());
                Ok(client)
            }
            Ok(health) => {
                tracing::warn!(
                    worker = %worker.id, answered = %health.node,
                    "worker proved a different node name; nothing sent"
                );
                Err(WorkerClientError::Unproven {
                    base: worker.url.clone(),
                })
            }
            Err(err) => {
                proven.remove(&key);
                Err(err)
            }
        }
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
        self.records.put(lock, rec).await?;
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
        match self.records.lock(id).await? {
            Some(lock) => Ok(lock),
            None => {
                let state = self.records.get(id).await.ok().flatten().map(|r| r.state);
                let state = state.map(|s| format!(" (state {s})")).unwrap_or_default();
                Err(OpError::Conflict(format!(
                    "instance {id} is busy with another operation{state}; retry later"
                )))
            }
        }
    }

    async fn get_or_404(&self, id: &ValidName) -> Result<InstanceRecord, OpError> {
        self.records
            .get(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))
    }

    /// A transitional state seen under the lock was left by a master that stopped: record it
    /// (a rollout left `deploying` takes what its worker says serves, `deploy.rs`).
    async fn recover(&self, lock: &InstanceLock, rec: &mut InstanceRecord) -> Result<(), OpError> {
        self.recover_deploy(lock, rec).await?;
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
                OpError::Records(_)
                | OpError::CodeStore(_)
                | OpError::Internal(_)
                | OpError::Forge(_) => {
                    tracing::error!(op = op.as_str(), cause = %err, "operation failed")
                }
                _ => tracing::info!(op = op.as_str(), cause = %err, "operation refused or failed"),
            }
        }
    }

    /// Runs `f` under the instance lock of `id`, then releases the lock and records the outcome
    /// of `op` (metrics and log). Answers 409 (`Conflict`) when the lock stays busy.
    async fn with_lock<T>(
        &self,
        op: Op,
        id: &ValidName,
        f: impl AsyncFnOnce(&InstanceLock) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let started = Instant::now();
        let lock = self.lock(id).await?;
        let result = f(&lock).await;
        lock.release().await;
        self.finish(op, started, &result);
        result
    }

    /// Ends an operation that fails while it holds the lock but before handing it on: releases
    /// it and records the failure.
    async fn fail_released<T>(
        &self,
        op: Op,
        started: Instant,
        lock: InstanceLock,
        err: OpError,
    ) -> Result<T, OpError> {
        lock.release().await;
        let result = Err(err);
        self.finish(op, started, &result);
        result
    }

    /// The record's worker if it is still registered and healthy.
    fn current_worker(&self, rec: &InstanceRecord, workers: &[WorkerInfo]) -> Option<WorkerInfo> {
        let placed = rec.worker.as_ref()?;
        workers
            .iter()
            .find(|w| w.id == placed.id && w.healthy)
            .cloned()
    }

    /// Chooses a worker that proves it holds the cluster token (a signed answer to a challenge,
    /// for the node it is registered as, at most [`PROOF_TTL`] old) and records the move (with why, when it
    /// replaces a lost worker). A catalog entry that cannot prove it is passed over and gets
    /// nothing.
    async fn place(
        &self,
        rec: &mut InstanceRecord,
        workers: &[WorkerInfo],
    ) -> Result<WorkerInfo, OpError> {
        let mut candidates = workers.to_vec();
        let chosen = loop {
            let chosen = placement::choose(&candidates, self.settings.strategy, &self.rr)
                .ok_or_else(|| {
                    OpError::NoWorker(
                        "no healthy berth-worker with free capacity in the registry".into(),
                    )
                })?
                .clone();
            match self.proven_client(&chosen).await {
                Ok(_) => break chosen,
                Err(err) => tracing::warn!(
                    worker = %chosen.id, cause = %err,
                    "worker did not prove it holds the cluster token; not placing there"
                ),
            }
            candidates.retain(|w| w.id != chosen.id);
        };
        let reason = match &rec.worker {
            Some(old) => format!(
                "worker {} is gone or critical; rebuilding from the code store",
                old.id
            ),
            None => "first placement".to_owned(),
        };
        let moving = rec.worker.as_ref().is_some_and(|w| w.id != chosen.id);
        if rec.worker.is_some() {
            tracing::warn!(id = %rec.id, to = %chosen.id, %reason, "moving instance");
        }
        rec.record_move(&chosen.to_ref(), &reason);
        if moving {
            // The new worker holds no images yet: what was built and ran was the old worker's.
            rec.built_commit = None;
            rec.built_at = None;
            rec.running_commit = None;
            rec.kept_commits.clear();
            rec.built_times.clear();
        }
        Ok(chosen)
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
            .records
            .list()
            .await?
            .into_iter()
            .filter(|r| user.is_none_or(|u| r.user == u.as_str()))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect())
    }

    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, OpError> {
        Ok(self.records.workers().await?)
    }

    /// The worker's build and start log stream of the instance.
    pub async fn logs(
        &self,
        id: &ValidName,
        q: &LogQuery,
    ) -> Result<BoxStream<'static, reqwest::Result<Bytes>>, OpError> {
        let rec = self.get_or_404(id).await?;
        let worker = rec.worker.ok_or_else(|| {
            OpError::Conflict(format!("instance {id} is not placed on a worker yet"))
        })?;
        match self.worker_client(&worker.url).log_stream(id, q).await {
            Ok(stream) => Ok(stream.boxed()),
            // Placed, but the worker has no stack of it yet (its first build has not reached the
            // worker): there is no output so far, which is not the worker's fault.
            Err(WorkerClientError::Api { status, .. })
                if status == StatusCode::NOT_FOUND && q.service.is_none() =>
            {
                Ok(futures::stream::empty().boxed())
            }
            Err(WorkerClientError::Api { status, body }) if status == StatusCode::NOT_FOUND => {
                Err(OpError::Missing(body.error.message))
            }
            Err(e) => Err(worker_error(&worker.id, e)),
        }
    }
}
