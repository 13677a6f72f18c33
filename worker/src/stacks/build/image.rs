//! Making one service's image: the last build's image kept when its digest is the same, else a
//! build with BuildKit or the classic builder under berth's labels, tagged for the commit and
//! `:latest`, the intermediate images removed, and an image built on another instance's image
//! refused (see [`crate::ancestry`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_worker_api::ErrorCode;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, RemoveImageOptions, TagImageOptionsBuilder,
};
use futures::StreamExt;

use super::{Job, LABEL_BUILD_DIGEST};
use crate::ancestry;
use crate::compose;
use crate::compose::plan::{self, Owner};
use crate::docker as dk;
use crate::images::{self, BuildIds};
use crate::logbuf::LogBuf;
use crate::stacks::buildkit::{self, BuildKitError, BuilderChoice};
use crate::stacks::faults::fault;
use crate::stacks::ownership::image_labels;
use crate::stacks::{StackError, Stacks, failed, rejected};

impl Stacks {
    /// Which builder the next build uses: BuildKit (through the engine's socket) unless the
    /// worker is told to use the classic one or BuildKit failed to run here before.
    pub(super) fn buildkit_socket(&self) -> Option<PathBuf> {
        match self.settings.builder {
            BuilderChoice::Classic => None,
            BuilderChoice::Auto if self.buildkit_off.load(Ordering::SeqCst) => None,
            _ => buildkit::engine_socket(),
        }
    }

