//! Converge: bring Docker to the project before its containers start. The stack's networks and
//! volumes exist (its own are reused, others' never touched), containers of services no longer
//! in the file and earlier containers that could write above a new bind source are removed, and
//! each service's container is kept when its config hash label matches the new spec, else
//! recreated (compose's `convergence.go`).

use std::collections::HashMap;
use std::path::Path;

use berth_worker_api::ValidName;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, NetworkConnectRequest, NetworkCreateRequest,
    VolumeCreateRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};

use super::freeze::writable_bind;
use super::ownership::conflict;
use super::spec::endpoint;
use super::{StackError, Stacks, failed, force_with_volumes};
use crate::compose::plan::{self, Owner};
use crate::compose::{MountSource, Project, Service};
use crate::docker::{self as dk, idempotent};
use crate::logbuf::LogBuf;

/// What start does with one service's container.
#[derive(Debug, PartialEq, Eq)]
enum Action<'a> {
    /// There is none: create it.
    Create,
    /// It was made for another configuration: remove it (the id), then create it afresh.
    Recreate(&'a str),
    /// It matches the new spec: reuse it, starting it unless it runs.
    Keep { running: bool },
}

/// The config hash berth labelled a container with.
fn config_hash(c: &ContainerInspectResponse) -> Option<&str> {
    c.config
        .as_ref()?
        .labels
        .as_ref()?
        .get(plan::LABEL_CONFIG_HASH)
        .map(String::as_str)
}

/// Reuse or recreate: the existing container `current` is kept only when its config hash is
/// `hash`, the hash of the spec start would create it with.
fn decide<'a>(current: Option<&'a ContainerInspectResponse>, hash: &str) -> Action<'a> {
    match current {
        None => Action::Create,
        Some(c) if config_hash(c) == Some(hash) => Action::Keep {
            running: c.state.as_ref().and_then(|s| s.running) == Some(true),
        },
        Some(c) => c.id.as_deref().map_or(Action::Create, Action::Recreate),
    }
}

