//! Releases and rollback. A release is an upload in the instance's code store (a commit on
//! `main`); the record says which one is built, which one runs and whose images the worker
//! keeps. A rollback chooses the release and rolls to it as a deploy does (`deploy.rs`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_worker_api::ValidName;
use serde::Serialize;
use utoipa::ToSchema;

use super::deploy::check_commit;
use super::{Master, OpError, blocking, name};
use crate::record::{InstanceRecord, State};

/// Most releases listed (newest first).
pub const MAX_RELEASES: usize = 100;

/// One release of an instance, as `GET /v1/instances/{id}/releases` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Release {
    /// 40-hex commit id.
    pub commit: String,
    /// Commit time of the upload (RFC 3339).
    pub uploaded_at: String,
    /// When this commit was built, if the worker keeps its images.
    pub built_at: Option<String>,
    /// Whether the worker keeps this release's images (its last `--keep-releases` builds): a
    /// rollback to it builds nothing.
    pub images_kept: bool,
    /// Whether this release is the one running.
    pub current: bool,
    /// Commit message.
    pub message: String,
}

fn rfc3339(secs: i64) -> String {
    let at = u64::try_from(secs)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The commit the instance runs: `running_commit`, or for a record written before that field
/// existed, the built commit (the only one a start runs).
fn running(rec: &InstanceRecord) -> Option<&str> {
    rec.state
        .is_up()
        .then(|| {
            rec.running_commit
                .as_deref()
                .or(rec.built_commit.as_deref())
        })
        .flatten()
}

/// The releases of `rec` from its code store history, newest first.
fn releases_of(rec: &InstanceRecord, uploads: Vec<crate::codestore::Upload>) -> Vec<Release> {
    uploads
        .into_iter()
        .map(|u| {
            let built = rec.built_commit.as_deref() == Some(u.commit.as_str());
            let images_kept = built || rec.kept_commits.contains(&u.commit);
            let built_at = match rec.built_times.get(&u.commit) {
                Some(at) if images_kept => Some(at.clone()),
                _ => built.then(|| rec.built_at.clone()).flatten(),
            };
            Release {
                uploaded_at: rfc3339(u.time),
                built_at,
                images_kept,
                current: running(rec) == Some(u.commit.as_str()),
                commit: u.commit,
                message: u.message,
            }
        })
        .collect()
}

impl Master {
    /// The instance's releases, newest first, with what is built and what runs.
    pub async fn releases(&self, id: &ValidName) -> Result<Vec<Release>, OpError> {
        let rec = self.get_or_404(id).await?;
        self.releases_for(&rec).await
    }

    async fn releases_for(&self, rec: &InstanceRecord) -> Result<Vec<Release>, OpError> {
        let (store, user, id) = (
            self.codestore.clone(),
            name("user", &rec.user)?,
            name("id", &rec.id)?,
        );
        let uploads = blocking(move || store.history(&user, &id, MAX_RELEASES)).await??;
        Ok(releases_of(rec, uploads))
    }

    /// Rolls the instance back to `commit` (default: the release before the running one, or
    /// before the built one when nothing runs) through the same rollout as a deploy: a running
    /// instance keeps serving throughout, and a release whose images are kept builds nothing.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn rollback(
        self: &Arc<Self>,
        id: ValidName,
        commit: Option<String>,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let commit = commit.as_deref().map(check_commit).transpose()?;
        let rec = self.get_or_404(&id).await?;
        let releases = self.releases_for(&rec).await?;
        let target = match commit {
            Some(c) => {
                if !releases.iter().any(|r| r.commit == c) {
                    return Err(OpError::UnknownCommit(format!(
                        "commit {c} is not a release of instance {id}"
                    )));
                }
                c
            }
            None => {
                let from = match rec.state {
                    State::Running | State::Degraded => running(&rec),
                    _ => rec.built_commit.as_deref(),
                }
                .map(str::to_owned)
                .ok_or_else(|| {
                    OpError::Conflict(format!(
                        "instance {id} has no running or built release to roll back from"
                    ))
                })?;
                let at = releases.iter().position(|r| r.commit == from);
                match at.and_then(|i| releases.get(i + 1)) {
                    Some(earlier) => earlier.commit.clone(),
                    None => {
                        return Err(OpError::Conflict(format!(
                            "instance {id} has no release before {from}"
                        )));
                    }
                }
            }
        };
        self.roll(id, target, wait, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_running_record_without_running_commit_runs_its_built_commit() {
        let mut rec = InstanceRecord::new("a", "u", "p", "r".into());
        rec.built_commit = Some("b".repeat(40));
        let uploads = ["b", "a"].map(|c| crate::codestore::Upload {
            commit: c.repeat(40),
            time: 60,
            message: "m".into(),
        });
        assert!(
            releases_of(&rec, uploads.to_vec())
                .iter()
                .all(|r| !r.current)
        );
        rec.state = State::Running;
        let list = releases_of(&rec, uploads.to_vec());
        assert_eq!((list[0].current, list[0].images_kept), (true, true));
        assert_eq!((list[1].current, list[1].images_kept), (false, false));
        assert_eq!(list[0].uploaded_at, "1970-01-01T00:01:00Z");
        rec.running_commit = Some("a".repeat(40));
        assert!(releases_of(&rec, uploads.to_vec())[1].current);
    }

    #[test]
    fn every_release_whose_images_are_kept_says_when_it_was_built() {
        let mut rec = InstanceRecord::new("a", "u", "p", "r".into());
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        rec.note_built(&a, true);
        let built_a = rec.built_at.clone();
        rec.kept_commits = vec![a.clone()];
        rec.note_built(&b, true);
        rec.kept_commits = vec![b.clone(), a.clone()];
        rec.prune_built_times();
        let uploads = [&c, &b, &a].map(|commit| crate::codestore::Upload {
            commit: commit.clone(),
            time: 60,
            message: "m".into(),
        });
        let list = releases_of(&rec, uploads.to_vec());
        assert_eq!(list[0].built_at, None, "c was never built");
        assert!(list[1].built_at.is_some() && list[1].images_kept);
        assert_eq!(list[2].built_at, built_a, "a keeps the time it was built");
        // A rollout back to a kept release keeps its build time; pruned releases lose theirs.
        rec.note_built(&a, false);
        assert_eq!(rec.built_at, built_a);
        rec.kept_commits = vec![a.clone()];
        rec.prune_built_times();
        let list = releases_of(&rec, uploads.to_vec());
        assert_eq!(
            (list[1].built_at.as_deref(), list[1].images_kept),
            (None, false)
        );
    }
}
