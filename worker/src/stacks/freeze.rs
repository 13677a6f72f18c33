//! Freeze and thaw: the stack's running containers that can write into its checkout (a
//! writable bind) are paused while the worker reads or writes the checkout by path, so none can
//! swap a path for a symlink under its feet; `recover_checkout` undoes what a crash left (paused
//! containers, a checkout of the earlier layout).

use std::path::Path;

use berth_worker_api::ValidName;
use bollard::models::MountPoint;

use super::{StackError, Stacks, failed};
use crate::docker::idempotent;
use crate::logbuf::LogBuf;
use crate::{policy, source};

impl Stacks {
    /// Pauses the stack's running containers that can write into its checkout (a writable bind)
    /// while the worker reads or writes the checkout by path, so none can swap a path for a
    /// symlink under its feet; a crash-looping one is stopped instead. `thaw` undoes it, and
    /// `adopt` unpauses what a worker crash left paused.
    pub(super) async fn freeze_writers(
        &self,
        id: &ValidName,
        log: &LogBuf,
    ) -> Result<Vec<String>, StackError> {
        let mut paused = Vec::new();
        for c in self.containers_of(id).await? {
            let writes = c
                .mounts
                .iter()
                .flatten()
                .any(|m| writable_bind(m).is_some());
            let Some(cid) = c.id.filter(|_| writes) else {
                continue;
            };
            let done = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") => self.docker.pause_container(&cid).await.map(|()| true),
                Some("restarting") => {
                    log.line(&format!("stopping crash-looping container {cid} meanwhile"));
                    idempotent(self.docker.stop_container(&cid, None).await).map(|_| false)
                }
                _ => Ok(false),
            };
            match done {
                Ok(true) => paused.push(cid),
                Ok(false) => {}
                Err(e) => {
                    self.thaw(paused).await;
                    return Err(e.into());
                }
            }
        }
        Ok(paused)
    }

    pub(super) async fn thaw(&self, paused: Vec<String>) {
        for cid in paused {
            if let Err(e) = self.docker.unpause_container(&cid).await {
                tracing::warn!(container = %cid, cause = %e, "cannot unpause");
            }
        }
    }

    /// Unpauses containers a crash left frozen and moves a checkout made by an earlier worker
    /// (git metadata in `src/.git`) to the current layout.
    pub(super) async fn recover_checkout(&self, id: &ValidName) -> Result<(), StackError> {
        let containers = self.containers_of(id).await?;
        for c in &containers {
            if c.state.map(|s| s.to_string()).as_deref() == Some("paused")
                && let Some(cid) = &c.id
                && let Err(e) = self.docker.unpause_container(cid).await
            {
                tracing::warn!(instance = %id, container = %cid, cause = %e, "cannot unpause");
            }
        }
        let co = self.checkout(id);
        let legacy = policy::resolve(co.work_tree()).join(".git");
        let bound = containers
            .iter()
            .flat_map(|c| c.mounts.iter().flatten())
            .filter_map(|m| m.source.as_deref())
            .any(|src| Path::new(src).starts_with(&legacy));
        let migrated = tokio::task::spawn_blocking(move || co.migrate_legacy(bound))
            .await
            .map_err(|e| failed("migrate checkout", e.to_string()))?;
        match migrated {
            Ok(source::Migration::None) => {}
            Ok(source::Migration::Moved) => {
                tracing::info!(instance = %id, "moved the git metadata out of the checkout");
            }
            Ok(source::Migration::Discarded(reason)) => {
                tracing::warn!(instance = %id, %reason, "removed the git metadata of the checkout; the next build fetches afresh");
            }
            Err(e) => {
                tracing::warn!(instance = %id, cause = %e, "cannot migrate the checkout");
            }
        }
        Ok(())
    }
}

/// The host path of a bind mount the container can write to.
pub(super) fn writable_bind(m: &MountPoint) -> Option<&Path> {
    (m.typ.as_deref() == Some("bind") && m.rw == Some(true))
        .then_some(m.source.as_deref().map(Path::new))
        .flatten()
}
