//! Cluster fault tests: the registry server, master(s), the nginx front door and two workers as
//! containers on their own Docker network (see `cluster/mod.rs` for the set-up and what the
//! shared engine means). Every call goes through the front door, as the main system's would.
//!
//! A worker host is one `berth-worker --join` container (the registry agent in-process) in the
//! engine host's network namespace, as in production (see `Cluster::add_worker`).

mod cluster;

use std::time::Duration;

use cluster::{
    API_TOKEN, Cluster, GIT_TOKEN, Options, docker, eventually, sample_app, targz, targz_symlink,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Asserts an error answer: status, `error.code`, and a message holding `needle`.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
}

/// Nothing of instance `id` exists: no record through the API, no KV keys, no repository.
async fn assert_nothing_left(c: &Cluster, id: &str) {
    let (status, body) = c
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
    assert_eq!(c.kv(&format!("berth/instances/{id}")).await, None, "{id}");
    assert_eq!(c.kv(&format!("instance/{id}/ip")).await, None, "{id}");
    let refs = c
        .http
        .get(format!(
            "{}/git/tester/{id}.git/info/refs?service=git-upload-pack",
            c.api()
        ))
        .basic_auth("berth", Some(GIT_TOKEN))
        .send()
        .await
        .expect("git route answers");
    assert_eq!(
        refs.status(),
        StatusCode::NOT_FOUND,
        "{id}: repository left"
    );
}

fn upload_path(id: &str, build: bool) -> String {
    format!("/v1/instances/{id}/code?user=tester&project=sample&build={build}&wait=10m")
}

#[tokio::test]
async fn cluster_docker_front_door_rejects_bad_input_and_keeps_state_across_restarts() {
    let c = Cluster::start(Options::default()).await;

    // Unknown and missing tokens.
    let unknown = c
        .call_as(Some("not-the-token"), Method::GET, "/v1/instances", None)
        .await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "unauthorized", "token");
    let missing = c.call_as(None, Method::GET, "/v1/instances", None).await;
    assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized", "token");

    // Hostile archives: each rejected with the entry named, nothing left behind.
    let compose: &[u8] = b"services:\n  web:\n    image: berth-base:latest\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "escape",
            targz(&[("compose.yaml", compose), ("../outside", b"x")]),
            "../outside",
        ),
        (
            "absolute",
            targz(&[("compose.yaml", compose), ("/etc/cron.d/x", b"x")]),
            "/etc/cron.d/x",
        ),
        (
            "symlink",
            targz_symlink("app/link", "/etc/passwd"),
            "app/link",
        ),
    ];
    for (id, body, entry) in cases {
        let answer = c
            .call(Method::PUT, &upload_path(id, false), Some(body))
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_upload", entry);
        assert_nothing_left(&c, id).await;
    }

    // A compression bomb: 20 MiB of zeros in a few KiB.
    let bomb = targz(&[("compose.yaml", compose), ("zeros", &vec![0u8; 20 << 20])]);
    assert!(bomb.len() < 1 << 20);
    let answer = c
        .call(Method::PUT, &upload_path("bomb", false), Some(bomb))
        .await;
    assert!(
        answer.0 == StatusCode::BAD_REQUEST || answer.0 == StatusCode::PAYLOAD_TOO_LARGE,
        "{answer:?}"
    );
    assert_nothing_left(&c, "bomb").await;

    // Larger than the front door's 1 MiB cap: refused before it reaches a master.
    let noise: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let answer = c
        .call(Method::PUT, &upload_path("big", false), Some(noise))
        .await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "cap of 1m",
    );
    assert_nothing_left(&c, "big").await;

    // Garbage and an archive without a compose file.
    let answer = c
        .call(
            Method::PUT,
            &upload_path("junk", false),
            Some(b"not gzip".to_vec()),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_upload", "");
    assert_nothing_left(&c, "junk").await;
    let answer = c
        .call(
            Method::PUT,
            &upload_path("nocompose", false),
            Some(targz(&[("readme.txt", b"hi")])),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_upload",
        "compose",
    );
    assert_nothing_left(&c, "nocompose").await;

    // Invalid ids never reach git or the KV.
    let answer = c
        .call(
            Method::PUT,
            &upload_path("Bad..Id", false),
            Some(sample_app()),
        )
        .await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{answer:?}");

    // An acknowledged upload survives a registry restart and a master restart.
    let (status, record) = c
        .call(Method::PUT, &upload_path("keep", false), Some(sample_app()))
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "uploaded");
    let commit = record["commit"].as_str().expect("commit").to_owned();
    docker(&["restart", "-t", "5", &c.container("registry")]);
    docker(&["restart", "-t", "5", &c.container("master0")]);
    let path = "/v1/instances/keep";
    let record = eventually(
        "the record after restarts",
        Duration::from_secs(60),
        || async {
            let (status, body) = c.call(Method::GET, path, None).await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await;
    assert_eq!(record["commit"], commit.as_str());
    assert_eq!(record["state"], "uploaded");

    // The UI port reaches the registry (the UI calls the Consul API itself); `/ui` on the API
    // port redirects there; `/v1` on the API port stays the master's.
    let leader = c
        .http
        .get(format!("{}/v1/status/leader", c.ui()))
        .send()
        .await
        .expect("ui port answers");
    assert_eq!(leader.status(), StatusCode::OK);
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ui", c.api()))
        .send()
        .await
        .expect("api port answers");
    assert_eq!(redirect.status(), StatusCode::FOUND);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.ends_with(":8500/ui/"), "{location}");

    // Delete leaves nothing behind.
    let (status, body) = c.call(Method::DELETE, path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_nothing_left(&c, "keep").await;
    for key in c.kv_keys("berth/locks/").await {
        assert_eq!(c.kv_session(&key).await, None, "{key} still held");
    }
}

/// Uploads and builds the sample app as `id`; returns the record.
async fn deploy(c: &Cluster, id: &str) -> Value {
    let (status, record) = c
        .call(Method::PUT, &upload_path(id, true), Some(sample_app()))
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "built", "{record}");
    record
}

