//! Stop: the stack's containers, found by label, stopped in reverse dependency order with
//! their grace periods, the services of one level together.

use std::collections::HashMap;
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
    /// orphans first, then the services in reverse dependency order, each with its grace
    /// period. Services no other running one depends on stop together (as Compose does): a
    /// level's stops run at once, and the next level begins when they are all done.
    pub(super) async fn stop_all(
        &self,
        project: Option<&Project>,
        id: &ValidName,
    ) -> Result<(), StackError> {
        let long = dk::long(&self.docker, Duration::from_secs(300));
        let levels = project.map(stop_levels).unwrap_or_default();
        let level = |c: &ContainerSummary| {
            let service = c.labels.as_ref()?.get(plan::LABEL_SERVICE)?;
            levels.get(service.as_str()).map(|(l, _)| *l)
        };
        let mut containers = self.every_container_of(id).await?;
        // Orphans (no level) first.
        containers.sort_by_key(|c| level(c).map_or(0, |l| l + 1));
        let mut at = 0;
        while at < containers.len() {
            let this = level(&containers[at]);
            let end = containers[at..]
                .iter()
                .position(|c| level(c) != this)
                .map_or(containers.len(), |n| at + n);
            let stops = containers[at..end].iter().filter_map(|c| {
                let cid = c.id.as_deref()?;
                let grace = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(plan::LABEL_SERVICE))
                    .and_then(|s| levels.get(s.as_str()))
                    .and_then(|(_, grace)| *grace);
                let opts = grace.map(|d| {
                    StopContainerOptionsBuilder::default()
                        .t(i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
                        .build()
                });
                let long = &long;
                Some(async move {
                    if let Err(e) = idempotent(long.stop_container(cid, opts).await) {
                        tracing::warn!(instance = %id, container = cid, cause = %e, "stop failed");
                    }
                })
            });
            futures::future::join_all(stops).await;
            at = end;
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

/// Each service's stop level and grace period: 0 for services nothing depends on, else one more
/// than the highest level of the services depending on it (so dependents stop first).
fn stop_levels(project: &Project) -> HashMap<&str, (usize, Option<Duration>)> {
    let order: Vec<&Service> =
        plan::start_order(project).unwrap_or_else(|_| project.services.iter().collect());
    let mut levels: HashMap<&str, (usize, Option<Duration>)> = HashMap::new();
    // Dependents come later in start order: walk it backwards.
    for s in order.iter().rev() {
        let level = order
            .iter()
            .filter(|d| d.depends_on.iter().any(|(dep, _)| dep == &s.name))
            .filter_map(|d| levels.get(d.name.as_str()).map(|(l, _)| l + 1))
            .max()
            .unwrap_or(0);
        levels.insert(&s.name, (level, s.stop_grace_period));
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependents_stop_before_what_they_depend_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services:\n  db:\n    image: x\n  cache:\n    image: x\n  api:\n    image: x\n    depends_on: [db, cache]\n  web:\n    image: x\n    depends_on: [api]\n  tool:\n    image: x\n",
        )
        .unwrap();
        let project = crate::compose::load(dir.path(), "p").unwrap();
        let levels = stop_levels(&project);
        let level = |s: &str| levels[s].0;
        assert_eq!(level("web"), 0);
        assert_eq!(level("tool"), 0);
        assert_eq!(level("api"), 1);
        assert_eq!(level("db"), 2);
        assert_eq!(level("cache"), 2);
    }
}
