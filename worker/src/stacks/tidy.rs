//! Tidying after an interrupted rollout. A rollout writes a note into the stack's record before
//! it changes a container (`from`, `to`, the services it switches, whether every new container
//! is ready) and clears it when it ends; a worker killed meanwhile leaves the note and maybe
//! `<container>-old` containers. `tidy` brings such a stack to one complete release, at adoption
//! and at the beginning of each start and deploy (under the stack's lock): **forward** when the
//! note says every new container was ready (the old containers are stopped and removed, the
//! record takes the new release), else **back** (the new containers go, the old ones get their
//! names back and run again, the checkout returns to where it was). An `-old` container without
//! a note (left by an older worker) is removed when its service's container runs, else given
//! its name back. What it did goes to the stack's log. A finished rollout's old containers are
//! retired here too, in the background under the stack's lock (`retire_in_background`).

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_worker_api::ValidName;
use berth_worker_api::ids::compose_project_name;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{RenameContainerOptionsBuilder, StopContainerOptionsBuilder};
use serde::{Deserialize, Serialize};

use super::build::keep_release;
use super::record::Record;
use super::rollout::aside_name;
use super::spec::grace_seconds;
use super::{StackError, Stacks, force_with_volumes};
use crate::compose::{Project, plan};
use crate::docker::idempotent;
use crate::logbuf::LogBuf;

/// A rollout under way, as the record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutNote {
    /// The release serving when it began (`None`: not known).
    pub from: Option<String>,
    /// The release rolled to.
    pub to: String,
    /// The checkout's commit before the rollout checked `to` out.
    #[serde(default)]
    pub checkout: Option<String>,
    /// Services being switched, in order: each is written before its old container is put
    /// aside or its new one is created.
    #[serde(default)]
    pub switched: Vec<String>,
    /// Every new container passed its readiness; only retiring the old ones was left.
    #[serde(default)]
    pub ready: bool,
}

/// What tidy found of one service: its container under the service's name and the old one
/// put aside.
#[derive(Default)]
struct Found {
    current: Option<(String, bool, Option<String>)>,
    old: Option<(String, bool)>,
}

fn running(c: &ContainerSummary) -> bool {
    c.state.map(|s| s.to_string()).as_deref() == Some("running")
}

impl Stacks {
    /// Notes the rollout of the stack `record` to `to` before anything changes.
    pub(super) fn note_rollout(
        &self,
        record: &mut Record,
        from: Option<String>,
        to: &str,
        checkout: Option<String>,
    ) -> Result<(), StackError> {
        record.rollout = Some(RolloutNote {
            from,
            to: to.to_owned(),
            checkout,
            switched: Vec::new(),
            ready: false,
        });
        self.write_record(record)
    }

    /// Notes that `service` is about to be switched.
    pub(super) fn note_switching(
        &self,
        record: &mut Record,
        service: &str,
    ) -> Result<(), StackError> {
        if let Some(note) = &mut record.rollout {
            note.switched.push(service.to_owned());
        }
        self.write_record(record)
    }

    /// Notes that every new container is ready: from here an interrupted rollout goes forward.
    pub(super) fn note_ready(&self, record: &mut Record) -> Result<(), StackError> {
        if let Some(note) = &mut record.rollout {
            note.ready = true;
        }
        self.write_record(record)
    }

