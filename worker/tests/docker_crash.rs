//! `kill -9` of the worker process in the middle of a build: the restarted worker marks the build
//! failed (interrupted) and a retry of the same commit succeeds.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_worker_api::{Secret, StackState, WorkerClient};
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

async fn wait_healthy(client: &WorkerClient) {
    for _ in 0..200 {
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