    /// Makes `job`'s image: the image of the service's last build when its digest is the same
    /// (tagged for this commit too, nothing built), else a build; either way the image ends
    /// tagged for the commit and `:latest`.
    pub(super) async fn build_job(
        &self,
        project: &compose::Project,
        job: &Job<'_>,
        owner: &Owner,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let s = job.service;
        let repo = plan::image_name(&project.name, &s.name);
        let latest = format!("{repo}:latest");
        let (_, commit_tag) = job.tag.rsplit_once(':').unwrap_or((&repo, "latest"));
        if let Ok(image) = self.docker.inspect_image(&latest).await
            && owner.check(image_labels(&image)).is_ok()
            && image_labels(&image).and_then(|l| l.get(LABEL_BUILD_DIGEST)) == Some(&job.digest)
        {
            self.docker
                .tag_image(
                    &latest,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&repo)
                            .tag(commit_tag)
                            .build(),
                    ),
                )
                .await?;
            let short: String = image
                .id
                .unwrap_or_default()
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect();
            log.line(&format!(
                "service {}: unchanged, image {short} kept as {} (nothing built)",
                s.name, job.tag
            ));
            return Ok(());
        }
        let started = Instant::now();
        log.line(&format!("building service {} as {}", s.name, job.tag));
        let mut ids = BuildIds::default();
        let result = self.build_service(job, owner, log, &mut ids).await;
        let image_id = match &result {
            Ok(_) => self
                .docker
                .inspect_image(&job.tag)
                .await
                .ok()
                .and_then(|i| i.id),
            Err(_) => None,
        };
        self.remove_intermediates(&ids, image_id.as_deref()).await;
        let how = result?;
        if image_id.is_none() {
            return Err(fault(
                ErrorCode::BuildFailed,
                &s.name,
                format!(
                    "build of service {}: image {} missing after build",
                    s.name, job.tag
                ),
                &log.tail(20),
            ));
        }
        self.check_ancestry(job, owner).await?;
        self.docker
            .tag_image(
                &job.tag,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(&repo)
                        .tag("latest")
                        .build(),
                ),
            )
            .await?;
        log.line(&format!(
            "service {}: built as {} in {:.2} s ({how})",
            s.name,
            job.tag,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Refuses the image just built as `job.tag`, and removes it, when it builds on another
    /// berth instance's image (see [`crate::ancestry`]); an engine error refuses it too.
    async fn check_ancestry(&self, job: &Job<'_>, owner: &Owner) -> Result<(), StackError> {
        let s = job.service;
        let found = match ancestry::foreign_ancestor(&self.docker, owner, &job.tag).await {
            Ok(None) => return Ok(()),
            Ok(Some(found)) => Ok(found),
            Err(e) => Err(e),
        };
        if let Err(e) = self
            .docker
            .remove_image(&job.tag, None::<RemoveImageOptions>, None)
            .await
        {
            tracing::warn!(image = %job.tag, cause = %e, "refused image stays");
        }
        let found = found?;
        Err(rejected(
            &s.name,
            format!("services.{}.build", s.name),
            format!(
                "{}: the built image builds on image {}, which {}: a build may only use its own images and images that are not berth's (the image was removed)",
                job.build.dockerfile, found.image, found.holder
            ),
        ))
    }

    /// Builds one service's image as `job.tag` with BuildKit or the classic builder, noting the
    /// image ids the classic builder reports in `ids`; answers which builder ran.
    async fn build_service(
        &self,
        job: &Job<'_>,
        owner: &Owner,
        log: &LogBuf,
        ids: &mut BuildIds,
    ) -> Result<&'static str, StackError> {
        let s = job.service;
        let build = job.build;
        let step = format!("build of service {}", s.name);
        let prefix = format!("[{}] ", s.name);
        let mut labels: BTreeMap<String, String> = plan::image_labels(owner).into_iter().collect();
        labels.insert(LABEL_BUILD_DIGEST.to_owned(), job.digest.clone());
        let run = async {
            if let Some(socket) = self.buildkit_socket() {
                let tar =
                    crate::context::finish_context(job.files.clone(), &build.dockerfile, &job.text)
                        .map_err(|e| failed(&step, e.to_string()))?;
                let request = buildkit::BuildKitRequest {
                    dockerfile: &build.dockerfile,
                    tag: &job.tag,
                    target: build.target.as_deref(),
                    args: &build.args,
                    labels: &labels,
                };
                let version = self.docker.client_version().to_string();
                match buildkit::build(&socket, &version, &request, tar, log, &prefix).await {
                    Ok(_) => return Ok("BuildKit"),
                    Err(BuildKitError::Failed(message)) => {
                        return Err(fault(
                            ErrorCode::BuildFailed,
                            &s.name,
                            format!("{step} failed: {message}"),
                            &log.tail(20),
                        ));
                    }
                    Err(BuildKitError::Unsupported(why))
                        if self.settings.builder == BuilderChoice::Auto =>
                    {
                        log.line(&format!(
                            "BuildKit is not available ({why}); using the classic builder"
                        ));
                        self.buildkit_off.store(true, Ordering::SeqCst);
                    }
                    Err(BuildKitError::Unsupported(why)) => {
                        return Err(failed(&step, format!("BuildKit is not available: {why}")));
                    }
                }
            }
            self.build_classic(job, &labels, log, &prefix, ids)
                .await
                .map(|()| "classic builder")
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

    /// The classic builder: berth's labels go in as one `LABEL` instruction at the end of the
    /// built stage (see [`images::with_labels`]), else as the `labels` option.
    async fn build_classic(
        &self,
        job: &Job<'_>,
        labels: &BTreeMap<String, String>,
        log: &LogBuf,
        prefix: &str,
        ids: &mut BuildIds,
    ) -> Result<(), StackError> {
        let build = job.build;
        let step = format!("build of service {}", job.service.name);
        let labelled = images::with_labels(&job.text, build.target.as_deref(), labels);
        let tar = crate::context::finish_context(
            job.files.clone(),
            &build.dockerfile,
            labelled.as_deref().unwrap_or(&job.text),
        )
        .map_err(|e| failed(&step, e.to_string()))?;
        let build_labels: HashMap<String, String> = if labelled.is_some() {
            HashMap::new()
        } else {
            labels.clone().into_iter().collect()
        };
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let mut opts = BuildImageOptionsBuilder::default()
            .dockerfile(&build.dockerfile)
            .t(&job.tag)
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
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref() {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            ids.observe(line);
                            log.line(&format!("{prefix}{line}"));
                        }
                    }
                    if let Some(status) = info.status.as_deref() {
                        log.line(&format!("{prefix}{status}"));
                    }
                }
                Err(e) if e.to_string().contains("bytes remaining on stream") => break,
                // A failing step arrives as an error (bollard turns `errorDetail` into one);
                // the answer carries the build's last lines like any other failure.
                Err(e) => {
                    let tail = log.tail(20);
                    let message = dk::message(&e);
                    log.line(&format!("{prefix}{message}"));
                    return Err(fault(
                        ErrorCode::BuildFailed,
                        &job.service.name,
                        format!("{step} failed: {message}"),
                        &tail,
                    ));
                }
            }
        }
        Ok(())
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
}
