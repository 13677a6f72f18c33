//! Placement truth (issue 12). One copy of each instance: a worker whose process dies while its
//! host stays up, so its stack keeps running, comes back after the instance moved to another
//! worker; the master's record is the truth, so the returning worker removes its copy and never
//! registers it, refuses to start it, and a delete reaches both workers. A move whose build
//! fails on the new worker is recorded as such and retried by the next start. Capacity: only
//! instances that hold resources on a worker count against its `--capacity`. Cluster set-up and
//! the shared engine: `cluster/mod.rs`.

mod cluster;

use std::time::Duration;

use cluster::{CLUSTER_TOKEN, Cluster, Options, docker_quiet, eventually, targz};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The catalog service name the test app registers under.
const SERVICE: &str = "ghostweb";

/// One service publishing a port, from the base image (nothing to build, no volume): what a
/// worker host parks (`Cluster::park_objects_of`) while another runs the same instance.
fn app() -> Vec<u8> {
    let compose = format!(
        "services:\n  web:\n    image: berth-base:latest\n    init: true\n    \
         command: [httpd, -f, -p, \"8000\", -h, /]\n    ports: [\"8000\"]\n    \
         environment:\n      SERVICE_NAME: {SERVICE}\n"
    );
    targz(&[("compose.yaml", compose.as_bytes())])
}

fn node_of(record: &Value) -> String {
    record["worker"]["node"]
        .as_str()
        .expect("placed on a worker")
        .to_owned()
}

/// Running containers of instance `id` labelled with `node`.
/// Running app containers of instance `id` on `node` (berth's port forwarders left out).
fn running(id: &str, node: &str) -> usize {
    let (instance, node) = (
        format!("label=org.berth.instance={id}"),
        format!("label=org.berth.node={node}"),
    );
    let ids = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["ps", "-q", "--filter", &instance, "--filter", &node];
        args.extend_from_slice(extra);
        docker_quiet(&args)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let forwarders = ids(&["--filter", "label=org.berth.forward"]);
    ids(&[])
        .into_iter()
        .filter(|c| !forwarders.contains(c))
        .count()
}

/// Every object (container, network, image) of instance `id` labelled with `node`.
fn objects(id: &str, node: &str) -> Vec<String> {
    let (instance, node) = (
        format!("label=org.berth.instance={id}"),
        format!("label=org.berth.node={node}"),
    );
    let mut out = Vec::new();
    for kind in [
        vec!["ps", "-aq"],
        vec!["network", "ls", "-q"],
        vec!["image", "ls", "-q"],
    ] {
        let mut args = kind.clone();
        args.extend(["--filter", &instance, "--filter", &node]);
        out.extend(
            docker_quiet(&args)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("{}:{l}", kind[0])),
        );
    }
    out
}

