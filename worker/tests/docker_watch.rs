//! The watcher against the real Docker engine: a crash loop, a service that stops, one that
//! turns unhealthy and a one-shot are each reported as such (the stack `degraded`), and a service
//! that crashes twice and then keeps running brings the stack back to `running`.

mod common;

use std::time::Duration;

use berth_worker_api::{ServiceHealth, ServiceState, StackState, StackStatus, ValidName};
use common::*;

/// Waits until `pred` holds of the stack's status; answers it with the time it took.
async fn until(
    w: &TestWorker,
    sid: &ValidName,
    what: &str,
    pred: impl Fn(&StackStatus) -> bool,
) -> (StackStatus, Duration) {
    let begun = tokio::time::Instant::now();
    loop {
        let st = w.client.status(sid).await.unwrap().unwrap();
        if pred(&st) {
            return (st, begun.elapsed());
        }
        assert!(
            begun.elapsed() < Duration::from_secs(90),
            "never {what}: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn service<'a>(st: &'a StackStatus, name: &str) -> &'a ServiceHealth {
    st.health
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in {st:#?}"))
}

/// `crash` runs 2 s then dies (FATAL) forever; `sick` passes its probe until /tmp/ok goes;
/// `seed` is a one-shot; `steady` just runs.
const BROKEN: &str = r#"services:
  crash:
    image: berth-base:latest
    restart: always
    command: ["sh", "-c", "echo booting; sleep 2; echo 'FATAL: no database' >&2; exit 1"]
  sick:
    image: berth-base:latest
    command: ["sh", "-c", "touch /tmp/ok; (sleep 3; rm /tmp/ok) & exec sleep 100000"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ok || { echo probe: /tmp/ok is gone; exit 1; }"]
      interval: 1s
      timeout: 2s
      retries: 1
  seed:
    image: berth-base:latest
    command: ["sh", "-c", "echo seeded"]
  steady:
    image: berth-base:latest
    command: ["sleep", "100000"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_crash_loop_and_an_unhealthy_service_make_the_stack_degraded() {
    let w = worker("watch-broken", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", BROKEN)]);
    let sid = id(&format!("broken-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    assert_eq!(started.state, StackState::Running, "{started:#?}");
    let (st, took) = until(&w, &sid, "degraded with both faults", |st| {
        st.state == StackState::Degraded
            && st
                .health
                .iter()
                .any(|s| s.name == "crash" && s.restarts > 0)
            && st
                .health
                .iter()
                .any(|s| s.name == "sick" && s.state == ServiceState::Unhealthy)
    })
    .await;
    eprintln!("degraded with both faults after {took:?} (crash dies at 2 s, probe fails at 3 s)");
    let crash = service(&st, "crash");
    assert_eq!(crash.state, ServiceState::Restarting, "{crash:#?}");
    assert_eq!(crash.exit_code, Some(1), "{crash:#?}");
    assert!(
        crash
            .last_log_lines
            .iter()
            .any(|l| l.contains("FATAL: no database")),
        "{crash:#?}"
    );
    let sick = service(&st, "sick");
    assert!(
        sick.probe_output
            .as_deref()
            .is_some_and(|o| o.contains("probe: /tmp/ok is gone")),
        "{sick:#?}"
    );
    assert_eq!(service(&st, "seed").state, ServiceState::Completed);
    assert_eq!(service(&st, "steady").state, ServiceState::Running);
    // The watcher's verdicts are in the operation log too.
    let mut log = String::new();
    let mut stream = w.client.logs(&sid, false).await.unwrap();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        log.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(log.contains("== watcher: crash restarting"), "{log}");
    // A stopped stack is not watched: stopped, not degraded.
    let stopped = w.client.stop(&sid).await.unwrap();
    assert_eq!(stopped.state, StackState::Stopped);
    assert!(stopped.health.is_empty());
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// `flaky` dies after 2 s on its first two boots (a counter on a volume), then keeps running.
const FLAKY: &str = r#"services:
  flaky:
    image: berth-base:latest
    restart: on-failure
    command: ["sh", "-c", "n=$$(cat /data/n 2>/dev/null || echo 0); n=$$((n+1)); echo $$n > /data/n; echo boot $$n; if [ $$n -le 2 ]; then sleep 2; exit 3; fi; exec sleep 100000"]
    volumes: ["data:/data"]
volumes:
  data:
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_service_that_recovers_brings_the_stack_back_to_running() {
    let w = worker("watch-flaky", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", FLAKY)]);
    let sid = id(&format!("flaky-{}", w.node));
    w.build_and_start(&sid, repo.path(), &commit).await;
    let (st, took) = until(&w, &sid, "degraded", |st| st.state == StackState::Degraded).await;
    eprintln!("degraded {took:?} after the start (the first crash is at 2 s)");
    assert!(!service(&st, "flaky").state.is_ok(), "{st:#?}");
    let (st, took) = until(&w, &sid, "running again", |st| {
        st.state == StackState::Running && service_ok(st)
    })
    .await;
    eprintln!("running again {took:?} later");
    let flaky = service(&st, "flaky");
    assert_eq!(flaky.state, ServiceState::Running);
    assert_eq!(flaky.restarts, 2, "{flaky:#?}");
    assert!(flaky.last_log_lines.is_empty());
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

fn service_ok(st: &StackStatus) -> bool {
    !st.health.is_empty() && st.health.iter().all(|s| s.state.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_service_whose_container_is_removed_is_missing() {
    let w = worker("watch-gone", |_| {}).await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  steady:\n    image: berth-base:latest\n    command: [sleep, '100000']\n  other:\n    image: berth-base:latest\n    command: [sleep, '100000']\n",
    )]);
    let sid = id(&format!("gone-{}", w.node));
    let st = w.build_and_start(&sid, repo.path(), &commit).await;
    let container = st
        .services
        .iter()
        .find(|s| s.name == "steady")
        .and_then(|s| s.container.clone())
        .expect("steady has a container");
    let (st, _) = until(&w, &sid, "watched", |st| st.health.len() == 2).await;
    assert_eq!(st.state, StackState::Running, "{st:#?}");
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &container])
        .status()
        .unwrap();
    assert!(removed.success());
    // On its way out it is killed (exited 137, seen if a pass runs then), then it is gone.
    let (st, took) = until(&w, &sid, "steady missing", |st| {
        st.health
            .iter()
            .any(|s| s.name == "steady" && s.state == ServiceState::Missing)
    })
    .await;
    eprintln!("missing {took:?} after the container was removed");
    assert_eq!(st.state, StackState::Degraded, "{st:#?}");
    assert_eq!(
        service(&st, "other").state,
        ServiceState::Running,
        "{st:#?}"
    );
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// `web` serves its release on a published port; `jobs` (no port) crash-loops with a FATAL
/// line a second after each boot in release `broken`, and runs in any other.
fn web(release: &str) -> Vec<(String, String)> {
    let jobs = if release == "broken" {
        r#"["sh", "-c", "echo booting; sleep 1; echo 'FATAL: bad config' >&2; exit 1"]"#
    } else {
        r#"["sleep", "100000"]"#
    };
    vec![
        (
            "compose.yaml".into(),
            format!(
                "services:\n  web:\n    build: ./web\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    ports:\n      - \"8080\"\n  jobs:\n    build: ./web\n    restart: always\n    command: {jobs}\n"
            ),
        ),
        (
            "web/Dockerfile".into(),
            "FROM berth-base:latest\nCOPY release /www/index.html\n".into(),
        ),
        ("web/release".into(), format!("{release}\n")),
    ]
}

/// What a user does with an app that crashes at start: deploy a fixed release onto it. The
/// crash-looping container is replaced, the app serves the fixed release on the same port, and
/// the stack is `running` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_fixed_release_deploys_over_a_crash_loop() {
    let w = worker("watch-redeploy", |_| {}).await;
    let broken = web("broken");
    let (repo, c1) = git_repo(&files(&broken));
    let sid = id(&format!("redeploy-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &c1).await;
    let port = started.endpoints[0].host_port;
    let (st, _) = until(&w, &sid, "degraded", |st| {
        st.state == StackState::Degraded && service(st, "jobs").restarts > 0
    })
    .await;
    assert_eq!(
        service(&st, "jobs").state,
        ServiceState::Restarting,
        "{st:#?}"
    );

    let c2 = git_commit(repo.path(), &files(&web("fixed")));
    let b = build_request(repo.path(), &c2);
    let deployed = w
        .client
        .deploy(
            &sid,
            &berth_worker_api::DeployRequest {
                user: b.user,
                project: b.project,
                commit: b.commit,
                repo: b.repo,
                timeout_secs: Some(30),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("the deploy of the fixed release failed: {e}"));
    // The answer comes once the new release serves; the watcher's verdict (and so `state`)
    // follows once the old containers are retired, which the wait below covers.
    assert_eq!(deployed.endpoints[0].host_port, port);
    let url = format!("http://{}/", deployed.endpoints[0].address());
    assert_eq!(http_get(&url).await, "fixed\n");
    let (st, took) = until(&w, &sid, "running again", |st| {
        st.state == StackState::Running && service_ok(st)
    })
    .await;
    eprintln!("running {took:?} after the deploy answered");
    assert_eq!(st.commit.as_deref(), Some(c2.as_str()));
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
