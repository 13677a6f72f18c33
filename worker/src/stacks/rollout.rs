//! Rollout: a running stack moves to another release service by service, in dependency order,
//! while the old release keeps serving. The release is checked out and built first unless the
//! images of that commit are kept (then nothing is built). A service rolls start-first when it
//! can run twice at once: its running container is renamed aside, the new one starts under the
//! service's name beside it (both answer the service's network aliases meanwhile), passes its
//! readiness, and only when every service is ready are the old containers stopped (their grace
//! period) and removed. Services that publish a host port or mount a named volume roll
//! stop-first: the new container is created while the old one serves, and the old one stops
//! right before the new one starts. A service that fails
//! its readiness undoes the rollout: the new containers go, the old ones take their names back
//! (and start again where they were stopped), and the checkout returns to the old release.

use std::time::{Duration, Instant};

use berth_worker_api::{BuildRequest, DeployRequest, StackState, StackStatus, ValidName};
use bollard::query_parameters::{RenameContainerOptionsBuilder, StopContainerOptionsBuilder};

use super::build::keep_release;
use super::ownership::image_labels;
use super::ports::choose_ports;
use super::spec::{grace_seconds, public_env};
use super::{MAX_START_TIMEOUT, StackError, Stacks, force_with_volumes, io};
use crate::compose::plan;
use crate::compose::{MountSource, Project, Service};
use crate::docker::{self as dk, idempotent};
use crate::logbuf::LogBuf;
use crate::source;

/// A service whose old container was put aside for the new one.
struct Aside {
    service: String,
    /// The old container's id.
    old: String,
    /// Whether it was stopped (stop-first) and must be started again on undo.
    stopped: bool,
}

/// Whether `s` can run twice at once: it publishes no host port (the port cannot be bound by
/// two containers), mounts no named volume (which a second copy would write at once) and does
/// not ask for `x-berth-rollout: stop-first`.
pub(super) fn start_first(s: &Service) -> bool {
    !s.stop_first
        && s.ports.is_empty()
        && !s
            .volumes
            .iter()
            .any(|m| matches!(m.source, MountSource::Named(_)))
}

/// The name the old container of `service` takes while its replacement starts.
fn aside_name(project: &str, service: &str) -> String {
    format!("{}-old", plan::container_name(project, service))
}

impl Stacks {
    /// Rolls the running stack `id` to `req.commit` (see the module's doc).
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn deploy(
        &self,
        id: &ValidName,
        req: &DeployRequest,
    ) -> Result<StackStatus, StackError> {
        if !source::valid_commit(&req.commit) {
            return Err(StackError::BadRequest(format!(
                "invalid commit {:?}: must be 40 lower-case hex characters",
                req.commit.chars().take(64).collect::<String>()
            )));
        }
        let timeout = match req.timeout_secs {
            Some(secs) if secs > MAX_START_TIMEOUT.as_secs() => {
                return Err(StackError::BadRequest(format!(
                    "timeout_secs {secs} is above the maximum of {} (one day)",
                    MAX_START_TIMEOUT.as_secs()
                )));
            }
            Some(secs) => Duration::from_secs(secs),
            None => self.settings.start_timeout,
        };
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let Some(mut record) = self.read_record(id)? else {
            return Err(StackError::NotFound(id.to_string()));
        };
        if record.state != StackState::Running {
            return Err(StackError::Conflict(format!(
                "stack {id} is {:?}, not running: start it instead",
                record.state
            )));
        }
        let _active = self.begin(id, "deploy");
        let log = self.log(id);
        let old_commit = self.checkout(id).commit();
        log.line(&format!(
            "rolling from {} to {}",
            old_commit.as_deref().unwrap_or("(unknown)"),
            req.commit
        ));
        let result = async {
            self.release(id, req, &log).await?;
            let frozen = self.freeze_writers(id, &log).await?;
            let project = self.load_project(id);
            self.thaw(frozen).await;
            let project = project?;
            let deadline = Instant::now() + timeout;
            self.roll(id, &project, &req.commit, &mut record, deadline, &log)
                .await
        }
        .await;
        match result {
            Ok(()) => {
                record.commit = Some(req.commit.clone());
                record.error = None;
                keep_release(
                    &mut record.releases,
                    &req.commit,
                    self.settings.keep_releases,
                );
                self.write_record(&record)?;
                log.line("deploy finished");
                self.changed();
                self.status(id).await
            }
            Err(e) => {
                log.line(&format!(
                    "deploy failed, the old release keeps serving: {e}"
                ));
                if let Some(old) = old_commit {
                    let co = self.checkout(id);
                    let restored = tokio::task::spawn_blocking(move || co.checkout(&old)).await;
                    if !matches!(restored, Ok(Ok(()))) {
                        log.line("cannot check the old release out again");
                    }
                }
                self.changed();
                Err(e)
            }
        }
    }

