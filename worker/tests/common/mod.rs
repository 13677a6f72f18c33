//! Shared helpers of the worker's integration tests: a git repo of files, an in-process worker,
//! and a guard that removes everything a test's node created in Docker, even on failure.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_worker::Config;
use berth_worker_api::{
    BuildRequest, DeployRequest, RepoSource, Secret, StackStatus, StartRequest, ValidName,
    WorkerClient,
};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-cluster-token";

/// Creates a git repository holding `files` with one commit; returns its dir and commit.
pub fn git_repo(files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
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
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        if name.ends_with(".sh") {
            Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "fixture"]);
    let commit = git(&["rev-parse", "HEAD"]);
    (dir, commit)
}

/// Adds a commit writing `files` to the repository in `dir`; returns the commit.
pub fn git_commit(dir: &Path, files: &[(&str, &str)]) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "more"]);
    git(&["rev-parse", "HEAD"])
}

pub fn build_request(repo: &Path, commit: &str) -> BuildRequest {
    BuildRequest {
        user: ValidName::parse("user", "alice").unwrap(),
        project: ValidName::parse("project", "shop").unwrap(),
        commit: commit.to_owned(),
        repo: RepoSource {
            url: format!("file://{}", repo.display()),
            username: None,
            password: None,
        },
    }
}

/// Removes every container, network, volume and image labelled with `node` when dropped.
pub struct Cleanup {
    pub node: String,
}

impl Cleanup {
    fn ids(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("docker").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Everything still carrying this node's label: (containers, networks, volumes, images).
    pub fn leftovers(&self) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        let f = format!("label=org.berth.node={}", self.node);
        (
            self.ids(&["ps", "-aq", "--filter", &f]),
            self.ids(&["network", "ls", "-q", "--filter", &f]),
            self.ids(&["volume", "ls", "-q", "--filter", &f]),
            self.ids(&["images", "-q", "--filter", &f]),
        )
    }

    /// This node's app containers: its containers less berth's port forwarders.
    pub fn app_containers(&self) -> Vec<String> {
        let f = format!("label=org.berth.node={}", self.node);
        let fwd = self.ids(&[
            "ps",
            "-aq",
            "--filter",
            &f,
            "--filter",
            "label=org.berth.forward",
        ]);
        let mut all = self.ids(&["ps", "-aq", "--filter", &f]);
        all.retain(|c| !fwd.contains(c));
        all
    }

    /// Fails the test if anything carrying this node's label is left.
    pub fn assert_nothing_left(&self) {
        let (c, n, v, i) = self.leftovers();
        assert!(
            c.is_empty() && n.is_empty() && v.is_empty() && i.is_empty(),
            "left: {c:?} {n:?} {v:?} {i:?}"
        );
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (c, n, v, i) = self.leftovers();
        for (cmd, ids) in [
            (vec!["rm", "-f", "-v"], c),
            (vec!["network", "rm"], n),
            (vec!["volume", "rm", "-f"], v),
            (vec!["rmi", "-f"], i),
        ] {
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&cmd).args(&ids).output();
            }
        }
    }
}

pub struct TestWorker {
    pub client: WorkerClient,
    pub base: String,
    pub data: tempfile::TempDir,
    pub node: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), berth_worker::RunError>>,
    pub cleanup: Cleanup,
}

impl TestWorker {
    pub fn stack_src(&self, id: &str) -> PathBuf {
        self.data.path().join("stacks").join(id).join("src")
    }

    /// Where the stack's git metadata lives (beside, never inside, the checkout).
    pub fn stack_git(&self, id: &str) -> PathBuf {
        self.data.path().join("stacks").join(id).join("git")
    }

