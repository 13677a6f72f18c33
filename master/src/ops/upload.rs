//! Upload: validate the tar.gz, commit it to the code store (and the forge), record it, and
//! hand a new commit to a build.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_worker_api::ValidName;

use super::{Master, OpError, UploadBody, blocking};
use crate::codestore::{Code, CodeStoreError};
use crate::record::{InstanceRecord, Op, State};
use crate::records::InstanceLock;
use crate::upload::read_upload;

impl Master {
    /// Validates and commits an upload, then (with `build`) starts a build of a new commit.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn upload(
        self: &Arc<Self>,
        id: ValidName,
        user: ValidName,
        project: ValidName,
        body: UploadBody,
        build: bool,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let started = Instant::now();
        let limits = self.settings.limits;
        let UploadBody { bytes: body, slot } = body;
        let size = body.len() as u64;
        let tree = match blocking(move || read_upload(&body, &limits)).await {
            Ok(Ok(tree)) => tree,
            Ok(Err(err)) => {
                let result = Err(OpError::from(err));
                self.finish(Op::Upload, started, &result);
                return result;
            }
            Err(err) => return Err(err),
        };
        self.upload_code(
            id,
            user,
            project,
            Code::Tree(tree),
            size,
            slot,
            started,
            build,
            wait,
        )
        .await
    }

    /// [`Master::upload`] once the code is read and checked: a tree, or a pushed commit.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_code(
        self: &Arc<Self>,
        id: ValidName,
        user: ValidName,
        project: ValidName,
        code: Code,
        size: u64,
        slot: tokio::sync::OwnedSemaphorePermit,
        started: Instant,
        build: bool,
        wait: Option<Duration>,
    ) -> Result<InstanceRecord, OpError> {
        let lock = self.lock(&id).await?;
        let result = self.upload_locked(&lock, &id, &user, &project, code).await;
        // Committed (or refused): the tree is no longer held, the next upload may be read.
        drop(slot);
        self.finish(Op::Upload, started, &result);
        let (rec, changed) = match result {
            Ok(ok) => ok,
            Err(err) => {
                lock.release().await;
                return Err(err);
            }
        };
        self.metrics.uploaded(size);
        // New code is built; so is code a previous upload stored without getting it built (no
        // healthy worker then, or its build failed), so retrying that upload does the build.
        let unbuilt = rec.state == State::Uploaded
            || (matches!(rec.state, State::Failed | State::Running | State::Degraded)
                && rec.error.as_ref().is_some_and(|e| e.step == "build"));
        match (build, changed || unbuilt, rec.commit.clone()) {
            (true, true, Some(commit)) => {
                let state = rec.state;
                self.start_build(lock, rec, commit.clone(), wait, Instant::now())
                    .await
                    .map_err(|err| match err {
                        OpError::NoWorker(m) => OpError::NoWorker(format!(
                            "{m}; the code was stored as commit {commit} (instance {id} is {state}): \
                             retry the upload, or POST /v1/instances/{id}/build, once a worker is \
                             healthy"
                        )),
                        other => other,
                    })
            }
            _ => {
                lock.release().await;
                Ok(rec)
            }
        }
    }

    async fn upload_locked(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        user: &ValidName,
        project: &ValidName,
        code: Code,
    ) -> Result<(InstanceRecord, bool), OpError> {
        let mut existing = self.records.get(id).await?;
        if let Some(rec) = &existing
            && (rec.user != user.as_str() || rec.project != project.as_str())
        {
            return Err(OpError::Conflict(format!(
                "instance {id} belongs to user {} and project {}",
                rec.user, rec.project
            )));
        }
        if let Some(rec) = existing.as_mut() {
            self.recover(lock, rec).await?;
        }
        let state = existing.as_ref().map(|r| r.state);
        let allow_change = state.is_none_or(|s| Op::Upload.allows(s));
        let (store, u, i) = (self.codestore.clone(), user.clone(), id.clone());
        let message = format!("upload of {user}/{project} instance {id}");
        let (previous_head, committed) = blocking(move || {
            let previous = store.head(&u, &i)?;
            let committed = store.commit_code(&u, &i, &code, &message, allow_change)?;
            Ok::<_, CodeStoreError>((previous, committed))
        })
        .await??;
        let Some(committed) = committed else {
            let state = state.unwrap_or(State::Uploaded);
            return Err(OpError::Conflict(format!(
                "{}; retry the upload once the current operation ends",
                Op::Upload.explain(state)
            )));
        };
        if let Some(forge) = self.settings.forge.clone() {
            let path = self.codestore.repo_path(user, id);
            let (u, i) = (user.clone(), id.clone());
            if let Err(err) = blocking(move || forge.push(&path, &u, &i)).await? {
                // Workers clone from the forge, which does not have this commit: undo it, so the
                // code store and the record keep agreeing and a retry pushes again.
                if committed.changed {
                    let (store, u, i) = (self.codestore.clone(), user.clone(), id.clone());
                    let commit = committed.commit.clone();
                    blocking(move || store.roll_back(&u, &i, &commit, previous_head.as_deref()))
                        .await??;
                }
                return Err(err.into());
            }
        }
        match existing {
            Some(rec) if rec.commit.as_deref() == Some(committed.commit.as_str()) => {
                Ok((rec, false))
            }
            Some(mut rec) => {
                let previous = rec.state;
                rec.commit = Some(committed.commit);
                rec.repo = self.repo_url(user, id);
                // A running instance keeps running its release; the upload builds beside it.
                if !super::build::beside(&rec) {
                    rec.state = State::Uploaded;
                }
                rec.error = None;
                self.save(lock, &mut rec, Some(previous)).await?;
                Ok((rec, true))
            }
            None => {
                let mut rec = InstanceRecord::new(
                    id.as_str(),
                    user.as_str(),
                    project.as_str(),
                    self.repo_url(user, id),
                );
                rec.commit = Some(committed.commit);
                self.save(lock, &mut rec, None).await?;
                Ok((rec, true))
            }
        }
    }
}
