//! `kill -9` of the worker process in the middle of a build (the restarted worker marks the build
//! failed, interrupted, and a retry of the same commit succeeds) and in the middle of a rollout
//! (the restarted worker serves one complete release with one container per service, and a
//! retry of the deploy finishes it), also while a deploy that answered retires the old
//! containers in the background.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_worker_api::{DeployRequest, Secret, StackState, StartRequest, ValidName, WorkerClient};
use common::*;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(data: &std::path::Path, node: &str, port: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_berth-worker"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--no-registry",
                "--node-name",
                node,
            ])
            .arg("--data-dir")
            .arg(data)
            .env("BERTH_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits for the worker's API (a restarted worker adopts its stacks first, which can stop the
/// old containers of an interrupted rollout with their grace periods).
async fn wait_healthy(client: &WorkerClient) {
    for _ in 0..1200 {
        if client.health().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_9_worker_mid_build_then_retry_succeeds() {
    let node = format!("t{}-kill9", std::process::id());
    let _cleanup = Cleanup { node: node.clone() };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = WorkerClient::new(format!("http://127.0.0.1:{port}"), Secret::new(TOKEN));
    // The RUN line names this run, so no build cache from an earlier run (BuildKit keeps it
    // across releases) can finish the build before the kill.
    let dockerfile = format!("FROM berth-base:latest\nRUN echo {node} && sleep 6\n");
    let (repo, commit) = git_repo(&[
        ("compose.yaml", "services:\n  slow:\n    build: .\n"),
        ("Dockerfile", dockerfile.as_str()),
    ]);
    let sid = id(&format!("k9-{node}"));
    let req = build_request(repo.path(), &commit);

    let mut first = spawn_worker(data.path(), &node, port);
    wait_healthy(&client).await;
    let c = client.clone();
    let (sid2, req2) = (sid.clone(), req.clone());
    let build = tokio::spawn(async move { c.build(&sid2, &req2).await });
    // Wait until the build is under way, then kill the worker without warning.
    loop {
        if let Ok(Some(st)) = client.status(&sid).await
            && st.state == StackState::Building
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        build.await.unwrap().is_err(),
        "the caller sees the connection drop"
    );

    let _second = spawn_worker(data.path(), &node, port);
    wait_healthy(&client).await;
    let st = client.status(&sid).await.unwrap().unwrap();
    assert_eq!(st.state, StackState::Failed);
    assert!(st.error.unwrap_or_default().contains("interrupted"));
    let rebuilt = client.build(&sid, &req).await.unwrap();
    assert_eq!(rebuilt.state, StackState::Built);
    assert_eq!(rebuilt.commit.as_deref(), Some(commit.as_str()));
    client.delete(&sid, false).await.unwrap();
}

/// A two-service app answering with its release: `api` (no published port: rolls start-first;
/// its healthcheck passes `ready_after` seconds after it starts, and as PID 1 without a handler
/// it ignores SIGTERM, so stopping an old one takes Docker's 10 s) and `web` (a published
/// port: rolls stop-first), which waits for `api` to be healthy.
fn slow_app(release: &str, ready_after: u32) -> Vec<(String, String)> {
    let compose = r#"services:
  api:
    build: ./api
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      timeout: 2s
      retries: 30
  web:
    build: ./web
    depends_on:
      api:
        condition: service_healthy
    ports:
      - "8080"
    init: true
"#
    .to_owned();
    let api = format!(
        "FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"sh\", \"-c\", \"sleep {ready_after}; touch /tmp/ready; exec httpd -f -p 8080 -h /www\"]\n"
    );
    let web = "FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    vec![
        ("compose.yaml".into(), compose),
        ("api/Dockerfile".into(), api),
        ("api/release".into(), format!("api {release}\n")),
        ("web/Dockerfile".into(), web.into()),
        ("web/release".into(), format!("web {release}\n")),
    ]
}

/// `name commit` of each container of stack `sid`, sorted.
fn containers_of(sid: &ValidName) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=org.berth.instance={sid}"),
            "--format",
            "{{.Names}} {{.Label \"org.berth.commit\"}}|{{.Label \"org.berth.forward\"}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        // A forwarder (labelled with the service it forwards to) is not a service's container.
        .filter_map(|l| l.strip_suffix('|').map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// The worker's on-disk record of stack `sid`.
fn record_of(data: &std::path::Path, sid: &ValidName) -> serde_json::Value {
    let path = data.join("stacks").join(sid.as_str()).join("state.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn log_of(client: &WorkerClient, id: &ValidName) -> String {
    use futures::StreamExt;
    let mut stream = client.logs(id, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` every 50 ms, for at most two minutes.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_9_worker_mid_rollout_then_retry_finishes() {
    let node = format!("t{}-kill9roll", std::process::id());
    let _cleanup = Cleanup { node: node.clone() };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = WorkerClient::new(format!("http://127.0.0.1:{port}"), Secret::new(TOKEN));
    let sid = id(&format!("k9r-{node}"));
    let (repo, c1) = git_repo(&files(&slow_app("v1", 0)));
    let c2 = git_commit(repo.path(), &files(&slow_app("v2", 5)));
    let deploy = DeployRequest {
        timeout_secs: Some(120),
        ..{
            let b = build_request(repo.path(), &c2);
            DeployRequest {
                user: b.user,
                project: b.project,
                commit: b.commit,
                repo: b.repo,
                timeout_secs: None,
            }
        }
    };

    let mut worker = spawn_worker(data.path(), &node, port);
    wait_healthy(&client).await;
    client
        .build(&sid, &build_request(repo.path(), &c1))
        .await
        .unwrap();
    let started = client.start(&sid, &StartRequest::default()).await.unwrap();
    let project = started.project_name.clone();
    let url = format!("http://{}/", started.endpoints[0].address());
    assert_eq!(http_get(&url).await, "web v1\n");
    let one_each = |commit: &str| {
        vec![
            format!("{project}-api-1 {commit}"),
            format!("{project}-web-1 {commit}"),
        ]
    };
    assert_eq!(containers_of(&sid), one_each(&c1));

    // 1. Killed while the new api waits for its healthcheck (the old one put aside): the
    // restarted worker goes back to v1.
    let rollout = {
        let (c, sid, req) = (client.clone(), sid.clone(), deploy.clone());
        tokio::spawn(async move { c.deploy(&sid, &req).await })
    };
    let aside = format!("{project}-api-1-old ");
    until("the api put aside", || {
        containers_of(&sid).iter().any(|c| c.starts_with(&aside))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let note = record_of(data.path(), &sid)["rollout"].clone();
    assert_eq!(note["to"], c2.as_str(), "{note}");
    assert_eq!(note["from"], c1.as_str(), "{note}");
    assert_eq!(note["ready"], false, "{note}");
    worker.0.kill().unwrap();
    worker.0.wait().unwrap();
    assert!(rollout.await.unwrap().is_err(), "the caller sees the drop");
    let mid = containers_of(&sid);
    assert!(mid.iter().any(|c| c.starts_with(&aside)), "{mid:?}");

    worker = spawn_worker(data.path(), &node, port);
    wait_healthy(&client).await;
    assert_eq!(
        containers_of(&sid),
        one_each(&c1),
        "back to one complete v1"
    );
    assert_eq!(http_get(&url).await, "web v1\n");
    let st = client.status(&sid).await.unwrap().unwrap();
    assert_eq!(st.state, StackState::Running);
    assert_eq!(st.running_commit.as_deref(), Some(c1.as_str()));
    assert!(!st.rolling);
    assert!(record_of(data.path(), &sid)["rollout"].is_null());
    let log = log_of(&client, &sid).await;
    assert!(log.contains("going back to the old release"), "{log}");
    assert!(
        log.contains("service api: old container serves again"),
        "{log}"
    );

    // 2. The deploy answers once the new release serves, while the old containers retire in
    // the background (the old api ignores SIGTERM: 10 s). Killed meanwhile, the restarted
    // worker goes forward to v2.
    let done = client.deploy(&sid, &deploy).await.unwrap();
    assert_eq!(done.running_commit.as_deref(), Some(c2.as_str()));
    assert!(done.rolling, "the old containers are still retiring");
    assert_eq!(http_get(&url).await, "web v2\n");
    let mid = containers_of(&sid);
    assert!(mid.iter().any(|c| c.starts_with(&aside)), "{mid:?}");
    assert_eq!(record_of(data.path(), &sid)["rollout"]["ready"], true);
    worker.0.kill().unwrap();
    worker.0.wait().unwrap();

    worker = spawn_worker(data.path(), &node, port);
    wait_healthy(&client).await;
    assert_eq!(
        containers_of(&sid),
        one_each(&c2),
        "forward to one complete v2"
    );
    assert_eq!(http_get(&url).await, "web v2\n");
    let st = client.status(&sid).await.unwrap().unwrap();
    assert_eq!(st.running_commit.as_deref(), Some(c2.as_str()));
    assert_eq!(st.commit.as_deref(), Some(c2.as_str()));
    let log = log_of(&client, &sid).await;
    assert!(log.contains("going forward"), "{log}");

    // 3. A retry finishes at once: nothing left to switch.
    let done = client.deploy(&sid, &deploy).await.unwrap();
    assert_eq!(done.running_commit.as_deref(), Some(c2.as_str()));
    assert_eq!(containers_of(&sid), one_each(&c2));
    let log = log_of(&client, &sid).await;
    let last = &log[log.rfind("== deploy").unwrap()..];
    assert!(
        last.contains(&format!("rolling from {c2} to {c2}")),
        "{last}"
    );
    assert!(last.contains("service api: unchanged"), "{last}");
    client.delete(&sid, false).await.unwrap();
    drop(worker);
}
