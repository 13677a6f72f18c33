//! Fetching exactly one commit of an instance's repository with git2 (basic auth from the
//! request) and checking it out into the instance's work tree.
//!
//! The git directory lives next to the work tree (`<stack>/git` beside `<stack>/src`), never
//! inside it, and is always opened bare with the work tree set explicitly: stacks may bind (parts
//! of) the work tree, and nothing they write there (a `.git`, `core.worktree`) can redirect git.
//! A checkout forces tracked files like `git checkout -f` and keeps untracked files, which are the
//! data a running stack wrote into its project-relative binds.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_worker_api::RepoSource;
use git2::build::CheckoutBuilder;
use git2::{
    FetchOptions, FileMode, ObjectType, Oid, RemoteCallbacks, Repository, RepositoryOpenFlags, Tree,
};

/// Points at the commit whose checkout last completed; removed while a checkout runs, so a
/// half-written work tree never claims to be at any commit.
const CHECKED_OUT_REF: &str = "refs/berth/checked-out";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid commit {0:?}: must be 40 hex characters")]
    InvalidCommit(String),
    #[error("git {step} failed: {source}")]
    Git {
        step: &'static str,
        #[source]
        source: git2::Error,
    },
    #[error("commit {0} is not in the repository")]
    MissingCommit(String),
    #[error("{step} failed: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn git(step: &'static str) -> impl FnOnce(git2::Error) -> SourceError {
    move |source| SourceError::Git { step, source }
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> SourceError {
    move |source| SourceError::Io { step, source }
}

pub fn valid_commit(commit: &str) -> bool {
    commit.len() == 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What became of a checkout made by an earlier worker, which kept its git metadata in
/// `src/.git` where the stack's containers could reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// Nothing to migrate.
    None,
    /// The old metadata was a plain repository and now lives beside the work tree.
    Moved,
    /// The old metadata could have been altered by a container and was removed (the reason
    /// says why); the next build fetches afresh.
    Discarded(String),
}

/// One instance's repository: a git directory kept outside the work tree stacks can bind.
#[derive(Debug, Clone)]
pub struct Checkout {
    git_dir: PathBuf,
    work_tree: PathBuf,
}

impl Checkout {
    /// The layout under a stack directory: `git/` (metadata) beside `src/` (work tree).
    pub fn in_stack(stack_dir: &Path) -> Self {
        Self {
            git_dir: stack_dir.join("git"),
            work_tree: stack_dir.join("src"),
        }
    }

