//! Start orchestration: check everything first (`prepare`: images, healthchecks, names), then
//! converge Docker to the project, each service as soon as its dependencies meet their
//! conditions (independent services side by side; a stopped forwarder starts beside its
//! service's dependency waits), and answer once the stack is ready. A host port taken meanwhile
//! gets one more try with fresh ports; any other failure leaves nothing half-started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use berth_worker_api::{StackState, StackStatus, StartRequest, ValidName};
use bollard::models::ContainerInspectResponse;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::ports::{choose_ports, port_taken};
use super::record::{Record, Unfinished};
use super::spec::public_env;
use super::{MAX_START_TIMEOUT, StackError, Stacks, failed, force_with_volumes, io};
use crate::compose::plan;
use crate::compose::{Condition, Project, Service};
use crate::logbuf::LogBuf;
use crate::policy;

/// What start knows of a service once its checks passed.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    /// The image reference the container is created from, and its id.
    pub(super) image: String,
    pub(super) image_id: String,
    /// Whether Docker runs a healthcheck: the file's, else the image's own `HEALTHCHECK`.
    pub(super) healthcheck: bool,
}

impl Stacks {
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn start(
        &self,
        id: &ValidName,
        req: &StartRequest,
    ) -> Result<StackStatus, StackError> {
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
        self.tidy(id, &self.log(id)).await?;
        let Some(mut record) = self.read_record(id)? else {
            return Err(StackError::NotFound(id.to_string()));
        };
        let Some(commit) = record.commit.clone() else {
            return Err(StackError::Conflict(format!(
                "stack {id} has no built commit"
            )));
        };
        if record.state == StackState::Building {
            return Err(StackError::Conflict(format!("stack {id} is building")));
        }
        if let Some(want) = &req.commit
            && want != &commit
        {
            return Err(StackError::Conflict(format!(
                "stack {id} holds commit {commit}, not {want}: build it first"
            )));
        }
        if self.checkout(id).commit().as_deref() != Some(commit.as_str()) {
            return Err(StackError::Conflict(format!(
                "the checkout of stack {id} is not at its built commit {commit} (a later build failed): build again"
            )));
        }
        let _active = self.begin(id, "start");
        let log = self.log(id);
        let frozen = self.freeze_writers(id, &log).await?;
        let project = self.load_project(id);
        self.thaw(frozen).await;
        let project = project?;
        // Refusals (another's object under one of the stack's names, another instance's image, a
        // `service_healthy` dependency without a healthcheck) come before anything changes.
        let prepared = self.prepare(id, &project, &commit).await?;
        record.state = StackState::Starting;
        record.error = None;
        self.write_record(&record)?;
        let _unfinished = Unfinished::new(self, id, StackState::Starting, "start");
        let deadline = Instant::now() + timeout.min(MAX_START_TIMEOUT);
        let mut created = Vec::new();
        let mut result = self
            .start_inner(
                id,
                &project,
                &prepared,
                &commit,
                &mut record,
                deadline,
                &log,
                &mut created,
            )
            .await;
        if result.as_ref().is_err_and(port_taken) {
            // Someone bound a host port between choosing and publishing it: drop what this call
            // made, choose every port afresh (all containers see all addresses) and try once more.
            log.line("a chosen host port was taken meanwhile; choosing new ports");
            if let Err(e) = self.stop_all(Some(&project), id).await {
                tracing::warn!(instance = %id, cause = %e, "cannot stop the stack");
            }
            self.remove_created(&mut created).await;
            record.ports.clear();
            result = self
                .start_inner(
                    id,
                    &project,
                    &prepared,
                    &commit,
                    &mut record,
                    deadline,
                    &log,
                    &mut created,
                )
                .await;
        }
        match result {
            Ok(()) => {
                record.state = StackState::Running;
                record.running = Some(commit.clone());
                self.write_record(&record)?;
                log.line("stack ready");
                self.changed();
                self.status(id).await
            }
            Err(e) => {
                log.line(&format!("start failed: {e}"));
                // Leave nothing half-started: stop the stack, remove what this call created.
                if let Err(e) = self.stop_all(Some(&project), id).await {
                    tracing::warn!(instance = %id, cause = %e, "cannot stop the stack");
                }
                self.remove_created(&mut created).await;
                record.state = StackState::Failed;
                record.error = Some(e.to_string());
                self.write_record(&record)?;
                self.changed();
                Err(e)
            }
        }
    }

    /// Removes the containers (by id) this start created, with their anonymous volumes.
    async fn remove_created(&self, created: &mut Vec<String>) {
        for cid in created.drain(..) {
            let _ = self
                .docker
                .remove_container(&cid, force_with_volumes())
                .await;
        }
    }

