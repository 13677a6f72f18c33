//! The build pipeline: fetch and check out the commit (writers paused), load and judge the
//! compose file, refuse other instances' images before anything is built, build each service's
//! image with berth's labels, tag it `:latest`, and remove what the build no longer needs
//! (intermediate images, this instance's images of earlier commits).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_worker_api::ids::compose_project_name;
use berth_worker_api::{BuildRequest, StackState, StackStatus, ValidName};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, RemoveImageOptions, TagImageOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use berth_worker_api::ErrorCode;

use super::buildkit::{self, BuildKitError, BuilderChoice};
use super::faults::fault;
use super::ownership::{foreign_berth_image, image_labels};
use super::record::{Record, Unfinished};
use super::{StackError, Stacks, failed, rejected};
use crate::compose::plan::{self, Owner};
use crate::compose::{self, Project, Service};
use crate::docker::{self as dk, label_filter};
use crate::dockerfile;
use crate::images::{self, BuildIds};
use crate::logbuf::LogBuf;
use crate::source;

/// Image label holding the digest of everything a service's image is built from (see
/// [`build_digest`]): a later build with the same digest keeps the image instead of building.
pub const LABEL_BUILD_DIGEST: &str = "org.berth.build-digest";

/// One service's build, read while the stack's writers were paused: its Dockerfile text, the
/// tarred context without the Dockerfile, the image tag, and the build digest.
struct Job<'a> {
    service: &'a Service,
    build: &'a compose::model::Build,
    text: String,
    files: Vec<u8>,
    tag: String,
    digest: String,
}

