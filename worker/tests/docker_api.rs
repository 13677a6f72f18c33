//! Worker API behaviour against the real Docker engine: auth and input errors through the
//! router, policy rejections as 422, a failed start leaving nothing running, crash recovery, and
//! thirty-five stacks in a row leaving no network behind.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_worker::api::{AppState, router};
use berth_worker::stacks::{Settings, Stacks};
use berth_worker_api::{
    ErrorBody, ErrorCode, Secret, StackState, StartRequest, WorkerClientError, auth,
};
use common::*;
use tower::ServiceExt;

const TINY: &str = "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"8080\"]\n";

fn api_error(e: WorkerClientError) -> (u16, ErrorBody) {
    match e {
        WorkerClientError::Api { status, body } => (status.as_u16(), body),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn docker_router_auth_and_input_errors() {
    let data = tempfile::tempdir().unwrap();
    let stacks = Stacks::new(
        berth_worker::docker::connect().await.unwrap(),
        Settings {
            data_dir: data.path().to_path_buf(),
            node: "router-test".into(),
            advertise: "127.0.0.1".into(),
            publish_address: "127.0.0.1".into(),
            policy: Default::default(),
            build_timeout: std::time::Duration::from_secs(60),
            start_timeout: std::time::Duration::from_secs(60),
            build_parallelism: 2,
            builder: Default::default(),
            keep_releases: 3,
            forwarder_bin: None,
        },
        berth_worker::logbuf::LogBook::default(),
    );
    let app = router(AppState {
        stacks: Arc::new(stacks),
        token: Secret::new(TOKEN),
        capacity: 7,
        fence: None,
    });
    let auth = TOKEN.to_owned();
    let commit = "a".repeat(40);
    let build_body = format!(
        r#"{{"user":"u","project":"p","commit":"{commit}","repo":{{"url":"file:///nonexistent"}}}}"#
    );
    // (method, path, key the request is signed with, body, status, text in the answer)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/healthz",
            None,
            String::new(),
            200,
            "\"capacity\":7",
        ),
        (
            "GET",
            "/v1/stacks",
            None,
            String::new(),
            401,
            "unauthorized",
        ),
        (
            "GET",
            "/v1/stacks",
            Some("wrong"),
            String::new(),
            401,
            "unauthorized",
        ),
        ("GET", "/v1/stacks", Some(&auth), String::new(), 200, "[]"),
        (
            "GET",
            "/v1/stacks/Bad..Id",
            Some(&auth),
            String::new(),
            400,
            "invalid id",
        ),
        (
            "GET",
            "/v1/stacks/nope",
            Some(&auth),
            String::new(),
            404,
            "no stack nope",
        ),
        (
            "GET",
            "/v1/stacks/nope/logs",
            Some(&auth),
            String::new(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/stacks/nope/start",
            Some(&auth),
            String::new(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/stacks/nope/stop",
            Some(&auth),
            String::new(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/stacks/x/build",
            Some(&auth),
            "{\"bogus\":1}".into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/stacks/x/build",
            Some(&auth),
            build_body.replace(&commit, "HEAD"),
            400,
            "invalid commit",
        ),
        (
            "POST",
            "/v1/stacks/x/build",
            Some(&auth),
            build_body.clone(),
            500,
            "fetch failed",
        ),
        (
            "POST",
            "/v1/stacks/x/start",
            Some(&auth),
            "{\"commit\":\"b\"}".into(),
            409,
            "conflict",
        ),
        (
            "POST",
            "/v1/stacks/x/start",
            Some(&auth),
            "{\"timeout_secs\":18446744073709551615}".into(),
            400,
            "timeout_secs 18446744073709551615 is above the maximum",
        ),
        (
            "DELETE",
            "/v1/stacks/x",
            Some(&auth),
            String::new(),
            200,
            "\"existed\":true",
        ),
        (
            "DELETE",
            "/v1/stacks/x",
            Some(&auth),
            String::new(),
            200,
            "\"existed\":false",
        ),
        (
            "GET",
            "/nowhere",
            Some(&auth),
            String::new(),
            404,
            "no such route",
        ),
    ];
    for (method, path, token, body, status, needle) in cases {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = token {
            let signed = auth::sign_now(&Secret::new(key), method, path, body.as_bytes());
            req = req
                .header(auth::DATE_HEADER, signed.date.to_string())
                .header(auth::NONCE_HEADER, signed.nonce)
                .header(auth::SIGNATURE_HEADER, signed.signature);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let got = resp.status();
        let bytes = http_body_util_collect(resp.into_body()).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(
            got,
            StatusCode::from_u16(status).unwrap(),
            "{method} {path}: {text}"
        );
        assert!(text.contains(needle), "{method} {path}: {text}");
    }

    // The cluster token as a bearer token no longer opens anything.
    let bearer = Request::get("/v1/stacks")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(bearer).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A signed request is accepted once; the same request again is a replay.
    let signed = auth::sign_now(&Secret::new(TOKEN), "GET", "/v1/stacks", b"");
    let replay = || {
        Request::get("/v1/stacks")
            .header(auth::DATE_HEADER, signed.date.to_string())
            .header(auth::NONCE_HEADER, signed.nonce.clone())
            .header(auth::SIGNATURE_HEADER, signed.signature.clone())
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        app.clone().oneshot(replay()).await.unwrap().status(),
        StatusCode::OK
    );
    let again = app.clone().oneshot(replay()).await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let text =
        String::from_utf8_lossy(&http_body_util_collect(again.into_body()).await).into_owned();
    assert!(text.contains("already seen"), "{text}");

    // A health challenge is answered with the proof for this node.
    let resp = app
        .clone()
        .oneshot(
            Request::get("/healthz?challenge=c0ffee")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let proof = resp.headers()[auth::PROOF_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(auth::check_health_proof(
        &Secret::new(TOKEN),
        "c0ffee",
        "router-test",
        &proof
    ));
}

async fn http_body_util_collect(body: Body) -> Vec<u8> {
    axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_policy_rejections_answer_422_with_details() {
    let w = worker("policy", |c| {
        c.allowed_caps = vec!["NET_BIND_SERVICE".into()]
    })
    .await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  bad:\n    image: berth-base:latest\n    privileged: true\n    network_mode: host\n    pid: host\n    ipc: host\n    devices: [/dev/fuse]\n    cap_add: [SYS_ADMIN, NET_BIND_SERVICE]\n    volumes: [/var/run/docker.sock:/var/run/docker.sock, /etc:/etc2, ../..:/up, ./ok:/ok]\n",
    )]);
    let sid = id(&format!("pol-{}", w.node));
    let (status, body) = api_error(
        w.client
            .build(&sid, &build_request(repo.path(), &commit))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422);
    assert_eq!(body.error.code, ErrorCode::PolicyRejected);
    let mut got: Vec<(String, String)> = body
        .error
        .details
        .iter()
        .map(|d| {
            assert_eq!(d.service.as_deref(), Some("bad"));
            (d.field.clone(), d.reason.clone())
        })
        .collect();
    got.sort();
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "services.bad.cap_add",
            "services.bad.devices",
            "services.bad.ipc",
            "services.bad.network_mode",
            "services.bad.pid",
            "services.bad.privileged",
            "services.bad.volumes",
            "services.bad.volumes",
            "services.bad.volumes",
        ],
        "{got:?}"
    );
    assert!(got.iter().any(|(_, r)| r.contains("Docker socket")));
    assert!(got.iter().any(|(_, r)| r.contains("SYS_ADMIN")));
    let status = w.client.status(&sid).await.unwrap().unwrap();
    assert_eq!(status.state, StackState::Failed);
    w.client.delete(&sid, false).await.unwrap();

    // An unsupported key is named too.
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  x:\n    image: berth-base:latest\n    deploy: {replicas: 2}\n",
    )]);
    let (status, body) = api_error(
        w.client
            .build(&sid, &build_request(repo.path(), &commit))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422);
    assert_eq!(body.error.details[0].field, "services.x.deploy.replicas");
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_failed_start_leaves_nothing_running() {
    let w = worker("failstart", |_| {}).await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  api:\n    image: berth-base:latest\n    command: [sh, -c, 'echo api-log-marker; exec httpd -f -p 8080 -h /']\n    healthcheck: {test: [CMD, 'false'], interval: 1s, retries: 1}\n  web:\n    image: berth-base:latest\n    command: [httpd, -f, -p, '8080', -h, /]\n    ports: ['8080']\n    depends_on: {api: {condition: service_healthy}}\n",
    )]);
    let sid = id(&format!("fail-{}", w.node));
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let (status, body) = api_error(
        w.client
            .start(&sid, &StartRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422, "{body:?}");
    assert_eq!(body.error.code, ErrorCode::Unhealthy);
    assert!(
        body.error.message.contains("service api became unhealthy"),
        "{}",
        body.error.message
    );
    assert!(
        body.error.message.contains("api-log-marker"),
        "{}",
        body.error.message
    );
    let (containers, ..) = w.cleanup.leftovers();
    assert!(
        containers.is_empty(),
        "created containers are removed: {containers:?}"
    );
    let st = w.client.status(&sid).await.unwrap().unwrap();
    assert_eq!(st.state, StackState::Failed);
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restart_adopts_stacks_and_interrupted_build_retries() {
    let w = worker("adopt", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", TINY)]);
    let running = id(&format!("run-{}", w.node));
    let req = build_request(repo.path(), &commit);
    w.client.build(&running, &req).await.unwrap();
    let first = w
        .client
        .start(&running, &StartRequest::default())
        .await
        .unwrap();
    // A build that was running when the worker died.
    let broken = id(&format!("brk-{}", w.node));
    let dir = w.data.path().join("stacks").join(broken.as_str());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("state.json"),
        format!(r#"{{"id":"{broken}","state":"building","commit":null}}"#),
    )
    .unwrap();
    let TestWorker {
        data,
        node,
        shutdown,
        task,
        cleanup,
        ..
    } = w;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    // A worker that died while its containers were paused for a checkout, and a data dir laid
    // out by an earlier worker: git metadata inside the checkout, no checked-out marker.
    let container = first.services[0].container.clone().unwrap();
    docker_out(&["pause", &container]);
    let stack = data.path().join("stacks").join(running.as_str());
    std::fs::rename(stack.join("git"), stack.join("src/.git")).unwrap();
    std::fs::remove_dir_all(stack.join("src/.git/refs/berth")).unwrap();

    let w2 = worker("adopt", |c| c.data_dir = data.path().to_path_buf()).await;
    assert_eq!(w2.node, node);
    let again = w2.client.status(&running).await.unwrap().unwrap();
    assert_eq!(again.state, StackState::Running);
    assert_eq!(again.endpoints, first.endpoints);
    assert_eq!(again.services[0].state, "running", "unpaused on adoption");
    assert!(!stack.join("src/.git").exists(), "legacy layout migrated");
    assert!(stack.join("git/HEAD").exists());
    let b = w2.client.status(&broken).await.unwrap().unwrap();
    assert_eq!(b.state, StackState::Failed);
    assert!(b.error.unwrap().contains("interrupted"));
    let rebuilt = w2.client.build(&broken, &req).await.unwrap();
    assert_eq!(rebuilt.state, StackState::Built);
    assert_eq!(w2.client.list().await.unwrap().len(), 2);
    // No duplicate containers after adoption and a repeated start.
    w2.client
        .start(&running, &StartRequest::default())
        .await
        .unwrap();
    assert_eq!(cleanup.app_containers().len(), 1);
    w2.client.delete(&running, false).await.unwrap();
    w2.client.delete(&broken, false).await.unwrap();
    drop(cleanup);
    w2.stop().await;
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_thirty_five_stacks_leave_no_network() {
    let w = worker("many", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", TINY)]);
    let req = build_request(repo.path(), &commit);
    for n in 0..35 {
        let sid = id(&format!("m{n}-{}", w.node));
        w.client.build(&sid, &req).await.unwrap();
        let st = w
            .client
            .start(&sid, &StartRequest::default())
            .await
            .unwrap();
        assert_eq!(st.state, StackState::Running, "stack {n}");
        let del = w.client.delete(&sid, false).await.unwrap();
        assert_eq!(del.removed_networks, 1, "stack {n}");
    }
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_concurrent_calls_are_serialised_and_orphans_removed() {
    let w = worker("concurrent", |_| {}).await;
    let two =
        format!("{TINY}  extra:\n    image: berth-base:latest\n    command: [sleep, \"3600\"]\n");
    let (repo, commit) = git_repo(&[("compose.yaml", &two)]);
    let sid = id(&format!("cc-{}", w.node));
    let req = build_request(repo.path(), &commit);
    let (a, b) = tokio::join!(w.client.build(&sid, &req), w.client.build(&sid, &req));
    assert_eq!(a.unwrap().state, StackState::Built);
    assert_eq!(b.unwrap().state, StackState::Built);
    let start = StartRequest::default();
    let (a, b) = tokio::join!(w.client.start(&sid, &start), w.client.start(&sid, &start));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.endpoints, b.endpoints);
    assert_eq!(
        w.cleanup.app_containers().len(),
        2,
        "one container per service"
    );

    // A new commit without `extra`: its container is an orphan and goes on start.
    let (repo2, commit2) = git_repo(&[("compose.yaml", TINY)]);
    let st = w.build_and_start(&sid, repo2.path(), &commit2).await;
    assert_eq!(st.services.len(), 1, "{st:?}");
    assert_eq!(st.commit.as_deref(), Some(commit2.as_str()));
    assert_eq!(w.cleanup.app_containers().len(), 1);
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_timeout_fails_the_stack() {
    let w = worker("timeout", |c| {
        c.build_timeout = std::time::Duration::from_secs(2)
    })
    .await;
    let (repo, commit) = git_repo(&[
        ("compose.yaml", "services:\n  slow:\n    build: .\n"),
        (
            "Dockerfile",
            "FROM berth-base:latest\nARG WAIT=30\nRUN sleep $WAIT\n",
        ),
    ]);
    let sid = id(&format!("to-{}", w.node));
    let req = build_request(repo.path(), &commit);
    let client = w.client.clone();
    let (sid2, req2) = (sid.clone(), req.clone());
    let build = tokio::spawn(async move { client.build(&sid2, &req2).await });
    // Follow the log while the build runs: the stream ends when the build does.
    let follow = loop {
        match w.client.logs(&sid, true).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let followed: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(follow)
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    let followed = String::from_utf8_lossy(&followed);
    assert!(
        followed.contains("build failed: build of service slow timed out"),
        "{followed}"
    );
    let (status, body) = api_error(build.await.unwrap().unwrap_err());
    assert_eq!(status, 504, "{body:?}");
    assert!(
        body.error.message.contains("timed out"),
        "{}",
        body.error.message
    );
    assert_eq!(
        w.client.status(&sid).await.unwrap().unwrap().state,
        StackState::Failed
    );
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_rebuilds_keep_the_images_of_the_last_releases_only() {
    let w = worker("images", |c| c.keep_releases = 2).await;
    let sid = id(&format!("img-{}", w.node));
    let tags = || {
        let out = std::process::Command::new("docker")
            .args([
                "images",
                "--filter",
                &format!("label=org.berth.instance={sid}"),
                "--format",
                "{{.Tag}}",
            ])
            .output()
            .unwrap();
        let mut t: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        t.sort();
        t
    };
    let mut commits: Vec<String> = Vec::new();
    for (n, env) in ["one", "two", "three"].iter().enumerate() {
        let dockerfile = format!("FROM berth-base:latest\nENV VERSION={env}\n");
        let (repo, commit) = git_repo(&[
            ("compose.yaml", "services:\n  app:\n    build: .\n"),
            ("Dockerfile", &dockerfile),
        ]);
        w.client
            .build(&sid, &build_request(repo.path(), &commit))
            .await
            .unwrap();
        commits.insert(0, commit[..12].to_owned());
        // `--keep-releases 2`: the two newest releases keep their tags, older ones are pruned.
        let mut want: Vec<String> = commits.iter().take(2).cloned().collect();
        want.push("latest".to_owned());
        want.sort();
        assert_eq!(tags(), want, "after build {n}");
    }
    let del = w.client.delete(&sid, false).await.unwrap();
    assert_eq!(del.removed_images, 2, "the two kept releases' images");
    assert!(tags().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_failed_rebuild_blocks_start_until_built_again() {
    let w = worker("rebuild", |_| {}).await;
    let sid = id(&format!("rb-{}", w.node));
    let (good, good_commit) = git_repo(&[("compose.yaml", TINY)]);
    let (bad, bad_commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    privileged: true\n",
    )]);
    w.client
        .build(&sid, &build_request(good.path(), &good_commit))
        .await
        .unwrap();
    let (status, _) = api_error(
        w.client
            .build(&sid, &build_request(bad.path(), &bad_commit))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422);
    let (status, body) = api_error(
        w.client
            .start(&sid, &StartRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409, "{body:?}");
    assert!(
        body.error.message.contains("build again"),
        "{}",
        body.error.message
    );
    let st = w.build_and_start(&sid, good.path(), &good_commit).await;
    assert_eq!(st.state, StackState::Running);
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

fn docker_out(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_binds_below_a_writable_bind_answer_422() {
    let w = worker("nested", |_| {}).await;
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("secret.txt"), "host-secret").unwrap();
    let sid = id(&format!("nest-{}", w.node));
    // One service plants a symlink where another's bind source will be (audit #1), and one
    // service swaps its own nested bind source between restarts (audit #5).
    let planter = format!(
        "services:\n  planter:\n    image: berth-base:latest\n    command: [sh, -c, 'ln -s {v} /d/x']\n    volumes: ['./d:/d']\n  reader:\n    image: berth-base:latest\n    command: [sh, -c, 'cat /host/secret.txt; sleep 600']\n    volumes: ['./d/x:/host']\n    depends_on:\n      planter: {{condition: service_completed_successfully}}\n",
        v = victim.path().display()
    );
    let swapper = format!(
        "services:\n  one:\n    image: berth-base:latest\n    restart: on-failure:3\n    command: [sh, -c, 'rmdir /d/y && ln -s {v} /d/y; exit 1']\n    volumes: ['./d:/d', './d/y:/host']\n",
        v = victim.path().display()
    );
    for (compose, service, inner, outer) in [
        (
            planter.as_str(),
            "reader",
            "./d/x",
            "./d, which service planter",
        ),
        (swapper.as_str(), "one", "./d/y", "./d, which service one"),
    ] {
        let (repo, commit) = git_repo(&[("compose.yaml", compose), ("d/y/.keep", "")]);
        let (status, body) = api_error(
            w.client
                .build(&sid, &build_request(repo.path(), &commit))
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 422, "{body:?}");
        let d = &body.error.details;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].service.as_deref(), Some(service));
        assert_eq!(d[0].field, format!("services.{service}.volumes"));
        assert!(
            d[0].reason.starts_with(&format!(
                "bind source {inner} lies inside {outer} mounts writable"
            )),
            "{}",
            d[0].reason
        );
    }
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);

    // A read-only ancestor is fine, and Docker gets the resolved path, not the symlink.
    let (repo, _) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  app:\n    image: berth-base:latest\n    command: [sleep, '600']\n    volumes: ['./d:/d:ro', './d/y:/y', './link:/l:ro']\n",
        ),
        ("d/y/.keep", ""),
    ]);
    std::os::unix::fs::symlink("d", repo.path().join("link")).unwrap();
    let commit = git_commit(repo.path(), &[]);
    let st = w.build_and_start(&sid, repo.path(), &commit).await;
    assert_eq!(st.state, StackState::Running);
    let src = w.stack_src(sid.as_str()).canonicalize().unwrap();
    let binds = docker_out(&[
        "inspect",
        "--format",
        "{{json .HostConfig.Binds}}",
        st.services[0].container.as_deref().unwrap(),
    ]);
    let binds: Vec<String> = serde_json::from_str(&binds).unwrap();
    let d = src.join("d").display().to_string();
    assert_eq!(
        binds,
        [
            format!("{d}:/d:ro"),
            format!("{d}/y:/y"),
            format!("{d}:/l:ro")
        ]
    );
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_rebuild_keeps_runtime_data_and_git_out_of_reach() {
    let w = worker("gitreach", |_| {}).await;
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("precious.txt"), "p").unwrap();
    // The container binds the whole project and points a `.git/config` in it at the victim
    // (audit #3), and writes runtime data into the checkout (audit #10).
    let compose = format!(
        "services:\n  app:\n    image: berth-base:latest\n    command: [sh, -c, \"mkdir -p /app/.git && printf '[core]\\\\n\\\\tworktree = {v}\\\\n' >> /app/.git/config && echo kept > /app/data/db && echo planted && sleep 600\"]\n    volumes: ['.:/app']\n",
        v = victim.path().display()
    );
    let (repo, first) = git_repo(&[("compose.yaml", &compose), ("data/.keep", "")]);
    let sid = id(&format!("git-{}", w.node));
    w.client
        .build(&sid, &build_request(repo.path(), &first))
        .await
        .unwrap();
    let src = w.stack_src(sid.as_str());
    let git_in_checkout = src.join(".git").exists();
    w.client
        .start(&sid, &StartRequest::default())
        .await
        .unwrap();
    for _ in 0..200 {
        if src.join("data/db").exists() && src.join(".git/config").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(src.join("data/db").exists(), "the container ran");

    let second = git_commit(repo.path(), &[("newfile.txt", "new")]);
    let rebuilt = w
        .client
        .build(&sid, &build_request(repo.path(), &second))
        .await
        .unwrap();
    assert_eq!(rebuilt.state, StackState::Running);
    assert_eq!(rebuilt.commit.as_deref(), Some(second.as_str()));
    let victim_files: Vec<String> = std::fs::read_dir(victim.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(victim_files, ["precious.txt"]);
    assert_eq!(
        std::fs::read_to_string(src.join("newfile.txt")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("data/db")).unwrap().trim(),
        "kept",
        "runtime data in the checkout survives a rebuild"
    );
    assert!(
        rebuilt.services.iter().all(|s| s.state == "running"),
        "writers paused during the checkout run again: {rebuilt:?}"
    );
    assert!(!git_in_checkout, "no git metadata in the checkout");
    assert!(w.stack_git(sid.as_str()).join("HEAD").exists());
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

/// Runs the docker CLI, returning trimmed stdout (empty when the command failed).
fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_colliding_names_are_a_conflict_and_leave_the_owner_intact() {
    let w = worker("collide", |_| {}).await;
    let base = format!("cl{}", std::process::id());
    // `<base>_x` owns the volume `<base>_x_data` and the network `<base>_x_default`.
    let a = id(&format!("{base}_x"));
    let (repo_a, commit_a) = git_repo(&[(
        "compose.yaml",
        "services:\n  web:\n    image: berth-base:latest\n    command: [sh, -c, 'echo tenant-a-private > /data/db.txt; exec sleep 600']\n    volumes: [data:/data]\nvolumes:\n  data: {}\n",
    )]);
    w.build_and_start(&a, repo_a.path(), &commit_a).await;
    // `<base>-x` owns the container `<base>-x-web-1` and the image `<base>-x-web`.
    let c = id(&format!("{base}-x"));
    let (repo_c, commit_c) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  web:\n    build: .\n    command: [sleep, '600']\n",
        ),
        ("Dockerfile", "FROM berth-base:latest\nENV OWNER=c\n"),
    ]);
    w.build_and_start(&c, repo_c.path(), &commit_c).await;
    let c_container = format!("{base}-x-web-1");
    let c_id = docker(&["inspect", "-f", "{{.Id}}", &c_container]);
    assert!(!c_id.is_empty());
    let a_network = format!("{base}_x_default");
    let members = || {
        docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}} {{end}}",
            &a_network,
        ])
    };
    let a_members = members();
    assert_eq!(a_members, format!("{base}_x-web-1"));

    // `<base>` names each of those objects through its own keys and service names.
    let b = id(&base);
    let cases = [
        (
            "services:\n  spy:\n    image: berth-base:latest\n    command: [sleep, '600']\n    volumes: [x_data:/steal]\nvolumes:\n  x_data: {}\n",
            format!("volume {base}_x_data already exists and belongs to berth instance {a}"),
        ),
        (
            "services:\n  spy:\n    image: berth-base:latest\n    command: [sleep, '600']\n    networks: [x_default]\nnetworks:\n  x_default: {}\n",
            format!("network {a_network} already exists and belongs to berth instance {a}"),
        ),
        (
            "services:\n  x-web:\n    image: berth-base:latest\n    command: [sleep, '600']\n",
            format!("container {c_container} already exists and belongs to berth instance {c}"),
        ),
    ];
    for (compose, want) in &cases {
        let (repo, commit) = git_repo(&[("compose.yaml", compose)]);
        w.client
            .build(&b, &build_request(repo.path(), &commit))
            .await
            .unwrap();
        let (status, body) = api_error(
            w.client
                .start(&b, &StartRequest::default())
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 409, "{compose}: {body:?}");
        assert!(body.error.message.contains(want), "{}", body.error.message);
        let st = w.client.status(&b).await.unwrap().unwrap();
        assert_eq!(st.state, StackState::Built, "nothing changed: {st:?}");
        assert!(st.services.is_empty(), "{st:?}");
    }
    // Building `x-web` would move the tag `<base>-x-web:latest` off `<base>-x`'s image.
    let (repo, commit) = git_repo(&[
        ("compose.yaml", "services:\n  x-web:\n    build: .\n"),
        ("Dockerfile", "FROM berth-base:latest\nENV OWNER=b\n"),
    ]);
    let (status, body) = api_error(
        w.client
            .build(&b, &build_request(repo.path(), &commit))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409, "{body:?}");
    assert!(
        body.error.message.contains(&format!("image {base}-x-web:"))
            && body
                .error
                .message
                .contains(&format!("belongs to berth instance {c}")),
        "{}",
        body.error.message
    );
    // An object berth did not make counts as another's (the node label only lets this test's
    // cleanup find it; it has no instance label).
    let unmanaged = format!("{base}2_data");
    docker(&[
        "volume",
        "create",
        "--label",
        &format!("org.berth.node={}", w.node),
        &unmanaged,
    ]);
    let d = id(&format!("{base}2"));
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    command: [sleep, '600']\n    volumes: [data:/data]\nvolumes:\n  data: {}\n",
    )]);
    w.client
        .build(&d, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let (status, body) = api_error(
        w.client
            .start(&d, &StartRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409, "{body:?}");
    assert!(
        body.error.message.contains(&format!(
            "volume {unmanaged} already exists and was not created by berth"
        )),
        "{}",
        body.error.message
    );
    w.client.delete(&b, false).await.unwrap();
    w.client.delete(&d, false).await.unwrap();

    // The owners' objects are untouched: same container, same network members, same data.
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &c_container]), c_id);
    assert_eq!(members(), a_members);
    assert_eq!(
        docker(&["exec", &format!("{base}_x-web-1"), "cat", "/data/db.txt"]),
        "tenant-a-private"
    );
    assert_eq!(
        docker(&["volume", "inspect", "-f", "{{.Name}}", &unmanaged]),
        unmanaged
    );
    for owner in [&a, &c] {
        let st = w.client.status(owner).await.unwrap().unwrap();
        assert_eq!(st.state, StackState::Running);
        assert_eq!(st.services.len(), 1, "{st:?}");
        assert_eq!(st.services[0].state, "running", "{st:?}");
    }
    w.client.delete(&a, false).await.unwrap();
    w.client.delete(&c, false).await.unwrap();
    docker(&["volume", "rm", &unmanaged]);
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_other_instances_images_are_refused_and_delete_goes_on() {
    let w = worker("foreign", |_| {}).await;
    let owner = id(&format!("b1-{}", w.node));
    let (repo, commit) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  web:\n    build: .\n    command: [sleep, '600']\n",
        ),
        (
            "Dockerfile",
            "FROM berth-base:latest\nRUN echo b1-secret > /greeting\n",
        ),
    ]);
    w.build_and_start(&owner, repo.path(), &commit).await;
    let theirs = format!("{owner}-web:latest");

    let child = id(&format!("ch-{}", w.node));
    let peek = format!("services:\n  peek:\n    image: {theirs}\n    command: [cat, /greeting]\n");
    let from = format!("FROM {theirs}\nRUN cat /greeting > /stolen\n");
    let copy = format!("FROM berth-base:latest\nCOPY --from={theirs} /greeting /g\n");
    // The four tricks that got past the old check (issue 14, finding 4): a continuation inside
    // `FROM` and inside `COPY`, a UTF-8 BOM, and a backslash escape in an `ARG` value.
    let tricks = [
        format!("FR\\\nOM {theirs}\nRUN cat /greeting > /stolen\n"),
        format!("FROM berth-base:latest\nCO\\\nPY --from={theirs} /greeting /g\n"),
        format!("\u{feff}FROM {theirs}\nRUN cat /greeting > /stolen\n"),
        format!("ARG X={owner}\\-web:latest\nFROM $X\nRUN cat /greeting > /stolen\n"),
    ];
    // (files, service, field)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let mut cases: Vec<Case<'_>> = vec![
        (vec![("compose.yaml", &peek)], "peek", "services.peek.image"),
        (
            vec![
                ("compose.yaml", "services:\n  app:\n    build: .\n"),
                ("Dockerfile", &from),
            ],
            "app",
            "services.app.build",
        ),
        (
            vec![
                ("compose.yaml", "services:\n  app:\n    build: .\n"),
                ("Dockerfile", &copy),
            ],
            "app",
            "services.app.build",
        ),
    ];
    for trick in &tricks {
        cases.push((
            vec![
                ("compose.yaml", "services:\n  app:\n    build: .\n"),
                ("Dockerfile", trick),
            ],
            "app",
            "services.app.build",
        ));
    }
    for (files, service, field) in &cases {
        let (repo, commit) = git_repo(files);
        let (status, body) = api_error(
            w.client
                .build(&child, &build_request(repo.path(), &commit))
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 422, "{files:?}: {body:?}");
        let d = &body.error.details[0];
        assert_eq!(d.service.as_deref(), Some(*service));
        assert_eq!(d.field, *field);
        assert!(
            d.reason.contains(&theirs)
                && d.reason
                    .contains(&format!("belongs to berth instance {owner}")),
            "{}",
            d.reason
        );
    }
    w.client.delete(&child, false).await.unwrap();

    // A container someone else runs from the owner's image: Docker refuses to remove the image.
    let foreign = docker(&[
        "run",
        "-d",
        "--label",
        &format!("org.berth.instance=other-{}", w.node),
        "--label",
        &format!("org.berth.node={}", w.node),
        &theirs,
        "sleep",
        "600",
    ]);
    assert!(!foreign.is_empty());
    let deleted = w.client.delete(&owner, false).await.unwrap();
    assert_eq!(deleted.removed_containers, 1, "{deleted:?}");
    assert!(deleted.removed_networks >= 1, "{deleted:?}");
    assert_eq!(deleted.removed_images, 0, "{deleted:?}");
    assert_eq!(deleted.not_removed.len(), 1, "{deleted:?}");
    assert!(
        deleted.not_removed[0].starts_with("image ")
            && deleted.not_removed[0].contains(&format!("untagged {owner}-web:"))
            && deleted.not_removed[0].contains("being used by running container"),
        "{deleted:?}"
    );
    assert!(!w.data.path().join("stacks").join(owner.as_str()).exists());
    assert!(
        docker(&["image", "inspect", &theirs]).is_empty(),
        "untagged"
    );
    // Once the image is free, deleting again removes it.
    docker(&["rm", "-f", &foreign]);
    let again = w.client.delete(&owner, false).await.unwrap();
    assert_eq!(again.removed_images, 1, "{again:?}");
    assert!(again.not_removed.is_empty(), "{again:?}");
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_image_healthcheck_counts_and_missing_one_is_refused_up_front() {
    let w = worker("imagehc", |_| {}).await;
    let sid = id(&format!("hc-{}", w.node));
    // `db` has no healthcheck in the file, only its image's HEALTHCHECK; `ipc` and an `expose`
    // range are applied too.
    let (repo, commit) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  db:\n    build: .\n    ipc: shareable\n    expose: ['7000-7002']\n  app:\n    image: berth-base:latest\n    command: [sleep, '600']\n    depends_on: {db: {condition: service_healthy}}\n",
        ),
        (
            "Dockerfile",
            "FROM berth-base:latest\nHEALTHCHECK --interval=1s CMD true\nCMD [\"sleep\", \"600\"]\n",
        ),
    ]);
    let st = w.build_and_start(&sid, repo.path(), &commit).await;
    let db = st.services.iter().find(|s| s.name == "db").unwrap();
    // Ready on the image's check: Docker's, or the worker's run of it before Docker's first.
    assert!(
        matches!(db.health.as_deref(), Some("healthy" | "starting")),
        "{st:?}"
    );
    healthy_soon(&w, &sid, "db").await;
    let container = db.container.clone().unwrap();
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.IpcMode}}", &container]),
        "shareable"
    );
    let exposed = docker(&["inspect", "-f", "{{json .Config.ExposedPorts}}", &container]);
    for port in ["7000/tcp", "7001/tcp", "7002/tcp"] {
        assert!(exposed.contains(port), "{exposed}");
    }
    assert!(!exposed.contains("7000-7002"), "{exposed}");
    w.client.delete(&sid, false).await.unwrap();

    // A `service_healthy` dependency on a service with no healthcheck anywhere: the build
    // answers 422 invalid_compose (not the start), and no container is ever created.
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  db:\n    image: berth-base:latest\n    command: [sleep, '600']\n  app:\n    image: berth-base:latest\n    command: [sleep, '600']\n    depends_on: {db: {condition: service_healthy}}\n",
    )]);
    let (status, body) = api_error(
        w.client
            .build(&sid, &build_request(repo.path(), &commit))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422, "{body:?}");
    assert_eq!(body.error.code, ErrorCode::InvalidCompose, "{body:?}");
    assert_eq!(body.error.details[0].field, "services.db.healthcheck");
    let st = w.client.status(&sid).await.unwrap().unwrap();
    assert_eq!(st.state, StackState::Failed);
    let (status, _) = api_error(
        w.client
            .start(&sid, &StartRequest::default())
            .await
            .unwrap_err(),
    );
    assert!(
        status == 409 || status == 422,
        "a start of the failed build is refused: {status}"
    );
    let logs: Vec<u8> =
        futures::StreamExt::collect::<Vec<_>>(w.client.logs(&sid, false).await.unwrap())
            .await
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
    let logs = String::from_utf8_lossy(&logs);
    assert!(!logs.contains("created "), "{logs}");
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ids_and_service_names_outside_the_reference_grammar_build() {
    let w = worker("refname", |_| {}).await;
    let sid = id(&format!("odd{}_", std::process::id()));
    let (repo, commit) = git_repo(&[
        (
            "compose.yaml",
            "services:\n  web.:\n    build: .\n    command: [sleep, '600']\n",
        ),
        ("Dockerfile", "FROM berth-base:latest\nENV A=1\n"),
    ]);
    let built = w
        .client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    assert_eq!(built.state, StackState::Built);
    let st = w
        .client
        .start(&sid, &StartRequest::default())
        .await
        .unwrap();
    assert_eq!(st.state, StackState::Running);
    let del = w.client.delete(&sid, false).await.unwrap();
    assert_eq!(del.removed_images, 1, "{del:?}");
    w.stop().await;
}
