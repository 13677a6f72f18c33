//! Fetching exactly one commit of an instance's repository into its checkout with git2 (basic
//! auth from the request), leaving a clean detached working tree.

use std::path::Path;

use berth_worker_api::RepoSource;
use git2::{FetchOptions, Oid, RemoteCallbacks, Repository, build::CheckoutBuilder};

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
}

fn git(step: &'static str) -> impl FnOnce(git2::Error) -> SourceError {
    move |source| SourceError::Git { step, source }
}

pub fn valid_commit(commit: &str) -> bool {
    commit.len() == 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The commit currently checked out in `dir`, if it is a repository.
pub fn checked_out(dir: &Path) -> Option<String> {
    let repo = Repository::open(dir).ok()?;
    let head = repo.head().ok()?;
    head.target().map(|oid| oid.to_string())
}

/// Makes `dir` a clean checkout of `commit` from `source`, fetching only when the commit is not
/// already present. Blocking: call from `spawn_blocking`.
pub fn checkout(dir: &Path, source: &RepoSource, commit: &str) -> Result<(), SourceError> {
    if !valid_commit(commit) {
        return Err(SourceError::InvalidCommit(
            commit.chars().take(64).collect(),
        ));
    }
    let oid = Oid::from_str(commit).map_err(git("parse commit"))?;
    let repo = match Repository::open(dir) {
        Ok(repo) => repo,
        Err(_) => {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| SourceError::Git {
                    step: "clear checkout",
                    source: git2::Error::from_str(&e.to_string()),
                })?;
            }
            Repository::init(dir).map_err(git("init"))?
        }
    };
    if repo.find_commit(oid).is_err() {
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
            .map_err(git("fetch"))?;
        if repo.find_commit(oid).is_err() {
            return Err(SourceError::MissingCommit(commit.to_owned()));
        }
    }
    repo.set_head_detached(oid).map_err(git("set head"))?;
    repo.checkout_head(Some(
        CheckoutBuilder::new()
            .force()
            .remove_untracked(true)
            .remove_ignored(true),
    ))
    .map_err(git("checkout"))?;
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

    #[test]
    fn fetches_exact_commits_with_stock_git_repo() {
        let upstream = tempfile::tempdir().unwrap();
        let up = upstream.path();
        git_cmd(up, &["init", "-q"]);
        std::fs::write(up.join("a.txt"), "one").unwrap();
        git_cmd(up, &["add", "."]);
        git_cmd(up, &["commit", "-qm", "one"]);
        let first = git_cmd(up, &["rev-parse", "HEAD"]);
        std::fs::write(up.join("a.txt"), "two").unwrap();
        std::fs::write(up.join("b.txt"), "new").unwrap();
        git_cmd(up, &["add", "."]);
        git_cmd(up, &["commit", "-qm", "two"]);
        let second = git_cmd(up, &["rev-parse", "HEAD"]);

        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("src");
        let source = RepoSource {
            url: format!("file://{}", up.display()),
            username: None,
            password: None,
        };
        checkout(&dir, &source, &first).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert!(!dir.join("b.txt").exists());
        assert_eq!(checked_out(&dir).as_deref(), Some(first.as_str()));

        std::fs::write(dir.join("stray"), "x").unwrap();
        checkout(&dir, &source, &second).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        assert!(!dir.join("stray").exists(), "untracked files are removed");

        // Back to the first commit without the network: the object is already present.
        let offline = RepoSource {
            url: "file:///nonexistent".into(),
            ..source.clone()
        };
        checkout(&dir, &offline, &first).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");

        let missing = "0".repeat(40);
        assert!(matches!(
            checkout(&dir, &source, &missing),
            Err(SourceError::MissingCommit(_))
        ));
        assert!(matches!(
            checkout(&dir, &source, "HEAD"),
            Err(SourceError::InvalidCommit(_))
        ));
    }
}
