//! The master end to end against a real in-process registry and stand-in workers: upload, clone
//! with stock git, build, start, stop, delete; hostile uploads leaving nothing; serialised
//! concurrent operations; placement spread; restart; worker loss; interrupted operations.

mod common;

use std::time::Duration;

use berth_model::ValidName;
use berth_model::keys::{instance_record_key, seed_ip_key};
use common::*;
use reqwest::Method;

fn kv_exists(v: &Option<berth_registry::client::KvPair>) -> bool {
    v.is_some()
}

async fn lock_keys(reg: &Registry) -> Vec<String> {
    reg.client.kv_keys("berth/locks/", None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_clone_build_start_stop_delete() {
    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;

    // Upload without build: record uploaded, repo cloneable with stock git, same tree.
    let (status, rec) = m.upload("shop-1", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "uploaded");
    let c1 = rec["commit"].as_str().unwrap().to_owned();
    assert_eq!(rec["repo"], format!("{}/git/alice/shop-1.git", m.base));
    let work = tempfile::tempdir().unwrap();
    let url =
        format!("{}/git/alice/shop-1.git", m.base).replacen("://", &format!("://berth:{GIT}@"), 1);
    git(work.path(), &["clone", "-q", &url, "co"]).await;
    let co = work.path().join("co");
    let files = git(&co, &["ls-files", "-s"]).await;
    assert!(
        files.contains("100755") && files.contains("web/run.sh"),
        "{files}"
    );
    assert!(
        files.contains("100644") && files.contains("compose.yaml"),
        "{files}"
    );
    assert_eq!(
        std::fs::read_to_string(co.join("compose.yaml")).unwrap(),
        "services:\n  web:\n    build: ./web\n    ports: [\"80\"]\n# v1\n"
    );

    // Identical upload: same commit, nothing changes (not even updated_at). (With build=true it
    // would build the still unbuilt code: see a_retried_upload_builds_what_was_not_built.)
    let (status, again) = m.upload("shop-1", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200);
    assert_eq!(again, rec);

    // Second upload builds by default (async), then waits via build?wait.
    let (status, rec2) = m.upload("shop-1", "alice", "&wait=30s", app("v2")).await;
    assert_eq!(status, 200, "{rec2}");
    assert_eq!(rec2["state"], "built", "{rec2}");
    let c2 = rec2["commit"].as_str().unwrap().to_owned();
    assert_ne!(c1, c2);
    assert_eq!(git(&co, &["fetch", "-q", "origin"]).await, "");
    assert_eq!(git(&co, &["rev-parse", "origin/main^"]).await.trim(), c1);
    assert_eq!(git(&co, &["rev-parse", "origin/main"]).await.trim(), c2);
    // The stand-in cloned exactly that commit with the credentials the master handed it.
    let cloned = worker.state.cloned.lock().unwrap().clone();
    assert_eq!(cloned.last().unwrap().0, c2);
    assert!(cloned.last().unwrap().1.ends_with("# v2\n"));
    assert_eq!(rec2["worker"]["id"], "w1/berth-worker:w1");
    let id = ValidName::parse("id", "shop-1").unwrap();
    let ip = reg.client.kv_get(&seed_ip_key(&id)).await.unwrap().unwrap();
    assert_eq!(ip.value, b"127.0.0.1");

    // Building the built commit again is a no-op answered 200.
    let (status, same) = m.call(Method::POST, "/v1/instances/shop-1/build").await;
    assert_eq!((status, same["state"].as_str()), (200, Some("built")));

    let (status, running) = m.call(Method::POST, "/v1/instances/shop-1/start").await;
    assert_eq!(status, 200, "{running}");
    assert_eq!(running["state"], "running");
    assert_eq!(running["endpoints"][0]["host_port"], 32768);
    // Start of a running instance answers its endpoints again.
    let (status, again) = m.call(Method::POST, "/v1/instances/shop-1/start").await;
    assert_eq!((status, &again["endpoints"]), (200, &running["endpoints"]));
    // New code while running: committed and built beside the running release, which keeps
    // running (and answering its endpoints) until a deploy rolls to it.
    let (status, beside) = m.upload("shop-1", "alice", "&wait=30s", app("v3")).await;
    assert_eq!(status, 200, "{beside}");
    assert_eq!(beside["state"], "running", "{beside}");
    assert_eq!(beside["running_commit"], running["running_commit"]);
    assert_eq!(beside["built_commit"], beside["commit"]);
    assert_ne!(beside["commit"], running["running_commit"]);
    assert_eq!(beside["endpoints"], running["endpoints"]);
    let (status, deployed) = m
        .call(Method::POST, "/v1/instances/shop-1/deploy?wait=30s")
        .await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["running_commit"], beside["commit"]);
    assert_eq!(deployed["deploy"]["state"], "deployed", "{deployed}");
    assert_eq!(deployed["deploy"]["from"], running["running_commit"]);
    let bad = m
        .req(Method::POST, "/v1/instances/shop-1/deploy")
        .json(&serde_json::json!({"commit": "abc"}))
        .send()
        .await
        .unwrap();
    let (status, body) = common::json(bad).await;
    assert_eq!(status, 400, "{body}");

    let logs = m
        .req(Method::GET, "/v1/instances/shop-1/logs?follow=true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(logs.contains("start of shop-1: ok"), "{logs}");

    let (status, list) = m
        .call(Method::GET, "/v1/instances?user=alice&state=running")
        .await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));
    let (_, none) = m.call(Method::GET, "/v1/instances?user=bob").await;
    assert_eq!(none, serde_json::json!([]));

    let (status, workers) = m.call(Method::GET, "/v1/workers").await;
    assert_eq!(status, 200);
    assert_eq!(workers[0]["placed"], 1);
    assert_eq!(workers[0]["healthy"], true);

    let (status, stopped) = m.call(Method::POST, "/v1/instances/shop-1/stop").await;
    assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")));
    assert_eq!(stopped["endpoints"], serde_json::json!([]));

    let (status, deleted) = m.call(Method::DELETE, "/v1/instances/shop-1").await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["worker"]["existed"], true);
    assert!(!m.data.join("git/alice/shop-1.git").exists());
    assert!(!kv_exists(
        &reg.client.kv_get(&instance_record_key(&id)).await.unwrap()
    ));
    assert!(!kv_exists(
        &reg.client.kv_get(&seed_ip_key(&id)).await.unwrap()
    ));
    let (status, body) = m.call(Method::DELETE, "/v1/instances/shop-1").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    let metrics = reqwest::get(format!("{}/metrics", m.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_master_operations_total{op=\"start\",result=\"ok\"} 2"),
        "{metrics}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_uploads_leave_nothing_behind() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.limits.max_files = 50;
    cfg.limits.max_file_bytes = 4096;
    let m = master(cfg).await;
    let compose = ("compose.yaml", &b"services: {}\n"[..], 0o644);
    let raw = |kind: tar::EntryType, path: &str, link: Option<&str>| {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(13);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "compose.yaml", &b"services: {}\n"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    // compose.yaml plus symbolic links, each written raw.
    let links = |links: &[(&str, &str)]| {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(13);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "compose.yaml", &b"services: {}\n"[..])
            .unwrap();
        for (path, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    };
    let chain = format!("{}{}etc/passwd", "d/up/".repeat(6), "../".repeat(6));
    let many: Vec<(String, Vec<u8>)> = (0..60).map(|i| (format!("f{i}"), vec![b'x'])).collect();
    let mut many_refs: Vec<(&str, &[u8], u32)> = many
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice(), 0o644))
        .collect();
    many_refs.push(compose);
    // (case, body, status, text in the message)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "absolute",
            raw(tar::EntryType::Regular, "/etc/x", None),
            400,
            "/etc/x",
        ),
        (
            "dotdot",
            raw(tar::EntryType::Regular, "a/../../x", None),
            400,
            "a/../../x",
        ),
        (
            "symlink out",
            raw(tar::EntryType::Symlink, "l", Some("../../etc/passwd")),
            400,
            "leaves the tree",
        ),
        (
            "symlink abs",
            raw(tar::EntryType::Symlink, "l", Some("/etc/passwd")),
            400,
            "leaves the tree",
        ),
        (
            "symlink chain out",
            links(&[("d/up", ".."), ("passwd", &chain)]),
            400,
            "\"passwd\": symbolic link leaves the tree",
        ),
        (
            "hardlink out",
            raw(tar::EntryType::Link, "h", Some("../x")),
            400,
            "hard link",
        ),
        (
            "char device",
            raw(tar::EntryType::Char, "dev", None),
            400,
            "device",
        ),
        (
            "block device",
            raw(tar::EntryType::Block, "blk", None),
            400,
            "device",
        ),
        ("fifo", raw(tar::EntryType::Fifo, "fifo", None), 400, "fifo"),
        (
            "no compose",
            targz(&[("Dockerfile", b"FROM x\n", 0o644)]),
            400,
            "compose",
        ),
        ("garbage", b"definitely not gzip".to_vec(), 400, "tar.gz"),
        ("file count", targz(&many_refs), 413, "file count"),
        (
            "file size",
            targz(&[compose, ("big", &[b'y'; 5000], 0o644)]),
            413,
            "file size",
        ),
    ];
    for (i, (case, body, status, text)) in cases.into_iter().enumerate() {
        let id = format!("bad-{i}");
        let (got, err) = m.upload(&id, "mallory", "", body).await;
        assert_eq!(got, status, "{case}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{case}: {message}");
        assert!(
            !m.data.join(format!("git/mallory/{id}.git")).exists(),
            "{case}: repo left"
        );
        let vid = ValidName::parse("id", &id).unwrap();
        assert!(
            reg.client
                .kv_get(&instance_record_key(&vid))
                .await
                .unwrap()
                .is_none(),
            "{case}: record left"
        );
    }
    assert!(!m.data.join("git/mallory").exists());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_masters_serialise_operations_on_one_instance() {
    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m1 = master(config(&reg, d1.path())).await;
    let mut c2 = config(&reg, d2.path());
    // Workers clone from m1's store; m2 only runs lifecycle operations.
    c2.public_url = Some(m1.base.clone());
    let m2 = master(c2).await;
    let (status, rec) = m1.upload("race", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("built")),
        "{rec}"
    );
    *worker.state.delay.lock().unwrap() = Duration::from_millis(400);
    worker.state.events.lock().unwrap().clear();
    let (a, b) = tokio::join!(m1.call(Method::POST, "/v1/instances/race/start"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m2.call(Method::POST, "/v1/instances/race/stop").await
    },);
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    let events = worker.state.events.lock().unwrap().clone();
    // The stop waited for the start to end: no interleaving.
    assert_eq!(
        events,
        ["start:race:enter", "start:race:exit", "stop:race:enter"],
        "{events:?}"
    );
    let (_, rec) = m2.call(Method::GET, "/v1/instances/race").await;
    assert_eq!(rec["state"], "stopped");
    // The stop took the lock the start released, and deleted it in turn.
    assert_eq!(lock_keys(&reg).await, Vec::<String>::new());
    m1.stop().await;
    m2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_spreads_over_workers() {
    let reg = registry().await;
    let workers = [
        stand_in(&reg, "w1").await,
        stand_in(&reg, "w2").await,
        stand_in(&reg, "w3").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    for i in 0..6 {
        let (status, rec) = m
            .upload(&format!("app-{i}"), "alice", "&wait=30s", app("v1"))
            .await;
        assert_eq!(
            (status, rec["state"].as_str()),
            (200, Some("built")),
            "{rec}"
        );
    }
    for w in &workers {
        assert_eq!(w.state.stacks.lock().unwrap().len(), 2, "{}", w.node);
    }
    let (_, listed) = m.call(Method::GET, "/v1/workers").await;
    let placed: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["placed"].as_u64().unwrap())
        .collect();
    assert_eq!(placed, [2, 2, 2]);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_loses_nothing_and_generated_tokens_persist() {
    let reg = registry().await;
    let _worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.api_token = None;
    let token_file = dir.path().join("api-token");
    let first = master(cfg.clone()).await;
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let put = |base: &str, token: &str| {
        reqwest::Client::new()
            .put(format!(
                "{base}/v1/instances/keep/code?user=alice&project=p&wait=30s"
            ))
            .bearer_auth(token)
            .body(app("v1"))
    };
    let (status, rec) = json(put(&first.base, &token).send().await.unwrap()).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("built")),
        "{rec}"
    );
    first.stop().await;

    let second = master(cfg).await;
    let get = reqwest::Client::new()
        .get(format!("{}/v1/instances/keep", second.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, after) = json(get).await;
    assert_eq!(status, 200);
    assert_eq!(after, rec);
    let start = reqwest::Client::new()
        .post(format!("{}/v1/instances/keep/start", second.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, running) = json(start).await;
    assert_eq!(
        (status, running["state"].as_str()),
        (200, Some("running")),
        "{running}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_on_a_lost_worker_rebuilds_elsewhere() {
    let reg = registry().await;
    let w1 = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (_, rec) = m.upload("mover", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(rec["worker"]["id"], "w1/berth-worker:w1", "{rec}");
    let w2 = stand_in(&reg, "w2").await;
    set_health(&reg, &w1, "critical").await;
    let (status, running) = m.call(Method::POST, "/v1/instances/mover/start").await;
    assert_eq!(status, 200, "{running}");
    assert_eq!(running["worker"]["id"], "w2/berth-worker:w2");
    assert_eq!(running["state"], "running");
    let moves = running["moves"].as_array().unwrap();
    assert_eq!(moves.last().unwrap()["from"], "w1/berth-worker:w1");
    assert!(
        moves.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("gone or critical")
    );
    assert!(w2.state.stacks.lock().unwrap().contains_key("mover"));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_operation_is_recorded_and_retryable() {
    let reg = registry().await;
    let _w = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (_, rec) = m.upload("crash", "alice", "&build=false", app("v1")).await;
    // A master died mid-build: the record says building and nobody holds the lock.
    let mut stuck = rec.clone();
    stuck["state"] = "building".into();
    let id = ValidName::parse("id", "crash").unwrap();
    reg.client
        .kv_put(
            &instance_record_key(&id),
            serde_json::to_vec(&stuck).unwrap(),
        )
        .await
        .unwrap();
    let (status, built) = m
        .call(Method::POST, "/v1/instances/crash/build?wait=30s")
        .await;
    assert_eq!(
        (status, built["state"].as_str()),
        (200, Some("built")),
        "{built}"
    );

    // An instance never placed, left in `starting`: the stop records the interruption.
    let (_, rec) = m.upload("crash2", "alice", "&build=false", app("v1")).await;
    let mut stuck = rec.clone();
    stuck["state"] = "starting".into();
    let id = ValidName::parse("id", "crash2").unwrap();
    reg.client
        .kv_put(
            &instance_record_key(&id),
            serde_json::to_vec(&stuck).unwrap(),
        )
        .await
        .unwrap();
    let (status, stopped) = m.call(Method::POST, "/v1/instances/crash2/stop").await;
    assert_eq!(
        (status, stopped["state"].as_str()),
        (200, Some("stopped")),
        "{stopped}"
    );
    assert_eq!(stopped["error"]["step"], "start");
    assert!(
        stopped["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("interrupted")
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_rejection_passes_through_and_no_worker_is_503() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (status, body) = m.upload("lonely", "alice", "", app("v1")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_worker");
    let (_, rec) = m.call(Method::GET, "/v1/instances/lonely").await;
    assert_eq!(rec["state"], "uploaded");
    // The 503 says the code itself was stored.
    let message = body["error"]["message"].as_str().unwrap();
    let stored = format!("stored as commit {}", rec["commit"].as_str().unwrap());
    assert!(message.contains(&stored), "{message}");

    let w = stand_in(&reg, "w1").await;
    *w.state.reject.lock().unwrap() = true;
    let (status, body) = m
        .call(Method::POST, "/v1/instances/lonely/build?wait=30s")
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "privileged");
    let (_, rec) = m.call(Method::GET, "/v1/instances/lonely").await;
    assert_eq!(rec["state"], "failed");
    assert_eq!(rec["error"]["step"], "build");

    // A wait shorter than the build answers 504 and the build goes on.
    *w.state.reject.lock().unwrap() = false;
    *w.state.delay.lock().unwrap() = Duration::from_millis(1500);
    let (status, body) = m
        .call(Method::POST, "/v1/instances/lonely/build?wait=100ms")
        .await;
    assert_eq!(status, 504, "{body}");
    let (status, body) = m
        .call(Method::POST, "/v1/instances/lonely/build?wait=30s")
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("built")),
        "{body}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_workers_own_registration_is_a_worker() {
    use berth_registry::dto::{
        CatalogCheckRegistration, CatalogRegistration, CatalogServiceRegistration,
    };
    let reg = registry().await;
    // Stand-ins that would build anything, registered as a stack container could register
    // itself: `berth-worker` by name, under another id or for another node.
    let decoy = stand_in(&reg, "w0").await;
    reg.client
        .catalog_deregister(&berth_registry::dto::CatalogDeregistration {
            node: "w0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (node, id) in [
        ("app-host", "berth-worker"),
        ("app-host", "berth-worker:other-node"),
        ("app-host", "berth-worker:app-host:80"),
    ] {
        reg.client
            .catalog_register(&CatalogRegistration {
                node: node.into(),
                address: "127.0.0.1".into(),
                service: Some(CatalogServiceRegistration {
                    id: id.into(),
                    service: berth_worker_api::WORKER_SERVICE.into(),
                    port: decoy.addr.port(),
                    ..CatalogServiceRegistration::default()
                }),
                check: Some(CatalogCheckRegistration {
                    node: node.into(),
                    check_id: format!("service:{id}"),
                    name: "health".into(),
                    status: "passing".into(),
                    service_id: id.into(),
                    ..CatalogCheckRegistration::default()
                }),
                ..CatalogRegistration::default()
            })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (status, workers) = m.call(Method::GET, "/v1/workers").await;
    assert_eq!((status, workers), (200, serde_json::json!([])));
    let (status, body) = m.upload("guarded", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(status, 503, "{body}");
    assert!(decoy.state.events.lock().unwrap().is_empty());

    let real = stand_in(&reg, "w1").await;
    let (_, workers) = m.call(Method::GET, "/v1/workers").await;
    let ids: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w1/berth-worker:w1"]);
    let (status, built) = m
        .call(Method::POST, "/v1/instances/guarded/build?wait=30s")
        .await;
    assert_eq!(
        (status, built["state"].as_str()),
        (200, Some("built")),
        "{built}"
    );
    assert_eq!(built["worker"]["id"], "w1/berth-worker:w1");
    assert!(real.state.stacks.lock().unwrap().contains_key("guarded"));
    assert!(decoy.state.events.lock().unwrap().is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operation_that_lost_its_lock_writes_nothing() {
    let reg = registry().await;
    let w = stand_in(&reg, "w1").await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    *w.state.gate.lock().unwrap() = Some(gate.clone());
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;

    let (status, building) = m.upload("fenced", "alice", "", app("v1")).await;
    assert_eq!(
        (status, building["state"].as_str()),
        (200, Some("building")),
        "{building}"
    );
    eventually("the build reaching the worker", || async {
        w.state
            .events
            .lock()
            .unwrap()
            .contains(&"build:fenced:enter".to_owned())
    })
    .await;
    // The build's lock session ends under it (as a TTL expiry during a registry outage would).
    let lock = reg
        .client
        .kv_get("berth/locks/fenced")
        .await
        .unwrap()
        .unwrap();
    reg.client
        .session_destroy(&lock.session.unwrap())
        .await
        .unwrap();
    // Another operation takes the lock and records new code.
    let (status, uploaded) = m.upload("fenced", "alice", "&build=false", app("v2")).await;
    assert_eq!(
        (status, uploaded["state"].as_str()),
        (200, Some("uploaded")),
        "{uploaded}"
    );
    assert_ne!(uploaded["commit"], building["commit"]);

    // The old build ends: its write of `built` (with the old commit) is refused.
    gate.add_permits(1);
    eventually("the build operation to end", || async {
        metrics(&m)
            .await
            .contains("berth_master_operations_total{op=\"build\",result=")
    })
    .await;
    let text = metrics(&m).await;
    assert!(
        text.contains("berth_master_operations_total{op=\"build\",result=\"error\"} 1"),
        "{text}"
    );
    let (_, after) = m.call(Method::GET, "/v1/instances/fenced").await;
    assert_eq!(after, uploaded);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lock_key_outlives_its_operation() {
    let reg = registry().await;
    let _w = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    // Operations on unknown ids take the lock too.
    let (status, _) = m.call(Method::POST, "/v1/instances/ghost1/start").await;
    assert_eq!(status, 404);
    let (status, _) = m.call(Method::DELETE, "/v1/instances/ghost2").await;
    assert_eq!(status, 404);
    assert_eq!(lock_keys(&reg).await, Vec::<String>::new());

    let (status, _) = m
        .upload("keyless", "alice", "&build=false", app("v1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(lock_keys(&reg).await, Vec::<String>::new());
    // A background build releases (and deletes) the lock when it ends.
    let (status, rec) = m.upload("keyless", "alice", "", app("v2")).await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("building")));
    eventually("the build's lock key to go", || async {
        lock_keys(&reg).await.is_empty()
    })
    .await;
    let (status, _) = m.call(Method::POST, "/v1/instances/keyless/start").await;
    assert_eq!(status, 200);
    let (status, _) = m.call(Method::DELETE, "/v1/instances/keyless").await;
    assert_eq!(status, 200);
    // A deleted instance leaves no key at all.
    let keys = reg.client.kv_keys("", None).await.unwrap();
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("keyless") || k.contains("ghost")),
        "{keys:?}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_upload_builds_what_was_not_built() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    // No healthy worker: the code is stored, the build cannot start.
    let (status, body) = m.upload("retry", "alice", "", app("v1")).await;
    assert_eq!(status, 503, "{body}");

    // The identical upload, retried once a worker is up, starts that build (here refused).
    let w = stand_in(&reg, "w1").await;
    *w.state.reject.lock().unwrap() = true;
    let (status, body) = m.upload("retry", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(status, 422, "{body}");
    let (_, rec) = m.call(Method::GET, "/v1/instances/retry").await;
    assert_eq!(
        (rec["state"].as_str(), &rec["error"]["step"]),
        (Some("failed"), &"build".into())
    );

    // Retried after a failed build, it builds again.
    *w.state.reject.lock().unwrap() = false;
    let (status, built) = m.upload("retry", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(
        (status, built["state"].as_str()),
        (200, Some("built")),
        "{built}"
    );
    let builds = |w: &StandIn| {
        w.state
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with("build:retry:enter"))
            .count()
    };
    assert_eq!(builds(&w), 2);

    // Built code is not rebuilt by the same upload, nor is code uploaded with build=false
    // rebuilt by another build=false upload.
    let (status, again) = m.upload("retry", "alice", "&wait=30s", app("v1")).await;
    assert_eq!((status, &again), (200, &built));
    let (status, rec) = m.upload("retry", "alice", "&build=false", app("v2")).await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("uploaded")));
    let (status, rec) = m.upload("retry", "alice", "&build=false", app("v2")).await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("uploaded")));
    assert_eq!(builds(&w), 2);
    m.stop().await;
}

/// With one upload slot, a second upload waits (the gauge says so) until the first, whose body
/// is still arriving, has been read and committed; then it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_beyond_the_slots_wait_for_one() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.limits.max_concurrent = 1;
    let m = master(cfg).await;

    let body = app("v1");
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(body[..10].to_vec())).unwrap();
    let first = m
        .req(
            reqwest::Method::PUT,
            "/v1/instances/slow/code?user=alice&project=proj&build=false",
        )
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let first = tokio::spawn(first);
    // The first holds the slot while its body trickles in; the second waits for it.
    let second = tokio::spawn({
        let req = m
            .req(
                reqwest::Method::PUT,
                "/v1/instances/quick/code?user=alice&project=proj&build=false",
            )
            .body(app("v1"));
        async move { req.send().await }
    });
    eventually("the second upload waits for a slot", || async {
        metrics(&m).await.contains("berth_master_uploads_waiting 1")
    })
    .await;
    assert!(!second.is_finished(), "the second upload waited");
    tx.unbounded_send(Ok(body[10..].to_vec())).unwrap();
    drop(tx);
    let (status, rec) = json(first.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{rec}");
    let (status, rec) = json(second.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "uploaded");
    assert!(metrics(&m).await.contains("berth_master_uploads_waiting 0"));
    m.stop().await;
}

/// Issue 14 item 2: a ~300-byte upload holding one path of ~3,000 components used to overflow
/// the stack while the tree was built and abort the whole master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_path_upload_is_a_clean_400_and_the_master_keeps_answering() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let with_path = |path: &str| {
        targz(&[
            ("compose.yaml", &b"services: {}\n"[..], 0o644),
            (path, &b"x"[..], 0o644),
        ])
    };
    let deep = format!("{}f", "a/".repeat(3000));
    let body = with_path(&deep);
    assert!(body.len() < 400, "the probe is {} bytes", body.len());
    let (status, err) = m.upload("deep", "mallory", "", body).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_upload", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a/a/a/a/") && message.contains("4096"),
        "{message}"
    );
    assert!(!m.data.join("git/mallory/deep.git").exists());
    let (status, _) = m.call(Method::GET, "/healthz").await;
    assert_eq!(status, 200);

    // Within PATH_MAX but 2,047 directories deep: refused by the depth cap, not a crash.
    let (status, err) = m
        .upload(
            "deep",
            "mallory",
            "",
            with_path(&format!("{}f", "a/".repeat(2047))),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("256 components"),
        "{err}"
    );
    // The deepest path accepted is stored, and the master still answers.
    let longest = format!("{}f", "a/".repeat(berth_master::upload::MAX_PATH_DEPTH - 1));
    let (status, rec) = m
        .upload("deep", "mallory", "&build=false", with_path(&longest))
        .await;
    assert_eq!(status, 200, "{rec}");
    let (status, _) = m.call(Method::GET, "/v1/instances/deep").await;
    assert_eq!(status, 200);
    m.stop().await;
}

/// Issue 14, finding 10: a path component over 255 bytes (NAME_MAX) was accepted at upload and
/// then failed every build at checkout; it is refused at upload, and 255 bytes is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_path_components_are_refused_at_upload() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let with_path = |path: &str| {
        targz(&[
            ("compose.yaml", &b"services: {}\n"[..], 0o644),
            (path, &b"x"[..], 0o644),
        ])
    };
    for path in [
        format!("d/{}", "n".repeat(256)),
        format!("{}/f", "n".repeat(300)),
    ] {
        let (status, err) = m.upload("long", "mallory", "", with_path(&path)).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["code"], "invalid_upload", "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains("255"),
            "{err}"
        );
        assert!(!m.data.join("git/mallory/long.git").exists());
    }
    let (status, rec) = m
        .upload(
            "long",
            "mallory",
            "&build=false",
            with_path(&format!("d/{}", "n".repeat(255))),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    m.stop().await;
}

