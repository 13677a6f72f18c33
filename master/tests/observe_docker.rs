//! Runtime truth through the whole cluster (registry, master, front door and a worker as
//! containers, see `cluster/mod.rs`): a service that crash-loops at start makes the record
//! `degraded` with its state and FATAL line, and its registration's state check critical; a
//! deploy of a fixed release brings the record back to `running` and the check to passing. The
//! times are printed (`--no-capture`), never asserted.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, Options, eventually, targz};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// `web` serves on a published port; `jobs` (no port, `restart: always`) dies with a FATAL
/// line a second after each boot in release `broken`, and runs in any other.
fn app(release: &str) -> Vec<u8> {
    let jobs = if release == "broken" {
        r#"["sh", "-c", "echo booting; sleep 1; echo 'FATAL: cannot reach the queue' >&2; exit 1"]"#
    } else {
        r#"["sleep", "100000"]"#
    };
    let compose = format!(
        "services:\n  web:\n    image: berth-base:latest\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]\n    ports:\n      - \"8080\"\n  jobs:\n    image: berth-base:latest\n    restart: always\n    environment:\n      RELEASE: {release}\n    command: {jobs}\n"
    );
    targz(&[("compose.yaml", compose.as_bytes())])
}

/// Status and output of berth's state check on the registration of service `name`.
async fn state_check(c: &Cluster, name: &str) -> Option<(String, String)> {
    let url = format!("{}/v1/health/service/{name}", c.registry());
    let entries: Value = c.http.get(&url).send().await.ok()?.json().await.ok()?;
    entries
        .as_array()?
        .iter()
        .flat_map(|e| e["Checks"].as_array().cloned().unwrap_or_default())
        .find(|check| {
            check["CheckID"]
                .as_str()
                .is_some_and(|id| id.ends_with(":berth"))
        })
        .map(|check| {
            (
                check["Status"].as_str().unwrap_or_default().to_owned(),
                check["Output"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

#[tokio::test]
async fn docker_a_crash_at_start_is_degraded_through_the_master_until_a_fixed_release_starts() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let id = "crashy";
    let upload = |deploy: bool| {
        format!(
            "/v1/instances/{id}/code?user=tester&project=crashy&build=true&deploy={deploy}&wait=10m"
        )
    };
    let (status, rec) = c
        .call(Method::PUT, &upload(false), Some(app("broken")))
        .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    let (status, rec) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{rec}"
    );
    let begun = tokio::time::Instant::now();

    // The record: degraded, with the crash-looping service's state and its FATAL line.
    let rec = eventually("the record degraded", Duration::from_secs(60), || async {
        let (_, rec) = c
            .call(Method::GET, &format!("/v1/instances/{id}"), None)
            .await;
        (rec["state"] == "degraded").then_some(rec)
    })
    .await;
    let to_degraded = begun.elapsed();
    let jobs = rec["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "jobs"))
        .cloned()
        .unwrap_or_else(|| panic!("no jobs service in {rec}"));
    assert!(
        matches!(jobs["state"].as_str(), Some("restarting" | "exited")),
        "{jobs}"
    );
    assert!(
        jobs["last_log_lines"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("FATAL")))),
        "{jobs}"
    );
    let web = rec["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .cloned();
    assert_eq!(
        web.map(|w| w["state"].clone()),
        Some("running".into()),
        "{rec}"
    );

    // The registry: the jobs registration's state check critical, saying why.
    let jobs_service = format!("jobs.{id}");
    let (_, output) = eventually(
        "the state check critical",
        Duration::from_secs(60),
        || async {
            state_check(&c, &jobs_service)
                .await
                .filter(|(status, output)| status == "critical" && output.contains("FATAL"))
        },
    )
    .await;
    let to_critical = begun.elapsed();
    assert!(
        output.starts_with("restarting") || output.starts_with("exited"),
        "{output}"
    );
    assert_eq!(
        state_check(&c, &format!("web.{id}")).await.map(|s| s.0),
        Some("passing".to_owned())
    );

    // What a user does: deploy the fixed release onto the crash loop.
    let deploy_begun = tokio::time::Instant::now();
    let (status, rec) = c.call(Method::PUT, &upload(true), Some(app("fixed"))).await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["deploy"]["state"], "deployed", "{rec}");
    let rec = eventually("the record running", Duration::from_secs(60), || async {
        let (_, rec) = c
            .call(Method::GET, &format!("/v1/instances/{id}"), None)
            .await;
        let ok = rec["state"] == "running"
            && rec["services"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["state"] == "running"));
        ok.then_some(rec)
    })
    .await;
    let to_running = deploy_begun.elapsed();
    assert_eq!(rec["running_commit"], rec["commit"], "{rec}");
    eventually(
        "the state check passing",
        Duration::from_secs(60),
        || async {
            state_check(&c, &jobs_service)
                .await
                .filter(|(status, _)| status == "passing")
        },
    )
    .await;
    let to_passing = deploy_begun.elapsed();
    eprintln!(
        "crash loop (first crash 1 s after the start): record degraded {to_degraded:?}, \
         state check critical {to_critical:?} after the start; fixed release deployed: \
         record running {to_running:?}, state check passing {to_passing:?} after the deploy began"
    );

    let (status, body) = c
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
