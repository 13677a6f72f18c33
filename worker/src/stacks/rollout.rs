//! Rollout: a running stack moves to another release service by service, in dependency order,
//! while the old release keeps serving. The release is checked out and built first unless the
//! images of that commit are kept (then nothing is built). A service rolls start-first when it
//! can run twice at once: its running container is renamed aside, the new one starts under the
//! service's name beside it (both answer the service's network aliases meanwhile), passes its
//! readiness, and only when every service is ready are the old containers stopped (their grace
//! period) and removed. A service whose TCP host ports a forwarder holds (`forward.rs`) rolls
//! start-first too: once the new container is ready the forwarder is switched to it, and the old
//! one is stopped when its open connections are done. Services that mount a named volume, ask
//! for stop-first (`x-berth-rollout` or `deploy.update_config.order`), publish a port themselves
//! (UDP, or no forwarder) or need a new forwarder roll stop-first: the new container is created
//! while the old one serves, the old one stops right before the new one starts, and the log says
//! how long the gap was. Behind a forwarder the gap refuses no one: the forwarder holds new
//! connections and drains the open ones before the old container stops, until the switch. A service that fails its readiness undoes the rollout: forwarders are
//! switched back, the new containers go, the old ones take their names back (and start again
//! where they were stopped), and the checkout returns to the old release.

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
/// An old container left to retire once every new one is ready.
pub(super) struct Retiring {
    pub(super) service: String,
    pub(super) old: String,
    /// Its forwarder was switched away from it while it ran: drain before it stops.
    pub(super) drain: bool,
}

pub(super) struct Aside {
    pub(super) service: String,
    /// The name it takes back on undo.
    pub(super) name: String,
    /// The old container's id.
    pub(super) old: String,
    /// Whether it was stopped (stop-first) and must be started again on undo.
    pub(super) stopped: bool,
    /// Whether the service's forwarder was switched away from it (and must be switched back on
    /// undo, drained before it stops).
    pub(super) switched: bool,
}

/// Whether `s` can run twice at once: it publishes no host port itself (`held`: a current
/// forwarder holds all its ports; a port cannot be bound by two containers), mounts no named
/// volume (which a second copy would write at once) and does not ask for stop-first.
pub(super) fn start_first(s: &Service, held: bool) -> bool {
    !s.stop_first
        && (s.ports.is_empty() || held)
        && !s
            .volumes
            .iter()
            .any(|m| matches!(m.source, MountSource::Named(_)))
}

/// The name the old container of `service` takes while its replacement starts.
pub(super) fn aside_name(project: &str, service: &str) -> String {
    format!("{}-old", plan::container_name(project, service))
}

/// Why `s` rolls stop-first, for the log.
fn stop_first_reason(s: &Service) -> &'static str {
    if s.stop_first {
        "the file asks for it"
    } else if s
        .volumes
        .iter()
        .any(|m| matches!(m.source, MountSource::Named(_)))
    {
        "it mounts a named volume"
    } else {
        "it publishes a host port itself or gets a new forwarder"
    }
}