/// The digest of everything a build reads: the context's files (a deterministic tar), the
/// Dockerfile's path and text, build args, target, the ids of the images it builds on, and the
/// owner labels the image gets. The same digest builds the same image.
fn build_digest(
    build: &compose::model::Build,
    text: &str,
    files: &[u8],
    bases: &[String],
    owner: &Owner,
) -> String {
    let mut h = Sha256::new();
    let mut part = |name: &str, bytes: &[u8]| {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("files", files);
    part("dockerfile", build.dockerfile.as_bytes());
    part("text", text.as_bytes());
    for (k, v) in &build.args {
        part("arg", format!("{k}={v}").as_bytes());
    }
    part(
        "target",
        build.target.as_deref().unwrap_or_default().as_bytes(),
    );
    for base in bases {
        part("base", base.as_bytes());
    }
    part("instance", owner.instance.as_bytes());
    part("node", owner.node.as_bytes());
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Puts `commit` first among the kept releases, at most `keep` of them.
pub(super) fn keep_release(releases: &mut Vec<String>, commit: &str, keep: usize) {
    releases.retain(|c| c != commit);
    releases.insert(0, commit.to_owned());
    releases.truncate(keep.max(1));
}

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
            releases: Vec::new(),
            running: None,
            rollout: None,
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
                keep_release(
                    &mut record.releases,
                    &req.commit,
                    self.settings.keep_releases,
                );
                self.write_record(&record)?;
                self.prune_releases(id, &record.releases, &log).await;
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

    /// Fetches `commit` from `repo` and checks it out (writers paused meanwhile), answering the
    /// project it holds.
    pub(super) async fn fetch_and_check_out(
        &self,
        id: &ValidName,
        repo: &berth_worker_api::RepoSource,
        commit: &str,
        log: &LogBuf,
    ) -> Result<Project, StackError> {
        let (co, repo, c) = (self.checkout(id), repo.clone(), commit.to_owned());
        tokio::task::spawn_blocking(move || co.fetch(&repo, &c))
            .await
            .map_err(|e| failed("fetch", e.to_string()))?
            .map_err(|e| failed("fetch", e.to_string()))?;
        let frozen = self.freeze_writers(id, log).await?;
        let (co, c) = (self.checkout(id), commit.to_owned());
        let project = match tokio::task::spawn_blocking(move || co.checkout(&c)).await {
            Ok(Ok(())) => self.load_project(id),
            Ok(Err(e)) => Err(failed("checkout", e.to_string())),
            Err(e) => Err(failed("checkout", e.to_string())),
        };
        self.thaw(frozen).await;
        project
    }

    pub(super) async fn build_inner(
        &self,
        id: &ValidName,
        req: &BuildRequest,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        log.line(&format!("fetching commit {}", req.commit));
        let project = self
            .fetch_and_check_out(id, &req.repo, &req.commit, log)
            .await?;
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
        // Every context is read and tarred in one go while the stack's writers are paused: the
        // Dockerfile text checked below is the text Docker builds.
        let wanted: Vec<(&Service, &compose::model::Build)> = project
            .services
            .iter()
            .filter_map(|s| s.build.as_ref().map(|b| (s, b)))
            .collect();
        let paths: Vec<(PathBuf, String)> = wanted
            .iter()
            .map(|(_, b)| (b.context.clone(), b.dockerfile.clone()))
            .collect();
        let frozen = self.freeze_writers(id, log).await?;
        let read = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|(context, dockerfile)| {
                    let text = crate::context::read_dockerfile(&context, &dockerfile)?;
                    let files = crate::context::tar_context_files(&context, &dockerfile)?;
                    Ok::<_, crate::context::ContextError>((text, files))
                })
                .collect::<Vec<_>>()
        })
        .await;
        self.thaw(frozen).await;
        let read = read.map_err(|e| failed("build context", e.to_string()))?;
        let mut jobs = Vec::new();
        for ((s, build), read) in wanted.into_iter().zip(read) {
            let (text, files) =
                read.map_err(|e| failed(&format!("build of service {}", s.name), e.to_string()))?;
            let bases = self.check_bases(&owner, s, build, &text).await?;
            let digest = build_digest(build, &text, &files, &bases, &owner);
            jobs.push(Job {
                service: s,
                build,
                text,
                files,
                tag: plan::image_tag(&project.name, &s.name, &req.commit),
                digest,
            });
        }
        // Independent images build side by side, at most `build_parallelism` at once; after a
        // failure no new build begins, and those running finish (and clean up after
        // themselves) before the build answers.
        let parallel = self.settings.build_parallelism.max(1);
        if jobs.len() > 1 {
            log.line(&format!(
                "building {} services, up to {parallel} at a time",
                jobs.len()
            ));
        }
        let stop = AtomicBool::new(false);
        // The futures are made first (no closure in the stream keeps the future `Send`).
        let runs: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| self.job_unless_stopped(i, &project, job, &owner, log, &stop))
            .collect();
        let results: Vec<(usize, Result<(), StackError>)> = futures::stream::iter(runs)
            .buffer_unordered(parallel)
            .collect()
            .await;
        let mut results = results;
        results.sort_by_key(|(i, _)| *i);
        if let Some((_, Err(_))) = results.iter().find(|(_, r)| r.is_err()) {
            let (_, first) = results
                .into_iter()
                .find(|(_, r)| r.is_err())
                .expect("an error");
            return first;
        }
        // A `service_healthy` dependency on a service with no healthcheck in the file or its
        // image is refused by the build already, not first at start.
        self.prepare_images(id, &project, &req.commit).await?;
        Ok(())
    }

    /// [`Self::build_job`] unless `stop` says that another service's build failed.
    #[allow(clippy::too_many_arguments)]
    async fn job_unless_stopped(
        &self,
        i: usize,
        project: &compose::Project,
        job: &Job<'_>,
        owner: &Owner,
        log: &LogBuf,
        stop: &AtomicBool,
    ) -> (usize, Result<(), StackError>) {
        if stop.load(Ordering::SeqCst) {
            log.line(&format!(
                "service {}: not built (another service failed)",
                job.service.name
            ));
            return (i, Ok(()));
        }
        let result = self.build_job(project, job, owner, log).await;
        if let Err(e) = &result {
            stop.store(true, Ordering::SeqCst);
            log.line(&format!("service {}: build failed: {e}", job.service.name));
        }
        (i, result)
    }

    /// Which builder the next build uses: BuildKit (through the engine's socket) unless the
    /// worker is told to use the classic one or BuildKit failed to run here before.
    fn buildkit_socket(&self) -> Option<PathBuf> {
        match self.settings.builder {
            BuilderChoice::Classic => None,
            BuilderChoice::Auto if self.buildkit_off.load(Ordering::SeqCst) => None,
            _ => buildkit::engine_socket(),
        }
    }

    /// Makes `job`'s image: the image of the service's last build when its digest is the same
    /// (tagged for this commit too, nothing built), else a build; either way the image ends
    /// tagged for the commit and `:latest`.
    async fn build_job(
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

    /// Refuses a Dockerfile that builds on another berth instance's image (`FROM`,
    /// `COPY --from=`, `RUN --mount=...,from=`); see [`crate::dockerfile`] for how it is read.
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
        self.check_bases(owner, s, build, &text).await.map(drop)
    }

    /// Refuses a Dockerfile `text` that builds on another berth instance's image, or that cannot
    /// be read unambiguously; answers the images it builds on as `reference=id` (`reference=`
    /// when there is no such image yet).
    async fn check_bases(
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

    /// Removes this instance's image tags of commits beyond `kept` (its last `--keep-releases`
    /// releases) and `:latest`; an image goes once its last tag does. Only images labelled as
    /// this stack's are looked at. Images still used by a container stay (Docker refuses) and go
    /// with a later build or the stack's delete, which finds them by label.
    async fn prune_releases(&self, id: &ValidName, kept: &[String], log: &LogBuf) {
        let filters = label_filter(&[
            (plan::LABEL_BERTH_INSTANCE, id.as_str()),
            (plan::LABEL_BERTH_NODE, &self.settings.node),
        ]);
        let Ok(images) = self.images_matching(&filters).await else {
            return;
        };
        let keep = |tag: &str| {
            tag.rsplit_once(':').is_some_and(|(_, t)| {
                t == "latest" || kept.iter().any(|c| c.starts_with(t) && t.len() == 12)
            })
        };
        for image in images {
            for tag in image
                .repo_tags
                .iter()
                .filter(|t| !t.ends_with(":<none>") && !keep(t))
            {
                if self
                    .docker
                    .remove_image(tag, None::<RemoveImageOptions>, None)
                    .await
                    .is_ok()
                {
                    log.line(&format!("pruned image {tag} (beyond the kept releases)"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::{build_digest, keep_release};
    use crate::compose::model::Build;
    use crate::compose::plan::Owner;

    #[test]
    fn the_last_releases_are_kept_newest_first() {
        let mut kept = Vec::new();
        for c in ["a", "b", "c", "b", "d"] {
            keep_release(&mut kept, c, 3);
        }
        assert_eq!(kept, ["d", "b", "c"]);
        keep_release(&mut kept, "e", 0);
        assert_eq!(kept, ["e"]);
    }

    #[test]
    fn the_build_digest_follows_every_input() {
        let build = Build {
            context: PathBuf::from("/src/app"),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            target: None,
        };
        let owner = Owner {
            instance: "shop".into(),
            node: "n1".into(),
        };
        let bases = vec!["berth-base:latest=sha256:aa".to_owned()];
        let digest = |b: &Build, text: &str, files: &[u8], bases: &[String], o: &Owner| {
            build_digest(b, text, files, bases, o)
        };
        let first = digest(&build, "FROM x\n", b"files", &bases, &owner);
        assert_eq!(first, digest(&build, "FROM x\n", b"files", &bases, &owner));
        assert!(first.starts_with("sha256:") && first.len() == 71, "{first}");
        let mut other_args = build.clone();
        other_args.args.insert("A".into(), "2".into());
        let mut other_target = build.clone();
        other_target.target = Some("t".into());
        let other_owner = Owner {
            instance: "shop2".into(),
            node: "n1".into(),
        };
        for changed in [
            digest(&build, "FROM y\n", b"files", &bases, &owner),
            digest(&build, "FROM x\n", b"files2", &bases, &owner),
            digest(
                &build,
                "FROM x\n",
                b"files",
                &["berth-base:latest=sha256:bb".to_owned()],
                &owner,
            ),
            digest(&other_args, "FROM x\n", b"files", &bases, &owner),
            digest(&other_target, "FROM x\n", b"files", &bases, &owner),
            digest(&build, "FROM x\n", b"files", &bases, &other_owner),
        ] {
            assert_ne!(first, changed);
        }
    }
}