    /// Builds `commit` of `repo` as stack `id` and starts it; both must succeed.
    pub async fn build_and_start(&self, id: &ValidName, repo: &Path, commit: &str) -> StackStatus {
        self.client
            .build(id, &build_request(repo, commit))
            .await
            .unwrap();
        self.client
            .start(id, &StartRequest::default())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The static forwarder binary the worker tests use: `BERTH_WORKER_FORWARDER_BIN`, else the
/// musl release build scripts/test.sh makes first
/// (`cargo build -p berth-forward --release --target x86_64-unknown-linux-musl`).
pub fn forwarder_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("BERTH_WORKER_FORWARDER_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("x86_64-unknown-linux-musl/release/berth-forward")
}

/// Starts a worker on 127.0.0.1:0 with its own node name and data dir, with forwarders (see
/// [`forwarder_bin`]; without the binary the worker says so and runs without).
pub async fn worker(tag: &str, tweak: impl FnOnce(&mut Config)) -> TestWorker {
    let node = format!("t{}-{tag}", std::process::id());
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        node_name: Some(node.clone()),
        registry: None,
        cluster_token: Secret::new(TOKEN),
        default_memory: "256m".into(),
        start_timeout: std::time::Duration::from_secs(60),
        forwarder_bin: Some(forwarder_bin()),
        ..Config::default()
    };
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(berth_worker::run(config, listener, shutdown.clone()));
    let client = WorkerClient::new(base.clone(), Secret::new(TOKEN));
    for _ in 0..100 {
        if client.health().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    TestWorker {
        client,
        base,
        data,
        cleanup: Cleanup { node: node.clone() },
        node,
        shutdown,
        task,
    }
}

pub fn id(s: &str) -> ValidName {
    ValidName::parse("id", s).unwrap()
}

/// The two-service fixture stack: `api` (built with a build arg, healthcheck, named volume)
/// and `web` (depends on api being healthy, fetches from it by service name, published port).
pub fn fixture_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "compose.yaml",
            r#"services:
  api:
    build:
      context: ./api
      args:
        GREETING: ${GREETING:-unset}
    healthcheck:
      test: wget -q -O- http://127.0.0.1:8080/
      interval: 1s
      timeout: 2s
      retries: 30
    volumes:
      - data:/data
  web:
    build: ./web
    depends_on:
      api:
        condition: service_healthy
    ports:
      - "8080"
    environment:
      API_URL: http://api:8080/
      SERVICE_TAGS: fixture,web
    volumes:
      - data:/data
volumes:
  data:
"#,
        ),
        (".env", "GREETING=berth-fixture\n"),
        (
            "api/Dockerfile",
            "FROM berth-base:latest\nARG GREETING\nRUN mkdir -p /www && echo \"$GREETING from api\" > /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        ),
        ("api/.dockerignore", "*.tmp\n"),
        ("api/junk.tmp", "ignored\n"),
        (
            "web/Dockerfile",
            "FROM berth-base:latest\nCOPY start.sh /start.sh\nCMD [\"/start.sh\"]\n",
        ),
        (
            "web/start.sh",
            "#!/bin/sh\nset -e\nmkdir -p /www\necho start >> /data/starts\ncp /data/starts /www/starts.txt\necho \"$BERTH_PUBLIC_ADDR_8080\" > /www/public.txt\nwget -q -O /www/api.txt \"$API_URL\"\nexec httpd -f -p 8080 -h /www\n",
        ),
    ]
}

pub async fn http_get(url: &str) -> String {
    let resp = reqwest::get(url).await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.text().await.unwrap()
}

/// Waits (up to 90 s) until Docker reports `service` of stack `id` healthy: a start may answer
/// on the worker's own run of the healthcheck, before Docker's first check.
pub async fn healthy_soon(w: &TestWorker, id: &ValidName, service: &str) -> StackStatus {
    for _ in 0..900 {
        let st = w.client.status(id).await.unwrap().unwrap();
        let health = st
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.health.clone());
        match health.as_deref() {
            Some("healthy") => return st,
            Some("starting") => {}
            other => panic!("{service} is {other:?}, not on its way to healthy: {st:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{service} of {id} never healthy");
}

/// `(path, content)` pairs as the `&str` pairs [`git_repo`] and [`git_commit`] take.
pub fn files(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// A deploy of `commit` from `repo`, as [`build_request`] names it, within `timeout_secs`.
pub fn deploy_request(repo: &Path, commit: &str, timeout_secs: u64) -> DeployRequest {
    let b = build_request(repo, commit);
    DeployRequest {
        user: b.user,
        project: b.project,
        commit: b.commit,
        repo: b.repo,
        timeout_secs: Some(timeout_secs),
    }
}

/// The stack's whole log (every operation so far).
pub async fn log_of(w: &TestWorker, id: &ValidName) -> String {
    use futures::StreamExt;
    let mut stream = w.client.logs(id, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}