/// The master owns the whole `instance/{id}/` folder (the worker no longer deletes it): delete
/// leaves nothing under it, and a neighbour whose id merely starts the same is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_leaves_nothing_under_the_instance_prefix() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (status, rec) = m.upload("tree-1", "alice", "&build=false", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    for key in [
        "instance/tree-1/ip",
        "instance/tree-1/extra",
        "instance/tree-1/nested/key",
        "instance/tree-10/ip",
    ] {
        reg.client.kv_put(key, b"x".to_vec()).await.unwrap();
    }
    let (status, deleted) = m.call(Method::DELETE, "/v1/instances/tree-1").await;
    assert_eq!(status, 200, "{deleted}");
    let left = reg.client.kv_keys("instance/tree-1/", None).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let kept = reg.client.kv_keys("instance/", None).await.unwrap();
    assert_eq!(kept, ["instance/tree-10/ip"]);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_whose_build_fails_is_recorded_and_the_next_start_builds_again() {
    let reg = registry().await;
    let w1 = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (_, rec) = m.upload("shaky", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(rec["state"], "built", "{rec}");
    let (status, rec) = m.call(Method::POST, "/v1/instances/shaky/start").await;
    assert_eq!(status, 200, "{rec}");
    let w2 = stand_in(&reg, "w2").await;
    *w2.state.reject.lock().unwrap() = true;
    set_health(&reg, &w1, "critical").await;

    // The move's build fails on w2: the record says where the instance is, that nothing was
    // built there, and why.
    let (status, body) = m.call(Method::POST, "/v1/instances/shaky/start").await;
    assert_eq!(status, 422, "{body}");
    let (_, rec) = m.call(Method::GET, "/v1/instances/shaky").await;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert_eq!(rec["worker"]["id"], "w2/berth-worker:w2", "{rec}");
    assert_eq!(rec["built_commit"], serde_json::Value::Null, "{rec}");
    assert_eq!(rec["running_commit"], serde_json::Value::Null, "{rec}");
    assert_eq!(rec["error"]["step"], "build", "{rec}");
    let message = rec["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("moved from worker w1/berth-worker:w1 to worker w2/berth-worker:w2"),
        "{message}"
    );
    assert_eq!(rec["moves"].as_array().unwrap().len(), 2, "{rec}");

    // Once w2 builds again, the next start builds there and runs.
    *w2.state.reject.lock().unwrap() = false;
    let before = w2.state.cloned.lock().unwrap().len();
    let (status, rec) = m.call(Method::POST, "/v1/instances/shaky/start").await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    assert_eq!(rec["worker"]["id"], "w2/berth-worker:w2", "{rec}");
    assert_eq!(
        w2.state.cloned.lock().unwrap().len(),
        before + 1,
        "built again"
    );
    assert_eq!(rec["built_commit"], rec["commit"], "{rec}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_deploy_is_settled_from_the_worker_and_a_retry_finishes() {
    let reg = registry().await;
    let w = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let (status, v1) = m.upload("halfway", "alice", "", app("v1")).await;
    assert_eq!(status, 200, "{v1}");
    let (status, running) = m.call(Method::POST, "/v1/instances/halfway/start").await;
    assert_eq!(status, 200, "{running}");
    let c1 = v1["commit"].as_str().unwrap().to_owned();
    // The next release is built beside the running one.
    let (status, v2) = m.upload("halfway", "alice", "", app("v2")).await;
    assert_eq!(status, 200, "{v2}");
    let c2 = v2["commit"].as_str().unwrap().to_owned();
    assert_eq!(v2["running_commit"], c1.as_str());
    // The build beside goes on after the upload's answer: wait for it.
    let mut v2 = v2;
    for _ in 0..100 {
        if v2["built_commit"] == c2.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        v2 = m.call(Method::GET, "/v1/instances/halfway").await.1;
    }
    assert_eq!(v2["built_commit"], c2.as_str(), "{v2}");
    let id = ValidName::parse("id", "halfway").unwrap();
    // A master died mid-rollout: the record says `deploying` and nobody holds the lock.
    let plant = |serving: &str| {
        let mut stuck = v2.clone();
        stuck["deploy"] = serde_json::json!({
            "commit": c2, "from": c1, "rollback": false, "state": "deploying",
            "started_at": "2026-12-03T00:00:00Z",
        });
        w.state
            .stacks
            .lock()
            .unwrap()
            .get_mut("halfway")
            .unwrap()
            .running_commit = Some(serving.to_owned());
        stuck
    };
    let settled = |m: &Master| {
        let base = m.req(Method::GET, "/v1/instances/halfway");
        async move {
            for _ in 0..100 {
                let (_, rec) = json(base.try_clone().unwrap().send().await.unwrap()).await;
                // The planted rollout (the master may answer from a copy a moment old).
                if rec["deploy"]["started_at"] == "2026-12-03T00:00:00Z"
                    && rec["deploy"]["state"] != "deploying"
                {
                    return rec;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (_, rec) = json(base.send().await.unwrap()).await;
            panic!("the interrupted deploy was not settled: {rec}");
        }
    };

    // The worker undid it (it still serves v1): the observer records that from the worker's
    // report, without any request.
    let stuck = plant(&c1);
    reg.client
        .kv_put(
            &instance_record_key(&id),
            serde_json::to_vec(&stuck).unwrap(),
        )
        .await
        .unwrap();
    let rec = settled(&m).await;
    assert_eq!(rec["deploy"]["state"], "failed", "{rec}");
    assert_eq!(rec["running_commit"], c1.as_str(), "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    let why = rec["deploy"]["error"].as_str().unwrap();
    assert!(
        why.starts_with("interrupted") && why.contains("deploy again"),
        "{why}"
    );
    // A retry finishes it.
    let (status, done) = m
        .call(Method::POST, "/v1/instances/halfway/deploy?wait=30s")
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["deploy"]["state"], "deployed", "{done}");
    assert_eq!(done["running_commit"], c2.as_str());
    // The stand-in retires nothing after its answer.
    assert_eq!(done["deploy"]["retired_at"], done["deploy"]["finished_at"]);

    // The worker finished it on its own: the record says `deployed` with the new release.
    let stuck = plant(&c2);
    let mut stuck = stuck;
    stuck["running_commit"] = c1.as_str().into();
    reg.client
        .kv_put(
            &instance_record_key(&id),
            serde_json::to_vec(&stuck).unwrap(),
        )
        .await
        .unwrap();
    let rec = settled(&m).await;
    assert_eq!(rec["deploy"]["state"], "deployed", "{rec}");
    assert_eq!(rec["running_commit"], c2.as_str(), "{rec}");
    assert!(rec["deploy"]["finished_at"].is_string(), "{rec}");
    m.stop().await;
}
