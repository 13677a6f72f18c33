//! Deploy: roll an instance to a release. A running instance rolls on its worker, service by
//! service, while the old release keeps serving (the worker builds the release first unless its
//! images are kept); an instance that does not run is built and started. Rollback
//! (`release.rs`) takes the same path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_worker_api::{DeployRequest, StackState, StackStatus, ValidName};
use tokio::sync::oneshot;

use super::build::beside;
use super::{Master, OpError, name, worker_error};
use crate::placement::WorkerInfo;
use crate::record::{DeployRecord, DeployState, InstanceRecord, Op, RecordError, State};
use crate::records::InstanceLock;
use crate::webhook::Event;

/// How long a deploy or rollback waits for its answer when `wait` is not given.
pub const DEFAULT_DEPLOY_WAIT: Duration = Duration::from_secs(600);

/// What a deploy finds under the lock.
enum Plan {
    /// The release already serves.
    Done(InstanceRecord),
    /// A running instance on a healthy worker: roll it there.
    Roll(InstanceRecord, WorkerInfo),
    /// Nothing serves: build (if needed) and start.
    Fresh(InstanceRecord),
}

/// A commit id as a request body gives it: 40 hex digits.
pub(super) fn is_full_hex(commit: &str) -> bool {
    commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn check_commit(commit: &str) -> Result<String, OpError> {
    if !is_full_hex(commit) {
        return Err(OpError::Invalid {
            field: "commit",
            message: format!(
                "invalid commit {:?}: a full commit id is 40 hex digits",
                commit.chars().take(80).collect::<String>()
            ),
        });
    }
    Ok(commit.to_ascii_lowercase())
}

/// Notes the worker's view after a build or rollout: the commits whose images it keeps.
pub(super) fn note_kept(rec: &mut InstanceRecord, status: &StackStatus) {
    if !status.kept.is_empty() {
        rec.kept_commits = status.kept.clone();
        rec.prune_built_times();
    }
}

impl Master {
    /// Rolls the instance to `commit` (default: the latest upload), answering the final record
    /// once the rollout ended, or after `wait` (default [`DEFAULT_DEPLOY_WAIT`]) with 504 while
    /// it goes on.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn deploy(
        self: &Arc<Self>,
        id: ValidName,
        commit: Option<String>,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let target =
            match commit {
                Some(c) => {
                    let c = check_commit(&c)?;
                    let releases = self.releases(&id).await?;
                    if !releases.iter().any(|r| r.commit == c) {
                        return Err(OpError::UnknownCommit(format!(
                            "commit {c} is not a release of instance {id}"
                        )));
                    }
                    c
                }
                None => self.get_or_404(&id).await?.commit.ok_or_else(|| {
                    OpError::Conflict(format!("instance {id} has no uploaded code"))
                })?,
            };
        self.roll(id, target, wait, false).await
    }

    /// The rollout of `id` to `target`, shared by deploy and rollback.
    pub(super) async fn roll(
        self: &Arc<Self>,
        id: ValidName,
        target: String,
        wait: Option<Duration>,
        rollback: bool,
    ) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let wait = wait.unwrap_or(DEFAULT_DEPLOY_WAIT);
        let lock = self.lock(&id).await?;
        let plan = async {
            let mut rec = self.get_or_404(&id).await?;
            self.recover(&lock, &mut rec).await?;
            if !Op::Deploy.allows(rec.state) {
                return Err(OpError::Conflict(Op::Deploy.explain(rec.state)));
            }
            let workers = self.records.workers().await?;
            match self.current_worker(&rec, &workers) {
                Some(_) if rec.running_commit.as_deref() == Some(target.as_str()) => {
                    Ok(Plan::Done(rec))
                }
                Some(worker) if beside(&rec) => Ok(Plan::Roll(rec, worker)),
                _ => Ok(Plan::Fresh(rec)),
            }
        }
        .await;
        match plan {
            Err(err) => self.fail_released(Op::Deploy, started, lock, err).await,
            Ok(Plan::Done(rec)) => {
                lock.release().await;
                self.finish(Op::Deploy, started, &Ok::<(), OpError>(()));
                Ok(rec)
            }
            Ok(Plan::Fresh(rec)) => {
                lock.release().await;
                self.announce("deploying", &rec);
                // A rollback of an instance that does not run only sets what its next start
                // runs; a deploy starts it.
                let start = !rollback || rec.state.is_up();
                let result = self.build_and_start(&id, &rec, &target, wait, start).await;
                self.finish(Op::Deploy, started, &result);
                match &result {
                    Ok(done) => {
                        self.announce(if rollback { "rolled_back" } else { "deployed" }, done)
                    }
                    Err(_) => {
                        if let Ok(now) = self.get_or_404(&id).await {
                            self.announce("deploy_failed", &now);
                        }
                    }
                }
                result
            }
            Ok(Plan::Roll(mut rec, worker)) => {
                let (tx, rx) = oneshot::channel();
                let this = Arc::clone(self);
                let snapshot_id = rec.id.clone();
                self.tasks.spawn(async move {
                    let result = tokio::select! {
                        r = this.rollout(&lock, &mut rec, &worker, &target, rollback) => r.map(|()| rec),
                        () = this.shutdown.cancelled() => {
                            // The record says `deploying`; the worker finishes or undoes the
                            // rollout on its own, and a retry deploys again.
                            Err(OpError::Internal("master shutting down".into()))
                        }
                    };
                    lock.release().await;
                    this.finish(Op::Deploy, started, &result);
                    let _ = tx.send(result);
                });
                match tokio::time::timeout(wait, rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(OpError::Internal(
                        "deploy task ended without an answer".into(),
                    )),
                    Err(_) => Err(OpError::Timeout(format!(
                        "deploy of {snapshot_id} still running after {}; GET /v1/instances/{snapshot_id} shows it",
                        humantime::format_duration(wait),
                    ))),
                }
            }
        }
    }

    /// An instance that does not serve: build `target` unless it is the built commit, then
    /// (with `start`) start it.
    async fn build_and_start(
        self: &Arc<Self>,
        id: &ValidName,
        rec: &InstanceRecord,
        target: &str,
        wait: Duration,
        start: bool,
    ) -> Result<InstanceRecord, OpError> {
        let built = rec.built_commit.as_deref() == Some(target)
            && matches!(
                rec.state,
                State::Built | State::Stopped | State::Running | State::Degraded
            );
        let rec = if built {
            rec.clone()
        } else {
            self.build(id.clone(), Some(target.to_owned()), Some(wait))
                .await?
        };
        if !start {
            return Ok(rec);
        }
        self.start(id.clone()).await
    }

    /// With the lock held: records the rollout, has the worker do it, and records the outcome.
    /// A failed rollout leaves the old release serving; the record says why.
    async fn rollout(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
        worker: &WorkerInfo,
        target: &str,
        rollback: bool,
    ) -> Result<(), OpError> {
        let (id, user) = (name("id", &rec.id)?, name("user", &rec.user)?);
        rec.deploy = Some(DeployRecord {
            commit: target.to_owned(),
            from: rec.running_commit.clone(),
            rollback,
            state: DeployState::Deploying,
            error: None,
            started_at: crate::record::now(),
            finished_at: None,
            retired_at: None,
        });
        rec.error = None;
        self.save(lock, rec, Some(rec.state)).await?;
        self.announce("deploying", rec);
        let request = DeployRequest {
            user: user.clone(),
            project: name("project", &rec.project)?,
            commit: target.to_owned(),
            repo: self.repo_source(&user, &id),
            timeout_secs: self.settings.start_timeout_secs,
        };
        // The request carries a clone credential: only for a worker that proved itself.
        let sent = match self.proven_client(worker).await {
            Ok(client) => client.deploy(&id, &request).await,
            Err(err) => Err(err),
        };
        let outcome = match sent {
            Ok(status) if status.state == StackState::Failed => Err(OpError::Worker(format!(
                "worker {}: deploy failed: {}",
                worker.id,
                status.error.unwrap_or_default()
            ))),
            Ok(status) => Ok(status),
            Err(err) => Err(worker_error(&worker.id, err)),
        };
        let deploy = rec.deploy.as_mut().expect("set above");
        deploy.finished_at = Some(crate::record::now());
        match outcome {
            Ok(status) => {
                deploy.state = DeployState::Deployed;
                if !status.rolling {
                    deploy.retired_at = deploy.finished_at.clone();
                }
                if rec.built_commit.as_deref() != Some(target) {
                    rec.note_built(target, false);
                }
                rec.running_commit = Some(target.to_owned());
                rec.endpoints = status.endpoints.clone();
                note_kept(rec, &status);
                self.save(lock, rec, Some(State::Running)).await?;
                tracing::info!(%id, commit = %target, rollback, "rolled out");
                self.announce(if rollback { "rolled_back" } else { "deployed" }, rec);
                Ok(())
            }
            Err(err) => {
                deploy.state = DeployState::Failed;
                deploy.error = Some(err.to_string());
                rec.error = Some(RecordError {
                    step: "deploy".to_owned(),
                    message: err.to_string(),
                });
                self.save(lock, rec, Some(State::Running)).await?;
                self.announce("deploy_failed", rec);
                Err(err)
            }
        }
    }

    /// With the lock held: a rollout the record says is `deploying` was interrupted (its master
    /// stopped before it recorded the outcome). Records what the worker says serves: `deployed`
    /// when it is the release rolled to (the worker finished it on its own), else `failed` with
    /// why; a retry of the deploy finishes it.
    pub(super) async fn recover_deploy(
        &self,
        lock: &InstanceLock,
        rec: &mut InstanceRecord,
    ) -> Result<(), OpError> {
        let Some(deploy) = rec
            .deploy
            .as_ref()
            .filter(|d| d.state == DeployState::Deploying)
        else {
            return Ok(());
        };
        let target = deploy.commit.clone();
        let id = name("id", &rec.id)?;
        let seen = match &rec.worker {
            Some(w) => match self.worker_client(&w.url).status(&id).await {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err(format!("worker {} holds no stack {id}", w.id)),
                Err(e) => Err(format!("worker {} did not answer: {e}", w.id)),
            },
            None => Err("the instance is on no worker".to_owned()),
        };
        let interrupted = "interrupted: the master running this deploy stopped before it ended";
        let failure = match seen {
            Ok(status) => {
                tracing::warn!(id = %rec.id, commit = %target, serving = ?status.running_commit, rolling = status.rolling, "found an interrupted deploy");
                if status.running_commit.is_some() {
                    rec.running_commit = status.running_commit.clone();
                }
                let serving = status
                    .running_commit
                    .as_deref()
                    .map_or("an unknown release", |c| &c[..c.len().min(12)])
                    .to_owned();
                if status.running_commit.as_deref() == Some(target.as_str()) && !status.rolling {
                    if rec.built_commit.as_deref() != Some(target.as_str()) {
                        rec.note_built(&target, false);
                    }
                    rec.endpoints = status.endpoints.clone();
                    note_kept(rec, &status);
                    None
                } else if status.rolling {
                    Some(format!(
                        "{interrupted}; the worker is still rolling out and serves {serving}: deploy again to finish it"
                    ))
                } else {
                    Some(format!(
                        "{interrupted}; the worker serves {serving}: deploy again to finish it"
                    ))
                }
            }
            Err(why) => Some(format!("{interrupted}; {why}")),
        };
        let deploy = rec.deploy.as_mut().expect("checked above");
        deploy.finished_at = Some(crate::record::now());
        match failure {
            None => {
                deploy.state = DeployState::Deployed;
                rec.error = None;
            }
            Some(why) => {
                deploy.state = DeployState::Failed;
                deploy.error = Some(why.clone());
                rec.error = Some(RecordError {
                    step: "deploy".to_owned(),
                    message: why,
                });
            }
        }
        let previous = rec.state;
        self.save(lock, rec, Some(previous)).await
    }

    /// Sends a rollout event with the record to the webhook.
    fn announce(&self, event: &'static str, rec: &InstanceRecord) {
        if let Some(hook) = &self.webhook {
            hook.notify(&Event {
                event,
                id: rec.id.clone(),
                previous_state: None,
                state: Some(rec.state.as_str().to_owned()),
                record: Some(rec.clone()),
                at: rec.updated_at.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids() {
        assert!(is_full_hex(&"a".repeat(40)));
        assert!(!is_full_hex(&"a".repeat(39)));
        assert!(!is_full_hex(&"g".repeat(40)));
        assert_eq!(check_commit(&"A".repeat(40)).unwrap(), "a".repeat(40));
        assert!(matches!(
            check_commit("abc"),
            Err(OpError::Invalid {
                field: "commit",
                ..
            })
        ));
    }
}