    /// Makes `req.commit` the checkout and its images present: the kept images of that commit
    /// when every built service has one (nothing built), else a build.
    async fn release(
        &self,
        id: &ValidName,
        req: &DeployRequest,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let project = self
            .fetch_and_check_out(id, &req.repo, &req.commit, log)
            .await?;
        if self.release_kept(id, &project, &req.commit).await? {
            log.line(&format!(
                "release {}: images kept, nothing built",
                &req.commit[..12]
            ));
            return Ok(());
        }
        let build = BuildRequest {
            user: req.user.clone(),
            project: req.project.clone(),
            commit: req.commit.clone(),
            repo: req.repo.clone(),
        };
        self.build_inner(id, &build, log).await
    }

    /// Whether every built service of `project` has this stack's image for `commit`.
    async fn release_kept(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
    ) -> Result<bool, StackError> {
        let owner = self.owner(id);
        for s in project.services.iter().filter(|s| s.build.is_some()) {
            let tag = plan::image_tag(&project.name, &s.name, commit);
            match self.docker.inspect_image(&tag).await {
                Ok(image) if owner.check(image_labels(&image)).is_ok() => {}
                Ok(_) => return Ok(false),
                Err(e) if dk::already(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Replaces the containers service by service; on failure undoes what it switched.
    async fn roll(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
        record: &mut super::Record,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let prepared = self.prepare(id, project, commit).await?;
        let owner = self.owner(id);
        self.ensure_networks(project, &owner, log).await?;
        self.ensure_volumes(project, &owner, log).await?;
        let existing = self.existing_containers(project, &owner).await?;
        let ports = choose_ports(project, &existing, &record.ports)
            .map_err(io("allocating a host port"))?;
        record.ports = ports.clone();
        self.write_record(record)?;
        let env = public_env(project, &ports, &self.settings.advertise);
        let order = plan::start_order(project).map_err(|d| StackError::Rejected {
            message: d.reason.clone(),
            details: vec![d],
        })?;
        let mut aside: Vec<Aside> = Vec::new();
        let mut created = Vec::new();
        let mut outcome = Ok(());
        for s in order {
            let p = &prepared[&s.name];
            let (body, hash) = self.container_spec(
                project,
                s,
                &p.image,
                &p.image_id,
                &ports,
                &env,
                commit,
                &owner,
            );
            let current = existing.get(&s.name);
            let running = current
                .and_then(|c| c.state.as_ref()?.running)
                .unwrap_or(false);
            let same = current
                .and_then(|c| {
                    c.config
                        .as_ref()?
                        .labels
                        .as_ref()?
                        .get(plan::LABEL_CONFIG_HASH)
                })
                .is_some_and(|h| *h == hash);
            if same && running {
                log.line(&format!("service {}: unchanged", s.name));
                continue;
            }
            // A crash loop, as the watcher judged it: between two crashes the container may
            // read as running.
            let looping = self
                .verdict(id)
                .iter()
                .any(|h| h.name == s.name && h.state == berth_worker_api::ServiceState::Restarting);
            let step = self
                .replace(
                    project,
                    s,
                    body,
                    &hash,
                    (current, looping),
                    &owner,
                    log,
                    &mut created,
                )
                .await;
            let ready = match step {
                Ok(put) => {
                    aside.extend(put);
                    self.wait_service_ready(project, s, p.healthcheck, &ports, deadline, log)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = ready {
                outcome = Err(e);
                break;
            }
            log.line(&format!("service {}: new container ready", s.name));
        }
        match outcome {
            Ok(()) => {
                for a in &aside {
                    self.retire(project, &a.old, log).await;
                }
                Ok(())
            }
            Err(e) => {
                log.line(&format!("switching back: {e}"));
                self.undo(project, &aside, &mut created, log).await;
                Err(e)
            }
        }
    }

    /// Puts the running container of `s` aside (renamed; stopped first when the service cannot
    /// run twice) and creates and starts its new container under the service's name.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        project: &Project,
        s: &Service,
        body: bollard::models::ContainerCreateBody,
        hash: &str,
        (current, looping): (Option<&bollard::models::ContainerInspectResponse>, bool),
        owner: &plan::Owner,
        log: &LogBuf,
        created: &mut Vec<String>,
    ) -> Result<Option<Aside>, StackError> {
        let mut put = None;
        if let Some(old) = current.and_then(|c| c.id.clone()) {
            let name = aside_name(&project.name, &s.name);
            // A crash-looping container is stopped first: left to its restart policy it would
            // come back beside the new one (on its host port) or lose its network sandbox under
            // the switch. Switching back starts it again (the loop it was in).
            let state = current.and_then(|c| c.state.as_ref());
            let restarting = looping || state.and_then(|st| st.restarting) == Some(true);
            let serving = !restarting && state.and_then(|st| st.running) == Some(true);
            if restarting {
                log.line(&format!(
                    "service {}: its container crash-loops; stopping it first",
                    s.name
                ));
                idempotent(
                    self.docker
                        .stop_container(
                            &old,
                            Some(StopContainerOptionsBuilder::default().t(0).build()),
                        )
                        .await,
                )?;
            }
            // One left by an interrupted rollout is not serving: remove it first.
            idempotent(
                self.docker
                    .remove_container(&name, force_with_volumes())
                    .await,
            )?;
            self.docker
                .rename_container(
                    &old,
                    RenameContainerOptionsBuilder::new().name(&name).build(),
                )
                .await?;
            let stopped = !start_first(s) || restarting;
            if stopped && serving {
                log.line(&format!(
                    "service {}: stop-first (it publishes a port, mounts a named volume or asks for it)",
                    s.name
                ));
            }
            put = Some(Aside {
                service: s.name.clone(),
                old,
                stopped,
            });
        }
        // A stop-first service's new container is created while the old one still serves, and
        // the old one stops right before the new one starts.
        let stop_first = put
            .as_ref()
            .filter(|a| a.stopped)
            .map(|a| (a.old.as_str(), s.stop_grace_period.map(grace_seconds)));
        let result = self
            .converge_service(
                project, s, body, hash, None, owner, log, created, stop_first,
            )
            .await;
        match result {
            Ok(()) => Ok(put),
            Err(e) => {
                // Nothing of this service was switched yet beyond the rename: undo it here.
                if let Some(a) = &put {
                    self.undo(project, std::slice::from_ref(a), created, log)
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Waits until the new container of `s` is ready as a start would: running, healthy when it
    /// has a healthcheck, its published TCP ports accepting.
    async fn wait_service_ready(
        &self,
        project: &Project,
        s: &Service,
        healthcheck: bool,
        ports: &std::collections::BTreeMap<String, u16>,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        use crate::compose::Condition;
        self.wait_condition(project, &s.name, Condition::Started, deadline, log)
            .await?;
        if healthcheck {
            self.wait_condition(project, &s.name, Condition::Healthy, deadline, log)
                .await?;
        }
        self.wait_ports_accept(project, s, ports, deadline).await
    }

    /// Stops an old container with its grace period, then removes it.
    async fn retire(&self, project: &Project, old: &str, log: &LogBuf) {
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

    /// Switches back: removes the new containers, gives the old ones their names back and starts
    /// those that were stopped.
    async fn undo(
        &self,
        project: &Project,
        aside: &[Aside],
        created: &mut Vec<String>,
        log: &LogBuf,
    ) {
        for cid in created.drain(..) {
            let _ = self
                .docker
                .remove_container(&cid, force_with_volumes())
                .await;
        }
        for a in aside.iter().rev() {
            let name = plan::container_name(&project.name, &a.service);
            if let Err(e) = self
                .docker
                .rename_container(
                    &a.old,
                    RenameContainerOptionsBuilder::new().name(&name).build(),
                )
                .await
            {
                log.line(&format!(
                    "cannot give {name} back to the old container: {e}"
                ));
                continue;
            }
            if a.stopped
                && let Err(e) = idempotent(self.docker.start_container(&a.old, None).await)
            {
                log.line(&format!("cannot start the old {name} again: {e}"));
                continue;
            }
            log.line(&format!(
                "service {}: old container serves again",
                a.service
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_services_that_can_run_twice_roll_start_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services:\n  api:\n    image: b\n  one:\n    image: b\n    x-berth-rollout: stop-first\n  web:\n    image: b\n    ports: [\"80\"]\n  db:\n    image: b\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
        )
        .unwrap();
        let project = crate::compose::load(dir.path(), "b1").unwrap();
        let first = |name: &str| start_first(project.service(name).unwrap());
        assert!(first("api"));
        assert!(!first("one"));
        assert!(!first("web"));
        assert!(!first("db"));
        assert_eq!(aside_name("b1", "web"), "b1-web-1-old");
    }
}
