//! Whose is an object found by name: the stack uses, changes or removes a network, volume,
//! container or image tag only when it carries the stack's own labels (instance and node), and
//! another's answers 409 before anything changes. A stack may use images that are not berth's,
//! never another berth instance's.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, ImageInspect};

use super::{StackError, Stacks, rejected};
use crate::compose::Service;
use crate::compose::plan::{self, Holder, Owner};
use crate::docker as dk;

/// A 409 for an object that one of the stack's names already denotes and that is not the
/// stack's own.
pub(super) fn conflict(kind: &str, name: &str, holder: &Holder) -> StackError {
    StackError::Conflict(format!(
        "{kind} {name} already exists and {holder}: berth never reuses, changes or removes it"
    ))
}

pub(super) fn image_labels(image: &ImageInspect) -> Option<&HashMap<String, String>> {
    image.config.as_ref()?.labels.as_ref()
}

/// Who made `image`, when it is another berth instance (an image without berth's instance label
/// is anyone's to use).
pub(super) fn foreign_berth_image(owner: &Owner, image: &ImageInspect) -> Option<Holder> {
    let labels = image_labels(image)?;
    labels.get(plan::LABEL_BERTH_INSTANCE)?;
    owner.check(Some(labels)).err()
}

impl Stacks {
    /// Whether the network `name` exists and is the stack's own; another's is a conflict.
    pub(super) async fn owned_network(
        &self,
        name: &str,
        owner: &Owner,
    ) -> Result<bool, StackError> {
        match self.docker.inspect_network(name, None).await {
            Ok(n) => owner
                .check(n.labels.as_ref())
                .map(|()| true)
                .map_err(|holder| conflict("network", name, &holder)),
            Err(e) if dk::already(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the volume `name` exists and is the stack's own; another's is a conflict.
    pub(super) async fn owned_volume(&self, name: &str, owner: &Owner) -> Result<bool, StackError> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => owner
                .check(Some(&v.labels))
                .map(|()| true)
                .map_err(|holder| conflict("volume", name, &holder)),
            Err(e) if dk::already(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The container `name` if it exists and is the stack's own; another's is a conflict.
    pub(super) async fn owned_container(
        &self,
        name: &str,
        owner: &Owner,
    ) -> Result<Option<ContainerInspectResponse>, StackError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                owner
                    .check(labels)
                    .map_err(|holder| conflict("container", name, &holder))?;
                Ok(Some(c))
            }
            Err(e) if dk::already(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The image `tag` if it exists and is the stack's own; another's is a conflict.
    pub(super) async fn owned_image(
        &self,
        tag: &str,
        owner: &Owner,
    ) -> Result<Option<ImageInspect>, StackError> {
        match self.docker.inspect_image(tag).await {
            Ok(i) => {
                owner
                    .check(image_labels(&i))
                    .map_err(|holder| conflict("image", tag, &holder))?;
                Ok(Some(i))
            }
            Err(e) if dk::already(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The image a service without `build` names, refused when another berth instance made it:
    /// a stack may use its own images and images that are not berth's, never another's.
    pub(super) async fn service_image(
        &self,
        owner: &Owner,
        s: &Service,
    ) -> Result<ImageInspect, StackError> {
        let image = s.image.clone().unwrap_or_default();
        let inspect = match self.docker.inspect_image(&image).await {
            Ok(i) => i,
            Err(e) if dk::already(&e) => {
                return Err(super::faults::fault(
                    berth_worker_api::ErrorCode::ImageMissing,
                    &s.name,
                    format!(
                        "service {}: image {image:?} is not present on this worker (images are \
                         never pulled; build it from a Dockerfile FROM a local image)",
                        s.name
                    ),
                    "",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(holder) = foreign_berth_image(owner, &inspect) {
            return Err(rejected(
                &s.name,
                format!("services.{}.image", s.name),
                format!(
                    "image {image} {holder}: a stack may only use its own images and images that are not berth's"
                ),
            ));
        }
        Ok(inspect)
    }
}
