//! Build: choose (or keep) the worker, record `building`, run the build on the worker in the
//! background and record `built` or `failed`. A running instance builds beside its running
//! stack and stays `running`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_worker_api::{BuildRequest, StackState, ValidName};
use tokio::sync::oneshot;

use super::{Master, OpError, blocking, name, worker_error};
use crate::codestore::CodeStoreError;
use crate::placement::WorkerInfo;
use crate::record::{InstanceRecord, Op, State};
use crate::records::InstanceLock;

/// Whether a build of `rec` runs beside its running stack (which keeps serving).
pub(super) fn beside(rec: &InstanceRecord) -> bool {
    rec.state.is_up() && rec.running_commit.is_some()
}

impl Master {
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
            Err(err) => self.fail_released(Op::Build, started, lock, err).await,
        }
    }

    /// With the lock held and the state checked: chooses the worker, records `building` and hands
    /// lock and record to a background build.
    pub(super) async fn start_build(
        self: &Arc<Self>,
        lock: InstanceLock,
        mut rec: InstanceRecord,
        commit: String,
        wait: Option<Duration>,
        started: Instant,
    ) -> Result<InstanceRecord, OpError> {
        let prepared = async {
            let workers = self.records.workers().await?;
            let current = self.current_worker(&rec, &workers);
            if matches!(rec.state, State::Built | State::Running | State::Degraded)
                && rec.built_commit.as_deref() == Some(commit.as_str())
                && current.is_some()
            {
                return Ok(None);
            }
            let worker = match current {
                Some(w) => w,
                None => {
                    // The worker that ran it is gone: nothing serves any more.
                    rec.running_commit = None;
                    self.place(&mut rec, &workers).await?
                }
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
            Err(err) => return self.fail_released(Op::Build, started, lock, err).await,
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

    pub(super) async fn mark_building(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
        worker: &WorkerInfo,
    ) -> Result<(), OpError> {
        let previous = rec.state;
        rec.error = None;
        // A running stack keeps serving while the worker builds beside it: the record stays
        // `running` with its endpoints, and `built_commit` moves when the build ends.
        if !beside(rec) {
            rec.state = State::Building;
            rec.running_commit = None;
            rec.endpoints.clear();
        }
        self.save(lock, rec, Some(previous)).await?;
        self.records
            .put_seed_ip(lock, &name("id", &rec.id)?, &worker.address)
            .await?;
        Ok(())
    }

    /// Runs the build on the worker and records `built` or `failed`.
    pub(super) async fn finish_build(
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
        // The request carries a clone credential: only for a worker that proved itself.
        let sent = match self.proven_client(worker).await {
            Ok(client) => client.build(&id, &request).await,
            Err(err) => Err(err),
        };
        let outcome = match sent {
            Ok(status) if status.state == StackState::Failed => Err(OpError::Worker(format!(
                "worker {}: build failed: {}",
                worker.id,
                status.error.unwrap_or_default()
            ))),
            Ok(status) => {
                super::deploy::note_kept(rec, &status);
                Ok(status.commit.unwrap_or_else(|| commit.to_owned()))
            }
            Err(err) => Err(worker_error(&worker.id, err)),
        };
        let previous = rec.state;
        let running = beside(rec);
        match outcome {
            Ok(built) => {
                if !running {
                    rec.state = State::Built;
                }
                rec.note_built(&built, true);
                rec.error = None;
                self.save(lock, rec, Some(previous)).await
            }
            Err(err) if running => {
                // The running release is untouched: the record says the build failed.
                rec.error = Some(crate::record::RecordError {
                    step: "build".to_owned(),
                    message: err.to_string(),
                });
                self.save(lock, rec, Some(previous)).await?;
                Err(err)
            }
            Err(err) => {
                let message = match moved_here_unbuilt(rec, worker) {
                    Some(from) => format!(
                        "the instance moved from worker {from} to worker {}, where its build \
                         failed (nothing of it runs; {from} removes its copy when it returns, \
                         and the next start builds again): {err}",
                        worker.id
                    ),
                    None => err.to_string(),
                };
                rec.fail("build", message);
                self.save(lock, rec, Some(previous)).await?;
                Err(err)
            }
        }
    }
}

/// The worker the instance last moved from, when it moved to `worker` and nothing was built
/// there since.
fn moved_here_unbuilt(rec: &InstanceRecord, worker: &WorkerInfo) -> Option<String> {
    let last = rec.moves.last()?;
    (last.to == worker.id && rec.built_commit.is_none())
        .then(|| last.from.clone())
        .flatten()
}