/// The catalog nodes of the app's registrations, sorted.
async fn registered_on(c: &Cluster) -> Vec<String> {
    let url = format!("{}/v1/catalog/service/{SERVICE}", c.registry());
    let entries: Value = c
        .http
        .get(&url)
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("catalog json");
    let mut nodes: Vec<String> = entries
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["Node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn cluster_docker_a_returning_worker_keeps_no_ghost_copy() {
    let c = Cluster::start(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let id = "ghost";
    let (status, record) = c
        .call(
            Method::PUT,
            &format!("/v1/instances/{id}/code?user=tester&project=ghost&build=true&wait=10m"),
            Some(app()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let (status, record) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let old = node_of(&record);
    eventually(
        "the registration on the first worker",
        Duration::from_secs(60),
        || async { (registered_on(&c).await == [old.clone()]).then_some(()) },
    )
    .await;

    // The worker process dies; its host and its stack stay up.
    c.kill_worker_process(&old);
    c.wait_worker_status(&old, "critical").await;
    c.park_objects_of(&old);
    assert_eq!(running(id, &old), 1, "the old copy keeps running");

    // A start moves the instance.
    let (status, record) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "running", "{record}");
    let new = node_of(&record);
    assert_ne!(new, old, "moved off the dead worker");
    assert_eq!(running(id, &new), 1);

    // The old worker returns: its fence removes its copy and it registers nothing of it.
    c.restart_worker(&old);
    c.wait_worker_status(&old, "passing").await;
    eventually("the old copy removed", Duration::from_secs(90), || async {
        objects(id, &old).is_empty().then_some(())
    })
    .await;
    eventually(
        "one registration, the new worker's",
        Duration::from_secs(90),
        || async { (registered_on(&c).await == [new.clone()]).then_some(()) },
    )
    .await;
    assert_eq!(running(id, &new), 1, "the new copy runs on");

    // The old worker refuses to start the instance the record places elsewhere.
    let old_worker = berth_worker_api::WorkerClient::new(
        c.worker_url(&old),
        berth_worker_api::Secret::new(CLUSTER_TOKEN),
    );
    let refused = old_worker
        .start(
            &berth_worker_api::ValidName::parse("id", id).expect("a valid id"),
            &berth_worker_api::StartRequest::default(),
        )
        .await
        .expect_err("the old worker refuses");
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "{refused}");
    let message = match &refused {
        berth_worker_api::WorkerClientError::Api { body, .. } => body.error.message.clone(),
        other => panic!("not an API error: {other}"),
    };
    assert!(
        message.contains(&format!("places instance {id} on worker {new}")),
        "{message}"
    );

    // A delete removes the instance everywhere and asks the former worker too.
    let (status, body) = c
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let former = body["former_workers"].as_array().expect("former workers");
    assert_eq!(former.len(), 1, "{body}");
    assert!(
        former[0].as_str().unwrap_or_default().contains(&old),
        "{body}"
    );
    assert!(objects(id, &new).is_empty(), "{:?}", objects(id, &new));
    assert!(objects(id, &old).is_empty());
    eventually("no registration left", Duration::from_secs(60), || async {
        registered_on(&c).await.is_empty().then_some(())
    })
    .await;
    let (status, _) = c
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Uploads `compose` as instance `id` with a build; returns status and body.
async fn upload(c: &Cluster, id: &str, compose: &str) -> (StatusCode, Value) {
    c.call(
        Method::PUT,
        &format!("/v1/instances/{id}/code?user=tester&project=cap&build=true&wait=10m"),
        Some(targz(&[("compose.yaml", compose.as_bytes())])),
    )
    .await
}

#[tokio::test]
async fn cluster_docker_refused_uploads_do_not_fill_a_workers_capacity() {
    let c = Cluster::start(Options {
        workers: 1,
        capacity: Some(2),
        ..Options::default()
    })
    .await;
    let refused = "services:\n  web:\n    image: berth-base:latest\n    privileged: true\n";
    let fits = "services:\n  web:\n    image: berth-base:latest\n    \
                command: [httpd, -f, -p, \"8000\", -h, /]\n";
    // More refusals than the capacity: each is placed, refused by policy and holds nothing.
    for n in 0..3 {
        let (status, body) = upload(&c, &format!("refused{n}"), refused).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    // The worker still takes as many real instances as its capacity, and no more.
    for id in ["fits0", "fits1"] {
        let (status, body) = upload(&c, id, fits).await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["state"], "built", "{body}");
    }
    let (status, body) = upload(&c, "full", fits).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_worker", "{body}");
    let (_, workers) = c.call(Method::GET, "/v1/workers", None).await;
    assert_eq!(workers[0]["placed"], 2, "{workers}");
    for id in ["refused0", "refused1", "refused2", "fits0", "fits1", "full"] {
        let (status, body) = c
            .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
    }
    let left = c.stack_objects();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn cluster_docker_a_move_whose_build_fails_is_recorded_and_retried() {
    let mut c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let id = "shaky";
    let compose = "services:\n  web:\n    image: berth-base:latest\n    init: true\n    \
                   command: [httpd, -f, -p, \"8000\", -h, /]\n    pids_limit: 100\n";
    let (status, body) = upload(&c, id, compose).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, record) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let old = node_of(&record);
    let old_id = record["worker"]["id"].as_str().unwrap().to_owned();
    // The only other worker refuses the file (its pids cap is below the file's limit).
    c.add_worker_with(1, &["BERTH_WORKER_MAX_PIDS=10"]);
    let new = c.workers[1].node.clone();
    c.wait_worker_status(&new, "passing").await;
    c.kill_worker(&old);
    c.wait_worker_status(&old, "critical").await;

    let (status, body) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, record) = c
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(node_of(&record), new, "{record}");
    assert_eq!(record["built_commit"], Value::Null, "{record}");
    assert_eq!(record["running_commit"], Value::Null, "{record}");
    assert_eq!(record["error"]["step"], "build", "{record}");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    let new_id = record["worker"]["id"].as_str().unwrap();
    assert!(
        message.contains(&format!("moved from worker {old_id} to worker {new_id}")),
        "{message}"
    );
    assert!(message.contains("pids_limit"), "{message}");

    // The next start builds again (the same refusal), instead of asking the new worker to
    // start a commit it never built.
    let (status, body) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, log) = c
        .call(Method::GET, &format!("/v1/instances/{id}/logs"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let builds = log.as_str().unwrap_or_default().matches("== build").count();
    assert_eq!(builds, 2, "{log}");

    let (status, body) = c
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left = c.stack_objects();
    assert!(left.is_empty(), "left behind: {left:?}");
}
