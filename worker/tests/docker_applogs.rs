//! App logs against the real Docker engine: the containers' own output through
//! `GET /v1/stacks/{id}/logs?source=app`, prefixed with the service name, filtered by service and
//! tail, and followed across a container restart without repeating a line.

mod common;

use std::process::Command;
use std::time::Duration;

use berth_worker_api::{LogQuery, LogSource, ValidName, WorkerClientError};
use common::*;
use futures::StreamExt;

/// `app` counts its boots on a volume and ticks; `db` says one line and waits.
const STACK: &str = r#"services:
  app:
    image: berth-base:latest
    command: ["sh", "-c", "n=$$(cat /data/n 2>/dev/null || echo 0); n=$$((n+1)); echo $$n > /data/n; echo boot $$n; i=0; while true; do i=$$((i+1)); echo tick $$n.$$i; sleep 0.2; done"]
    volumes: ["data:/data"]
  db:
    image: berth-base:latest
    command: ["sh", "-c", "echo ready >&2; exec sleep 100000"]
volumes:
  data:
"#;

async fn read_all(w: &TestWorker, sid: &ValidName, q: &LogQuery) -> String {
    let stream = w.client.log_stream(sid, q).await.unwrap();
    let bytes: Vec<u8> = stream
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_app_logs_are_prefixed_filtered_and_followed_across_a_restart() {
    let w = worker("applogs", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", STACK)]);
    let sid = id(&format!("logs-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    let app = started
        .services
        .iter()
        .find(|s| s.name == "app")
        .and_then(|s| s.container.clone())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Without a source the stream is berth's own output, as before.
    let ops = read_all(&w, &sid, &LogQuery::default()).await;
    assert!(ops.contains("== start"), "{ops}");
    assert!(!ops.contains("tick 1."), "{ops}");

    // Both services, each line prefixed (names padded to the same width), stderr included.
    let all = read_all(
        &w,
        &sid,
        &LogQuery {
            source: Some(LogSource::App),
            ..LogQuery::default()
        },
    )
    .await;
    assert!(all.contains("app | boot 1\n"), "{all}");
    assert!(all.contains("app | tick 1.1\n"), "{all}");
    assert!(all.contains("db  | ready\n"), "{all}");

    // One service (naming it implies source=app), its last line only.
    let tail = read_all(
        &w,
        &sid,
        &LogQuery {
            service: Some("db".into()),
            tail: Some(1),
            ..LogQuery::default()
        },
    )
    .await;
    assert_eq!(tail, "db | ready\n");

    // A service without a container is a 404 naming it.
    let err = w
        .client
        .log_stream(
            &sid,
            &LogQuery {
                service: Some("nope".into()),
                ..LogQuery::default()
            },
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, WorkerClientError::Api { status, body } if status.as_u16() == 404 && body.error.message.contains("nope")),
        "{err}"
    );

    // Follow app across a restart: lines of both boots arrive, none twice.
    let mut stream = w
        .client
        .log_stream(
            &sid,
            &LogQuery {
                service: Some("app".into()),
                follow: Some(true),
                ..LogQuery::default()
            },
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("app | tick 2.5\n") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no second boot in time; got:\n{seen}"))
            .expect("the followed stream ended")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !restarted && seen.contains("app | tick 1.3\n") {
            let out = Command::new("docker")
                .args(["restart", "-t", "1", &app])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            restarted = true;
        }
    }
    drop(stream);
    assert!(seen.starts_with("app | boot 1\n"), "{seen}");
    assert!(seen.contains("app | boot 2\n"), "{seen}");
    let mut lines: Vec<&str> = seen.lines().collect();
    let count = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), count, "a line came twice:\n{seen}");

    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
