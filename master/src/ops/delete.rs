//! Delete: remove the stack from its worker and from every worker it was placed on before (best
//! effort: a former worker that is gone removes its copy by its fence when it returns), the
//! repository (unless kept) and every KV key of the instance.

use std::sync::Arc;

use berth_worker_api::{DeleteResponse, ValidName};

use super::{Master, OpError, blocking, name, worker_error};
use crate::placement::WorkerInfo;
use crate::record::{InstanceRecord, Op, State};
use crate::records::InstanceLock;
use crate::webhook::Event;

/// What a delete did on the worker.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    /// What the worker removed; `None` when the instance was never placed or its worker is gone.
    pub worker: Option<DeleteResponse>,
    /// Why the worker was not asked, when it was not.
    pub note: Option<String>,
    /// What each former worker of the instance (in its `moves`) answered, one line each.
    pub former: Vec<String>,
}

impl Master {
    /// Removes the stack from its worker, every KV key of the instance (its record and the whole
    /// `instance/{id}/` tree) and (unless `keep_code`) the repository.
    /// An unknown id answers `NotFound`.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn delete(
        self: &Arc<Self>,
        id: ValidName,
        keep_code: bool,
    ) -> Result<Deleted, OpError> {
        self.with_lock(Op::Delete, &id, async |lock| {
            let result = self.delete_locked(lock, &id, keep_code).await;
            if matches!(result, Err(OpError::NotFound(_))) {
                // No record, but maybe a repository a stopped first upload left: remove it.
                let (store, i) = (self.codestore.clone(), id.clone());
                blocking(move || store.remove_wedged(&i)).await??;
            }
            result
        })
        .await
    }

    async fn delete_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        keep_code: bool,
    ) -> Result<Deleted, OpError> {
        let mut rec = self.get_or_404(id).await?;
        self.recover(lock, &mut rec).await?;
        if !Op::Delete.allows(rec.state) {
            return Err(OpError::Conflict(Op::Delete.explain(rec.state)));
        }
        let previous = rec.state;
        rec.state = State::Deleting;
        self.save(lock, &mut rec, Some(previous)).await?;
        let mut outcome = Deleted::default();
        let workers = self.records.workers().await?;
        if let Some(worker) = rec.worker.clone() {
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
        outcome.former = self.delete_on_former(&rec, &workers).await;
        if !keep_code {
            self.records
                .ensure_held(lock, id, "removing its repository")
                .await?;
            let (store, u, i) = (self.codestore.clone(), name("user", &rec.user)?, id.clone());
            blocking(move || store.delete(&u, &i)).await??;
        }
        self.records.delete(lock, id).await?;
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

    /// Asks every former worker of the instance (the workers of its `moves` other than the
    /// current one) to delete its copy, past failures; one line per worker, each logged.
    async fn delete_on_former(&self, rec: &InstanceRecord, workers: &[WorkerInfo]) -> Vec<String> {
        let id = match name("id", &rec.id) {
            Ok(id) => id,
            Err(_) => return Vec::new(),
        };
        let current = rec.worker.as_ref().map(|w| w.id.as_str());
        let mut former: Vec<&str> = rec
            .moves
            .iter()
            .flat_map(|m| m.from.as_deref().into_iter().chain([m.to.as_str()]))
            .filter(|w| Some(*w) != current)
            .collect();
        former.sort_unstable();
        former.dedup();
        let mut lines = Vec::new();
        for worker_id in former {
            let line = match workers.iter().find(|w| w.id == worker_id) {
                None => format!(
                    "{worker_id}: not in the catalog; its fence removes the copy if it returns"
                ),
                Some(w) => match self.worker_client(&w.url).delete(&id, false).await {
                    Ok(resp)
                        if !resp.existed
                            && resp.removed_containers
                                + resp.removed_images
                                + resp.removed_volumes
                                + resp.removed_networks
                                == 0 =>
                    {
                        format!("{worker_id}: held no copy")
                    }
                    Ok(resp) => format!(
                        "{worker_id}: removed {} containers, {} images, {} volumes{}",
                        resp.removed_containers,
                        resp.removed_images,
                        resp.removed_volumes,
                        if resp.not_removed.is_empty() {
                            String::new()
                        } else {
                            format!("; left {}", resp.not_removed.join(", "))
                        }
                    ),
                    Err(err) => format!(
                        "{worker_id}: {}; its fence removes the copy when it returns",
                        worker_error(worker_id, err)
                    ),
                },
            };
            tracing::info!(id = %rec.id, former = %line, "delete on a former worker");
            lines.push(line);
        }
        lines
    }
}