async fn start(c: &Cluster, id: &str) -> Value {
    let (status, record) = c
        .call(Method::POST, &format!("/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "running", "{record}");
    record
}

fn worker_node(record: &Value) -> String {
    record["worker"]["node"]
        .as_str()
        .expect("placed on a worker")
        .to_owned()
}

/// The sample app answers through nginx by its `<id>.<apps domain>` route.
async fn app_answers(c: &Cluster, id: &str) {
    let page = eventually(
        &format!("{id} through the front door"),
        Duration::from_secs(60),
        || c.app_through_front_door(id, "/cgi-bin/index.cgi"),
    )
    .await;
    assert!(page.contains("api says: hello from berth"), "{page}");
}

#[tokio::test]
async fn cluster_docker_lifecycle_spread_and_worker_kill_rebuilds_elsewhere() {
    let c = Cluster::start(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let a = deploy(&c, "alpha").await;
    let b = deploy(&c, "beta").await;
    assert_ne!(
        worker_node(&a),
        worker_node(&b),
        "instances spread over both workers"
    );
    start(&c, "alpha").await;
    start(&c, "beta").await;
    app_answers(&c, "alpha").await;
    app_answers(&c, "beta").await;

    // Stop and start again: same placement, still answering.
    let (status, body) = c.call(Method::POST, "/v1/instances/beta/stop", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "stopped");
    start(&c, "beta").await;
    app_answers(&c, "beta").await;

    // Kill alpha's worker: critical within the liveness window; a start rebuilds alpha from git
    // on the other worker; the KV still holds both records.
    let dead = worker_node(&a);
    c.kill_worker(&dead);
    c.wait_worker_status(&dead, "critical").await;
    let (status, record) = c
        .call(Method::POST, "/v1/instances/alpha/start", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "running");
    assert_ne!(worker_node(&record), dead, "moved off the dead worker");
    assert_eq!(record["commit"], a["commit"]);
    app_answers(&c, "alpha").await;
    for id in ["alpha", "beta"] {
        let kv = c
            .kv(&format!("berth/instances/{id}"))
            .await
            .expect("record kept");
        assert_eq!(kv["id"], id);
    }

    // The whole life ends with nothing left behind on any host.
    for id in ["alpha", "beta"] {
        let (status, body) = c
            .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_nothing_left(&c, id).await;
    }
    let live = c.stack_objects();
    assert!(live.is_empty(), "left behind: {live:?}");
}

#[tokio::test]
async fn cluster_docker_worker_cut_off_from_the_registry_returns_without_duplicates() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    deploy(&c, "island").await;
    start(&c, "island").await;
    app_answers(&c, "island").await;
    let w = &c.workers[0];
    let before = c.stack_objects();

    c.cut_registry_link();
    c.wait_worker_status(&w.node, "critical").await;
    // Cut off, its stack keeps running on its host.
    assert_eq!(c.stack_objects(), before);

    c.restore_registry_link();
    c.wait_worker_status(&w.node, "passing").await;
    assert_eq!(
        c.registrations(&w.node).await,
        1,
        "one berth-worker registration"
    );
    assert_eq!(c.stack_objects(), before, "stacks intact");
    app_answers(&c, "island").await;
    let (status, record) = c.call(Method::GET, "/v1/instances/island", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "running");
}

#[tokio::test]
async fn cluster_docker_registry_and_master_restarts_mid_build_and_start() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    // Upload without building, then start a build and restart both mid-way.
    let (status, uploaded) = c
        .call(
            Method::PUT,
            &upload_path("phoenix", false),
            Some(sample_app()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let (status, body) = c
        .call(Method::POST, "/v1/instances/phoenix/build", None)
        .await;
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::OK,
        "{body}"
    );
    docker(&["restart", "-t", "2", &c.container("registry")]);
    docker(&["restart", "-t", "2", &c.container("master0")]);
    c.wait_front_door().await;
    // Acknowledged: the upload's commit. Retrying the build finishes it.
    let built = eventually("the retried build", Duration::from_secs(300), || async {
        let (_, record) = c
            .call(Method::POST, "/v1/instances/phoenix/build?wait=5m", None)
            .await;
        (record["state"] == "built").then_some(record)
    })
    .await;
    assert_eq!(built["commit"], uploaded["commit"]);

    // The same around a start.
    let starter = {
        let http = c.http.clone();
        let url = format!("{}/v1/instances/phoenix/start", c.api());
        tokio::spawn(async move { http.post(url).bearer_auth(API_TOKEN).send().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    docker(&["restart", "-t", "2", &c.container("master0")]);
    docker(&["restart", "-t", "2", &c.container("registry")]);
    let _ = starter.await;
    c.wait_front_door().await;
    let last = std::sync::Mutex::new(Value::Null);
    let running = eventually("the retried start", Duration::from_secs(300), || async {
        let (status, record) = c
            .call(Method::POST, "/v1/instances/phoenix/start", None)
            .await;
        let done = record["state"] == "running";
        *last.lock().unwrap() = serde_json::json!({"status": status.as_u16(), "body": record});
        if !done {
            eprintln!("start retry: {}", last.lock().unwrap());
        }
        done.then_some(record)
    })
    .await;
    assert_eq!(running["commit"], uploaded["commit"]);
    app_answers(&c, "phoenix").await;
}

#[tokio::test]
async fn cluster_docker_two_masters_serialise_per_instance_and_run_in_parallel_across() {
    let c = Cluster::start(Options {
        workers: 1,
        masters: 2,
        ..Options::default()
    })
    .await;
    for id in ["one", "two"] {
        let (status, body) = c
            .call(Method::PUT, &upload_path(id, false), Some(sample_app()))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // nginx spreads these over both masters; one instance's builds serialise on its lock: both
    // end `built` from the same commit, neither fails.
    let build = |id: &'static str| {
        let http = c.http.clone();
        let url = format!("{}/v1/instances/{id}/build?wait=10m", c.api());
        async move {
            let resp = http.post(url).bearer_auth(API_TOKEN).send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (first, second, other) = tokio::join!(build("one"), build("one"), build("two"));
    for (status, record) in [&first, &second, &other] {
        assert_eq!(*status, StatusCode::OK, "{record}");
        assert_eq!(record["state"], "built", "{record}");
    }
    assert_eq!(first.1["built_commit"], second.1["built_commit"]);
    for key in c.kv_keys("berth/locks/").await {
        assert_eq!(c.kv_session(&key).await, None, "{key} still held");
    }
}

#[tokio::test]
async fn cluster_docker_bad_compose_files_are_clear_errors_leaving_nothing() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let malformed = targz(&[("compose.yaml", b"services: [this is: not: valid")]);
    let (status, body) = c
        .call(
            Method::PUT,
            &upload_path("malformed", true),
            Some(malformed),
        )
        .await;
    assert!(
        status.is_client_error() || body["state"] == "failed",
        "{body}"
    );
    let privileged = targz(&[(
        "compose.yaml",
        b"services:\n  web:\n    image: berth-base:latest\n    privileged: true\n",
    )]);
    let (status, body) = c
        .call(
            Method::PUT,
            &upload_path("privileged", true),
            Some(privileged),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = body.to_string();
    assert!(text.contains("privileged"), "{text}");
    for id in ["malformed", "privileged"] {
        let (status, body) = c
            .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{body}"
        );
        assert_nothing_left(&c, id).await;
    }
    assert!(c.stack_objects().is_empty(), "{:?}", c.stack_objects());
}

/// A two-service app answering with its release: `api` (no published port: rolls start-first)
/// turns healthy `ready_after` seconds after it starts; `web` publishes a port and waits for it.
fn slow_app(release: &str, ready_after: u32) -> Vec<u8> {
    let compose = b"services:
  api:
    init: true
    build: ./api
    healthcheck:
      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ready\"]
      interval: 1s
      timeout: 2s
      retries: 120
  web:
    init: true
    build: ./web
    depends_on:
      api:
        condition: service_healthy
    ports:
      - \"8080\"
";
    let api = format!(
        "FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"sh\", \"-c\", \"sleep {ready_after}; touch /tmp/ready; exec httpd -f -p 8080 -h /www\"]\n"
    );
    let web = b"FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let api_release = format!("api {release}\n");
    let web_release = format!("web {release}\n");
    targz(&[
        ("compose.yaml", compose),
        ("api/Dockerfile", api.as_bytes()),
        ("api/release", api_release.as_bytes()),
        ("web/Dockerfile", web),
        ("web/release", web_release.as_bytes()),
    ])
}

/// `name commit` of each container of instance `id` on worker `node`, sorted.
fn containers_of(node: &str, id: &str) -> Vec<String> {
    let mut v: Vec<String> = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=org.berth.instance={id}"),
        "--filter",
        &format!("label=org.berth.node={node}"),
        "--format",
        "{{.Names}} {{.Label \"org.berth.commit\"}}|{{.Label \"org.berth.forward\"}}",
    ])
    .lines()
    // A forwarder (labelled with the service it forwards to) is not a service's container.
    .filter_map(|l| l.strip_suffix('|').map(str::to_owned))
    .collect();
    v.sort();
    v
}

#[tokio::test]
async fn cluster_docker_master_killed_mid_rollout_then_a_retry_finishes() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let id = "midroll";
    let path = format!("/v1/instances/{id}/code?user=tester&project=slow&build=true&wait=10m");
    let (status, v1) = c.call(Method::PUT, &path, Some(slow_app("v1", 0))).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    start(&c, id).await;
    let c1 = v1["commit"].as_str().unwrap().to_owned();
    let page = eventually("v1 through the front door", Duration::from_secs(60), || {
        c.app_through_front_door(id, "/")
    })
    .await;
    assert_eq!(page, "web v1\n");
    // v2's api takes 40 s to turn healthy: longer than the dead master's lock lasts.
    let (status, v2) = c.call(Method::PUT, &path, Some(slow_app("v2", 40))).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    let c2 = v2["commit"].as_str().unwrap().to_owned();
    eventually("v2 built beside v1", Duration::from_secs(300), || async {
        let (_, rec) = c
            .call(Method::GET, &format!("/v1/instances/{id}"), None)
            .await;
        (rec["built_commit"] == c2.as_str()).then_some(())
    })
    .await;

    // Deploy, and kill the master once the worker's record shows the rollout switching api.
    let deploying = {
        let http = c.http.clone();
        let url = format!("{}/v1/instances/{id}/deploy", c.api());
        tokio::spawn(async move { http.post(url).bearer_auth(API_TOKEN).send().await })
    };
    let state = c.workers[0].data.join("stacks").join(id).join("state.json");
    eventually(
        "the rollout switching api",
        Duration::from_secs(120),
        || {
            let state = state.clone();
            async move {
                let rec: Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
                let switched = rec["rollout"]["switched"].as_array()?;
                switched.iter().any(|s| s == "api").then_some(())
            }
        },
    )
    .await;
    let (_, during) = c
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(during["deploy"]["state"], "deploying", "{during}");
    docker(&["kill", &c.container("master0")]);
    let _ = deploying.await;
    docker(&["start", &c.container("master0")]);
    c.wait_front_door().await;
    // The old release serves on; the record is settled from the worker's report, not left
    // `deploying`.
    assert_eq!(
        c.app_through_front_door(id, "/").await.as_deref(),
        Some("web v1\n")
    );
    let settled = eventually("the record settled", Duration::from_secs(120), || async {
        let (_, rec) = c
            .call(Method::GET, &format!("/v1/instances/{id}"), None)
            .await;
        (rec["deploy"]["state"] != "deploying").then_some(rec)
    })
    .await;
    eprintln!("settled: {}", settled["deploy"]);
    match settled["deploy"]["state"].as_str() {
        Some("failed") => {
            assert_eq!(settled["running_commit"], c1.as_str(), "{settled}");
            let why = settled["deploy"]["error"].as_str().unwrap_or_default();
            assert!(why.starts_with("interrupted"), "{why}");
        }
        // The worker finished the rollout before the lock of the dead master ran out.
        Some("deployed") => assert_eq!(settled["running_commit"], c2.as_str(), "{settled}"),
        other => panic!("{other:?}: {settled}"),
    }
    assert_eq!(settled["state"], "running", "{settled}");

    // A retry finishes it: v2 serves, one container per service.
    let (status, done) = c
        .call(
            Method::POST,
            &format!("/v1/instances/{id}/deploy?wait=5m"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["deploy"]["state"], "deployed", "{done}");
    assert_eq!(done["running_commit"], c2.as_str(), "{done}");
    let page = eventually(
        "v2 through the front door",
        Duration::from_secs(60),
        || async {
            c.app_through_front_door(id, "/")
                .await
                .filter(|p| p == "web v2\n")
        },
    )
    .await;
    assert_eq!(page, "web v2\n");
    // The old containers retire in the background after the answer.
    let left = eventually(
        "one container per service",
        Duration::from_secs(60),
        || async {
            let left = containers_of(&c.workers[0].node, id);
            (left.len() == 2).then_some(left)
        },
    )
    .await;
    // The record says when they were gone.
    eventually(
        "retired_at in the record",
        Duration::from_secs(60),
        || async {
            let (_, rec) = c
                .call(Method::GET, &format!("/v1/instances/{id}"), None)
                .await;
            rec["deploy"]["retired_at"].is_string().then_some(())
        },
    )
    .await;
    assert!(
        left.iter()
            .all(|l| l.ends_with(&c2) && !l.contains("-old ")),
        "{left:?}"
    );
    for key in c.kv_keys("berth/locks/").await {
        assert_eq!(c.kv_session(&key).await, None, "{key} still held");
    }
}
