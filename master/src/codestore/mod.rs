//! The code store: one bare git repository per instance at `<root>/<user>/<id>.git`, written
//! natively: each upload is hashed in memory and the objects the repository lacks are written as
//! one pack (see [`pack`]), no working tree, no index, no loose objects.
//!
//! Invariants: a repository exists only once it holds a commit on `refs/heads/main` (HEAD points
//! there): it is created under a temporary name and renamed into place after its first commit, and
//! a directory without `main` (left by an older master stopped mid-commit) counts as absent and is
//! replaced. Each upload is one commit whose parent is the previous head; an upload whose tree
//! equals the head's tree answers the head commit and writes nothing; an upload that may not
//! change the head is compared by hashing it in memory, so a refused one writes no object either.
//! Every function here is blocking (git2); callers run it on a blocking thread.

pub mod credential;
pub mod forge;
mod objects;
pub mod pack;
pub mod protocol;
pub mod receive;

use std::path::{Path, PathBuf};

use berth_worker_api::ValidName;
use git2::{Oid, Repository, RepositoryInitOptions};

use crate::upload::UploadTree;
pub(crate) use objects::tree_oid;
use objects::write_commit;

/// The branch every upload commits to.
pub const MAIN_REF: &str = "refs/heads/main";
const AUTHOR_NAME: &str = "berth";
const AUTHOR_EMAIL: &str = "berth@localhost";

#[derive(Debug, thiserror::Error)]
pub enum CodeStoreError {
    #[error("git error in {repo}: {source}")]
    Git {
        repo: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("io error in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no repository for {user}/{id}")]
    NotFound { user: String, id: String },
    #[error("commit {0} is not in the repository")]
    UnknownCommit(String),
    #[error("{0}")]
    Push(String),
}

/// Result of committing an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// 40-hex commit id now at the head of `main`.
    pub commit: String,
    /// False when the upload equalled the head and nothing was written.
    pub changed: bool,
}

/// One upload in an instance's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// 40-hex commit id.
    pub commit: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
    pub message: String,
}

/// New code for an instance: an uploaded tree (committed by berth), or a commit received by
/// `git push` and already checked (see [`receive`]).
#[derive(Debug)]
pub enum Code {
    Tree(UploadTree),
    Pushed(receive::Pushed),
}

#[derive(Debug, Clone)]
pub struct CodeStore {
    root: PathBuf,
}

/// What an instance's directory holds.
enum RepoState {
    Absent,
    /// A directory without a commit on `main`: a first commit was interrupted.
    Wedged,
    Live(Repository),
}

impl CodeStore {
    /// A store rooted at `root` (normally `<data>/git`); created on first commit.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an instance's bare repository. Both names are validated, so the path stays under
    /// the root.
    pub fn repo_path(&self, user: &ValidName, id: &ValidName) -> PathBuf {
        self.root.join(user.as_str()).join(format!("{id}.git"))
    }

    /// True when the instance has a repository holding a commit on `main`. A directory left by
    /// a master that stopped while creating it (no `main`) counts as absent.
    pub fn exists(&self, user: &ValidName, id: &ValidName) -> bool {
        matches!(self.state(user, id), Ok(RepoState::Live(_)))
    }