    /// The release the stack's containers run: the record's, else (a record written before it
    /// was kept) the commit every container of the stack is labelled with, when they agree.
    pub(super) fn running_release(
        record: &Record,
        containers: &[ContainerSummary],
    ) -> Option<String> {
        if record.running.is_some() {
            return record.running.clone();
        }
        let mut commits = containers
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(plan::LABEL_BERTH_COMMIT));
        let first = commits.next()?;
        commits.all(|c| c == first).then(|| first.clone())
    }

    /// Brings stack `id` to one complete release after an interrupted rollout (see the module's
    /// doc). The caller holds the stack's lock. Answers whether there was anything to do.
    pub(super) async fn tidy(&self, id: &ValidName, log: &LogBuf) -> Result<bool, StackError> {
        let Some(mut record) = self.read_record(id)? else {
            return Ok(false);
        };
        let project = compose_project_name(id);
        let mut found: BTreeMap<String, Found> = BTreeMap::new();
        for c in self.containers_of(id).await? {
            let (Some(cid), Some(service)) = (
                c.id.clone(),
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(plan::LABEL_SERVICE))
                    .cloned(),
            ) else {
                continue;
            };
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            let commit = c
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::LABEL_BERTH_COMMIT))
                .cloned();
            let entry = found.entry(service.clone()).or_default();
            if name == aside_name(&project, &service) {
                entry.old = Some((cid, running(&c)));
            } else if name == plan::container_name(&project, &service) {
                entry.current = Some((cid, running(&c), commit));
            }
        }
        let note = record.rollout.take();
        let olds = found.values().filter(|f| f.old.is_some()).count();
        if note.is_none() && olds == 0 {
            return Ok(false);
        }
        let forward = note.as_ref().is_none_or(|n| n.ready);
        match &note {
            Some(n) => log.line(&format!(
                "tidy: a rollout from {} to {} was interrupted ({} switched: {}); going {}",
                n.from.as_deref().map_or("(unknown)", short),
                short(&n.to),
                n.switched.len(),
                n.switched.join(", "),
                if forward {
                    "forward, every new container was ready"
                } else {
                    "back to the old release"
                },
            )),
            None => log.line(&format!(
                "tidy: {olds} old container(s) left by an interrupted rollout"
            )),
        }
        for (service, f) in &found {
            let switched = note.as_ref().is_none_or(|n| n.switched.contains(service));
            match (&f.old, &f.current) {
                // Forward: the new container serves; the old one goes.
                (Some((old, _)), Some((_, true, _))) if forward => {
                    let _ = idempotent(self.docker.stop_container(old, None).await);
                    self.remove_logged(old, &format!("service {service}: old container"), log)
                        .await;
                }
                // Back (or forward without a new container): the old one takes its name back.
                (Some((old, was_running)), current) => {
                    if let Some((new, _, _)) = current {
                        self.remove_logged(new, &format!("service {service}: new container"), log)
                            .await;
                    }
                    self.give_back(&project, service, old, *was_running, log)
                        .await;
                }
                // Back: a service the new release added (or whose old container was never put
                // aside; then its commit is the old one and it stays).
                (None, Some((new, _, commit)))
                    if !forward
                        && switched
                        && note.as_ref().is_some_and(|n| {
                            commit.as_deref() == Some(n.to.as_str())
                                && n.from.as_deref() != Some(n.to.as_str())
                        }) =>
                {
                    self.remove_logged(new, &format!("service {service}: new container"), log)
                        .await;
                }
                _ => {}
            }
        }
        // Every forwarder points at its service's container as tidied (a rollout killed after
        // a switch may have left it pointing at a container that is gone now).
        for fwd in self.forwarders_of(id).await? {
            let Some(service) = fwd
                .labels
                .as_ref()
                .and_then(|l| l.get(super::LABEL_FORWARD))
                .cloned()
            else {
                continue;
            };
            let Ok(c) = self
                .docker
                .inspect_container(&plan::container_name(&project, &service), None)
                .await
            else {
                continue;
            };
            let target = c.id.unwrap_or_default();
            let target = &target[..target.len().min(12)];
            let name = super::forward::forwarder_name(&project, &service);
            match self.exec_forward(&name, &["set", target]).await {
                Ok(_) => log.line(&format!(
                    "tidy: service {service}: forwarder set to {target}"
                )),
                Err(e) => log.line(&format!(
                    "tidy: service {service}: cannot set its forwarder: {e}"
                )),
            }
        }
        if let Some(n) = &note {
            if forward {
                record.commit = Some(n.to.clone());
                record.running = Some(n.to.clone());
                record.error = None;
                keep_release(&mut record.releases, &n.to, self.settings.keep_releases);
            } else {
                record.running = n.from.clone().or(record.running.take());
                let co = self.checkout(id);
                if let Some(back) = n.checkout.clone()
                    && co.commit().as_deref() != Some(back.as_str())
                {
                    let restored = tokio::task::spawn_blocking(move || co.checkout(&back)).await;
                    if !matches!(restored, Ok(Ok(()))) {
                        log.line("tidy: cannot check the old release out again");
                    }
                }
            }
        }
        self.write_record(&record)?;
        log.line(&format!(
            "tidy: the stack runs release {}",
            record.running.as_deref().map_or("(unknown)", short)
        ));
        tracing::info!(instance = %id, forward, running = ?record.running, "tidied an interrupted rollout");
        self.changed();
        Ok(true)
    }

    /// Retires the old containers of a finished rollout (stopped with their grace periods,
    /// removed) in a task that holds the stack's lock (`guard`) until they are gone, then clears
    /// the rollout note: the deploy answers as soon as the new release serves. A kill meanwhile
    /// leaves the note `ready`, so tidy goes forward.
    pub(super) fn retire_in_background(
        self: &Arc<Self>,
        id: &ValidName,
        guard: tokio::sync::OwnedMutexGuard<()>,
        project: Project,
        olds: Vec<super::rollout::Retiring>,
        log: Arc<LogBuf>,
    ) {
        let (this, id) = (Arc::clone(self), id.clone());
        tokio::spawn(async move {
            let _guard = guard;
            for r in &olds {
                if r.drain {
                    let grace = project
                        .service(&r.service)
                        .and_then(|s| s.stop_grace_period)
                        .unwrap_or(std::time::Duration::from_secs(10));
                    this.drain(&project, &r.service, grace).await;
                }
                this.retire(&project, &r.old, &log).await;
            }
            if let Err(e) = this.remove_stale_forwarders(&project, &id, &log).await {
                log.line(&format!("cannot remove a stale forwarder: {e}"));
            }
            if olds.is_empty() {
                return;
            }
            match this.read_record(&id) {
                Ok(Some(mut record)) => {
                    record.rollout = None;
                    if let Err(e) = this.write_record(&record) {
                        tracing::error!(instance = %id, cause = %e, "cannot clear the rollout note");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(instance = %id, cause = %e, "cannot read the record"),
            }
            log.line("old containers retired");
            this.changed();
        });
    }

    /// Stops an old container with its grace period, then removes it.
    pub(super) async fn retire(&self, project: &Project, old: &str, log: &LogBuf) {
        let grace = self
            .docker
            .inspect_container(old, None)
            .await
            .ok()
            .and_then(|c| {
                let service = c.config?.labels?.get(plan::LABEL_SERVICE)?.clone();
                project.service(&service)?.stop_grace_period
            });
        let opts = grace.map(|d| {
            StopContainerOptionsBuilder::default()
                .t(grace_seconds(d))
                .build()
        });
        let _ = idempotent(self.docker.stop_container(old, opts).await);
        match idempotent(
            self.docker
                .remove_container(old, force_with_volumes())
                .await,
        ) {
            Ok(_) => log.line(&format!(
                "old container {} stopped and removed",
                &old[..old.len().min(12)]
            )),
            Err(e) => log.line(&format!("cannot remove old container {old}: {e}")),
        }
    }

    async fn remove_logged(&self, cid: &str, what: &str, log: &LogBuf) {
        match idempotent(
            self.docker
                .remove_container(cid, force_with_volumes())
                .await,
        ) {
            Ok(_) => log.line(&format!("tidy: {what} {} removed", short(cid))),
            Err(e) => log.line(&format!("tidy: cannot remove {what} {}: {e}", short(cid))),
        }
    }

    async fn give_back(
        &self,
        project: &str,
        service: &str,
        old: &str,
        was_running: bool,
        log: &LogBuf,
    ) {
        let name = plan::container_name(project, service);
        if let Err(e) = self
            .docker
            .rename_container(
                old,
                RenameContainerOptionsBuilder::new().name(&name).build(),
            )
            .await
        {
            log.line(&format!(
                "tidy: cannot give {name} back to the old container: {e}"
            ));
            return;
        }
        if !was_running && let Err(e) = idempotent(self.docker.start_container(old, None).await) {
            log.line(&format!("tidy: cannot start the old {name} again: {e}"));
            return;
        }
        log.line(&format!(
            "tidy: service {service}: old container serves again"
        ));
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}
