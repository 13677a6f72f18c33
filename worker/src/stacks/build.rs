//! The build pipeline: fetch and check out the commit (writers paused), load and judge the
//! compose file, refuse other instances' images before anything is built, build each service's
//! image with berth's labels, tag it `:latest`, and remove what the build no longer needs
//! (intermediate images, this instance's images of earlier commits).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_worker_api::ids::compose_project_name;
use berth_worker_api::{BuildRequest, StackState, StackStatus, ValidName};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, RemoveImageOptions, TagImageOptionsBuilder,
};
use futures::StreamExt;

use super::ownership::{foreign_berth_image, image_labels};
use super::record::{Record, Unfinished};
use super::{StackError, Stacks, failed, rejected};
use crate::compose::plan::{self, Owner};
use crate::compose::{self, Service};
use crate::docker::{self as dk, label_filter};
use crate::images::{self, BuildIds};
use crate::logbuf::LogBuf;
use crate::source;

impl Stacks {
    #[tracing::instrument(skip_all, fields(instance = %id), err)]
    pub async fn build(
        &self,
        id: &ValidName,
        req: &BuildRequest,
    ) -> Result<StackStatus, StackError> {
        if !source::valid_commit(&req.commit) {
            return Err(StackError::BadRequest(format!(
                "invalid commit {:?}: must be 40 lower-case hex characters",
                req.commit.chars().take(64).collect::<String>()
            )));
        }
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let previous = self.read_record(id)?;
        if let Some(r) = &previous
            && r.commit.as_deref() == Some(req.commit.as_str())
            && matches!(
                r.state,
                StackState::Built | StackState::Running | StackState::Stopped
            )
            && self.images_present(id, &req.commit).await?
        {
            return self.status(id).await;
        }
        let _active = self.begin(id, "build");
        let log = self.log(id);
        let mut record = previous.unwrap_or(Record {
            id: id.clone(),
            state: StackState::Building,
            commit: None,
            error: None,
            ports: BTreeMap::new(),
        });
        let keep_state = record.state;
        let keep_commit = record.commit.clone();
        record.state = StackState::Building;
        record.error = None;
        self.write_record(&record)?;
        self.recount();
        let _unfinished = Unfinished::new(self, id, StackState::Building, "build");
        match self.build_inner(id, req, &log).await {
            Ok(()) => {
                record.state = match keep_state {
                    StackState::Running | StackState::Stopped if keep_commit.is_some() => {
                        keep_state
                    }
                    _ => StackState::Built,
                };
                record.commit = Some(req.commit.clone());
                self.write_record(&record)?;
                log.line("build finished");
                self.status(id).await
            }
            Err(e) => {
                log.line(&format!("build failed: {e}"));
                record.state = StackState::Failed;
                record.error = Some(e.to_string());
                self.write_record(&record)?;
                Err(e)
            }
        }
    }

