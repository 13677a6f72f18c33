//! The check of a built image's ancestry against the real Docker engine (issue 14, finding 4):
//! an image built on another berth instance's image is refused after the build even when the
//! Dockerfile check could not see it, and ordinary builds, the same repository deployed twice
//! among them, pass.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use berth_worker::BuilderChoice;
use berth_worker::ancestry::foreign_ancestor;
use berth_worker::compose::plan::{Holder, Owner};
use berth_worker_api::{ErrorCode, StackState, WorkerClientError};
use common::*;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::new()
    }
}

/// `docker build -t tag` of `dockerfile` with `labels`, outside berth (no Dockerfile check).
fn plain_build(tag: &str, dockerfile: &str, labels: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let mut cmd = Command::new("docker");
    cmd.args(["build", "-q", "-t", tag]);
    for l in labels {
        cmd.args(["--label", l]);
    }
    let out = cmd.arg(dir.path()).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {out:?}");
}

/// The stack's log so far; empty while the worker does not know the stack yet.
async fn log_so_far(w: &TestWorker, id: &berth_worker_api::ValidName) -> String {
    use futures::StreamExt;
    let Ok(mut stream) = w.client.logs(id, false).await else {
        return String::new();
    };
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_image_built_on_another_instances_image_is_refused_after_the_build() {
    refused_after_the_build("ancestry", BuilderChoice::BuildKit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_image_built_on_another_instances_image_is_refused_after_a_classic_build() {
    refused_after_the_build("ancestry-cl", BuilderChoice::Classic).await;
}

async fn refused_after_the_build(tag: &str, builder: BuilderChoice) {
    let w = worker(tag, |c| {
        c.build_parallelism = 1;
        c.builder = builder;
    })
    .await;
    let n = nonce();
    let engine = berth_worker::docker::connect().await.unwrap();

    // Instance A: a layer of its own on the shared base.
    let a = id(&format!("anca-{}", w.node));
    let a_files = [
        ("compose.yaml", "services:\n  web:\n    build: .\n"),
        (
            "Dockerfile",
            &*format!("FROM berth-base:latest\nRUN echo a-secret-{n} > /greeting\n"),
        ),
    ];
    let (a_repo, a_commit) = git_repo(&a_files);
    w.client
        .build(&a, &build_request(a_repo.path(), &a_commit))
        .await
        .unwrap();
    let theirs = format!("{a}-web:latest");

    // A normal build on the shared base passes.
    let b = id(&format!("ancb-{}", w.node));
    let b_dockerfile = format!("FROM berth-base:latest\nRUN echo b-{n} > /greeting\n");
    let (b_repo, b_commit) = git_repo(&[
        ("compose.yaml", "services:\n  web:\n    build: .\n"),
        ("Dockerfile", &b_dockerfile),
    ]);
    w.client
        .build(&b, &build_request(b_repo.path(), &b_commit))
        .await
        .unwrap();

    // The check itself, on images `docker build` made from A's image with B's labels.
    let owner_b = Owner {
        instance: b.to_string(),
        node: w.node.clone(),
    };
    let labels = [
        format!("org.berth.instance={b}"),
        format!("org.berth.node={}", w.node),
    ];
    let mine = format!("{b}-web:latest");
    assert!(
        foreign_ancestor(&engine, &owner_b, &mine)
            .await
            .unwrap()
            .is_none(),
        "B's own build"
    );
    // One at a time: an image labelled as B's own counts as B's, and its layers as B's to use.
    let probes = [
        (
            format!("berth-ancestry-layer-{n}"),
            format!("FROM {theirs}\nRUN cat /greeting > /stolen\n"),
        ),
        (
            format!("berth-ancestry-cmd-{n}"),
            format!("FROM {theirs}\nCMD [\"cat\", \"/greeting\"]\n"),
        ),
    ];
    for (probe, dockerfile) in &probes {
        plain_build(probe, dockerfile, &labels);
        let found = foreign_ancestor(&engine, &owner_b, probe)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{probe} builds on {theirs} and passed"));
        assert!(
            found.image.starts_with(&format!("{a}-web:")),
            "{probe}: {found:?}"
        );
        assert_eq!(
            found.holder,
            Holder::Instance {
                instance: a.to_string(),
                node: w.node.clone()
            },
            "{probe}"
        );
        docker(&["rmi", probe]);
    }

    // Through the worker: the base `neutral` does not exist when the Dockerfile is checked, and
    // is A's image by the time it is built (tagged while the first service builds).
    let d = id(&format!("ancd-{}", w.node));
    let neutral = format!("berth-ancestry-neutral-{n}:latest");
    let slow = format!("FROM berth-base:latest\nRUN sleep 4 && echo {n} > /slow\n");
    let app = format!("FROM {neutral}\nRUN cat /greeting > /stolen\n");
    let (d_repo, d_commit) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  slow:\n    build: ./slow\n  app:\n    build: ./app\n",
        ),
        ("slow/Dockerfile", &slow),
        ("app/Dockerfile", &app),
    ]);
    let request = build_request(d_repo.path(), &d_commit);
    let tag_when_building = async {
        for _ in 0..600 {
            if log_so_far(&w, &d).await.contains("building service slow") {
                assert!(
                    Command::new("docker")
                        .args(["tag", &theirs, &neutral])
                        .status()
                        .unwrap()
                        .success()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the build of service slow never began");
    };
    let (result, ()) = tokio::join!(w.client.build(&d, &request), tag_when_building);
    let Err(WorkerClientError::Api { status, body }) = result else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(status.as_u16(), 422, "{body:?}");
    assert_eq!(body.error.code, ErrorCode::PolicyRejected, "{body:?}");
    let detail = &body.error.details[0];
    assert_eq!(detail.service.as_deref(), Some("app"));
    assert_eq!(detail.field, "services.app.build");
    assert!(
        detail
            .reason
            .contains(&format!("belongs to berth instance {a}"))
            && detail.reason.contains(&format!("{a}-web:")),
        "{}",
        detail.reason
    );
    assert!(
        docker(&["images", "-q", &format!("{d}-app")]).is_empty(),
        "the refused image was removed"
    );
    let st = w.client.status(&d).await.unwrap().unwrap();
    assert_eq!(st.state, StackState::Failed, "{st:?}");

    docker(&["rmi", &neutral]);

    // A's repository built as another instance passes: the same layers (from the cache or built
    // again), nothing on top.
    let c = id(&format!("ancc-{}", w.node));
    let (c_repo, c_commit) = git_repo(&a_files);
    w.client
        .build(&c, &build_request(c_repo.path(), &c_commit))
        .await
        .unwrap();
    for s in [&a, &b, &c, &d] {
        w.client.delete(s, false).await.unwrap();
    }
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
