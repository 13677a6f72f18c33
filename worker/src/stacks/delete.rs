//! Delete and prune: everything of the stack found by label goes (containers with their
//! anonymous volumes, volumes unless kept, images, networks, the stack directory), past
//! failures, which are listed in `not_removed`; then this node's berth networks and untagged
//! images whose stack is gone are pruned.

use std::collections::HashMap;
use std::time::Duration;

use berth_worker_api::{DeleteResponse, ValidName};
use bollard::query_parameters::{
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveImageOptions,
    RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
};

use super::{StackError, Stacks, force_with_volumes};
use crate::compose::plan;
use crate::docker::{self as dk, idempotent, label_filter};

impl Stacks {
    /// Removes everything of the stack it can find by label and goes on past failures: what it
    /// could not remove is listed in `not_removed` (and the log) instead of failing half-way.
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn delete(
        &self,
        id: &ValidName,
        keep_volumes: bool,
    ) -> Result<DeleteResponse, StackError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let _active = self.begin(id, "delete");
        let log = self.log(id);
        let instance = [
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, self.settings.node.as_str()),
        ];
        let dir = self.stack_dir(id);
        let mut resp = DeleteResponse {
            id: id.clone(),
            existed: dir.exists(),
            removed_containers: 0,
            removed_images: 0,
            removed_volumes: 0,
            removed_networks: 0,
            not_removed: Vec::new(),
        };
        let mut left = Vec::new();
        let long = dk::long(&self.docker, Duration::from_secs(300));
        match self.every_container_of(id).await {
            Ok(containers) => {
                for c in containers {
                    let Some(cid) = c.id else { continue };
                    let removed = long.remove_container(&cid, force_with_volumes()).await;
                    match idempotent(removed) {
                        Ok(true) => resp.removed_containers += 1,
                        Ok(false) => {}
                        Err(e) => {
                            let name = c.names.and_then(|n| n.into_iter().next());
                            let name = name
                                .as_deref()
                                .map_or(cid.as_str(), |n| n.trim_start_matches('/'));
                            left.push(format!("container {name}: {}", dk::message(&e)));
                        }
                    }
                }
            }
            Err(e) => left.push(format!("containers: cannot list them: {e}")),
        }
        let filters = label_filter(&instance);
        if !keep_volumes {
            let listed = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await;
            match listed {
                Ok(volumes) => {
                    for v in volumes.volumes.unwrap_or_default() {
                        let removed = self
                            .docker
                            .remove_volume(
                                &v.name,
                                Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
                            )
                            .await;
                        match idempotent(removed) {
                            Ok(true) => resp.removed_volumes += 1,
                            Ok(false) => {}
                            Err(e) => left.push(format!("volume {}: {}", v.name, dk::message(&e))),
                        }
                    }
                }
                Err(e) => left.push(format!("volumes: cannot list them: {}", dk::message(&e))),
            }
        }
        resp.removed_images = self.remove_images(&filters, &mut left).await;
        let listed = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await;
        match listed {
            Ok(networks) => {
                for n in networks {
                    let Some(nid) = n.id else { continue };
                    match idempotent(self.docker.remove_network(&nid).await) {
                        Ok(true) => resp.removed_networks += 1,
                        Ok(false) => {}
                        Err(e) => left.push(format!(
                            "network {}: {}",
                            n.name.unwrap_or(nid),
                            dk::message(&e)
                        )),
                    }
                }
            }
            Err(e) => left.push(format!("networks: cannot list them: {}", dk::message(&e))),
        }
        resp.existed |= resp.removed_containers
            + resp.removed_images
            + resp.removed_networks
            + resp.removed_volumes
            > 0;
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(instance = %id, cause = %e, path = %dir.display(), "cannot remove the stack directory");
            left.push(format!("the stack's directory on the worker: {e}"));
        }
        match self.prune_networks().await {
            Ok(n) => resp.removed_networks += n,
            Err(e) => tracing::warn!(cause = %e, "cannot prune networks"),
        }
        self.prune_images().await;
        for what in &left {
            log.line(&format!("not removed: {what}"));
            tracing::warn!(instance = %id, what = %what, "delete could not remove");
        }
        resp.not_removed = left;
        self.logs.remove(id);
        self.changed();
        Ok(resp)
    }

    /// Removes the images matching `filters`. An image Docker refuses to remove (a child image
    /// or a container of someone else builds on it) loses its tags, so nothing can start from
    /// its name, and is reported in `left`; [`Self::prune_images`] removes it once it is free.
    async fn remove_images(
        &self,
        filters: &HashMap<String, Vec<String>>,
        left: &mut Vec<String>,
    ) -> u32 {
        let listed = self.images_matching(filters).await;
        let images = match listed {
            Ok(images) => images,
            Err(e) => {
                left.push(format!("images: cannot list them: {}", dk::message(&e)));
                return 0;
            }
        };
        let mut removed = 0;
        for image in images {
            let result = self
                .docker
                .remove_image(
                    &image.id,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
            match idempotent(result) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    let tags: Vec<&String> = image
                        .repo_tags
                        .iter()
                        .filter(|t| !t.ends_with(":<none>"))
                        .collect();
                    for tag in &tags {
                        let _ = self
                            .docker
                            .remove_image(
                                tag,
                                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                                None,
                            )
                            .await;
                    }
                    let short = image.id.trim_start_matches("sha256:");
                    let tags = if tags.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (untagged {})",
                            tags.iter()
                                .map(|t| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    left.push(format!(
                        "image {}{tags}: {}",
                        &short[..short.len().min(12)],
                        dk::message(&e)
                    ));
                }
            }
        }
        removed
    }

    /// Removes this node's untagged berth images whose stack is gone: what a delete could only
    /// untag because something still used the image. Docker refuses while it is in use.
    async fn prune_images(&self) {
        let filters = HashMap::from([
            ("dangling".to_owned(), vec!["true".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{}={}", plan::LABEL_BERTH_NODE, self.settings.node)],
            ),
        ]);
        let Ok(images) = self.images_matching(&filters).await else {
            return;
        };
        for image in images {
            let live = image
                .labels
                .get(plan::LABEL_BERTH_INSTANCE)
                .and_then(|i| ValidName::parse("id", i).ok())
                .is_some_and(|i| self.stack_dir(&i).exists());
            if !live
                && let Err(e) = self
                    .docker
                    .remove_image(&image.id, None::<RemoveImageOptions>, None)
                    .await
            {
                tracing::debug!(image = %image.id, cause = %e, "leftover image still in use");
            }
        }
    }

    /// Removes this node's berth-labelled networks that have no endpoints and whose stack is
    /// gone; networks of others (and unlabelled ones) are never touched.
    pub async fn prune_networks(&self) -> Result<u32, StackError> {
        let filters = label_filter(&[
            (plan::LABEL_BERTH_MANAGED, "true"),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ]);
        let mut removed = 0;
        for n in self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?
        {
            let (Some(nid), Some(labels)) = (n.id, n.labels) else {
                continue;
            };
            let live = labels
                .get(plan::LABEL_BERTH_INSTANCE)
                .and_then(|i| ValidName::parse("id", i).ok())
                .is_some_and(|i| self.stack_dir(&i).exists());
            if live {
                continue;
            }
            let Ok(inspect) = self.docker.inspect_network(&nid, None).await else {
                continue;
            };
            if inspect.containers.is_none_or(|c| c.is_empty())
                && idempotent(self.docker.remove_network(&nid).await)?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
