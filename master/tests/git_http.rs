//! Stock `git` against the embedded code store's smart HTTP: clone, incremental fetch (only new
//! objects travel), protocol v2 fallback, basic auth (pushes: tests/git_push.rs).

use std::path::Path;
use std::process::Command;

use berth_master::Config;
use berth_master::codestore::CodeStore;
use berth_master::upload::{TreeEntry, UploadTree};
use berth_worker_api::{Secret, ValidName};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "git-secret";

struct Server {
    base: String,
    store: CodeStore,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        // Never contacted by the git routes.
        registry: "http://127.0.0.1:9".into(),
        cluster_token: Some(Secret::new("cluster")),
        api_token: Some(Secret::new("api")),
        git_token: Some(Secret::new(TOKEN)),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(berth_master::run(config, listener, shutdown.clone()));
    Server {
        base,
        store: CodeStore::new(dir.path().join("git")),
        shutdown,
        _dir: dir,
    }
}

fn name(s: &str) -> ValidName {
    ValidName::parse("id", s).unwrap()
}

fn file(tree: &mut UploadTree, path: &str, data: &[u8], executable: bool) {
    tree.entries.insert(
        path.to_owned(),
        TreeEntry::File {
            data: data.to_vec(),
            executable,
        },
    );
}

/// Runs git off the async threads (the server lives on them).
async fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    let (dir, args): (std::path::PathBuf, Vec<String>) =
        (dir.to_owned(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        Command::new("git")
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", "/nonexistent")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "git failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn loose_objects(repo: &Path) -> usize {
    let out = Command::new("git")
        .current_dir(repo)
        .args(["count-objects", "-v"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("count: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_then_incremental_fetch_with_stock_git() {
    let server = serve().await;
    let (user, id) = (name("alice"), name("shop-1"));
    let mut tree = UploadTree::default();
    file(
        &mut tree,
        "compose.yaml",
        b"services:\n  web:\n    build: ./web\n",
        false,
    );
    file(&mut tree, "web/Dockerfile", b"FROM berth-base\n", false);
    file(&mut tree, "web/run.sh", b"#!/bin/sh\necho hi\n", true);
    // Big and incompressible enough to need several side-band-64k packets.
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    file(&mut tree, "web/blob.bin", &big, false);
    tree.entries.insert(
        "web/link".into(),
        TreeEntry::Symlink {
            target: "run.sh".into(),
        },
    );
    let c1 = server
        .store
        .commit(&user, &id, &tree, "one")
        .unwrap()
        .commit;

    let work = tempfile::tempdir().unwrap();
    let url = format!("{}/git/alice/shop-1.git", server.base)
        .replace("http://", &format!("http://berth:{TOKEN}@"));
    ok(&git(work.path(), &["clone", "-q", &url, "co"]).await);
    let co = work.path().join("co");
    assert_eq!(ok(&git(&co, &["rev-parse", "HEAD"]).await).trim(), c1);
    assert_eq!(
        ok(&git(&co, &["symbolic-ref", "HEAD"]).await).trim(),
        "refs/heads/main"
    );
    assert_eq!(std::fs::read(co.join("web/blob.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(co.join("web/link")).unwrap(),
        Path::new("run.sh")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(co.join("web/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "executable bit kept");
    let ls = ok(&git(&co, &["ls-files"]).await);
    assert_eq!(ls.lines().count(), 5, "{ls}");

    // Second upload changes one top-level file: the fetch must carry exactly the new commit, the
    // new root tree and the new blob.
    file(
        &mut tree,
        "compose.yaml",
        b"services:\n  web:\n    build: ./web\n    ports: [\"80\"]\n",
        false,
    );
    let c2 = server
        .store
        .commit(&user, &id, &tree, "two")
        .unwrap()
        .commit;
    // With a huge unpack limit every received object lands loose, so the loose count grows by
    // exactly the number of objects transferred.
    let before = loose_objects(&co);
    ok(&git(
        &co,
        &["-c", "fetch.unpackLimit=1000000", "fetch", "-q", "origin"],
    )
    .await);
    assert_eq!(
        ok(&git(&co, &["rev-parse", "origin/main"]).await).trim(),
        c2
    );
    assert_eq!(
        loose_objects(&co) - before,
        3,
        "only the new commit, tree and blob are fetched"
    );

    // A client speaking protocol v2 gets the v0 advertisement and still clones.
    ok(&git(
        work.path(),
        &["-c", "protocol.version=2", "clone", "-q", &url, "v2"],
    )
    .await);
    assert_eq!(
        ok(&git(&work.path().join("v2"), &["rev-parse", "HEAD"]).await).trim(),
        c2
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn auth_and_read_only() {
    let server = serve().await;
    let mut tree = UploadTree::default();
    file(&mut tree, "compose.yaml", b"services: {}\n", false);
    server
        .store
        .commit(&name("bob"), &name("x"), &tree, "one")
        .unwrap();
    let http = reqwest::Client::new();
    let refs = format!(
        "{}/git/bob/x.git/info/refs?service=git-upload-pack",
        server.base
    );
    // (password, path suffix, expected status)
    let cases: &[(Option<&str>, &str, u16)] = &[
        (
            None,
            "/git/bob/x.git/info/refs?service=git-upload-pack",
            401,
        ),
        (
            Some("wrong"),
            "/git/bob/x.git/info/refs?service=git-upload-pack",
            401,
        ),
        (
            Some(TOKEN),
            "/git/bob/x.git/info/refs?service=git-upload-pack",
            200,
        ),
        (
            Some(TOKEN),
            "/git/bob/missing.git/info/refs?service=git-upload-pack",
            404,
        ),
        (
            Some(TOKEN),
            "/git/bob/x/info/refs?service=git-upload-pack",
            404,
        ),
        (
            Some(TOKEN),
            "/git/Bob/x.git/info/refs?service=git-upload-pack",
            400,
        ),
        (
            Some(TOKEN),
            "/git/bob/x.git/info/refs?service=git-receive-pack",
            200,
        ),
        (Some(TOKEN), "/git/bob/x.git/info/refs", 400),
    ];
    for (password, path, status) in cases {
        let mut req = http.get(format!("{}{path}", server.base));
        if let Some(p) = password {
            req = req.basic_auth("anyone", Some(p));
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), *status, "{password:?} {path}");
        if *status == 401 {
            assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"berth\"");
        }
    }
    let resp = http
        .get(&refs)
        .basic_auth("berth", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-git-upload-pack-advertisement"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with("001e# service=git-upload-pack\n0000"),
        "{body}"
    );
    assert!(body.contains("symref=HEAD:refs/heads/main"), "{body}");
    let push = http
        .post(format!("{}/git/bob/x.git/git-receive-pack", server.base))
        .basic_auth("berth", Some(TOKEN))
        .send()
        .await
        .unwrap();
    // Pushes are served now (tests/git_push.rs); an empty request is git's probe.
    assert_eq!(push.status().as_u16(), 200);
    server.shutdown.cancel();
}

/// Fetches like the worker does: libgit2, anonymous remote, credentials on the 401.
fn libgit2_fetch(repo: &git2::Repository, url: &str, password: &str) -> Result<(), git2::Error> {
    let mut callbacks = git2::RemoteCallbacks::new();
    let mut attempts = 0;
    callbacks.credentials(move |_url, _user, _allowed| {
        attempts += 1;
        if attempts > 1 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        git2::Cred::userpass_plaintext("berth", password)
    });
    let mut opts = git2::FetchOptions::new();
    opts.remote_callbacks(callbacks);
    let mut remote = repo.remote_anonymous(url)?;
    remote.fetch(
        &["+refs/heads/*:refs/remotes/origin/*"],
        Some(&mut opts),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libgit2_clients_fetch_like_the_worker() {
    let server = serve().await;
    let (user, id) = (name("carol"), name("svc"));
    let mut tree = UploadTree::default();
    file(&mut tree, "compose.yaml", b"services: {}\n", false);
    file(&mut tree, "app/main.sh", b"#!/bin/sh\n", true);
    let c1 = server
        .store
        .commit(&user, &id, &tree, "one")
        .unwrap()
        .commit;
    let url = format!("{}/git/carol/svc.git", server.base);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let url2 = url.clone();
    let c1_check = c1.clone();
    tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::init(&path).unwrap();
        let err = libgit2_fetch(&repo, &url2, "wrong").unwrap_err();
        assert!(err.message().contains("authentication"), "{err}");
        libgit2_fetch(&repo, &url2, TOKEN).unwrap();
        let commit = repo
            .find_commit(git2::Oid::from_str(&c1_check).unwrap())
            .unwrap();
        assert!(
            commit
                .tree()
                .unwrap()
                .get_path(Path::new("app/main.sh"))
                .is_ok()
        );
    })
    .await
    .unwrap();
    file(&mut tree, "compose.yaml", b"services:\n  a: {}\n", false);
    let c2 = server
        .store
        .commit(&user, &id, &tree, "two")
        .unwrap()
        .commit;
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::open(&path).unwrap();
        libgit2_fetch(&repo, &url, TOKEN).unwrap();
        let head = repo.find_reference("refs/remotes/origin/main").unwrap();
        assert_eq!(head.target().unwrap().to_string(), c2);
        let commit = repo.find_commit(head.target().unwrap()).unwrap();
        assert_eq!(commit.parent_id(0).unwrap().to_string(), c1);
    })
    .await
    .unwrap();
    server.shutdown.cancel();
}

/// A worker's clone credential (issued as the master issues it for a build) clones its own
/// repository with stock git, and is refused for another repository, for a push and once it
/// has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_credential_is_per_instance_read_only_and_short_lived() {
    use berth_master::codestore::credential;
    let server = serve().await;
    let mut tree = UploadTree::default();
    file(&mut tree, "compose.yaml", b"services: {}\n", false);
    for id in ["mine", "theirs"] {
        server
            .store
            .commit(&name("alice"), &name(id), &tree, "one")
            .unwrap();
    }
    let key = Secret::new(TOKEN);
    let now = berth_worker_api::auth::unix_now();
    let cred = credential::issue(&key, &name("alice"), &name("mine"), now + 60);
    let expired = credential::issue(&key, &name("alice"), &name("mine"), now - 1);
    let url = |id: &str, password: &Secret| {
        format!("{}/git/alice/{id}.git", server.base).replace(
            "http://",
            &format!("http://{}:{}@", credential::USERNAME, password.expose()),
        )
    };
    let work = tempfile::tempdir().unwrap();
    ok(&git(work.path(), &["clone", "-q", &url("mine", &cred), "co"]).await);
    let co = work.path().join("co");
    assert!(co.join("compose.yaml").is_file());

    let other = git(
        work.path(),
        &["clone", "-q", &url("theirs", &cred), "other"],
    )
    .await;
    assert!(!other.status.success(), "another repository opened");
    let late = git(
        work.path(),
        &["clone", "-q", &url("mine", &expired), "late"],
    )
    .await;
    assert!(!late.status.success(), "an expired credential opened");
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("401")
            || String::from_utf8_lossy(&late.stderr).contains("Authentication failed"),
        "{}",
        String::from_utf8_lossy(&late.stderr)
    );

    ok(&git(&co, &["config", "user.email", "w@example.org"]).await);
    ok(&git(&co, &["config", "user.name", "w"]).await);
    std::fs::write(co.join("extra"), "x").unwrap();
    ok(&git(&co, &["add", "extra"]).await);
    ok(&git(&co, &["commit", "-q", "-m", "two"]).await);
    let push = git(&co, &["push", "-q", "origin", "HEAD:main"]).await;
    assert!(!push.status.success(), "a clone credential pushed");
    let head = server.store.head(&name("alice"), &name("mine")).unwrap();
    assert_ne!(
        head.as_deref(),
        Some(ok(&git(&co, &["rev-parse", "HEAD"]).await).trim())
    );
    server.shutdown.cancel();
}