impl Stacks {
    /// Creates the project's networks that do not exist yet; one of the same name made
    /// meanwhile is fine only if it is the stack's own.
    pub(super) async fn ensure_networks(
        &self,
        project: &Project,
        owner: &Owner,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        for key in &project.networks {
            let name = plan::network_name(&project.name, key);
            if self.owned_network(&name, owner).await? {
                continue;
            }
            let made = self
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    // Named so the host firewall keeps the stack away from the host's ports.
                    options: Some(HashMap::from([(
                        plan::BRIDGE_NAME_OPTION.to_owned(),
                        plan::bridge_name(&name),
                    )])),
                    labels: Some(plan::network_labels(&project.name, key, owner)),
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => log.line(&format!("created network {name}")),
                // Made meanwhile under the same name: fine only if it is the stack's own.
                Err(e) if dk::status_of(&e) == Some(409) => {
                    if !self.owned_network(&name, owner).await? {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates the project's named volumes that do not exist yet.
    pub(super) async fn ensure_volumes(
        &self,
        project: &Project,
        owner: &Owner,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        for key in &project.volumes {
            let name = plan::volume_name(&project.name, key);
            if self.owned_volume(&name, owner).await? {
                continue;
            }
            // Docker answers an existing volume of the same name instead of an error.
            let volume = self
                .docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(plan::volume_labels(&project.name, key, owner)),
                    ..Default::default()
                })
                .await?;
            owner
                .check(Some(&volume.labels))
                .map_err(|holder| conflict("volume", &name, &holder))?;
            log.line(&format!("created volume {name}"));
        }
        Ok(())
    }

    /// Removes orphans: containers of services no longer in the file, with their anonymous
    /// volumes.
    pub(super) async fn remove_orphans(
        &self,
        project: &Project,
        id: &ValidName,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        for c in self.containers_of(id).await? {
            let service = c
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::LABEL_SERVICE))
                .cloned();
            if service.is_none_or(|s| project.service(&s).is_none())
                && let Some(cid) = c.id
            {
                log.line(&format!("removing orphan container {cid}"));
                idempotent(
                    self.docker
                        .remove_container(&cid, force_with_volumes())
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// Removes containers of an earlier configuration that can write above a bind source of
    /// `project`: left running while the new containers start, they could swap that source for a
    /// symlink before Docker mounts it. The policy lets no service of `project` mount a writable
    /// ancestor of another bind, so these are recreated anyway.
    pub(super) async fn remove_stale_writers(
        &self,
        project: &Project,
        id: &ValidName,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let sources: Vec<&Path> = project
            .services
            .iter()
            .flat_map(|s| &s.volumes)
            .filter_map(|m| match &m.source {
                MountSource::Bind(src) => Some(src.as_path()),
                _ => None,
            })
            .collect();
        for c in self.containers_of(id).await? {
            let above = c
                .mounts
                .iter()
                .flatten()
                .filter_map(writable_bind)
                .any(|outer| sources.iter().any(|s| *s != outer && s.starts_with(outer)));
            if above && let Some(cid) = c.id {
                log.line(&format!(
                    "removing container {cid} first: it can write above a bind source of the new configuration"
                ));
                idempotent(
                    self.docker
                        .remove_container(&cid, force_with_volumes())
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// The stack's existing container of each service (by service name).
    pub(super) async fn existing_containers(
        &self,
        project: &Project,
        owner: &Owner,
    ) -> Result<HashMap<String, ContainerInspectResponse>, StackError> {
        let mut existing = HashMap::new();
        for s in &project.services {
            let name = plan::container_name(&project.name, &s.name);
            if let Some(c) = self.owned_container(&name, owner).await? {
                existing.insert(s.name.clone(), c);
            }
        }
        Ok(existing)
    }

    /// Brings service `s` to the container `body` (whose config hash is `hash`): `current` is
    /// reused or recreated ([`decide`]), a new container is connected to its other networks and
    /// noted in `created`, and the container is started unless it runs. `stop_first`, when
    /// given, is a container (and its stop timeout) stopped between the create and the start:
    /// a stop-first rollout's old container, so the gap is only the start.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn converge_service(
        &self,
        project: &Project,
        s: &Service,
        body: ContainerCreateBody,
        hash: &str,
        current: Option<&ContainerInspectResponse>,
        owner: &Owner,
        log: &LogBuf,
        created: &mut Vec<String>,
        stop_first: Option<(&str, Option<i32>)>,
    ) -> Result<(), StackError> {
        let name = plan::container_name(&project.name, &s.name);
        let action = decide(current, hash);
        if let Action::Recreate(old) = action {
            // The old container's anonymous volumes go with it (nothing else would find
            // them: Docker labels them with nothing).
            log.line(&format!("recreating {name} (configuration changed)"));
            self.docker
                .remove_container(old, force_with_volumes())
                .await?;
        }
        if !matches!(action, Action::Keep { .. }) {
            let made = self
                .docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                    body,
                )
                .await;
            let made = match made {
                Ok(made) => made,
                // Made meanwhile under the same name by someone else.
                Err(e) if dk::status_of(&e) == Some(409) => {
                    self.owned_container(&name, owner).await?;
                    return Err(failed(
                        &format!("create service {}", s.name),
                        dk::message(&e),
                    ));
                }
                Err(e) => {
                    return Err(failed(
                        &format!("create service {}", s.name),
                        dk::message(&e),
                    ));
                }
            };
            created.push(made.id);
            for (net, aliases) in s.networks.iter().skip(1) {
                self.docker
                    .connect_network(
                        &plan::network_name(&project.name, net),
                        NetworkConnectRequest {
                            container: name.clone(),
                            endpoint_config: Some(endpoint(s, &name, aliases)),
                        },
                    )
                    .await?;
            }
            log.line(&format!("created {name}"));
        }
        if let Some((old, grace)) = stop_first {
            let opts = grace.map(|t| StopContainerOptionsBuilder::default().t(t).build());
            idempotent(self.docker.stop_container(old, opts).await)?;
            log.line(&format!("stopped the old {name} (stop-first)"));
        }
        if action != (Action::Keep { running: true }) {
            self.docker
                .start_container(&name, None)
                .await
                .map_err(|e| {
                    super::faults::fault(
                        berth_worker_api::ErrorCode::StartFailed,
                        &s.name,
                        format!("start of service {}: {}", s.name, dk::message(&e)),
                        "",
                    )
                })?;
            log.line(&format!("started {name}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerConfig, ContainerInspectResponse, ContainerState};

    use super::{Action, decide};
    use crate::compose::plan;

    fn container(id: Option<&str>, hash: Option<&str>, running: bool) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: id.map(str::to_owned),
            config: Some(ContainerConfig {
                labels: hash
                    .map(|h| HashMap::from([(plan::LABEL_CONFIG_HASH.to_owned(), h.into())])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(running),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_is_kept_only_with_the_same_config_hash() {
        let same_running = container(Some("c1"), Some("h1"), true);
        let same_stopped = container(Some("c1"), Some("h1"), false);
        let other = container(Some("c1"), Some("h0"), true);
        let unlabelled = container(Some("c1"), None, false);
        let no_id = container(None, Some("h0"), false);
        let cases: &[(Option<&ContainerInspectResponse>, Action<'_>)] = &[
            (None, Action::Create),
            (Some(&same_running), Action::Keep { running: true }),
            (Some(&same_stopped), Action::Keep { running: false }),
            (Some(&other), Action::Recreate("c1")),
            (Some(&unlabelled), Action::Recreate("c1")),
            (Some(&no_id), Action::Create),
        ];
        for (i, (current, want)) in cases.iter().enumerate() {
            assert_eq!(decide(*current, "h1"), *want, "case {i}");
        }
    }
}
