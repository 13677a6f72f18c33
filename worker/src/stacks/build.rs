//! The build pipeline: fetch and check out the commit (writers paused), load and judge the
//! compose file, refuse other instances' images before anything is built, build each service's
//! image with berth's labels, tag it `:latest`, and remove what the build no longer needs
//! (intermediate images, this instance's images of earlier commits). Making one image is in
//! `build/image.rs`, the check of the images a Dockerfile builds on in `build/bases.rs`.

mod bases;
mod image;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use berth_worker_api::ids::compose_project_name;
use berth_worker_api::{BuildRequest, StackState, StackStatus, ValidName};
use bollard::query_parameters::RemoveImageOptions;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::ownership::image_labels;
use super::record::{Record, Unfinished};
use super::{StackError, Stacks, failed};
use crate::compose::plan::{self, Owner};
use crate::compose::{self, Project, Service};
use crate::docker::{self as dk, label_filter};
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
