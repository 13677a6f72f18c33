//! The images a Dockerfile builds on, judged before anything is built: another berth instance's
//! image, a cache mount, or a base whose `ONBUILD` triggers read images is refused.

use std::collections::BTreeMap;

use crate::compose::plan::Owner;
use crate::compose::{self, Service};
use crate::dockerfile;
use crate::stacks::ownership::foreign_berth_image;
use crate::stacks::{StackError, Stacks, rejected};

impl Stacks {
    /// Refuses a Dockerfile that builds on another berth instance's image (`FROM`,
    /// `COPY --from=`, `RUN --mount=...,from=`); see [`crate::dockerfile`] for how it is read.
    pub(super) async fn check_build_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
    ) -> Result<(), StackError> {
        // A missing or unreadable Dockerfile fails the build itself, with a message saying why.
        let Ok(text) = crate::context::read_dockerfile(&build.context, &build.dockerfile) else {
            return Ok(());
        };
        self.check_bases(owner, s, build, &text).await.map(drop)
    }

    /// Refuses a Dockerfile `text` that builds on another berth instance's image, or that cannot
    /// be read unambiguously; answers the images it builds on as `reference=id` (`reference=`
    /// when there is no such image yet).
    pub(super) async fn check_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
        text: &str,
    ) -> Result<Vec<String>, StackError> {
        let refuse = |reason: String| {
            rejected(
                &s.name,
                format!("services.{}.build", s.name),
                format!("{} {reason}", build.dockerfile),
            )
        };
        let refs = dockerfile::image_refs(text, &build.args).map_err(|e| refuse(format!("{e}")))?;
        if let Some(line) = refs.cache_mount {
            return Err(refuse(format!(
                "line {line}: uses RUN --mount=type=cache, which berth does not support: BuildKit shares cache mounts between every build on the worker"
            )));
        }
        let mut bases = Vec::new();
        for (image, line) in refs.images {
            let Ok(inspect) = self.docker.inspect_image(&image).await else {
                bases.push(format!("{image}="));
                continue;
            };
            if let Some(holder) = foreign_berth_image(owner, &inspect) {
                return Err(refuse(format!(
                    "line {line}: builds on image {image}, which {holder}: a build may only use its own images and images that are not berth's"
                )));
            }
            // A base image's ONBUILD triggers run in this build: they may not read images.
            let triggers = inspect.config.as_ref().and_then(|c| c.on_build.as_ref());
            for trigger in triggers.into_iter().flatten() {
                if dockerfile::image_refs(
                    &format!("FROM scratch\nONBUILD {trigger}\n"),
                    &BTreeMap::new(),
                )
                .is_err()
                {
                    return Err(refuse(format!(
                        "line {line}: image {image} has an ONBUILD trigger that reads other images ({trigger})"
                    )));
                }
            }
            bases.push(format!("{image}={}", inspect.id.unwrap_or_default()));
        }
        Ok(bases)
    }
}
