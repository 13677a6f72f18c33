//! Errors that say who must act, against the real Docker engine: each fault of the app answers
//! 422 with its own code, the service, the cause, the probe's output and the last log lines
//! (ANSI sequences stripped).

mod common;

use berth_worker_api::{ErrorCode, ErrorInfo, StartRequest, WorkerClientError};
use common::*;

/// Builds and starts `compose`; answers the first error.
async fn fault_of(w: &TestWorker, name: &str, files: &[(&str, &str)]) -> ErrorInfo {
    let (repo, commit) = git_repo(files);
    let sid = id(&format!("{name}-{}", w.node));
    let result = match w
        .client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
    {
        Ok(_) => w.client.start(&sid, &StartRequest::default()).await,
        Err(e) => Err(e),
    };
    let err = result.expect_err(name);
    let _ = w.client.delete(&sid, false).await;
    match err {
        WorkerClientError::Api { status, body } => {
            assert_eq!(status.as_u16(), 422, "{name}: {body:?}");
            body.error
        }
        other => panic!("{name}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_each_fault_of_the_app_has_its_code() {
    let w = worker("faults", |_| {}).await;

    let e = fault_of(
        &w,
        "yaml",
        &[("compose.yaml", "services:\n  a: [unclosed\n")],
    )
    .await;
    assert_eq!(e.code, ErrorCode::InvalidCompose, "{e:?}");

    let e = fault_of(
        &w,
        "nohc",
        &[(
            "compose.yaml",
            "services:\n  db:\n    image: berth-base:latest\n    command: [sleep, \"1000\"]\n  app:\n    image: berth-base:latest\n    command: [sleep, \"1000\"]\n    depends_on:\n      db: {condition: service_healthy}\n",
        )],
    )
    .await;
    assert_eq!(e.code, ErrorCode::InvalidCompose, "{e:?}");
    assert!(e.message.contains("no healthcheck"), "{e:?}");

    let e = fault_of(
        &w,
        "priv",
        &[(
            "compose.yaml",
            "services:\n  a:\n    image: berth-base:latest\n    privileged: true\n",
        )],
    )
    .await;
    assert_eq!(e.code, ErrorCode::PolicyRejected, "{e:?}");

    let e = fault_of(
        &w,
        "build",
        &[
            ("compose.yaml", "services:\n  web:\n    build: ./web\n"),
            (
                "web/Dockerfile",
                "FROM berth-base:latest\nRUN printf '\\033[31mcompile error: missing semicolon\\033[0m\\n'; exit 2\n",
            ),
        ],
    )
    .await;
    assert_eq!(e.code, ErrorCode::BuildFailed, "{e:?}");
    assert_eq!(e.service.as_deref(), Some("web"));
    let lines = e.last_log_lines.join("\n");
    assert!(lines.contains("compile error: missing semicolon"), "{e:?}");
    assert!(
        !lines.contains('\u{1b}') && !e.message.contains('\u{1b}'),
        "{e:?}"
    );

    let e = fault_of(
        &w,
        "image",
        &[(
            "compose.yaml",
            "services:\n  db:\n    image: berth-truth-never-built:1\n",
        )],
    )
    .await;
    assert_eq!(e.code, ErrorCode::ImageMissing, "{e:?}");
    assert_eq!(e.service.as_deref(), Some("db"));

    let e = fault_of(
        &w,
        "crash",
        &[(
            "compose.yaml",
            "services:\n  api:\n    image: berth-base:latest\n    command: [\"sh\", \"-c\", \"printf '\\\\033[1;31mFATAL\\\\033[0m: no DATABASE_URL\\\\n'; exit 3\"]\n  web:\n    image: berth-base:latest\n    command: [sleep, \"1000\"]\n    depends_on:\n      api: {condition: service_completed_successfully}\n",
        )],
    )
    .await;
    assert_eq!(e.code, ErrorCode::StartFailed, "{e:?}");
    assert_eq!(e.service.as_deref(), Some("api"));
    assert!(e.message.contains("code 3"), "{e:?}");
    assert!(
        e.last_log_lines
            .iter()
            .any(|l| l == "FATAL: no DATABASE_URL"),
        "{e:?}"
    );

    let e = fault_of(
        &w,
        "sick",
        &[(
            "compose.yaml",
            "services:\n  api:\n    image: berth-base:latest\n    command: [sleep, \"1000\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"echo db refused the connection; exit 1\"]\n      interval: 1s\n      retries: 1\n  web:\n    image: berth-base:latest\n    command: [sleep, \"1000\"]\n    depends_on:\n      api: {condition: service_healthy}\n",
        )],
    )
    .await;
    assert_eq!(e.code, ErrorCode::Unhealthy, "{e:?}");
    assert_eq!(e.service.as_deref(), Some("api"));
    assert_eq!(
        e.probe_output.as_deref(),
        Some("db refused the connection"),
        "{e:?}"
    );

    w.cleanup.assert_nothing_left();
    w.stop().await;
}
