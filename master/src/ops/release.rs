//! Releases and rollback. A release is an upload in the instance's code store (a commit on
//! `main`); the record says which one is built and which one runs. This slice rolls back by
//! composing the existing operations (stop, build, start), each under the instance lock in turn:
//! the stack is down between the stop and the start (no zero-downtime rollout yet).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_worker_api::ValidName;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Master, OpError, blocking, name};
use crate::record::{InstanceRecord, State};
use crate::webhook::Event;

/// Most releases listed (newest first).
pub const MAX_RELEASES: usize = 100;

/// How long a rollback waits for its build when `wait` is not given.
pub const DEFAULT_ROLLBACK_WAIT: Duration = Duration::from_secs(600);

/// One release of an instance, as `GET /v1/instances/{id}/releases` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Release {
    /// 40-hex commit id.
    pub commit: String,
    /// Commit time of the upload (RFC 3339).
    pub uploaded_at: String,
    /// When this commit was built, if it is the one whose images the worker holds.
    pub built_at: Option<String>,
    /// Whether the worker holds this release's images (only the built commit's, in this slice);
    /// a rollback to any other release builds it again.
    pub images_kept: bool,
    /// Whether this release is the one running.
    pub current: bool,
    /// Commit message.
    pub message: String,
}

/// A commit id as a rollback body gives it: 40 hex digits.
fn is_full_hex(commit: &str) -> bool {
    commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())
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
            Release {
                uploaded_at: rfc3339(u.time),
                built_at: built.then(|| rec.built_at.clone()).flatten(),
                images_kept: built,
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
    /// before the built one when nothing runs): stops it if it runs, builds the commit unless it
    /// is the built one (waiting at most `wait`, default [`DEFAULT_ROLLBACK_WAIT`]), and starts
    /// it again if it was running. Answers the final record.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn rollback(
        self: &Arc<Self>,
        id: ValidName,
        commit: Option<String>,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        if let Some(c) = &commit
            && !is_full_hex(c)
        {
            return Err(OpError::Invalid {
                field: "commit",
                message: format!(
                    "invalid commit {:?}: a full commit id is 40 hex digits",
                    c.chars().take(80).collect::<String>()
                ),
            });
        }
        let rec = self.get_or_404(&id).await?;
        let releases = self.releases_for(&rec).await?;
        let target = match commit {
            Some(c) => {
                let c = c.to_ascii_lowercase();
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
        let previous = rec.state;
        let was_running = previous.is_up();
        let is_built = rec.built_commit.as_deref() == Some(target.as_str());
        if running(&rec) == Some(target.as_str()) || (!was_running && is_built) {
            return Ok(rec);
        }
        if was_running {
            self.stop(id.clone()).await?;
        }
        let mut done = if is_built {
            self.get_or_404(&id).await?
        } else {
            let wait = wait.unwrap_or(DEFAULT_ROLLBACK_WAIT);
            self.build(id.clone(), Some(target.clone()), Some(wait))
                .await?
        };
        if was_running {
            done = self.start(id.clone()).await?;
        }
        tracing::info!(%id, commit = %target, restarted = was_running, "rolled back");
        if let Some(hook) = &self.webhook {
            hook.notify(&Event {
                event: "rolled_back",
                id: done.id.clone(),
                previous_state: Some(previous.as_str().to_owned()),
                state: Some(done.state.as_str().to_owned()),
                record: Some(done.clone()),
                at: done.updated_at.clone(),
            });
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_and_times() {
        assert!(is_full_hex(&"a".repeat(40)));
        assert!(!is_full_hex(&"a".repeat(39)));
        assert!(!is_full_hex(&"g".repeat(40)));
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
}
