//! Builds against the real Docker engine: independent services build side by side (bounded by
//! the worker's build parallelism), a rebuild after a change to one service builds only that
//! service, and a failing BuildKit build answers with its last lines. Each test asserts on what
//! was built (the build log's progress lines, image ids), never on how long it took.

mod common;

use std::process::Command;

use berth_worker::BuilderChoice;
use common::*;

/// The position of the first log line containing `needle` (after `from`).
fn at(log: &str, needle: &str, from: usize) -> usize {
    log.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
}

fn image_id(reference: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{reference}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
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

/// Three services, each with a step nobody cached; `services` of them start at once.
fn three_services(nonce: &str) -> Vec<(String, String)> {
    let mut files = vec![(
        "compose.yaml".to_owned(),
        "services:\n  a:\n    build: ./a\n  b:\n    build: ./b\n  c:\n    build: ./c\n".to_owned(),
    )];
    for s in ["a", "b", "c"] {
        files.push((
            format!("{s}/Dockerfile"),
            format!(
                "FROM berth-base:latest\nRUN echo {nonce}-{s} > /id && sleep 1\nCMD [\"sleep\", \"600\"]\n"
            ),
        ));
    }
    files
}

fn refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect()
}

/// With a parallelism of 2, the first two services build together and the third begins only
/// once one of them is done; with 1, each begins after the one before is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_independent_services_build_in_parallel() {
    for parallelism in [2, 1] {
        let w = worker(&format!("par{parallelism}"), |c| {
            c.build_parallelism = parallelism;
        })
        .await;
        let sid = id(&format!("par-{}", w.node));
        let files = three_services(&format!("{}-{parallelism}", nonce()));
        let (repo, commit) = git_repo(&refs(&files));
        w.client
            .build(&sid, &build_request(repo.path(), &commit))
            .await
            .unwrap();
        let log = log_of(&w, &sid).await;
        let begin: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|s| at(&log, &format!("building service {s} as"), 0))
            .collect();
        let done: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|s| at(&log, &format!("service {s}: built as"), 0))
            .collect();
        let first_done = *done.iter().min().unwrap();
        if parallelism == 2 {
            assert!(
                begin[0] < first_done && begin[1] < first_done,
                "a and b did not build together:\n{log}"
            );
            assert!(
                begin[2] > first_done,
                "c began before a slot was free:\n{log}"
            );
        } else {
            assert!(
                done[0] < begin[1] && done[1] < begin[2],
                "builds overlapped with a parallelism of 1:\n{log}"
            );
        }
        // Each service's output is in the log, marked with its name.
        for s in ["a", "b", "c"] {
            assert!(log.contains(&format!("[{s}] ")), "no output of {s}:\n{log}");
        }
        let deleted = w.client.delete(&sid, false).await.unwrap();
        assert!(deleted.not_removed.is_empty(), "{deleted:?}");
        w.cleanup.assert_nothing_left();
        w.stop().await;
    }
}

/// A change to one service's context rebuilds that service only; the others keep their image
/// (tagged for the new commit too). A change outside every context builds nothing. Both
/// builders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_rebuild_after_a_one_service_change_builds_only_that_service() {
    for builder in [BuilderChoice::Auto, BuilderChoice::Classic] {
        let w = worker(&format!("part{builder:?}").to_lowercase(), |c| {
            c.builder = builder;
        })
        .await;
        let sid = id(&format!("pr-{}", w.node));
        let mut files = three_services(&format!("{}-{builder:?}", nonce()));
        files.push(("b/page.txt".to_owned(), "one\n".to_owned()));
        let b_dockerfile = files.iter_mut().find(|(n, _)| n == "b/Dockerfile").unwrap();
        b_dockerfile.1 = b_dockerfile
            .1
            .replace("CMD", "COPY page.txt /page.txt\nCMD");
        let (repo, first) = git_repo(&refs(&files));
        w.client
            .build(&sid, &build_request(repo.path(), &first))
            .await
            .unwrap();
        let project = berth_worker_api::ids::compose_project_name(&sid);
        let tag = |s: &str, commit: &str| format!("{project}-{s}:{}", &commit[..12]);
        let before: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| image_id(&tag(s, &first)))
            .collect();

        // One file of b changes.
        let second = git_commit(repo.path(), &[("b/page.txt", "two\n")]);
        let from = log_of(&w, &sid).await.lines().count();
        w.client
            .build(&sid, &build_request(repo.path(), &second))
            .await
            .unwrap();
        let log = log_of(&w, &sid).await;
        let after: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| image_id(&tag(s, &second)))
            .collect();
        assert_eq!(after[0], before[0], "a was rebuilt:\n{log}");
        assert_ne!(after[1], before[1], "b was not rebuilt:\n{log}");
        assert_eq!(after[2], before[2], "c was rebuilt:\n{log}");
        at(&log, "service a: unchanged", from);
        at(&log, "building service b as", from);
        at(&log, "service c: unchanged", from);
        assert!(
            !log.lines()
                .skip(from)
                .any(|l| l.contains("building service a") || l.contains("building service c")),
            "{log}"
        );
        let latest = format!("{project}-b:latest");
        assert_eq!(image_id(&latest), after[1]);

        // A file outside every context: nothing is built.
        let third = git_commit(repo.path(), &[("README.md", "notes\n")]);
        let from = log_of(&w, &sid).await.lines().count();
        w.client
            .build(&sid, &build_request(repo.path(), &third))
            .await
            .unwrap();
        let log = log_of(&w, &sid).await;
        assert!(
            !log.lines()
                .skip(from)
                .any(|l| l.contains("building service")),
            "{log}"
        );
        for (i, s) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(image_id(&tag(s, &third)), after[i], "{s}:\n{log}");
        }
        let deleted = w.client.delete(&sid, false).await.unwrap();
        assert!(deleted.not_removed.is_empty(), "{deleted:?}");
        w.cleanup.assert_nothing_left();
        w.stop().await;
    }
}

/// A failing step under BuildKit: the answer says which command failed, with its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_buildkit_failure_carries_the_last_lines() {
    let w = worker("bkfail", |c| c.builder = BuilderChoice::BuildKit).await;
    let sid = id(&format!("bkf-{}", w.node));
    let n = nonce();
    let (repo, commit) = git_repo(&[
        ("compose.yaml", "services:\n  app:\n    build: .\n"),
        (
            "Dockerfile",
            &format!("FROM berth-base:latest\nRUN echo {n}-before-failure && false\n"),
        ),
    ]);
    let err = w
        .client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap_err();
    let message = match err {
        berth_worker_api::WorkerClientError::Api { status, body } => {
            assert_eq!(status.as_u16(), 422, "{body:?}");
            body.error.message
        }
        other => panic!("{other:?}"),
    };
    assert!(
        message.contains("exit code: 1")
            && message.contains("last log lines")
            && message.contains(&format!("{n}-before-failure")),
        "{message}"
    );
    let _ = w.client.delete(&sid, false).await;
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