    /// Everything start checks before it changes anything: each service's image (its own build,
    /// or an `image:` that no other berth instance made) and whether it has a healthcheck (the
    /// file's, else the image's `HEALTHCHECK`), `service_healthy` dependencies on services
    /// without one, and every network, volume and container name the stack uses, which must be
    /// free or the stack's own.
    pub(super) async fn prepare(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
    ) -> Result<HashMap<String, Prepared>, StackError> {
        let owner = self.owner(id);
        let prepared = self.prepare_images(id, project, commit).await?;
        for key in &project.networks {
            self.owned_network(&plan::network_name(&project.name, key), &owner)
                .await?;
        }
        for key in &project.volumes {
            self.owned_volume(&plan::volume_name(&project.name, key), &owner)
                .await?;
        }
        for s in &project.services {
            self.owned_container(&plan::container_name(&project.name, &s.name), &owner)
                .await?;
        }
        Ok(prepared)
    }

    /// The part of [`Self::prepare`] a build checks too, once its images exist: each service's
    /// image and healthcheck, and `service_healthy` dependencies on services without one.
    pub(super) async fn prepare_images(
        &self,
        id: &ValidName,
        project: &Project,
        commit: &str,
    ) -> Result<HashMap<String, Prepared>, StackError> {
        let owner = self.owner(id);
        let mut prepared = HashMap::new();
        for s in &project.services {
            let (image, inspect) = match &s.build {
                Some(_) => {
                    let tag = plan::image_tag(&project.name, &s.name, commit);
                    let Some(inspect) = self.owned_image(&tag, &owner).await? else {
                        return Err(failed(
                            &format!("image of service {}", s.name),
                            format!("image {tag} is missing: build again"),
                        ));
                    };
                    (tag, inspect)
                }
                None => (
                    s.image.clone().unwrap_or_default(),
                    self.service_image(&owner, s).await?,
                ),
            };
            let healthcheck = match &s.healthcheck {
                Some(_) => s.has_healthcheck(),
                None => inspect
                    .config
                    .as_ref()
                    .and_then(|c| c.healthcheck.as_ref()?.test.as_ref()?.first().cloned())
                    .is_some_and(|t| t != "NONE"),
            };
            prepared.insert(
                s.name.clone(),
                Prepared {
                    image,
                    image_id: inspect.id.unwrap_or_default(),
                    healthcheck,
                },
            );
        }
        for s in &project.services {
            for (dep, cond) in &s.depends_on {
                if *cond == Condition::Healthy && prepared.get(dep).is_some_and(|p| !p.healthcheck)
                {
                    let reason = format!(
                        "service {dep} has no healthcheck (in the file or its image) but {} waits for service_healthy",
                        s.name
                    );
                    return Err(StackError::InvalidCompose {
                        message: format!("services.{dep}.healthcheck: {reason}"),
                        details: vec![berth_worker_api::ErrorDetail {
                            service: Some(dep.clone()),
                            field: format!("services.{dep}.healthcheck"),
                            reason,
                        }],
                    });
                }
            }
        }
        Ok(prepared)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_inner(
        &self,
        id: &ValidName,
        project: &Project,
        prepared: &HashMap<String, Prepared>,
        commit: &str,
        record: &mut Record,
        deadline: Instant,
        log: &LogBuf,
        created: &mut Vec<String>,
    ) -> Result<(), StackError> {
        let owner = self.owner(id);
        // Networks and volumes: the stack's own are reused, others' are never touched.
        self.ensure_networks(project, &owner, log).await?;
        self.ensure_volumes(project, &owner, log).await?;
        self.remove_orphans(project, id, log).await?;
        self.remove_stale_writers(project, id, log).await?;
        self.remove_stale_forwarders(project, id, log).await?;
        // Host ports first, so every container knows every public address before it starts.
        let existing = self.existing_containers(project, &owner).await?;
        let ports = choose_ports(project, &existing, &record.ports)
            .map_err(io("allocating a host port"))?;
        record.ports = ports.clone();
        self.write_record(record)?;
        let public_env = public_env(project, &ports, &self.settings.advertise);
        let order = plan::start_order(project).map_err(|d| StackError::Rejected {
            message: d.reason.clone(),
            details: vec![d],
        })?;
        // Every service starts as soon as its dependencies have started and meet their
        // conditions, so independent services (one dependency level, or any that do not wait on
        // each other) start side by side. After a failure nothing new begins; services waiting
        // on a dependency give up, and those creating or starting their container finish, so
        // `created` names every container this start made.
        let cancel = CancellationToken::new();
        let mut pending = order;
        let mut started: HashSet<&str> = HashSet::new();
        let mut running = FuturesUnordered::new();
        let mut first_error = None;
        loop {
            if first_error.is_none() {
                let (ready, waiting): (Vec<&Service>, Vec<&Service>) = pending
                    .into_iter()
                    .partition(|s| s.depends_on.keys().all(|d| started.contains(d.as_str())));
                pending = waiting;
                for s in ready {
                    running.push(self.start_service(
                        id,
                        project,
                        s,
                        &prepared[&s.name],
                        &ports,
                        &public_env,
                        commit,
                        existing.get(&s.name),
                        deadline,
                        log,
                        &cancel,
                    ));
                }
            }
            let Some((name, made, result)) = running.next().await else {
                break;
            };
            created.extend(made);
            match result {
                Ok(()) => {
                    started.insert(name);
                }
                Err(e) if first_error.is_none() => {
                    cancel.cancel();
                    first_error = Some(e);
                }
                Err(_) => {}
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.wait_ready(project, |s| prepared[s].healthcheck, &ports, deadline, log)
            .await
    }

    /// Starts service `s` once its dependencies meet their conditions (a wait that `cancel`
    /// ends), then converges its container: the service's name, the containers it created
    /// (also on failure), and the outcome.
    #[allow(clippy::too_many_arguments)]
    async fn start_service<'a>(
        &self,
        id: &ValidName,
        project: &Project,
        s: &'a Service,
        prepared: &Prepared,
        ports: &BTreeMap<String, u16>,
        public_env: &[String],
        commit: &str,
        existing: Option<&ContainerInspectResponse>,
        deadline: Instant,
        log: &LogBuf,
        cancel: &CancellationToken,
    ) -> (&'a str, Vec<String>, Result<(), StackError>) {
        let mut made = Vec::new();
        let waits = async {
            for (dep, cond) in &s.depends_on {
                self.wait_condition(project, dep, *cond, deadline, log)
                    .await?;
            }
            Ok(())
        };
        let waits = async {
            tokio::select! {
                r = waits => r,
                () = cancel.cancelled() => Err(failed(
                    &format!("start service {}", s.name),
                    "another service failed first",
                )),
            }
        };
        // A start after a stop brings the service's stopped forwarder up meanwhile (it does not
        // wait for the service's dependencies or its container, only the service does).
        let owner = self.owner(id);
        let early = self.forwarder_early(project, s, ports, &owner, log);
        let converge = async {
            waits.await?;
            self.converge_prepared(
                id, project, s, prepared, ports, public_env, commit, existing, log, &mut made,
            )
            .await
        };
        let (converged, early) = tokio::join!(converge, early);
        let result = match (converged, early) {
            (Ok(()), Ok(early)) => {
                self.finish_forwarder(id, project, s, ports, early, log, &mut made)
                    .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        (s.name.as_str(), made, result)
    }

    /// Creates (or keeps) and starts the container of service `s`.
    #[allow(clippy::too_many_arguments)]
    async fn converge_prepared(
        &self,
        id: &ValidName,
        project: &Project,
        s: &Service,
        prepared: &Prepared,
        ports: &BTreeMap<String, u16>,
        public_env: &[String],
        commit: &str,
        existing: Option<&ContainerInspectResponse>,
        log: &LogBuf,
        made: &mut Vec<String>,
    ) -> Result<(), StackError> {
        let owner = self.owner(id);
        let (body, hash) = self.container_spec(
            project,
            s,
            &prepared.image,
            &prepared.image_id,
            ports,
            public_env,
            commit,
            &owner,
        );
        policy::recheck_binds(s, &self.src_dir(id)).map_err(|d| StackError::Rejected {
            message: format!("rejected by policy: {}: {}", d.field, d.reason),
            details: vec![d],
        })?;
        self.converge_service(project, s, body, &hash, existing, &owner, log, made, None)
            .await?;
        Ok(())
    }

    /// Brings the forwarder of service `s` to its running container: a switch when
    /// [`Self::forwarder_early`] started it (`early`), else whatever it needs.
    #[allow(clippy::too_many_arguments)]
    async fn finish_forwarder(
        &self,
        id: &ValidName,
        project: &Project,
        s: &Service,
        ports: &BTreeMap<String, u16>,
        early: bool,
        log: &LogBuf,
        made: &mut Vec<String>,
    ) -> Result<(), StackError> {
        if early {
            let target = self.target_of(project, &s.name).await?;
            return self.switch(project, &s.name, &target, log).await;
        }
        self.ensure_forwarder(project, s, ports, &self.owner(id), log, made)
            .await
    }
}
