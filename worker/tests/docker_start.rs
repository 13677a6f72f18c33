//! How a start orders its services, against the real Docker engine: services that do not wait
//! on each other start side by side (a service never waits for an unrelated one's healthcheck),
//! dependencies are still honoured, and a healthcheck counts once the worker's own run of it
//! passes, before Docker's first check (Docker then still says `starting`, and the stack is
//! `running`, not `degraded`).

mod common;

use std::time::Duration;

use berth_worker_api::{ServiceState, StackState, StartRequest};
use common::*;

/// The stack's operation log, as text.
async fn ops_log(w: &TestWorker, sid: &berth_worker_api::ValidName) -> String {
    let logs = w.client.logs(sid, false).await.unwrap();
    let bytes: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(logs)
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `gate` is healthy only once `opener` (later in the file, no dependency between the two)
/// serves; `waiter` waits for `gate` to be healthy. Started one after another in file order
/// (gate, waiter, opener), `waiter` would wait for a gate that `opener`, not started yet, opens:
/// the start would time out. Side by side, `gate` and `opener` start together and `waiter`
/// follows the gate.
const GATED: &str = "services:
  gate:
    image: berth-base:latest
    init: true
    command: [sleep, '600']
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, 'http://opener:8000/']
      interval: 1s
      retries: 120
  waiter:
    image: berth-base:latest
    init: true
    command: [sleep, '600']
    depends_on:
      gate:
        condition: service_healthy
  opener:
    image: berth-base:latest
    init: true
    command: [sh, -c, 'mkdir -p /w && echo open > /w/index.html && exec httpd -f -p 8000 -h /w']
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_independent_services_start_side_by_side() {
    let w = worker("parstart", |_| {}).await;
    let sid = id(&format!("par-{}", w.node));
    let (repo, commit) = git_repo(&[("compose.yaml", GATED)]);
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let started = w
        .client
        .start(
            &sid,
            &StartRequest {
                commit: None,
                timeout_secs: Some(45),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(started.state, StackState::Running, "{started:?}");
    assert!(
        started.services.iter().all(|s| s.state == "running"),
        "{started:?}"
    );

    // `opener`, last in the file, started before `waiter` was even created: `waiter` waited for
    // the gate that `opener` opened.
    let log = ops_log(&w, &sid).await;
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
    };
    let project = &started.project_name;
    assert!(
        at(&format!("started {project}-opener-1")) < at(&format!("created {project}-waiter-1")),
        "{log}"
    );

    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// A service whose Docker check comes only 60 s after the start (its `interval`): the start
/// answers once the worker's run of the same test passes, well before that, with Docker's
/// health still `starting`, and the watcher counts it as fine (the stack stays `running`).
const SLOW_CHECK: &str = "services:
  api:
    image: berth-base:latest
    init: true
    command: [sh, -c, 'mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 8080 -h /w']
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:8080/']
      interval: 60s
      retries: 3
  web:
    image: berth-base:latest
    init: true
    command: [sleep, '600']
    depends_on:
      api:
        condition: service_healthy
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_start_answers_on_the_workers_run_of_the_healthcheck() {
    let w = worker("probe", |_| {}).await;
    let sid = id(&format!("probe-{}", w.node));
    let (repo, commit) = git_repo(&[("compose.yaml", SLOW_CHECK)]);
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    // Within 30 s, half the interval: Docker's own first check cannot have run.
    let t = std::time::Instant::now();
    let started = w
        .client
        .start(
            &sid,
            &StartRequest {
                commit: None,
                timeout_secs: Some(30),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(started.state, StackState::Running, "{started:?}");
    let api = started.services.iter().find(|s| s.name == "api").unwrap();
    eprintln!("start answered after {:?}", t.elapsed());
    assert_eq!(api.health.as_deref(), Some("starting"), "{started:?}");
    let log = ops_log(&w, &sid).await;
    assert!(
        log.contains("api passed its healthcheck (run by the worker"),
        "{log}"
    );

    // The watcher sees Docker's `starting` and keeps the stack `running`.
    let mut watched = None;
    for _ in 0..100 {
        let st = w.client.status(&sid).await.unwrap().unwrap();
        if st.health.len() == 2 {
            watched = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = watched.expect("the watcher never reported both services");
    let api = st.health.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.state, ServiceState::Starting, "{st:?}");
    assert_eq!(st.state, StackState::Running, "{st:?}");

    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// A healthcheck that never passes still fails the start: the worker's runs of it change
/// nothing, and Docker's verdict (`unhealthy` after its retries) ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_failing_healthcheck_still_fails_the_start() {
    let w = worker("probefail", |_| {}).await;
    let sid = id(&format!("pfail-{}", w.node));
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  api:\n    image: berth-base:latest\n    init: true\n    command: [sleep, '600']\n    healthcheck:\n      test: [CMD, 'false']\n      interval: 1s\n      retries: 2\n",
    )]);
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let err = w
        .client
        .start(
            &sid,
            &StartRequest {
                commit: None,
                timeout_secs: Some(60),
            },
        )
        .await
        .expect_err("a start with a failing healthcheck");
    assert!(err.to_string().contains("api became unhealthy"), "{err}");
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// `api` serves 3 s after its container starts and Docker checks it every 10 s; `web` waits for
/// it and publishes a port (behind a forwarder).
const RESTARTED: &str = "services:
  api:
    image: berth-base:latest
    init: true
    command: [sh, -c, 'sleep 3; mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 8080 -h /w']
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:8080/']
      interval: 10s
      retries: 3
  web:
    image: berth-base:latest
    init: true
    command: [sh, -c, 'mkdir -p /w && echo web > /w/index.html && exec httpd -f -p 8000 -h /w']
    depends_on:
      api:
        condition: service_healthy
    ports:
      - \"8000\"
";

/// A start after a stop: Docker's health log still holds the earlier run's results (it only
/// resets the status to `starting`), which must not count for this run, so the worker runs the
/// test itself instead of waiting an `interval` for Docker; and the stopped forwarder of `web`
/// starts while `web` waits for `api`, not after `web`, and is switched to `web` once it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_start_after_a_stop_probes_at_once_and_starts_the_forwarder_meanwhile() {
    let w = worker("restart", |_| {}).await;
    let sid = id(&format!("restart-{}", w.node));
    let (repo, commit) = git_repo(&[("compose.yaml", RESTARTED)]);
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let request = StartRequest {
        commit: None,
        timeout_secs: Some(60),
    };
    w.client.start(&sid, &request).await.unwrap();
    // Docker's own first check, so its health log has a result of the first run.
    healthy_soon(&w, &sid, "api").await;
    w.client.stop(&sid).await.unwrap();

    let t = std::time::Instant::now();
    let started = w
        .client
        .start(&sid, &request)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    eprintln!("start after stop answered after {:?}", t.elapsed());
    assert_eq!(started.state, StackState::Running, "{started:?}");
    let api = started.services.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.health.as_deref(), Some("starting"), "{started:?}");
    let log = ops_log(&w, &sid).await;
    let second = &log[log.rfind("== start").unwrap()..];
    assert!(
        second.contains("api passed its healthcheck (run by the worker"),
        "{second}"
    );
    let project = &started.project_name;
    let at = |needle: &str| {
        second
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{second}"))
    };
    assert!(
        at("service web: forwarder started") < at("api passed its healthcheck"),
        "{second}"
    );
    assert!(
        at("api passed its healthcheck") < at(&format!("started {project}-web-1\n")),
        "{second}"
    );
    assert!(
        at(&format!("started {project}-web-1\n")) < at("service web: forwarder switched"),
        "{second}"
    );
    let web = started
        .endpoints
        .iter()
        .find(|e| e.service == "web")
        .unwrap();
    let body = http_get(&format!("http://127.0.0.1:{}/", web.host_port)).await;
    assert_eq!(body.trim(), "web");

    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