    pub fn work_tree(&self) -> &Path {
        &self.work_tree
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Opens the git directory as it is, ignoring any `core.worktree` and never searching for a
    /// `.git`; checkouts then go to the explicit work tree.
    fn open(&self) -> Result<Repository, git2::Error> {
        let repo = Repository::open_ext(
            &self.git_dir,
            RepositoryOpenFlags::NO_SEARCH | RepositoryOpenFlags::BARE,
            std::iter::empty::<&OsStr>(),
        )?;
        repo.set_workdir(&self.work_tree, false)?;
        Ok(repo)
    }

    /// The commit whose checkout last completed, if any.
    pub fn commit(&self) -> Option<String> {
        let repo = self.open().ok()?;
        let reference = repo.find_reference(CHECKED_OUT_REF).ok()?;
        reference.target().map(|oid| oid.to_string())
    }

    /// Makes sure `commit` is in the repository, fetching from `source` only when it is not.
    /// Blocking: call from `spawn_blocking`.
    pub fn fetch(&self, source: &RepoSource, commit: &str) -> Result<(), SourceError> {
        let oid = parse_commit(commit)?;
        let repo = match self.open() {
            Ok(repo) => repo,
            Err(_) => self.init()?,
        };
        if repo.find_commit(oid).is_err() {
            fetch(&repo, source)?;
            if repo.find_commit(oid).is_err() {
                return Err(SourceError::MissingCommit(commit.to_owned()));
            }
        }
        Ok(())
    }

    /// Makes the work tree hold `commit` (fetched before): tracked files are forced to the
    /// commit's content, untracked files stay. Blocking: call from `spawn_blocking`, with nothing
    /// else writing into the work tree.
    pub fn checkout(&self, commit: &str) -> Result<(), SourceError> {
        let oid = parse_commit(commit)?;
        let repo = self.open().map_err(git("open"))?;
        let target = repo
            .find_commit(oid)
            .map_err(|_| SourceError::MissingCommit(commit.to_owned()))?;
        if let Ok(mut done) = repo.find_reference(CHECKED_OUT_REF) {
            done.delete().map_err(git("checkout"))?;
        }
        let tree = target.tree().map_err(git("checkout"))?;
        unlink_symlinks_in_the_way(&repo, &tree, &self.work_tree)?;
        // The baseline is HEAD (the previous commit): files it tracked that the new commit drops
        // are removed, files nobody tracked are left alone.
        repo.checkout_tree(target.as_object(), Some(CheckoutBuilder::new().force()))
            .map_err(git("checkout"))?;
        repo.set_head_detached(oid).map_err(git("set head"))?;
        repo.reference(CHECKED_OUT_REF, oid, true, "checkout")
            .map_err(git("checkout"))?;
        Ok(())
    }

    /// A fresh, empty git directory (whatever was there is removed; the work tree is kept).
    fn init(&self) -> Result<Repository, SourceError> {
        match std::fs::symlink_metadata(&self.git_dir) {
            Ok(meta) if meta.is_dir() => {
                std::fs::remove_dir_all(&self.git_dir).map_err(io("clear git directory"))?
            }
            Ok(_) => std::fs::remove_file(&self.git_dir).map_err(io("clear git directory"))?,
            Err(_) => {}
        }
        std::fs::create_dir_all(&self.work_tree).map_err(io("create work tree"))?;
        Repository::init_bare(&self.git_dir).map_err(git("init"))?;
        self.open().map_err(git("init"))
    }

    /// Brings a checkout made by an earlier worker (metadata in `src/.git`) to this layout. The
    /// old metadata was reachable by the stack's containers, so it is moved only when it is a
    /// plain repository (a real directory of directories and singly linked files, no
    /// `commondir`/`gitdir` redirection, no alternates) and no container binds into it; its
    /// config and index are then rebuilt from scratch. Otherwise it is removed.
    pub fn migrate_legacy(&self, bound_by_container: bool) -> Result<Migration, SourceError> {
        let legacy = self.work_tree.join(".git");
        let staging = self.git_dir.with_file_name("git.legacy");
        if staging.exists() {
            // A migration cut short by a crash: its outcome is unknown.
            std::fs::remove_dir_all(&staging).map_err(io("remove legacy git directory"))?;
        }
        if std::fs::symlink_metadata(&self.git_dir).is_ok() {
            return Ok(Migration::None);
        }
        let meta = match std::fs::symlink_metadata(&legacy) {
            Ok(meta) => meta,
            Err(_) => return Ok(Migration::None),
        };
        if !meta.is_dir() {
            std::fs::remove_file(&legacy).map_err(io("remove legacy git directory"))?;
            return Ok(Migration::Discarded("src/.git is not a directory".into()));
        }
        // Out of the work tree first: from here on a container binding `.` cannot reach it.
        std::fs::rename(&legacy, &staging).map_err(io("move legacy git directory"))?;
        let verdict = if bound_by_container {
            Err("a container binds it".to_owned())
        } else {
            plain_repository(&staging)
        };
        if let Err(reason) = verdict {
            std::fs::remove_dir_all(&staging).map_err(io("remove legacy git directory"))?;
            return Ok(Migration::Discarded(reason));
        }
        let fresh = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";
        let tmp = staging.join("config.berth");
        std::fs::write(&tmp, fresh).map_err(io("rewrite legacy config"))?;
        std::fs::rename(&tmp, staging.join("config")).map_err(io("rewrite legacy config"))?;
        let _ = std::fs::remove_file(staging.join("index"));
        std::fs::rename(&staging, &self.git_dir).map_err(io("move legacy git directory"))?;
        let repo = self.open().map_err(git("open migrated repository"))?;
        let head = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        if let Some(head) = head {
            // The index lists what the work tree tracks (the baseline of the next checkout).
            let mut index = repo.index().map_err(git("rebuild index"))?;
            index
                .read_tree(&head.tree().map_err(git("rebuild index"))?)
                .map_err(git("rebuild index"))?;
            index.write().map_err(git("rebuild index"))?;
            repo.reference(CHECKED_OUT_REF, head.id(), true, "migrated")
                .map_err(git("migrate"))?;
        }
        Ok(Migration::Moved)
    }
}

fn parse_commit(commit: &str) -> Result<Oid, SourceError> {
    if !valid_commit(commit) {
        return Err(SourceError::InvalidCommit(
            commit.chars().take(64).collect(),
        ));
    }
    Oid::from_str(commit).map_err(git("parse commit"))
}

fn fetch(repo: &Repository, source: &RepoSource) -> Result<(), SourceError> {
    let mut callbacks = RemoteCallbacks::new();
    let mut attempts = 0;
    callbacks.credentials(move |_url, _user, _allowed| {
        attempts += 1;
        match (&source.username, &source.password) {
            (_, Some(password)) if attempts == 1 => git2::Cred::userpass_plaintext(
                source.username.as_deref().unwrap_or("berth"),
                password.expose(),
            ),
            _ => Err(git2::Error::from_str("authentication failed")),
        }
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    let mut remote = repo.remote_anonymous(&source.url).map_err(git("remote"))?;
    remote
        .fetch(
            &[
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Some(&mut opts),
            None,
        )
        .map_err(git("fetch"))
}

/// Removes symlinks standing where `tree` has a directory or a regular file. libgit2 writes a
/// file by opening its path, which follows a symlink in the last component, and accepts a
/// symlink to a directory as a leading component: a link a container put there would let the
/// checkout write outside the work tree.
fn unlink_symlinks_in_the_way(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
) -> Result<(), SourceError> {
    for entry in tree.iter() {
        let mode = entry.filemode();
        let is_tree = entry.kind() == Some(ObjectType::Tree);
        let is_file =
            mode == i32::from(FileMode::Blob) || mode == i32::from(FileMode::BlobExecutable);
        if !is_tree && !is_file {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(entry.name_bytes()));
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::remove_file(&path).map_err(io("remove a symlink in the way"))?
            }
            Ok(meta) if meta.is_dir() && is_tree => {
                let sub = entry
                    .to_object(repo)
                    .and_then(|o| o.peel_to_tree())
                    .map_err(git("checkout"))?;
                unlink_symlinks_in_the_way(repo, &sub, &path)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `Ok` when `dir` holds only directories and singly linked regular files and nothing that
/// points git elsewhere; otherwise the reason.
fn plain_repository(dir: &Path) -> Result<(), String> {
    for redirect in [
        "commondir",
        "gitdir",
        "objects/info/alternates",
        "objects/info/http-alternates",
    ] {
        if std::fs::symlink_metadata(dir.join(redirect)).is_ok() {
            return Err(format!("it holds {redirect}"));
        }
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("cannot read it: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read it: {e}"))?;
            let meta = std::fs::symlink_metadata(entry.path())
                .map_err(|e| format!("cannot read it: {e}"))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if !meta.is_file() {
                return Err("it holds a symlink or a special file".into());
            } else if meta.nlink() != 1 {
                return Err("it holds a hard-linked file".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
