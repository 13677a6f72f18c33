//! The fixture stack through the worker API against the real Docker engine: build, start, reach
//! it over HTTP, `docker-compose ps`, stop, start again, delete, and nothing left behind.

mod common;

use std::process::Command;
use std::time::Instant;

use berth_worker_api::{StackState, StartRequest};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_fixture_stack_lifecycle() {
    let w = worker("fixture", |_| {}).await;
    let (repo, commit) = git_repo(&fixture_files());
    let sid = id(&format!("fx-{}", w.node));
    let req = build_request(repo.path(), &commit);

    let t = Instant::now();
    let built = w.client.build(&sid, &req).await.unwrap();
    eprintln!("build (cold cache for this stack): {:?}", t.elapsed());
    assert_eq!(built.state, StackState::Built);
    assert_eq!(built.commit.as_deref(), Some(commit.as_str()));
    let t = Instant::now();
    let again = w.client.build(&sid, &req).await.unwrap();
    eprintln!("rebuild of the same commit (no-op): {:?}", t.elapsed());
    assert_eq!(again.state, StackState::Built);

    let t = Instant::now();
    let started = w
        .client
        .start(&sid, &StartRequest::default())
        .await
        .unwrap();
    eprintln!("start: {:?}", t.elapsed());
    assert_eq!(started.state, StackState::Running);
    assert_eq!(started.endpoints.len(), 1, "{started:?}");
    let ep = &started.endpoints[0];
    assert_eq!((ep.service.as_str(), ep.container_port), ("web", 8080));
    let base = format!("http://{}", ep.address());
    assert_eq!(
        http_get(&format!("{base}/api.txt")).await.trim(),
        "berth-fixture from api"
    );
    assert_eq!(
        http_get(&format!("{base}/public.txt")).await.trim(),
        ep.address()
    );
    assert_eq!(
        http_get(&format!("{base}/starts.txt"))
            .await
            .lines()
            .count(),
        1
    );
    // `api` is ready once its healthcheck passed: Docker's own check, or the worker's run of
    // the same test before Docker's first one (Docker then still says `starting`).
    let health: Vec<_> = started
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.state.as_str(), s.health.as_deref()))
        .collect();
    assert!(
        matches!(
            health.as_slice(),
            [
                ("api", "running", Some("healthy" | "starting")),
                ("web", "running", None)
            ]
        ),
        "{health:?}"
    );
    healthy_soon(&w, &sid, "api").await;

    // Debian's docker-compose (v1) sees the stack through its labels.
    let out = Command::new("docker-compose")
        .args(["-p", &started.project_name, "ps"])
        .current_dir(w.stack_src(sid.as_str()))
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for service in ["api", "web"] {
        let name = format!("{}-{service}-1", started.project_name);
        assert!(
            ps.lines().any(|l| l.starts_with(&name) && l.contains("Up")),
            "{name} missing from:\n{ps}"
        );
    }

    // Starting a running stack answers the same endpoints.
    let same = w
        .client
        .start(&sid, &StartRequest::default())
        .await
        .unwrap();
    assert_eq!(same.endpoints, started.endpoints);

    let stopped = w.client.stop(&sid).await.unwrap();
    assert_eq!(stopped.state, StackState::Stopped);
    assert!(stopped.endpoints.is_empty());
    assert!(
        stopped.services.iter().all(|s| s.state == "exited"),
        "{stopped:?}"
    );

    let t = Instant::now();
    let restarted = w
        .client
        .start(
            &sid,
            &StartRequest {
                commit: Some(commit.clone()),
                timeout_secs: Some(60),
            },
        )
        .await
        .unwrap();
    eprintln!("start after stop: {:?}", t.elapsed());
    let base = format!("http://{}", restarted.endpoints[0].address());
    assert_eq!(
        http_get(&format!("{base}/starts.txt"))
            .await
            .lines()
            .count(),
        2,
        "the named volume keeps its data across stop and start"
    );

    let logs = w.client.logs(&sid, false).await.unwrap();
    let logs: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(logs)
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    let logs = String::from_utf8_lossy(&logs);
    eprintln!("{logs}");
    assert!(logs.contains("building service api"), "{logs}");
    assert!(logs.contains("stack ready"), "{logs}");

    let deleted = w.client.delete(&sid, false).await.unwrap();
    assert!(deleted.existed);
    // The two services, and the forwarder holding web's port when the worker has one.
    let forwarders = u32::from(forwarder_bin().is_file());
    assert_eq!(deleted.removed_containers, 2 + forwarders);
    assert_eq!(deleted.removed_volumes, 1);
    assert_eq!(deleted.removed_images, 2);
    assert!(deleted.removed_networks >= 1);
    w.cleanup.assert_nothing_left();
    assert!(!w.data.path().join("stacks").join(sid.as_str()).exists());
    let again = w.client.delete(&sid, false).await.unwrap();
    assert!(!again.existed);
    assert!(w.client.status(&sid).await.unwrap().is_none());
    w.stop().await;
}

