//! Start: run the built stack on its worker (rebuilding it elsewhere when the worker is lost)
//! and record `running` with its endpoints.

use std::sync::Arc;
use std::time::Instant;

use berth_worker_api::{StackState, StartRequest, ValidName};

use super::{Master, OpError, is_not_found, worker_error};
use crate::record::{InstanceRecord, Op, State};
use crate::records::InstanceLock;

impl Master {
    /// Starts the stack and answers once it runs, with its endpoints. A worker that is gone or
    /// critical is replaced: the instance is rebuilt from the code store on a healthy one.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn start(self: &Arc<Self>, id: ValidName) -> Result<InstanceRecord, OpError> {
        self.with_lock(Op::Start, &id, async |lock| {
            self.start_locked(lock, &id).await
        })
        .await
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
        let workers = self.records.workers().await?;
        let current = self.current_worker(&rec, &workers);
        if rec.state == State::Running && current.is_some() {
            return Ok(rec);
        }
        // What a rebuild builds: the stack's commit, also when a move forgets it below.
        let wanted = rec.built_commit.clone().or_else(|| rec.commit.clone());
        let (worker, mut need_build) = match current {
            Some(w) => (w, rec.built_commit.is_none()),
            None => (self.place(&mut rec, &workers).await?, true),
        };
        let mut retried = false;
        loop {
            if need_build {
                let commit = rec
                    .built_commit
                    .clone()
                    .or_else(|| wanted.clone())
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
            // Its answer becomes the record's endpoints: only from a worker that proved itself.
            let outcome = match self.proven_client(&worker).await {
                Ok(client) => client.start(id, &request).await,
                Err(err) => Err(err),
            };
            let err = match outcome {
                Ok(status) if status.state != StackState::Failed => {
                    rec.state = State::Running;
                    rec.running_commit = rec.built_commit.clone();
                    rec.endpoints = status.endpoints;
                    rec.services = status.health;
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
}
