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
mod tests {
    use std::process::Command;

    use super::*;

    fn git_cmd(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Commits `files` (path, content; `None` removes) to the repo in `up`; returns the commit.
    fn commit(up: &Path, files: &[(&str, Option<&str>)]) -> String {
        if !up.join(".git").exists() {
            git_cmd(up, &["init", "-q"]);
        }
        for (name, text) in files {
            let path = up.join(name);
            match text {
                Some(text) => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, text).unwrap();
                }
                None => std::fs::remove_file(&path).unwrap(),
            }
        }
        git_cmd(up, &["add", "-A"]);
        git_cmd(up, &["commit", "-qm", "c"]);
        git_cmd(up, &["rev-parse", "HEAD"])
    }

    fn source(up: &Path) -> RepoSource {
        RepoSource {
            url: format!("file://{}", up.display()),
            username: None,
            password: None,
        }
    }

    fn get(co: &Checkout, source: &RepoSource, commit: &str) -> Result<(), SourceError> {
        co.fetch(source, commit)?;
        co.checkout(commit)
    }

    #[test]
    fn fetches_exact_commits_and_keeps_untracked_files() {
        let upstream = tempfile::tempdir().unwrap();
        let up = upstream.path();
        let first = commit(up, &[("a.txt", Some("one")), ("gone.txt", Some("x"))]);
        let second = commit(
            up,
            &[
                ("a.txt", Some("two")),
                ("b.txt", Some("new")),
                ("gone.txt", None),
            ],
        );

        let work = tempfile::tempdir().unwrap();
        let co = Checkout::in_stack(work.path());
        let dir = co.work_tree().to_path_buf();
        let source = source(up);
        assert_eq!(co.commit(), None);
        get(&co, &source, &first).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert!(!dir.join("b.txt").exists());
        assert!(!dir.join(".git").exists(), "no git metadata in the tree");
        assert!(work.path().join("git").join("HEAD").exists());
        assert_eq!(co.commit().as_deref(), Some(first.as_str()));

        std::fs::write(dir.join("stray"), "x").unwrap();
        std::fs::write(dir.join("a.txt"), "changed at runtime").unwrap();
        get(&co, &source, &second).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(dir.join("b.txt")).unwrap(), "new");
        assert!(!dir.join("gone.txt").exists(), "dropped tracked files go");
        assert_eq!(
            std::fs::read_to_string(dir.join("stray")).unwrap(),
            "x",
            "untracked files stay"
        );

        // Back to the first commit without the network: the object is already present.
        let offline = RepoSource {
            url: "file:///nonexistent".into(),
            ..source.clone()
        };
        get(&co, &offline, &first).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert_eq!(co.commit().as_deref(), Some(first.as_str()));

        let missing = "0".repeat(40);
        assert!(matches!(
            get(&co, &source, &missing),
            Err(SourceError::MissingCommit(_))
        ));
        assert!(matches!(
            get(&co, &source, "HEAD"),
            Err(SourceError::InvalidCommit(_))
        ));
    }

    #[test]
    fn nothing_in_the_tree_redirects_the_checkout() {
        let upstream = tempfile::tempdir().unwrap();
        let up = upstream.path();
        let first = commit(up, &[("compose.yaml", Some("one")), ("d/keep", Some("k"))]);
        let second = commit(
            up,
            &[
                ("compose.yaml", Some("two")),
                ("d/new", Some("n")),
                ("newfile.txt", Some("n")),
            ],
        );
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("precious.txt"), "p").unwrap();
        std::fs::write(victim.path().join("target.txt"), "host").unwrap();

        let work = tempfile::tempdir().unwrap();
        let co = Checkout::in_stack(work.path());
        let dir = co.work_tree().to_path_buf();
        get(&co, &source(up), &first).unwrap();
        // What a container with `.` bound writable could do between two builds.
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(
            dir.join(".git/config"),
            format!("[core]\n\tworktree = {}\n", victim.path().display()),
        )
        .unwrap();
        std::fs::remove_file(dir.join("compose.yaml")).unwrap();
        std::os::unix::fs::symlink(victim.path().join("target.txt"), dir.join("compose.yaml"))
            .unwrap();
        std::fs::remove_dir_all(dir.join("d")).unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.join("d")).unwrap();

        get(&co, &source(up), &second).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(victim.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["precious.txt", "target.txt"]);
        assert_eq!(
            std::fs::read_to_string(victim.path().join("target.txt")).unwrap(),
            "host"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("compose.yaml")).unwrap(),
            "two"
        );
        assert!(
            !std::fs::symlink_metadata(dir.join("d"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(dir.join("d/new")).unwrap(), "n");
        assert!(dir.join("newfile.txt").exists());
    }

    /// A stack checked out by an earlier worker: git metadata in `src/.git`.
    fn legacy(up: &Path, stack: &Path, commit: &str) {
        let src = stack.join("src");
        std::fs::create_dir_all(&src).unwrap();
        git_cmd(&src, &["init", "-q"]);
        git_cmd(&src, &["fetch", "-q", &up.display().to_string(), "main"]);
        git_cmd(&src, &["checkout", "-q", "--detach", commit]);
    }

    #[test]
    fn legacy_layouts_move_when_plain_and_go_otherwise() {
        let upstream = tempfile::tempdir().unwrap();
        let up = upstream.path();
        let first = commit(up, &[("a.txt", Some("one")), ("old.txt", Some("o"))]);
        let second = commit(up, &[("a.txt", Some("two")), ("old.txt", None)]);
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("precious.txt"), "p").unwrap();

        // Plain, but with core.worktree pointing at the victim: moved, config rebuilt.
        let stack = tempfile::tempdir().unwrap();
        legacy(up, stack.path(), &first);
        let src = stack.path().join("src");
        git_cmd(
            &src,
            &[
                "config",
                "core.worktree",
                &victim.path().display().to_string(),
            ],
        );
        let co = Checkout::in_stack(stack.path());
        assert_eq!(co.migrate_legacy(false).unwrap(), Migration::Moved);
        assert!(!src.join(".git").exists());
        assert_eq!(co.commit().as_deref(), Some(first.as_str()));
        assert_eq!(co.migrate_legacy(false).unwrap(), Migration::None);
        get(&co, &source(up), &second).unwrap();
        assert_eq!(std::fs::read_to_string(src.join("a.txt")).unwrap(), "two");
        assert!(
            !src.join("old.txt").exists(),
            "the baseline survived the move"
        );
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);

        // Redirections and links make it untrustworthy: removed, the next build fetches.
        type Tamper = fn(&Path, &Path);
        let cases: &[(Tamper, &str)] = &[
            (
                |git, victim| std::os::unix::fs::symlink(victim, git.join("objects/x")).unwrap(),
                "symlink",
            ),
            (
                |git, victim| {
                    std::fs::write(
                        git.join("objects/info/alternates"),
                        victim.display().to_string(),
                    )
                    .unwrap()
                },
                "alternates",
            ),
            (
                |git, victim| {
                    std::fs::write(git.join("commondir"), victim.display().to_string()).unwrap()
                },
                "commondir",
            ),
            (
                |git, _| std::fs::hard_link(git.join("HEAD"), git.join("../HEAD-link")).unwrap(),
                "hard-linked",
            ),
        ];
        for (tamper, want) in cases {
            let stack = tempfile::tempdir().unwrap();
            legacy(up, stack.path(), &first);
            let src = stack.path().join("src");
            tamper(&src.join(".git"), victim.path());
            let co = Checkout::in_stack(stack.path());
            match co.migrate_legacy(false).unwrap() {
                Migration::Discarded(reason) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{want}: {other:?}"),
            }
            assert!(!src.join(".git").exists());
            assert!(!co.git_dir().exists());
            assert_eq!(co.commit(), None);
            get(&co, &source(up), &second).unwrap();
            assert_eq!(co.commit().as_deref(), Some(second.as_str()));
        }

        // A container binding into it keeps access after the move: removed too.
        let stack = tempfile::tempdir().unwrap();
        legacy(up, stack.path(), &first);
        let co = Checkout::in_stack(stack.path());
        assert!(matches!(
            co.migrate_legacy(true).unwrap(),
            Migration::Discarded(_)
        ));
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);
    }
}