    /// What is on disk for the instance.
    fn state(&self, user: &ValidName, id: &ValidName) -> Result<RepoState, CodeStoreError> {
        let path = self.repo_path(user, id);
        if !path.exists() {
            return Ok(RepoState::Absent);
        }
        if !path.join("HEAD").is_file() {
            return Ok(RepoState::Wedged);
        }
        let repo = match Repository::open_bare(&path) {
            Ok(repo) => repo,
            // No `objects/` or `refs/`: init itself was cut short.
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(RepoState::Wedged),
            Err(source) => return Err(CodeStoreError::Git { repo: path, source }),
        };
        match repo.refname_to_id(MAIN_REF) {
            Ok(_) => Ok(RepoState::Live(repo)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(RepoState::Wedged),
            Err(source) => Err(CodeStoreError::Git { repo: path, source }),
        }
    }

    pub fn open(&self, user: &ValidName, id: &ValidName) -> Result<Repository, CodeStoreError> {
        match self.state(user, id)? {
            RepoState::Live(repo) => Ok(repo),
            RepoState::Absent | RepoState::Wedged => Err(CodeStoreError::NotFound {
                user: user.to_string(),
                id: id.to_string(),
            }),
        }
    }

    /// The head commit of `main`, `None` if the instance has no repository.
    pub fn head(&self, user: &ValidName, id: &ValidName) -> Result<Option<String>, CodeStoreError> {
        let RepoState::Live(repo) = self.state(user, id)? else {
            return Ok(None);
        };
        let path = self.repo_path(user, id);
        let head = repo
            .refname_to_id(MAIN_REF)
            .map_err(|source| CodeStoreError::Git { repo: path, source })?;
        Ok(Some(head.to_string()))
    }

    /// Removes what an interrupted first commit of `id` left under any user (a repository
    /// without `main`, or a half-built temporary one); answers how many were removed. Live
    /// repositories are left alone.
    pub fn remove_wedged(&self, id: &ValidName) -> Result<usize, CodeStoreError> {
        let mut removed = 0;
        let Ok(users) = std::fs::read_dir(&self.root) else {
            return Ok(0);
        };
        for user in users.flatten() {
            let Some(user) = user
                .file_name()
                .to_str()
                .and_then(|u| ValidName::parse("user", u).ok())
            else {
                continue;
            };
            removed += self.remove_temporaries(&user, id)?;
            if matches!(self.state(&user, id)?, RepoState::Wedged) {
                tracing::warn!(%user, %id, "removing a repository left without a commit");
                self.delete(&user, id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the temporary repositories a stopped first commit of `id` left behind.
    fn remove_temporaries(
        &self,
        user: &ValidName,
        id: &ValidName,
    ) -> Result<usize, CodeStoreError> {
        let dir = self.root.join(user.as_str());
        let prefix = format!(".{id}.git.tmp-");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                std::fs::remove_dir_all(&path)
                    .map_err(|source| CodeStoreError::Io { path, source })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Checks that `commit` is a commit of the instance's repository; answers its full id.
    pub fn resolve_commit(
        &self,
        user: &ValidName,
        id: &ValidName,
        commit: &str,
    ) -> Result<String, CodeStoreError> {
        let repo = self.open(user, id)?;
        let unknown = || CodeStoreError::UnknownCommit(commit.chars().take(80).collect());
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let oid = Oid::from_str(commit).map_err(|_| unknown())?;
        repo.find_commit(oid).map_err(|_| unknown())?;
        if unchecked(&repo).contains(&oid) {
            // History that came with a push: only pushed tips were held to the upload rules.
            return Err(CodeStoreError::UnknownCommit(format!(
                "{oid} (received by git push as history, never checked as an upload)"
            )));
        }
        Ok(oid.to_string())
    }

    /// Commits `tree` as the new head of `main`, creating the repository on first use.
    pub fn commit(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
        message: &str,
    ) -> Result<Committed, CodeStoreError> {
        self.commit_checked(user, id, tree, message, true)
            .map(|c| c.expect("a commit is always allowed to change the head"))
    }

    /// [`CodeStore::commit_checked`] for either kind of new code.
    pub fn commit_code(
        &self,
        user: &ValidName,
        id: &ValidName,
        code: &Code,
        message: &str,
        allow_change: bool,
    ) -> Result<Option<Committed>, CodeStoreError> {
        match code {
            Code::Tree(tree) => self.commit_checked(user, id, tree, message, allow_change),
            Code::Pushed(pushed) => self.accept_push(user, id, pushed, allow_change),
        }
    }

    /// Like [`CodeStore::commit`], but when `allow_change` is false only an upload equal to the
    /// head is accepted (answering the head); a different one writes nothing at all (not even its
    /// objects) and answers `None`.
    #[tracing::instrument(skip_all, fields(%user, %id), err)]
    pub fn commit_checked(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
        message: &str,
        allow_change: bool,
    ) -> Result<Option<Committed>, CodeStoreError> {
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        if !allow_change {
            return self.head_if_equal(user, id, tree).map_err(git);
        }
        match self.state(user, id)? {
            RepoState::Live(repo) => write_commit(&repo, tree, message).map(Some).map_err(git),
            state => {
                if matches!(state, RepoState::Wedged) {
                    tracing::warn!(%user, %id, "replacing a repository left without a commit");
                    self.delete(user, id)?;
                }
                self.create(user, id, |repo| write_commit(repo, tree, message))
                    .map(Some)
            }
        }
    }

    /// Moves `main` to a pushed commit whose objects [`receive`] checked and kept aside: they are
    /// moved into the repository, then the ref, only if `main` is still where the push saw it.
    /// When `allow_change` is false only a push of the head itself is accepted.
    #[tracing::instrument(skip_all, fields(%user, %id), err)]
    pub fn accept_push(
        &self,
        user: &ValidName,
        id: &ValidName,
        pushed: &receive::Pushed,
        allow_change: bool,
    ) -> Result<Option<Committed>, CodeStoreError> {
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        let repo = self.open(user, id)?;
        let head = repo.refname_to_id(MAIN_REF).map_err(git)?;
        if head == pushed.commit {
            return Ok(Some(Committed {
                commit: head.to_string(),
                changed: false,
            }));
        }
        if !allow_change {
            return Ok(None);
        }
        if head != pushed.old {
            return Err(CodeStoreError::Push(format!(
                "main moved to {head} since the push began (it expected {}); fetch and push again",
                pushed.old
            )));
        }
        pushed.move_into(&repo).map_err(git)?;
        // The commits under the pushed tip were not checked: they may not be built by id.
        let mut list = unchecked(&repo);
        let mut walk = repo.revwalk().map_err(git)?;
        walk.push(pushed.commit).map_err(git)?;
        walk.hide(head).map_err(git)?;
        for oid in walk {
            let oid = oid.map_err(git)?;
            if oid != pushed.commit {
                list.insert(oid);
            }
        }
        list.remove(&pushed.commit);
        let text: String = list.iter().map(|oid| format!("{oid}\n")).collect();
        let file = path.join(UNCHECKED_FILE);
        std::fs::write(&file, text).map_err(|source| CodeStoreError::Io { path: file, source })?;
        repo.reference_matching(MAIN_REF, pushed.commit, true, head, "push")
            .map_err(git)?;
        let objects = path.join("objects");
        if pack::packs(&objects).len() > pack::MAX_PACKS
            && let Err(err) = pack::consolidate(&objects)
        {
            tracing::warn!(repo = %path.display(), %err, "could not join the packs");
        }
        Ok(Some(Committed {
            commit: pushed.commit.to_string(),
            changed: true,
        }))
    }

    /// Creates the instance's repository atomically: it is built under a temporary name next to
    /// its place and renamed there once `fill` has committed to it, so a master stopped half way
    /// leaves no repository (only a temporary one, removed by the next attempt).
    fn create(
        &self,
        user: &ValidName,
        id: &ValidName,
        fill: impl FnOnce(&Repository) -> Result<Committed, git2::Error>,
    ) -> Result<Committed, CodeStoreError> {
        let path = self.repo_path(user, id);
        let parent = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&parent).map_err(|source| CodeStoreError::Io {
            path: parent.clone(),
            source,
        })?;
        self.remove_temporaries(user, id)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{id}.git.tmp-{}-{nanos}", std::process::id()));
        let result = (|| {
            let git = |source| CodeStoreError::Git {
                repo: tmp.clone(),
                source,
            };
            let mut opts = RepositoryInitOptions::new();
            opts.bare(true).initial_head("main").mkpath(true);
            let repo = Repository::init_opts(&tmp, &opts).map_err(git)?;
            let committed = fill(&repo).map_err(git)?;
            drop(repo);
            std::fs::rename(&tmp, &path).map_err(|source| CodeStoreError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(committed)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// The head, unchanged, when `tree` equals its tree; `None` otherwise (or without a
    /// repository). Only reads: the upload is hashed in memory.
    fn head_if_equal(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
    ) -> Result<Option<Committed>, git2::Error> {
        let repo = match self.state(user, id) {
            Ok(RepoState::Live(repo)) => repo,
            Ok(_) => return Ok(None),
            Err(CodeStoreError::Git { source, .. }) => return Err(source),
            Err(other) => return Err(git2::Error::from_str(&other.to_string())),
        };
        let head = repo.find_commit(repo.refname_to_id(MAIN_REF)?)?;
        Ok((head.tree_id() == tree_oid(tree)?).then(|| Committed {
            commit: head.id().to_string(),
            changed: false,
        }))
    }

    /// Undoes the upload that made `commit` the head: `main` goes back to `previous`, or, when the
    /// repository was born with that upload (`previous` is `None`), the repository is removed.
    /// Nothing happens if the head is no longer `commit`. The commit's objects stay, unreferenced.
    #[tracing::instrument(skip_all, fields(%user, %id, %commit), err)]
    pub fn roll_back(
        &self,
        user: &ValidName,
        id: &ValidName,
        commit: &str,
        previous: Option<&str>,
    ) -> Result<(), CodeStoreError> {
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        if self.head(user, id)?.as_deref() != Some(commit) {
            return Ok(());
        }
        match previous {
            Some(previous) => {
                let repo = Repository::open_bare(&path).map_err(git)?;
                let (to, from) = (
                    Oid::from_str(previous).map_err(git)?,
                    Oid::from_str(commit).map_err(git)?,
                );
                repo.reference_matching(MAIN_REF, to, true, from, "roll back a failed upload")
                    .map_err(git)?;
                Ok(())
            }
            None => self.delete(user, id).map(drop),
        }
    }

    /// The uploads of an instance, newest first: the first-parent history of `main` without the
    /// commits that came with a push as unchecked history, at most `limit` of them. Empty when
    /// the instance has no repository.
    pub fn history(
        &self,
        user: &ValidName,
        id: &ValidName,
        limit: usize,
    ) -> Result<Vec<Upload>, CodeStoreError> {
        let RepoState::Live(repo) = self.state(user, id)? else {
            return Ok(Vec::new());
        };
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        let skip = unchecked(&repo);
        let mut next = Some(repo.refname_to_id(MAIN_REF).map_err(git)?);
        let mut uploads = Vec::new();
        let mut walked = 0usize;
        while let Some(oid) = next {
            // Bounded even through a long pushed history that lists nothing.
            if uploads.len() >= limit || walked >= HISTORY_WALK_MAX {
                break;
            }
            walked += 1;
            let commit = repo.find_commit(oid).map_err(git)?;
            if !skip.contains(&oid) {
                uploads.push(Upload {
                    commit: oid.to_string(),
                    time: commit.time().seconds(),
                    message: String::from_utf8_lossy(commit.message_bytes())
                        .trim_end()
                        .to_owned(),
                });
            }
            next = commit.parent_ids().next();
        }
        Ok(uploads)
    }

    /// Removes the instance's repository; answers whether there was one.
    pub fn delete(&self, user: &ValidName, id: &ValidName) -> Result<bool, CodeStoreError> {
        let path = self.repo_path(user, id);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CodeStoreError::Io { path, source }),
        }
    }
}

/// Most commits [`CodeStore::history`] walks.
const HISTORY_WALK_MAX: usize = 10_000;

/// File of a repository listing the commits received by `git push` below its tip, one id a line.
const UNCHECKED_FILE: &str = "berth-unchecked";

/// The commits of `repo` that came with a push as history and were never checked.
fn unchecked(repo: &Repository) -> std::collections::BTreeSet<Oid> {
    std::fs::read_to_string(repo.path().join(UNCHECKED_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Oid::from_str(l.trim()).ok())
        .collect()
}

/// Number of objects (commits, trees, blobs) reachable from `want` but not from `have`; used by
/// tests and the benchmark to reason about incremental fetches.
pub fn objects_between(
    repo: &Repository,
    want: Oid,
    have: Option<Oid>,
) -> Result<usize, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(want)?;
    if let Some(have) = have {
        walk.hide(have)?;
    }
    let mut pb = repo.packbuilder()?;
    pb.insert_walk(&mut walk)?;
    Ok(pb.object_count())
}

#[cfg(test)]
mod tests;