impl Stacks {
    /// Rolls the running stack `id` to `req.commit` (see the module's doc).
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn deploy(
        self: &std::sync::Arc<Self>,
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
        let guard = self.lock(id).lock_owned().await;
        self.tidy(id, &self.log(id)).await?;
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
        // What serves is the containers' release; the checkout may be ahead of it already (a
        // build beside the running stack checks its commit out).
        let old_commit = self.checkout(id).commit();
        let from = Self::running_release(&record, &self.containers_of(id).await?);
        log.line(&format!(
            "rolling from {} to {}",
            from.as_deref().unwrap_or("(unknown)"),
            req.commit
        ));
        self.note_rollout(&mut record, from, &req.commit, old_commit.clone())?;
        let result = async {
            self.release(id, req, &log).await?;
            let frozen = self.freeze_writers(id, &log).await?;
            let project = self.load_project(id);
            self.thaw(frozen).await;
            let project = project?;
            let deadline = Instant::now() + timeout;
            let olds = self
                .roll(id, &project, &req.commit, &mut record, deadline, &log)
                .await?;
            Ok((project, olds))
        }
        .await;
        match result {
            Ok((project, olds)) => {
                record.commit = Some(req.commit.clone());
                record.running = Some(req.commit.clone());
                if olds.is_empty() {
                    record.rollout = None;
                }
                record.error = None;
                keep_release(
                    &mut record.releases,
                    &req.commit,
                    self.settings.keep_releases,
                );
                self.write_record(&record)?;
                log.line("deploy finished: the new release serves");
                self.changed();
                let status = self.status(id).await;
                self.retire_in_background(id, guard, project, olds, log);
                status
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
                record.rollout = None;
                self.write_record(&record)?;
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

    /// Replaces the containers service by service; on failure undoes what it switched. Answers
    /// the old containers left to retire once every new one is ready.
    async fn roll(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
        record: &mut super::Record,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<Vec<Retiring>, StackError> {
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
            self.note_switching(record, &s.name)?;
            // A forwarder that holds every published port and is current is switched; any
            // other (none yet, other ports, or one no longer wanted) is replaced stop-first.
            let forwarded = self.forwarded_ports(s);
            let direct = s
                .ports
                .iter()
                .any(|p| p.protocol != "tcp" || !forwarded.contains(&p.container_port));
            let fwd = self.forwarder(project, &s.name, &owner).await?;
            let fwd_current = self.forwarder_current(project, s, &ports, fwd.as_ref(), &owner);
            let held = !direct && fwd_current;
            if !fwd_current && let Some(f) = fwd.as_ref().and_then(|f| f.id.clone()) {
                match self.put_forwarder_aside(project, &s.name, &f).await {
                    Ok(a) => aside.push(a),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            if held && !start_first(s, held) && current.is_some() {
                let grace = s.stop_grace_period.unwrap_or(Duration::from_secs(10));
                self.pause_and_drain(project, &s.name, grace, log).await;
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
                    held,
                )
                .await;
            let ready = match step {
                Ok(put) => {
                    aside.extend(put);
                    let mut r = Ok(());
                    if !forwarded.is_empty() && !fwd_current {
                        r = self
                            .ensure_forwarder(project, s, &ports, &owner, log, &mut created)
                            .await;
                    }
                    if r.is_ok() {
                        r = self
                            .wait_service_ready(project, s, p.healthcheck, &ports, deadline, log)
                            .await;
                    }
                    if r.is_ok() && !forwarded.is_empty() && fwd_current {
                        r = match self.target_of(project, &s.name).await {
                            Ok(t) => self.switch(project, &s.name, &t, log).await,
                            Err(e) => Err(e),
                        };
                    }
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = ready {
                outcome = Err(e);
                break;
            }
            log.line(&format!("service {}: new container ready", s.name));
            if let Some(a) = aside
                .iter()
                .rev()
                .find(|a| a.service == s.name && a.stopped && !a.name.ends_with("-fwd"))
            {
                self.log_gap(&a.old, &s.name, log).await;
            }
        }
        match outcome {
            Ok(()) => {
                self.note_ready(record)?;
                Ok(aside
                    .into_iter()
                    .map(|a| Retiring {
                        drain: a.switched && !a.stopped,
                        service: a.service,
                        old: a.old,
                    })
                    .collect())
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
        held: bool,
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
            let stopped = !start_first(s, held) || restarting;
            if stopped && serving {
                log.line(&format!(
                    "service {}: stop-first ({})",
                    s.name,
                    stop_first_reason(s)
                ));
            }
            put = Some(Aside {
                service: s.name.clone(),
                name: plan::container_name(&project.name, &s.name),
                old,
                stopped,
                switched: held && !self.forwarded_ports(s).is_empty(),
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

    /// Switches back: removes the new containers, gives the old ones their names back and starts
    /// those that were stopped.
    async fn undo(
        &self,
        project: &Project,
        aside: &[Aside],
        created: &mut Vec<String>,
        log: &LogBuf,
    ) {
        // Connections go back to the old containers before the new ones go.
        for a in aside.iter().filter(|a| a.switched && !a.stopped) {
            if let Err(e) = self.switch(project, &a.service, &a.old, log).await {
                log.line(&format!(
                    "cannot switch the forwarder of {} back: {e}",
                    a.service
                ));
            }
        }
        for cid in created.drain(..) {
            let _ = self
                .docker
                .remove_container(&cid, force_with_volumes())
                .await;
        }
        for a in aside.iter().rev() {
            let name = a.name.clone();
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
            if a.switched
                && a.stopped
                && let Err(e) = self.switch(project, &a.service, &a.old, log).await
            {
                log.line(&format!(
                    "cannot switch the forwarder of {} back: {e}",
                    a.service
                ));
            }
            log.line(&format!(
                "service {}: old container serves again",
                a.service
            ));
        }
    }
}

impl Stacks {
    /// Logs how long a stop-first service had no container: from the old one's exit until now
    /// (the new one ready).
    async fn log_gap(&self, old: &str, service: &str, log: &LogBuf) {
        let finished = self
            .docker
            .inspect_container(old, None)
            .await
            .ok()
            .and_then(|c| c.state?.finished_at)
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
        if let Some(gap) =
            finished.and_then(|f| std::time::SystemTime::now().duration_since(f).ok())
        {
            log.line(&format!(
                "service {service}: stop-first gap {:.2} s (old container stopped -> new one ready)",
                gap.as_secs_f64()
            ));
        }
    }
}

#[cfg(test)]
mod tests;
