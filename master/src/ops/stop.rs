//! Stop: stop the stack on its worker and record `stopped`.

use std::sync::Arc;

use berth_worker_api::ValidName;

use super::{Master, OpError, is_not_found, worker_error};
use crate::record::{InstanceRecord, Op, RecordError, State};
use crate::records::InstanceLock;

impl Master {
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn stop(self: &Arc<Self>, id: ValidName) -> Result<InstanceRecord, OpError> {
        self.with_lock(Op::Stop, &id, async |lock| {
            self.stop_locked(lock, &id).await
        })
        .await
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
            rec.running_commit = None;
            rec.endpoints.clear();
            rec.services.clear();
            self.save(lock, &mut rec, Some(previous)).await?;
            return Ok(rec);
        };
        rec.state = State::Stopping;
        self.save(lock, &mut rec, Some(previous)).await?;
        let workers = self.records.workers().await?;
        let alive = self.current_worker(&rec, &workers).is_some();
        match self.worker_client(&worker.url).stop(id).await {
            Ok(_) => rec.error = None,
            Err(err) if is_not_found(&err) => rec.error = None,
            Err(err) if !alive => {
                rec.error = Some(RecordError {
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
        rec.running_commit = None;
        rec.endpoints.clear();
        rec.services.clear();
        self.save(lock, &mut rec, Some(State::Stopping)).await?;
        Ok(rec)
    }
}
