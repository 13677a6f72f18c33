//! Scale-out code store against a real git server (`git daemon --enable=receive-pack`), and the
//! signed, retried webhook against a receiver that fails at first.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use berth_master::webhook::{SIGNATURE_HEADER, signature};
use berth_worker_api::Secret;
use common::*;
use reqwest::Method;

struct Daemon {
    child: std::process::Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn git_daemon() -> Daemon {
    let root = tempfile::tempdir().unwrap();
    // A free port: bind, read, release (git daemon binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Run git-daemon itself (not the `git daemon` wrapper) so killing the child stops it.
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .unwrap();
    let exec_path = String::from_utf8(exec_path.stdout).unwrap();
    let child =
        std::process::Command::new(std::path::Path::new(exec_path.trim()).join("git-daemon"))
            .args([
                "--enable=receive-pack",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", root.path().display()),
                &root.path().display().to_string(),
            ])
            .spawn()
            .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Daemon { child, port, root }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_are_pushed_to_the_forge_and_workers_clone_from_it() {
    let daemon = git_daemon().await;
    // Like Gogs, git daemon needs the repository to exist.
    git(
        daemon.root.path(),
        &["init", "-q", "--bare", "alice/shop.git"],
    )
    .await;
    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.git_remote_template = Some(format!(
        "git://127.0.0.1:{}/{{user}}/{{id}}.git",
        daemon.port
    ));
    let m = master(cfg).await;
    let (status, rec) = m.upload("shop", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("built")),
        "{rec}"
    );
    let forge_url = format!("git://127.0.0.1:{}/alice/shop.git", daemon.port);
    assert_eq!(rec["repo"], forge_url);
    let commit = rec["commit"].as_str().unwrap();
    let bare = daemon.root.path().join("alice/shop.git");
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]).await.trim(),
        commit
    );
    // The stand-in cloned from the forge (the URL the master handed it).
    assert_eq!(worker.state.cloned.lock().unwrap()[0].0, commit);

    // A second upload is pushed on top.
    let (_, rec2) = m.upload("shop", "alice", "&build=false", app("v2")).await;
    let c2 = rec2["commit"].as_str().unwrap();
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]).await.trim(),
        c2
    );
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main^"]).await.trim(),
        commit
    );

    // A forge that refuses (no such repo) answers 502 and leaves nothing: no record, and the
    // repository born with the upload is gone again.
    let (status, body) = m.upload("other", "alice", "", app("v1")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "forge_error");
    let (status, _) = m.call(Method::GET, "/v1/instances/other").await;
    assert_eq!(status, 404);
    assert!(!m.data.join("git/alice/other.git").exists());

    // A forge refusing a later push: `main` goes back to the recorded commit.
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, body) = m.upload("shop", "alice", "&build=false", app("v3")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "forge_error");
    let ours = m.data.join("git/alice/shop.git");
    assert_eq!(
        git(&ours, &["rev-parse", "refs/heads/main"]).await.trim(),
        c2
    );
    let (_, rec3) = m.call(Method::GET, "/v1/instances/shop").await;
    assert_eq!(rec3, rec2);
    // Once the forge accepts again, the same upload goes through.
    std::fs::remove_file(&hook).unwrap();
    let (status, rec4) = m.upload("shop", "alice", "&build=false", app("v3")).await;
    assert_eq!(status, 200, "{rec4}");
    let c4 = rec4["commit"].as_str().unwrap();
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main^"]).await.trim(),
        c2
    );
    assert_eq!(
        git(&ours, &["rev-parse", "refs/heads/main"]).await.trim(),
        c4
    );
    m.stop().await;
}

#[derive(Default)]
struct Received {
    /// (signature header, body)
    deliveries: Mutex<Vec<(String, Vec<u8>)>>,
    failures_left: Mutex<u32>,
}

async fn receive(
    State(r): State<Arc<Received>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let sig = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    r.deliveries.lock().unwrap().push((sig, body.to_vec()));
    let mut left = r.failures_left.lock().unwrap();
    if *left > 0 {
        *left -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_changes_are_signed_and_retried() {
    let received = Arc::new(Received {
        failures_left: Mutex::new(2),
        ..Received::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook_app = Router::new()
        .route("/hook", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, hook_app).await.unwrap() });

    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.webhook_url = Some(hook);
    cfg.webhook_secret = Some(Secret::new("hook-secret"));
    let m = master(cfg).await;
    let (status, _) = m.upload("hooked", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200);
    // The upload answered before delivery succeeded; wait for the third attempt.
    for _ in 0..400 {
        if received.deliveries.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let deliveries = received.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 3, "two failures then success");
    for (sig, body) in &deliveries {
        assert_eq!(sig, &signature(&Secret::new("hook-secret"), body));
        assert_eq!(body, &deliveries[0].1, "retries resend the same event");
    }
    let event: serde_json::Value = serde_json::from_slice(&deliveries[0].1).unwrap();
    assert_eq!(event["event"], "state_changed");
    assert_eq!(event["id"], "hooked");
    assert_eq!(event["state"], "uploaded");
    assert!(event["previous_state"].is_null());
    m.stop().await;
}
