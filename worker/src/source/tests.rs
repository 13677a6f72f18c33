//! Tests of fetch and checkout (`source.rs`) against repositories made with the git command.

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
    std::os::unix::fs::symlink(victim.path().join("target.txt"), dir.join("compose.yaml")).unwrap();
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
