//! Stock `git push` and `git clone` against a real master: a push of `main` is recorded as the
//! instance's latest upload; a push breaking an upload rule is refused with its reason and moves
//! nothing; an instance wedged by a master killed during its first commit recovers.

mod common;

use std::path::Path;

use common::*;
use reqwest::Method;

/// Runs git in `dir`; answers (success, stdout + stderr).
async fn try_git(dir: &Path, args: &[&str]) -> (bool, String) {
    let (dir, args): (std::path::PathBuf, Vec<String>) =
        (dir.to_owned(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", "/nonexistent")
            .args(&args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

async fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, text) = try_git(dir, args).await;
    assert!(success, "git {args:?}: {text}");
    text
}

fn url(m: &Master, repo: &str) -> String {
    format!("{}/git/alice/{repo}.git", m.base).replace("http://", &format!("http://berth:{GIT}@"))
}

async fn commit_all(co: &Path, message: &str) -> String {
    ok(co, &["add", "-A"]).await;
    ok(
        co,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "commit",
            "-qm",
            message,
        ],
    )
    .await;
    ok(co, &["rev-parse", "HEAD"]).await.trim().to_owned()
}

/// A change made to the clone's files.
type Change = dyn Fn(&Path);

async fn remote_main(co: &Path) -> String {
    let out = ok(co, &["ls-remote", "origin", "refs/heads/main"]).await;
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_git_push_is_an_upload_and_refusals_move_nothing() {
    let reg = registry().await;
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, data.path());
    cfg.limits.max_file_bytes = 1024 * 1024;
    let m = master(cfg).await;
    let (status, rec) = m.upload("shop", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200, "{rec}");

    let work = tempfile::tempdir().unwrap();
    ok(work.path(), &["clone", "-q", &url(&m, "shop"), "co"]).await;
    let co = work.path().join("co");
    assert_eq!(
        ok(&co, &["rev-parse", "HEAD"]).await.trim(),
        rec["commit"].as_str().unwrap()
    );

    // A change pushed with stock git becomes the instance's latest upload.
    std::fs::write(co.join("web/index.html"), "pushed\n").unwrap();
    let pushed = commit_all(&co, "push one").await;
    let out = ok(&co, &["push", "origin", "main"]).await;
    assert!(out.contains("berth:"), "{out}");
    let (status, rec) = m.call(Method::GET, "/v1/instances/shop").await;
    assert_eq!(status, 200);
    assert_eq!(rec["commit"], pushed.as_str(), "{rec}");
    assert_eq!(rec["user"], "alice");
    assert_eq!(rec["project"], "proj");
    assert_eq!(remote_main(&co).await, pushed);

    // Each refused push names its rule, and main stays where it was.
    let refused: Vec<(&str, Box<Change>)> = vec![
        (
            "leaves the tree",
            Box::new(|co: &Path| {
                std::os::unix::fs::symlink("../../../etc/passwd", co.join("web/out")).unwrap();
            }),
        ),
        (
            "no compose file",
            Box::new(|co: &Path| std::fs::remove_file(co.join("compose.yaml")).unwrap()),
        ),
        (
            "exceeds the cap",
            Box::new(|co: &Path| {
                let big: Vec<u8> = (0..2_000_000u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                std::fs::write(co.join("web/big.bin"), big).unwrap();
            }),
        ),
    ];
    for (reason, change) in refused {
        change(&co);
        commit_all(&co, reason).await;
        let (success, out) = try_git(&co, &["push", "origin", "main"]).await;
        assert!(!success, "{reason}: {out}");
        assert!(out.contains(reason), "{reason}: {out}");
        assert_eq!(remote_main(&co).await, pushed, "{reason}");
        let (_, rec) = m.call(Method::GET, "/v1/instances/shop").await;
        assert_eq!(rec["commit"], pushed.as_str(), "{reason}");
        ok(&co, &["reset", "-q", "--hard", &pushed]).await;
    }
    // Nothing from the refused pushes is left in the repository's object store.
    let objects = data.path().join("git/alice/shop.git/objects");
    let leftovers: Vec<_> = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("incoming-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Only main, only of an existing instance.
    let (success, out) = try_git(&co, &["push", "origin", "HEAD:refs/heads/other"]).await;
    assert!(!success && out.contains("only refs/heads/main"), "{out}");
    ok(&co, &["remote", "add", "nope", &url(&m, "nope")]).await;
    let (success, out) = try_git(&co, &["push", "nope", "main"]).await;
    assert!(!success && out.contains("no instance nope"), "{out}");

    // A second push sends only the change; a fresh clone has it; an API upload then follows it.
    std::fs::write(co.join("web/index.html"), "pushed twice\n").unwrap();
    let second = commit_all(&co, "push two").await;
    ok(&co, &["push", "origin", "main"]).await;
    ok(work.path(), &["clone", "-q", &url(&m, "shop"), "fresh"]).await;
    let fresh = work.path().join("fresh");
    assert_eq!(ok(&fresh, &["rev-parse", "HEAD"]).await.trim(), second);
    assert_eq!(
        std::fs::read_to_string(fresh.join("web/index.html")).unwrap(),
        "pushed twice\n"
    );
    ok(&fresh, &["fsck", "--strict"]).await;
    let (status, rec) = m.upload("shop", "alice", "&build=false", app("v3")).await;
    assert_eq!(status, 200, "{rec}");
    ok(&co, &["fetch", "-q", "origin"]).await;
    let parent = ok(&co, &["rev-parse", "origin/main^"]).await;
    assert_eq!(parent.trim(), second);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_first_commit_then_upload_and_delete() {
    let reg = registry().await;
    let data = tempfile::tempdir().unwrap();
    let m = master(config(&reg, data.path())).await;
    // The state a master killed during a first commit left (before atomic creation): an
    // initialised bare repository without `main`, and no record.
    let wedge = |id: &str| {
        let path = data.path().join(format!("git/alice/{id}.git"));
        let out = std::process::Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        path
    };
    let path = wedge("wedged");
    let (status, rec) = m.upload("wedged", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    let work = tempfile::tempdir().unwrap();
    ok(work.path(), &["clone", "-q", &url(&m, "wedged"), "co"]).await;
    let (status, rec) = m.call(Method::DELETE, "/v1/instances/wedged").await;
    assert_eq!(status, 200, "{rec}");
    assert!(!path.exists());

    // Wedged with no record: DELETE finds no instance but clears what was left.
    let path = wedge("other");
    let (status, _) = m.call(Method::DELETE, "/v1/instances/other").await;
    assert_eq!(status, 404);
    assert!(!path.exists());
    let (status, rec) = m.upload("other", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    m.stop().await;
}