    async fn images_present(&self, id: &ValidName, commit: &str) -> Result<bool, StackError> {
        let src = self.src_dir(id);
        if self.checkout(id).commit().as_deref() != Some(commit) {
            return Ok(false);
        }
        let Ok(project) = compose::load(&src, &compose_project_name(id)) else {
            return Ok(false);
        };
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

    async fn build_inner(
        &self,
        id: &ValidName,
        req: &BuildRequest,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        log.line(&format!("fetching commit {}", req.commit));
        let (co, repo, commit) = (self.checkout(id), req.repo.clone(), req.commit.clone());
        tokio::task::spawn_blocking(move || co.fetch(&repo, &commit))
            .await
            .map_err(|e| failed("fetch", e.to_string()))?
            .map_err(|e| failed("fetch", e.to_string()))?;
        let frozen = self.freeze_writers(id, log).await?;
        let (co, commit) = (self.checkout(id), req.commit.clone());
        let project = match tokio::task::spawn_blocking(move || co.checkout(&commit)).await {
            Ok(Ok(())) => self.load_project(id),
            Ok(Err(e)) => Err(failed("checkout", e.to_string())),
            Err(e) => Err(failed("checkout", e.to_string())),
        };
        self.thaw(frozen).await;
        let project = project?;
        let owner = self.owner(id);
        // Everything is checked before the first build: images named by `image:`, the images
        // each Dockerfile builds on, and the tags the builds will take.
        for s in &project.services {
            let Some(build) = &s.build else {
                self.service_image(&owner, s).await?;
                continue;
            };
            self.check_build_bases(&owner, s, build).await?;
            let latest = format!("{}:latest", plan::image_name(&project.name, &s.name));
            for tag in [plan::image_tag(&project.name, &s.name, &req.commit), latest] {
                self.owned_image(&tag, &owner).await?;
            }
        }
        let mut built_tags = Vec::new();
        for s in &project.services {
            let Some(build) = &s.build else { continue };
            let tag = plan::image_tag(&project.name, &s.name, &req.commit);
            log.line(&format!("building service {} as {tag}", s.name));
            let mut ids = BuildIds::default();
            let result = self
                .build_service(id, s, build, &tag, &owner, log, &mut ids)
                .await;
            let image_id = match &result {
                Ok(()) => self
                    .docker
                    .inspect_image(&tag)
                    .await
                    .ok()
                    .and_then(|i| i.id),
                Err(_) => None,
            };
            self.remove_intermediates(&ids, image_id.as_deref()).await;
            result?;
            if image_id.is_none() {
                return Err(failed(
                    &format!("build of service {}", s.name),
                    format!(
                        "image {tag} missing after build; last log lines:\n{}",
                        log.tail(20)
                    ),
                ));
            }
            let latest = plan::image_name(&project.name, &s.name);
            built_tags.push(tag.clone());
            built_tags.push(format!("{latest}:latest"));
            self.docker
                .tag_image(
                    &tag,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&latest)
                            .tag("latest")
                            .build(),
                    ),
                )
                .await?;
        }
        self.remove_stale_images(id, &built_tags).await;
        Ok(())
    }

    /// Builds one service's image as `tag`, noting the image ids the build reports in `ids`.
    #[allow(clippy::too_many_arguments)]
    async fn build_service(
        &self,
        id: &ValidName,
        s: &Service,
        build: &compose::model::Build,
        tag: &str,
        owner: &Owner,
        log: &LogBuf,
        ids: &mut BuildIds,
    ) -> Result<(), StackError> {
        let step = format!("build of service {}", s.name);
        let context = build.context.clone();
        let dockerfile = build.dockerfile.clone();
        let target = build.target.clone();
        let labels: BTreeMap<String, String> = plan::image_labels(owner).into_iter().collect();
        let to_label = labels.clone();
        // The Dockerfile is read, amended and tarred with the context in one go while the
        // stack's writers are paused: the text checked below is the text Docker builds.
        let frozen = self.freeze_writers(id, log).await?;
        let read = tokio::task::spawn_blocking(move || {
            let text = crate::context::read_dockerfile(&context, &dockerfile)?;
            let labelled = images::with_labels(&text, target.as_deref(), &to_label);
            let tar = crate::context::tar_context(
                &context,
                &dockerfile,
                labelled.as_deref().unwrap_or(&text),
            )?;
            Ok::<_, crate::context::ContextError>((text, labelled.is_some(), tar))
        })
        .await;
        self.thaw(frozen).await;
        let (text, labelled, tar) = read
            .map_err(|e| failed("build context", e.to_string()))?
            .map_err(|e| failed(&step, e.to_string()))?;
        self.check_bases(owner, s, build, &text).await?;
        let build_labels: HashMap<String, String> = if labelled {
            HashMap::new()
        } else {
            labels.into_iter().collect()
        };
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let mut opts = BuildImageOptionsBuilder::default()
            .dockerfile(&build.dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(&build_labels);
        if let Some(target) = &build.target {
            opts = opts.target(target);
        }
        let long = dk::long(
            &self.docker,
            self.settings.build_timeout + Duration::from_secs(30),
        );
        let mut stream = long.build_image(opts.build(), None, Some(bollard::body_full(tar.into())));
        let run = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(text) = info.stream.as_deref() {
                            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                                ids.observe(line);
                                log.line(line);
                            }
                        }
                        if let Some(status) = info.status.as_deref() {
                            log.line(status);
                        }
                    }
                    Err(e) if e.to_string().contains("bytes remaining on stream") => break,
                    // A failing step arrives as an error (bollard turns `errorDetail` into one);
                    // the answer carries the build's last lines like any other failure.
                    Err(e) => {
                        let tail = log.tail(20);
                        let message = dk::message(&e);
                        log.line(&message);
                        return Err(failed(&step, format!("{message}; last log lines:\n{tail}")));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.settings.build_timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StackError::Timeout(format!(
                "build of service {} timed out after {}",
                s.name,
                humantime::format_duration(self.settings.build_timeout)
            ))),
        }
    }

    /// Removes the images a build made that its final image does not build on: stage images of
    /// multi-stage builds, and everything a failed build made. Docker refuses to remove an image
    /// with children or in use (the cached steps of this stack's other images, a build running
    /// meanwhile), and those refusals are fine: the image is still needed.
    async fn remove_intermediates(&self, ids: &BuildIds, image_id: Option<&str>) {
        let ancestors: Vec<String> = match image_id {
            Some(image) => self
                .docker
                .image_history(image)
                .await
                .map(|h| h.into_iter().map(|i| i.id).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for short in ids.intermediates() {
            let is_ancestor = ancestors
                .iter()
                .any(|a| a.trim_start_matches("sha256:").starts_with(short));
            if is_ancestor {
                continue;
            }
            // Never an image someone tagged (a base named by id, another stack's image).
            match self.docker.inspect_image(short).await {
                Ok(i)
                    if i.repo_tags.as_ref().is_none_or(Vec::is_empty)
                        && i.repo_digests.as_ref().is_none_or(Vec::is_empty) => {}
                _ => continue,
            }
            if let Err(e) = self
                .docker
                .remove_image(short, None::<RemoveImageOptions>, None)
                .await
            {
                tracing::debug!(image = short, cause = %e, "intermediate image stays");
            }
        }
    }

    /// Refuses a Dockerfile that builds on another berth instance's image (`FROM`,
    /// `COPY --from=`); see [`images::image_refs`] for what is read.
    async fn check_build_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
    ) -> Result<(), StackError> {
        // A missing or unreadable Dockerfile fails the build itself, with a message saying why.
        let Ok(text) = crate::context::read_dockerfile(&build.context, &build.dockerfile) else {
            return Ok(());
        };
        self.check_bases(owner, s, build, &text).await
    }

    /// Refuses a Dockerfile `text` that builds on another berth instance's image.
    async fn check_bases(
        &self,
        owner: &Owner,
        s: &Service,
        build: &compose::model::Build,
        text: &str,
    ) -> Result<(), StackError> {
        for image in images::image_refs(text, &build.args) {
            let Ok(inspect) = self.docker.inspect_image(&image).await else {
                continue;
            };
            if let Some(holder) = foreign_berth_image(owner, &inspect) {
                return Err(rejected(
                    &s.name,
                    format!("services.{}.build", s.name),
                    format!(
                        "{} builds on image {image}, which {holder}: a build may only use its own images and images that are not berth's",
                        build.dockerfile
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Removes this instance's images of earlier commits. Images still used by a container stay
    /// (Docker refuses) and go with the stack's delete, which finds them by label.
    async fn remove_stale_images(&self, id: &ValidName, keep: &[String]) {
        let filters = label_filter(&[
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ]);
        let Ok(images) = self.images_matching(&filters).await else {
            return;
        };
        for image in images {
            if image.repo_tags.iter().any(|t| keep.contains(t)) {
                continue;
            }
            for tag in image.repo_tags.iter().filter(|t| !t.ends_with(":<none>")) {
                let _ = self
                    .docker
                    .remove_image(tag, None::<RemoveImageOptions>, None)
                    .await;
            }
        }
    }
}
