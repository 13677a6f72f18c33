//! The ancestry of a built image, judged after the build: an image built on another berth
//! instance's image is refused even when its Dockerfile did not name that image in a way the
//! Dockerfile check could see.
//!
//! The engine keeps a `Parent` chain only for the classic builder's images; a BuildKit image has
//! none. What every image has is its layer chain (`RootFS.Layers`, the diff ids bottom to top), and
//! an image built `FROM` another carries that image's whole chain at its start. So the check is on
//! layers: the built image is refused when the complete layer chain of another berth instance's
//! image starts its own, and that chain holds a layer that no image without berth's instance label
//! and no other image of the same instance has (a base everyone may use is never the reason).
//!
//! Two instances building the same files on the same base (the same repository deployed twice)
//! get the same layers, from BuildKit's cache or by building the same content. Such an image has
//! the other's chain exactly, and no more history: it is accepted, and so is an image that is only
//! `FROM` the other's with nothing added (indistinguishable from it). An image that adds anything
//! on top (a layer, or a metadata step such as `CMD`) is refused. Files copied with
//! `COPY --from=` become a new layer of their own and leave no trace in the chain: those are
//! caught only by the Dockerfile check before the build.

use std::collections::HashSet;

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::ImageInspect;

use crate::compose::plan::{self, Holder, Owner};

/// Another berth instance's image that a built image builds on.
#[derive(Debug, Clone)]
pub struct ForeignAncestor {
    /// The other image's first tag, else its id.
    pub image: String,
    pub holder: Holder,
}

fn layers(image: &ImageInspect) -> &[String] {
    image
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.as_deref())
        .unwrap_or_default()
}

async fn history_len(docker: &Docker, image: &str) -> Result<usize, Error> {
    Ok(docker.image_history(image).await?.len())
}

/// The other berth instance's image that `image` (built for `owner`) builds on, if any; see the
/// module's documentation for the rule.
pub async fn foreign_ancestor(
    docker: &Docker,
    owner: &Owner,
    image: &str,
) -> Result<Option<ForeignAncestor>, Error> {
    let built = docker.inspect_image(image).await?;
    let built_id = built.id.clone().unwrap_or_default();
    let chain = layers(&built);
    let summaries = docker
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await?;
    let (foreign, others): (Vec<_>, Vec<_>) = summaries
        .into_iter()
        .filter(|s| s.id != built_id)
        .partition(|s| {
            s.labels.contains_key(plan::LABEL_BERTH_INSTANCE)
                && owner.check(Some(&s.labels)).is_err()
        });
    // Other instances' images whose whole chain starts the built image's chain.
    let mut candidates = Vec::new();
    for s in foreign {
        let Ok(inspect) = docker.inspect_image(&s.id).await else {
            continue; // removed meanwhile
        };
        let theirs = layers(&inspect);
        if theirs.is_empty() || !chain.starts_with(theirs) {
            continue;
        }
        if theirs.len() == chain.len()
            && history_len(docker, &built_id).await? <= history_len(docker, &s.id).await?
        {
            continue; // the same build, not one on top of it
        }
        let Err(holder) = owner.check(Some(&s.labels)) else {
            continue;
        };
        let name = s.repo_tags.first().cloned().unwrap_or(s.id.clone());
        candidates.push((
            theirs.to_vec(),
            ForeignAncestor {
                image: name,
                holder,
            },
        ));
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    // The layers anyone may build on: those of images that are not berth's or are this
    // instance's own (the built image aside).
    let mut open: HashSet<String> = HashSet::new();
    for s in others {
        if let Ok(inspect) = docker.inspect_image(&s.id).await {
            open.extend(layers(&inspect).iter().cloned());
        }
    }
    candidates.sort_by_key(|(theirs, _)| std::cmp::Reverse(theirs.len()));
    Ok(candidates
        .into_iter()
        .find(|(theirs, _)| theirs.iter().any(|l| !open.contains(l)))
        .map(|(_, found)| found))
}
