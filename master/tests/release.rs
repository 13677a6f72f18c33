//! Releases and rollback against a real in-process registry and a stand-in worker: the listing
//! (newest first, built and running marks), rollback to the previous release and to a named one
//! (stop, build, start), the `rolled_back` webhook event, and the error cases.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use berth_worker_api::Secret;
use common::*;
use reqwest::Method;

async fn receive(State(r): State<Arc<Mutex<Vec<serde_json::Value>>>>, body: String) -> StatusCode {
    r.lock().unwrap().push(serde_json::from_str(&body).unwrap());
    StatusCode::NO_CONTENT
}

/// A webhook receiver: its URL and what it got.
async fn hook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

async fn rollback(
    m: &Master,
    id: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = m.req(
        Method::POST,
        &format!("/v1/instances/{id}/rollback?wait=30s"),
    );
    if let Some(body) = body {
        req = req.json(&body);
    }
    json(req.send().await.unwrap()).await
}

/// `(commit, current, images_kept)` of each release, newest first.
async fn releases(m: &Master, id: &str) -> Vec<(String, bool, bool)> {
    let (status, list) = m
        .call(Method::GET, &format!("/v1/instances/{id}/releases"))
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["commit"].as_str().unwrap().to_owned(),
                r["current"].as_bool().unwrap(),
                r["images_kept"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn commit_of(rec: &serde_json::Value) -> String {
    rec["commit"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_list_and_rollback_restarts_on_the_earlier_commit() {
    let (url, got) = hook().await;
    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.webhook_url = Some(url);
    cfg.webhook_secret = Some(Secret::new("hook-secret"));
    let m = master(cfg).await;

    let (_, r1) = m.upload("rel-1", "alice", "&build=false", app("v1")).await;
    let (_, r2) = m.upload("rel-1", "alice", "&build=false", app("v2")).await;
    let (status, r3) = m.upload("rel-1", "alice", "&wait=30s", app("v3")).await;
    assert_eq!(status, 200, "{r3}");
    let (c1, c2, c3) = (commit_of(&r1), commit_of(&r2), commit_of(&r3));
    assert!(r3["running_commit"].is_null(), "{r3}");

    // Built, not running: newest first, nothing current, only the built one's images kept.
    assert_eq!(
        releases(&m, "rel-1").await,
        vec![
            (c3.clone(), false, true),
            (c2.clone(), false, false),
            (c1.clone(), false, false)
        ]
    );
    let (status, rec) = m.call(Method::POST, "/v1/instances/rel-1/start").await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["running_commit"], c3.as_str());
    let (_, list) = m.call(Method::GET, "/v1/instances/rel-1/releases").await;
    assert_eq!(list[0]["current"], true);
    assert!(
        list[0]["built_at"].as_str().unwrap().ends_with('Z'),
        "{list}"
    );
    assert!(list[1]["built_at"].is_null(), "{list}");
    assert!(
        list[2]["uploaded_at"].as_str().unwrap().ends_with('Z'),
        "{list}"
    );
    assert_eq!(list[2]["message"], "upload of alice/proj instance rel-1");

    // Default rollback: the release before the running one, rolled out on the running stack.
    worker.state.events.lock().unwrap().clear();
    let (status, rec) = rollback(&m, "rel-1", None).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    assert_eq!(rec["running_commit"], c2.as_str());
    assert_eq!(rec["built_commit"], c2.as_str());
    assert_eq!(
        rec["commit"],
        c3.as_str(),
        "the latest upload stays the latest"
    );
    assert_eq!(
        *worker.state.events.lock().unwrap(),
        ["deploy:rel-1:enter", "deploy:rel-1:exit"].map(String::from)
    );
    assert_eq!(
        releases(&m, "rel-1").await,
        vec![
            (c3.clone(), false, false),
            (c2.clone(), true, true),
            (c1.clone(), false, false)
        ]
    );
    eventually("the rolled_back event", || {
        let got = got.clone();
        let c2 = c2.clone();
        async move {
            got.lock().unwrap().iter().any(|e| {
                e["event"] == "rolled_back"
                    && e["id"] == "rel-1"
                    && e["state"] == "running"
                    && e["record"]["running_commit"] == c2.as_str()
                    && e["record"]["deploy"]["rollback"] == true
            })
        }
    })
    .await;

    // Explicit rollback (to a newer release too: any release), upper-case hex accepted.
    let (status, rec) = rollback(
        &m,
        "rel-1",
        Some(serde_json::json!({"commit": c1.to_uppercase()})),
    )
    .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["running_commit"], c1.as_str());
    // The oldest release has none before it.
    let (status, body) = rollback(&m, "rel-1", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(&c1),
        "{body}"
    );
    // Rolling back to what runs changes nothing.
    worker.state.events.lock().unwrap().clear();
    let (status, same) = rollback(&m, "rel-1", Some(serde_json::json!({"commit": c1}))).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same, rec);
    assert!(worker.state.events.lock().unwrap().is_empty());

    // Stopped: nothing is current; a rollback builds and does not start.
    let (status, rec) = m.call(Method::POST, "/v1/instances/rel-1/stop").await;
    assert_eq!(status, 200, "{rec}");
    assert!(rec["running_commit"].is_null(), "{rec}");
    assert!(releases(&m, "rel-1").await.iter().all(|r| !r.1));
    let (status, rec) = rollback(&m, "rel-1", Some(serde_json::json!({"commit": c3}))).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "built", "{rec}");
    assert_eq!(rec["built_commit"], c3.as_str());
    assert!(rec["running_commit"].is_null(), "{rec}");
    worker.state.events.lock().unwrap().clear();
    let (status, same) = rollback(&m, "rel-1", Some(serde_json::json!({"commit": c3}))).await;
    assert_eq!((status, &same), (200, &rec));
    assert!(worker.state.events.lock().unwrap().is_empty());
    // Default from the built one (c3) when nothing runs: c2.
    let (status, rec) = rollback(&m, "rel-1", None).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["built_commit"], c2.as_str());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_errors() {
    let reg = registry().await;
    let _worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;

    // Unknown instance.
    let (status, body) = rollback(&m, "nope", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = m.call(Method::GET, "/v1/instances/nope/releases").await;
    assert_eq!(status, 404, "{body}");

    // Uploaded only: nothing built or running to roll back from.
    let (_, r1) = m.upload("rel-2", "alice", "&build=false", app("v1")).await;
    let (status, body) = rollback(&m, "rel-2", None).await;
    assert_eq!(status, 409, "{body}");
    let (status, rec) = m
        .call(Method::POST, "/v1/instances/rel-2/build?wait=30s")
        .await;
    assert_eq!(status, 200, "{rec}");
    // One release: none before it.
    let (status, body) = rollback(&m, "rel-2", None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    // Bad hex: 400 naming the field; unknown commit: 404 naming it.
    for bad in ["abc", "zz", &"g".repeat(40)] {
        let (status, body) = rollback(&m, "rel-2", Some(serde_json::json!({"commit": bad}))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], "commit", "{body}");
    }
    let unknown = "0".repeat(40);
    let (status, body) = rollback(&m, "rel-2", Some(serde_json::json!({"commit": unknown}))).await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&unknown) && message.contains("rel-2"),
        "{body}"
    );
    // Unknown fields and bad wait are refused.
    let (status, body) = rollback(
        &m,
        "rel-2",
        Some(serde_json::json!({"comit": commit_of(&r1)})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = m
        .call(Method::POST, "/v1/instances/rel-2/rollback?wait=forever")
        .await;
    assert_eq!(status, 400, "{body}");
    m.stop().await;
}

/// Runs the CLI (`--json`, so nothing but JSON on stdout) against `m`.
async fn cli(m: &Master, args: &[&str]) -> Result<(), berth_cli::failure::Failure> {
    use clap::Parser;
    let mut argv = vec!["berth", "--master", &m.base, "--token", API, "--json"];
    argv.extend_from_slice(args);
    let cli = berth_cli::cli::Cli::parse_from(argv);
    tokio::task::spawn_blocking(move || berth_cli::run(&cli, &berth_cli::output::Out::new(true)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_releases_and_rollback() {
    let reg = registry().await;
    let _worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (_, r1) = m.upload("rel-3", "alice", "&build=false", app("v1")).await;
    let (status, r2) = m.upload("rel-3", "alice", "&wait=30s", app("v2")).await;
    assert_eq!(status, 200, "{r2}");
    let (status, rec) = m.call(Method::POST, "/v1/instances/rel-3/start").await;
    assert_eq!(status, 200, "{rec}");

    cli(&m, &["releases", "rel-3"]).await.unwrap();
    cli(&m, &["rollback", "rel-3"]).await.unwrap();
    let (_, rec) = m.call(Method::GET, "/v1/instances/rel-3").await;
    assert_eq!(rec["running_commit"], commit_of(&r1).as_str(), "{rec}");
    cli(&m, &["rollback", "rel-3", &commit_of(&r2)])
        .await
        .unwrap();
    let (_, rec) = m.call(Method::GET, "/v1/instances/rel-3").await;
    assert_eq!(rec["running_commit"], commit_of(&r2).as_str(), "{rec}");

    // Refusals are the app's failures (exit 1) with the master's status.
    let unknown = "0".repeat(40);
    let f = cli(&m, &["rollback", "rel-3", &unknown]).await.unwrap_err();
    assert_eq!(
        (f.exit, f.status),
        (berth_cli::failure::Exit::App, Some(404))
    );
    let f = cli(&m, &["rollback", "rel-3", "abc"]).await.unwrap_err();
    assert_eq!(f.status, Some(400));
    let f = cli(&m, &["releases", "nope"]).await.unwrap_err();
    assert_eq!(f.status, Some(404));
    m.stop().await;
}
