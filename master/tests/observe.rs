//! The master's observation of running instances, driven through a stand-in worker whose report
//! the test sets (the real worker's watcher is tested against Docker in the worker's
//! `docker_watch`): a stack reported degraded makes the record `degraded` with each service's
//! state (its restart count kept current while the state stays), and a recovered one makes it
//! `running` again.

mod common;

use berth_worker_api::{ServiceHealth, ServiceState, StackState};
use common::*;
use reqwest::Method;

fn report(worker: &StandIn, id: &str, state: StackState, crash: ServiceState) {
    report_restarts(worker, id, state, crash, 3);
}

fn report_restarts(
    worker: &StandIn,
    id: &str,
    state: StackState,
    crash: ServiceState,
    restarts: u32,
) {
    let mut stacks = worker.state.stacks.lock().unwrap();
    let st = stacks.get_mut(id).expect("the stand-in holds the stack");
    st.state = state;
    st.health = vec![
        ServiceHealth {
            name: "crash".into(),
            state: crash,
            restarts,
            exit_code: Some(1),
            probe_output: None,
            last_log_lines: vec!["FATAL: no database".into()],
        },
        ServiceHealth {
            name: "web".into(),
            state: ServiceState::Running,
            restarts: 0,
            exit_code: None,
            probe_output: None,
            last_log_lines: vec![],
        },
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_report_is_recorded_and_so_is_the_recovery() {
    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (status, rec) = m.upload("obs-1", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    let (status, rec) = m.call(Method::POST, "/v1/instances/obs-1/start").await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("running")),
        "{rec}"
    );

    report(
        &worker,
        "obs-1",
        StackState::Degraded,
        ServiceState::Restarting,
    );
    eventually("the record turns degraded", || async {
        m.call(Method::GET, "/v1/instances/obs-1").await.1["state"] == "degraded"
    })
    .await;
    let (_, rec) = m.call(Method::GET, "/v1/instances/obs-1").await;
    let crash = &rec["services"][0];
    assert_eq!(crash["name"], "crash", "{rec}");
    assert_eq!(crash["state"], "restarting", "{rec}");
    assert_eq!(crash["restarts"], 3, "{rec}");
    assert_eq!(crash["exit_code"], 1, "{rec}");
    assert_eq!(crash["last_log_lines"][0], "FATAL: no database", "{rec}");
    assert_eq!(rec["services"][1]["state"], "running", "{rec}");
    let (_, list) = m.call(Method::GET, "/v1/instances?state=degraded").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // The crash loop goes on: the same state, a growing restart count, kept current.
    report_restarts(
        &worker,
        "obs-1",
        StackState::Degraded,
        ServiceState::Restarting,
        5,
    );
    eventually("the restart count is refreshed", || async {
        m.call(Method::GET, "/v1/instances/obs-1").await.1["services"][0]["restarts"] == 5
    })
    .await;
    let (_, list) = m.call(Method::GET, "/v1/instances?state=degraded").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    report(&worker, "obs-1", StackState::Running, ServiceState::Running);
    eventually("the record is running again", || async {
        m.call(Method::GET, "/v1/instances/obs-1").await.1["state"] == "running"
    })
    .await;
    let (_, rec) = m.call(Method::GET, "/v1/instances/obs-1").await;
    assert_eq!(rec["services"][0]["state"], "running", "{rec}");

    // A degraded instance may be stopped; its services are then forgotten.
    report(&worker, "obs-1", StackState::Degraded, ServiceState::Exited);
    eventually("degraded again", || async {
        m.call(Method::GET, "/v1/instances/obs-1").await.1["state"] == "degraded"
    })
    .await;
    let (status, rec) = m.call(Method::POST, "/v1/instances/obs-1/stop").await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("stopped")),
        "{rec}"
    );
    assert!(rec.get("services").is_none(), "{rec}");
    m.stop().await;
}