/// The images a multi-stage build and a failed build made, and the anonymous volume of a
/// recreated container, are gone after delete (none of them carries a berth label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_builds_and_recreates_leave_nothing_behind() {
    // The classic builder: its step images are what this test follows (BuildKit makes none,
    // see docker_build.rs).
    let w = worker("leftovers", |c| {
        c.builder = berth_worker::BuilderChoice::Classic;
    })
    .await;
    let sid = id(&format!("lo-{}", w.node));
    // A nonce keeps these steps out of every other build's cache.
    let nonce = format!("{}-{}", std::process::id(), rand_suffix());
    let compose = |v: &str| {
        format!(
            "services:\n  app:\n    build: .\n  anon:\n    image: berth-base:latest\n    command: [sleep, '600']\n    volumes: [/anon]\n    environment: {{V: '{v}'}}\n"
        )
    };
    let multi_stage = format!(
        "FROM berth-base:latest AS stage1\nRUN echo {nonce} stage1 > /s1\nFROM berth-base:latest\nCOPY --from=stage1 /s1 /s1\nRUN echo {nonce} final > /f\nCMD [\"sleep\", \"600\"]\n"
    );
    let anon_volume = |project: &str| {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .Mounts}}{{.Name}}{{end}}",
                &format!("{project}-anon-1"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let exists = |kind: &str, name: &str| {
        Command::new("docker")
            .args([kind, "inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };

    let (repo, commit) = git_repo(&[
        ("compose.yaml", &compose("1")),
        ("Dockerfile", &multi_stage),
    ]);
    let st = w.build_and_start(&sid, repo.path(), &commit).await;
    let first = anon_volume(&st.project_name);
    assert!(exists("volume", &first), "{first}");
    // A changed environment recreates `anon`: its old anonymous volume goes with it.
    let (repo, commit) = git_repo(&[
        ("compose.yaml", &compose("2")),
        ("Dockerfile", &multi_stage),
    ]);
    w.build_and_start(&sid, repo.path(), &commit).await;
    let second = anon_volume(&st.project_name);
    assert_ne!(first, second);
    assert!(!exists("volume", &first), "{first} is left behind");

    // A failed build: the answer carries the last build lines, its step images go.
    let failing = format!(
        "FROM berth-base:latest\nRUN echo {nonce} ok > /ok\nRUN echo {nonce}-before-failure && false\n"
    );
    let (repo, commit) = git_repo(&[("compose.yaml", &compose("2")), ("Dockerfile", &failing)]);
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
        message.contains("returned a non-zero code")
            && message.contains("last log lines")
            && message.contains(&format!("{nonce}-before-failure")),
        "{message}"
    );

    // Every image id the builds reported (bar the base) is gone after delete.
    let logs = w.client.logs(&sid, false).await.unwrap();
    let logs: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(logs)
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    let logs = String::from_utf8_lossy(&logs);
    let base = Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", "berth-base:latest"])
        .output()
        .unwrap();
    let base = String::from_utf8_lossy(&base.stdout).trim().to_owned();
    let mut reported: Vec<String> = logs
        .lines()
        .filter_map(|l| l.split_once("---> ").map(|(_, id)| id.trim().to_owned()))
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|id| !base.trim_start_matches("sha256:").starts_with(id.as_str()))
        .collect();
    reported.sort();
    reported.dedup();
    assert!(reported.len() >= 4, "{reported:?}\n{logs}");
    let deleted = w.client.delete(&sid, false).await.unwrap();
    assert!(deleted.not_removed.is_empty(), "{deleted:?}");
    let left: Vec<&String> = reported.iter().filter(|id| exists("image", id)).collect();
    assert!(left.is_empty(), "images left behind: {left:?}\n{logs}");
    assert!(!exists("volume", &second), "{second} is left behind");
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

/// Build and start times of the fixture, cold and warm, beside Debian's docker-compose (the
/// tool the seed system ran) doing the same steps on the same files. Not part of the normal run:
/// `cargo test -p berth-worker --test docker_stack -- --ignored --nocapture docker_measure`.
/// A start is timed to "the published port answers HTTP" on both sides (berth's start answers
/// when the stack is ready; after `docker-compose up -d` the port is polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn docker_measure_fixture_times() {
    let w = worker("measure", |_| {}).await;
    // A greeting nobody built before makes the RUN layer miss the build cache: a cold build.
    let with_nonce = |who: &str| {
        let mut files = fixture_files();
        files.retain(|(n, _)| *n != ".env");
        let nonce = format!(
            "GREETING=measure-{who}-{}-{}\n",
            std::process::id(),
            rand_suffix()
        );
        files.push((".env", Box::leak(nonce.into_boxed_str())));
        files
    };
    let (repo, commit) = git_repo(&with_nonce("berth"));
    let req = build_request(repo.path(), &commit);
    let a = id(&format!("ma-{}", w.node));
    let b = id(&format!("mb-{}", w.node));
    let timed = |t: Instant| t.elapsed().as_secs_f64();
    let answers = |endpoint: String| async move {
        for _ in 0..600 {
            if reqwest::get(format!("http://{endpoint}/api.txt"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{endpoint} never answered");
    };

    let t = Instant::now();
    w.client.build(&a, &req).await.unwrap();
    let build_cold = timed(t);
    let t = Instant::now();
    w.client.build(&b, &req).await.unwrap();
    let build_warm = timed(t);
    let t = Instant::now();
    w.client.build(&a, &req).await.unwrap();
    let build_noop = timed(t);
    let t = Instant::now();
    let st = w.client.start(&a, &StartRequest::default()).await.unwrap();
    answers(st.endpoints[0].address()).await;
    let start_cold = timed(t);
    w.client.stop(&a).await.unwrap();
    let t = Instant::now();
    let st = w.client.start(&a, &StartRequest::default()).await.unwrap();
    answers(st.endpoints[0].address()).await;
    let start_warm = timed(t);
    let t = Instant::now();
    w.client.start(&a, &StartRequest::default()).await.unwrap();
    let start_running = timed(t);
    let t = Instant::now();
    w.client.delete(&a, false).await.unwrap();
    let delete = timed(t);
    w.client.delete(&b, false).await.unwrap();
    w.stop().await;

    // The same steps with docker-compose in a plain copy of the files.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in with_nonce("compose") {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    std::fs::set_permissions(
        dir.path().join("web/start.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let project = format!("mc{}", std::process::id());
    let compose = |args: &[&str]| {
        let out = Command::new("docker-compose")
            .arg("-p")
            .arg(&project)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("docker-compose runs");
        assert!(out.status.success(), "docker-compose {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let port = || compose(&["port", "web", "8080"]).replace("0.0.0.0", "127.0.0.1");
    let t = Instant::now();
    compose(&["build", "-q"]);
    let c_build_cold = timed(t);
    let t = Instant::now();
    compose(&["build", "-q"]);
    let c_build_warm = timed(t);
    let t = Instant::now();
    compose(&["up", "-d"]);
    answers(port()).await;
    let c_start_cold = timed(t);
    compose(&["stop"]);
    let t = Instant::now();
    compose(&["up", "-d"]);
    answers(port()).await;
    let c_start_warm = timed(t);
    let t = Instant::now();
    compose(&["up", "-d"]);
    let c_start_running = timed(t);
    let t = Instant::now();
    compose(&["down", "-v", "--rmi", "local"]);
    let c_delete = timed(t);

    println!("| fixture step | berth-worker | docker-compose 1.29 |");
    println!("|---|---|---|");
    for (step, ours, theirs) in [
        ("build, cold (no cached layers)", build_cold, c_build_cold),
        ("build, warm (cached layers)", build_warm, c_build_warm),
        ("build of an already built commit", build_noop, f64::NAN),
        (
            "start, cold, to the port answering",
            start_cold,
            c_start_cold,
        ),
        (
            "start after stop, to the port answering",
            start_warm,
            c_start_warm,
        ),
        ("start of a running stack", start_running, c_start_running),
        (
            "delete (containers, volumes, images, network)",
            delete,
            c_delete,
        ),
    ] {
        let theirs = if theirs.is_nan() {
            "(no such step)".to_owned()
        } else {
            format!("{theirs:.2} s")
        };
        println!("| {step} | {ours:.2} s | {theirs} |");
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
