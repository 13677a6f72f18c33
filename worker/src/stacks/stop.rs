//! Stop: the stack's containers, found by label, stopped in reverse start order with their
//! grace periods.

use std::time::Duration;

use berth_worker_api::{StackState, StackStatus, ValidName};
use bollard::models::ContainerSummary;
use bollard::query_parameters::StopContainerOptionsBuilder;

use super::record::Unfinished;
use super::{StackError, Stacks};
use crate::compose::plan;
use crate::compose::{Project, Service};
use crate::docker::{self as dk, idempotent};

impl Stacks {
    /// Stops the stack's containers, found by label (never by name: a name may be another's):
    /// orphans first, then the services in reverse start order, each with its grace period.
    pub(super) async fn stop_all(
        &self,
        project: Option<&Project>,
        id: &ValidName,
    ) -> Result<(), StackError> {
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
        self.changed();
        self.status(id).await
    }
}
