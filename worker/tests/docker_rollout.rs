//! Rollouts against the real Docker engine: a build beside the running stack leaves it running,
//! a deploy switches the answer, a release that fails its healthcheck leaves the old one serving
//! with the reason, and a rollback to a kept release builds nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use berth_worker_api::StackState;
use common::*;

/// A two-service app: `api` (no published port, a healthcheck: rolls start-first) and `web`
/// (published port: rolls stop-first), each answering with its release.
fn app(release: &str, api_check: &str) -> Vec<(String, String)> {
    let compose = format!(
        r#"services:
  api:
    build: ./api
    healthcheck:
      test: {api_check}
      interval: 1s
      timeout: 2s
      retries: 3
  web:
    build: ./web
    depends_on:
      api:
        condition: service_healthy
    ports:
      - "8080"
"#
    );
    let dockerfile = "FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    vec![
        ("compose.yaml".into(), compose),
        ("api/Dockerfile".into(), dockerfile.into()),
        ("api/release".into(), format!("api {release}\n")),
        ("web/Dockerfile".into(), dockerfile.into()),
        ("web/release".into(), format!("web {release}\n")),
    ]
}

const HEALTHY: &str = "wget -q -O- http://127.0.0.1:8080/";

fn container_id(name: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deploy_rollback_and_a_failed_rollout() {
    let w = worker("rollout", |c| c.keep_releases = 2).await;
    let id = id("rollout-1");
    let v1 = app("v1", HEALTHY);
    let (repo, c1) = git_repo(&files(&v1));
    let started = w.build_and_start(&id, repo.path(), &c1).await;
    let url = format!("http://{}/", started.endpoints[0].address());
    assert_eq!(http_get(&url).await, "web v1\n");
    let api = format!("{}-api-1", started.project_name);
    let api_v1 = container_id(&api);

    // A client loop on the published port for the rest of the test, counting failures.
    let (ok, failed, stop) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let looping = {
        let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), url.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    // A build of the next release beside the running stack leaves it running and serving.
    let c2 = git_commit(repo.path(), &files(&app("v2", HEALTHY)));
    let built = w
        .client
        .build(&id, &build_request(repo.path(), &c2))
        .await
        .unwrap();
    assert_eq!(built.state, StackState::Running);
    assert_eq!(http_get(&url).await, "web v1\n");
    assert_eq!(container_id(&api), api_v1, "the build recreated api");

    // Deploy: the answer switches, the api container is new, no old container is left.
    let done = w
        .client
        .deploy(&id, &deploy_request(repo.path(), &c2, 30))
        .await
        .unwrap();
    assert_eq!(done.state, StackState::Running);
    assert_eq!(done.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(http_get(&url).await, "web v2\n");
    assert_eq!(done.endpoints[0].host_port, started.endpoints[0].host_port);
    assert_ne!(container_id(&api), api_v1);
    // The old containers retire in the background, under the stack's lock.
    for _ in 0..600 {
        if container_id(&format!("{api}-old")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(container_id(&format!("{api}-old")), "");
    let api_v2 = container_id(&api);

    // A release whose api fails its healthcheck: the rollout stops at api, the old release
    // keeps serving, and the error names the service.
    let c3 = git_commit(repo.path(), &files(&app("v3", "[\"CMD\", \"false\"]")));
    let err = w
        .client
        .deploy(&id, &deploy_request(repo.path(), &c3, 30))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("service api"), "{message}");
    assert_eq!(http_get(&url).await, "web v2\n");
    assert_eq!(container_id(&api), api_v2, "the old api was not given back");
    let status = w.client.status(&id).await.unwrap().unwrap();
    assert_eq!(status.state, StackState::Running);
    assert_eq!(status.commit.as_deref(), Some(c2.as_str()));
    let log = log_of(&w, &id).await;
    assert!(log.contains("old container serves again"), "{log}");

    // Rollback to the kept first release: nothing is built.
    let back = w
        .client
        .deploy(&id, &deploy_request(repo.path(), &c1, 30))
        .await
        .unwrap();
    assert_eq!(http_get(&url).await, "web v1\n");
    assert_eq!(back.kept, [c1.clone(), c2.clone()]);
    let log = log_of(&w, &id).await;
    let rollback = &log[log.rfind("== deploy").unwrap()..];
    assert!(
        rollback.contains("images kept, nothing built"),
        "{rollback}"
    );
    assert!(!rollback.contains("building service"), "{rollback}");

    stop.store(true, Ordering::SeqCst);
    looping.await.unwrap();
    // A measurement, not a pass mark: `web` publishes its port and rolls stop-first.
    eprintln!(
        "requests on the published port during the rollouts: {} ok, {} failed",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    w.client.delete(&id, false).await.unwrap();
    w.stop().await;
}
