//! Observing running instances: every [`OBSERVE_INTERVAL`] the master asks each worker holding a
//! `running` or `degraded` instance for its stacks (`GET /v1/stacks`, which carries the worker's
//! watcher verdict) and records what changed: `running` <-> `degraded` and each service's state,
//! under the instance lock like any other write (so announced to the webhook as `state_changed`).
//! An instance busy with an operation is left for the next round. A record left `deploying`
//! with the lock free (its master stopped mid-rollout) is settled from the worker's report, and
//! a deployed one gets `retired_at` once the worker no longer retires its old containers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_worker_api::{ServiceHealth, StackState, StackStatus};
use tokio_util::sync::CancellationToken;

use super::{Master, OpError, name};
use crate::record::{DeployState, InstanceRecord, State};

/// How often the master asks workers how their running stacks are.
pub const OBSERVE_INTERVAL: Duration = Duration::from_secs(2);

impl Master {
    /// Observes until `shutdown`.
    pub async fn observe(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(OBSERVE_INTERVAL) => {}
            }
            if let Err(e) = self.observe_once().await {
                tracing::debug!(cause = %e, "observing running instances");
            }
        }
    }

    /// One round: every up instance compared with its worker's report, changes recorded.
    pub async fn observe_once(&self) -> Result<(), OpError> {
        let mut by_worker: HashMap<String, Vec<InstanceRecord>> = HashMap::new();
        for rec in self.records.list().await? {
            if let (true, Some(w)) = (rec.state.is_up(), &rec.worker) {
                by_worker.entry(w.url.clone()).or_default().push(rec);
            }
        }
        for (url, recs) in by_worker {
            let stacks = match self.worker_client(&url).list().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(worker = %url, cause = %e, "cannot ask a worker for its stacks");
                    continue;
                }
            };
            for rec in recs {
                let Some(status) = stacks.iter().find(|s| s.id.as_str() == rec.id) else {
                    continue;
                };
                if interrupted_deploy(&rec) {
                    self.settle_deploy(&rec).await?;
                    continue;
                }
                if retiring(&rec) && !status.rolling {
                    self.note_retired(&rec).await?;
                }
                if let Some((state, services)) = observed(status)
                    && changed(&rec, state, &services)
                {
                    self.record_observation(&rec, &url, state, services).await?;
                }
            }
        }
        Ok(())
    }

    /// A record left `deploying` with its lock free: the rollout's master stopped. Records
    /// what the worker serves (`recover_deploy`), so the next read tells the truth.
    async fn settle_deploy(&self, seen: &InstanceRecord) -> Result<(), OpError> {
        let id = name("id", &seen.id)?;
        let Some(lock) = self.records.lock(&id).await? else {
            return Ok(());
        };
        let result = async {
            match self.records.get(&id).await? {
                Some(mut rec) if interrupted_deploy(&rec) => {
                    self.recover_deploy(&lock, &mut rec).await
                }
                _ => Ok(()),
            }
        }
        .await;
        lock.release().await;
        result
    }

    /// The worker no longer retires the old containers of the deployed rollout: note when.
    async fn note_retired(&self, seen: &InstanceRecord) -> Result<(), OpError> {
        let id = name("id", &seen.id)?;
        let Some(lock) = self.records.lock(&id).await? else {
            return Ok(());
        };
        let result = async {
            match self.records.get(&id).await? {
                Some(mut rec) if retiring(&rec) && rec.deploy == seen.deploy => {
                    if let Some(d) = rec.deploy.as_mut() {
                        d.retired_at = Some(crate::record::now());
                    }
                    let state = rec.state;
                    self.save(&lock, &mut rec, Some(state)).await
                }
                _ => Ok(()),
            }
        }
        .await;
        lock.release().await;
        result
    }

    async fn record_observation(
        &self,
        seen: &InstanceRecord,
        url: &str,
        state: State,
        services: Vec<ServiceHealth>,
    ) -> Result<(), OpError> {
        let id = name("id", &seen.id)?;
        let Some(lock) = self.records.lock(&id).await? else {
            return Ok(());
        };
        let result = async {
            let Some(mut rec) = self.records.get(&id).await? else {
                return Ok(());
            };
            // Only what was observed: an operation may have changed the record meanwhile.
            let same_place = rec.worker.as_ref().is_some_and(|w| w.url == url);
            if !rec.state.is_up() || !same_place || !changed(&rec, state, &services) {
                return Ok(());
            }
            let previous = rec.state;
            if state != previous {
                tracing::warn!(%id, from = %previous, to = %state, "observed a change of health");
            }
            rec.state = state;
            rec.services = services;
            self.save(&lock, &mut rec, Some(previous)).await
        }
        .await;
        lock.release().await;
        result
    }
}

/// Whether the record says a rollout is under way: with the lock free, an interrupted one.
fn interrupted_deploy(rec: &InstanceRecord) -> bool {
    rec.deploy
        .as_ref()
        .is_some_and(|d| d.state == DeployState::Deploying)
}

/// Whether the record's last rollout is deployed while its old containers may still retire.
fn retiring(rec: &InstanceRecord) -> bool {
    rec.deploy
        .as_ref()
        .is_some_and(|d| d.state == DeployState::Deployed && d.retired_at.is_none())
}

/// The state and services a worker's report means for the record, `None` when the report is
/// not about a stack that runs (an operation on the worker's side, or a lost stack: not this
/// loop's business).
fn observed(status: &StackStatus) -> Option<(State, Vec<ServiceHealth>)> {
    let state = match status.state {
        StackState::Running => State::Running,
        StackState::Degraded => State::Degraded,
        _ => return None,
    };
    Some((state, status.health.clone()))
}

/// Whether the record says something else: another state, or a service in another state, with
/// another exit code or another restart count (so a crash loop's count stays current; it writes
/// the record at most once a round, fewer as Docker's restart back-off grows). Log lines are
/// refreshed with such a change, not on their own.
fn changed(rec: &InstanceRecord, state: State, services: &[ServiceHealth]) -> bool {
    let key = |s: &[ServiceHealth]| -> Vec<(String, &'static str, Option<i64>, u32)> {
        s.iter()
            .map(|h| (h.name.clone(), h.state.as_str(), h.exit_code, h.restarts))
            .collect()
    };
    rec.state != state || key(&rec.services) != key(services)
}
