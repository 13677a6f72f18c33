//! What a running stack gets from the host, checked with `docker inspect` against the real
//! engine: published ports bound on the publish address only, and the compose file's resource
//! limits applied, defaulted and capped.

mod common;

use std::process::Command;

use berth_worker_api::WorkerClientError;
use common::*;

const TINY: &str = "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"0.0.0.0:9999:8080\"]\n";

/// `docker inspect -f <format> <container>`, trimmed.
fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ports_are_published_on_the_advertise_address_only() {
    // Listening on 127.0.0.1 makes that the advertise and so the publish address.
    let w = worker("publish", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", TINY)]);
    let sid = id(&format!("pub-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    let ep = &started.endpoints[0];
    assert_eq!(ep.host, "127.0.0.1");
    assert_ne!(ep.host_port, 9999, "the file's host port is never used");
    let container = started.services[0].container.clone().unwrap();
    // The port's holder: the service's forwarder when the worker has one (docs/WORKER.md).
    let container = if forwarder_bin().is_file() {
        format!("{container}-fwd")
    } else {
        container
    };
    // The file's 0.0.0.0 is the worker's choice too: one binding, on the publish address.
    assert_eq!(
        inspect(
            &container,
            "{{range $p, $b := .HostConfig.PortBindings}}{{$p}}={{range $b}}{{.HostIp}} {{end}}{{end}}"
        ),
        "8080/tcp=127.0.0.1"
    );
    assert_eq!(
        inspect(
            &container,
            r#"{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}"#
        ),
        format!("127.0.0.1:{}", ep.host_port)
    );
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

const LIMITS: &str = r#"services:
  web:
    image: berth-base:latest
    command: [httpd, -f, -p, "8080", -h, /]
    mem_limit: 300m
    memswap_limit: 600m
    mem_reservation: 100m
    cpus: 0.5
    cpu_shares: 512
    cpuset: "0"
    pids_limit: 64
    shm_size: 32m
    ulimits:
      nofile: {soft: 1024, hard: 2048}
    tmpfs: ["/scratch:size=1m"]
    links: ["db:database"]
  db:
    image: berth-base:latest
    command: [httpd, -f, -p, "8081", -h, /]
    deploy:
      resources:
        limits: {memory: 128m, cpus: "0.25", pids: 32}
        reservations: {memory: 64m}
  plain:
    image: berth-base:latest
    command: [httpd, -f, -p, "8082", -h, /]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_resource_limits_are_applied_defaulted_and_capped() {
    let w = worker("limits", |c| {
        c.max_memory = "512m".into();
        c.max_pids = 100;
    })
    .await;
    let (repo, commit) = git_repo(&[("compose.yaml", LIMITS)]);
    let sid = id(&format!("lim-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    let container = |service: &str| {
        started
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.container.clone())
            .unwrap()
    };
    let hc = "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.MemoryReservation}} {{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}} {{.HostConfig.CpusetCpus}} {{.HostConfig.PidsLimit}} {{.HostConfig.ShmSize}} {{range index .HostConfig \"Ulimits\"}}{{.Name}}={{.Soft}}:{{.Hard}}{{end}} {{range $k, $v := index .HostConfig \"Tmpfs\"}}{{$k}}={{$v}}{{end}}";
    assert_eq!(
        inspect(&container("web"), hc),
        format!(
            "{} {} {} 500000000 512 0 64 {} nofile=1024:2048 /scratch=size=1m",
            300 << 20,
            600 << 20,
            100 << 20,
            32 << 20
        )
    );
    // deploy.resources; the test worker's default memory (256m) and pids (512, capped to 100).
    // Docker fills in MemorySwap (twice the memory) and ShmSize (64m) itself.
    assert_eq!(
        inspect(&container("db"), hc),
        format!(
            "{} {} {} 250000000 0  32 {}",
            128 << 20,
            256 << 20,
            64 << 20,
            64 << 20
        )
    );
    assert_eq!(
        inspect(&container("plain"), hc),
        format!(
            "{} {} 0 1000000000 0  100 {}",
            256 << 20,
            512 << 20,
            64 << 20
        )
    );
    // `links: [db:database]` is an alias of db on the network web shares with it.
    let aliases = inspect(
        &container("db"),
        "{{range .NetworkSettings.Networks}}{{join .Aliases \",\"}}{{end}}",
    );
    assert!(aliases.split(',').any(|a| a == "database"), "{aliases}");

    // Asking above a cap is a 422 naming the service, the key, the value and the cap.
    let over = LIMITS.replace("mem_limit: 300m", "mem_limit: 1g");
    let (repo2, commit2) = git_repo(&[("compose.yaml", over.as_str())]);
    let sid2 = id(&format!("lim2-{}", w.node));
    let err = w
        .client
        .build(&sid2, &build_request(repo2.path(), &commit2))
        .await
        .unwrap_err();
    let WorkerClientError::Api { status, body } = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(status.as_u16(), 422, "{body:?}");
    let detail = &body.error.details[0];
    assert_eq!(
        (
            detail.service.as_deref(),
            detail.field.as_str(),
            detail.reason.as_str()
        ),
        (
            Some("web"),
            "services.web.mem_limit",
            "mem_limit 1g is above this worker's cap of 512m (--max-memory)"
        )
    );
    w.client.delete(&sid, false).await.unwrap();
    let _ = w.client.delete(&sid2, false).await;
    w.cleanup.assert_nothing_left();
    w.stop().await;
}

const ONE_SHOTS: &str = r#"services:
  migrate:
    image: berth-base:latest
    command: [sh, -c, "echo migrated"]
  seed:
    image: berth-base:latest
    command: [sh, -c, "sleep 1; echo seeded; exit 0"]
    restart: "no"
  app:
    image: berth-base:latest
    command: [httpd, -f, -p, "8080", -h, /]
    ports: ["8080"]
    depends_on:
      seed: {condition: service_completed_successfully}
      migrate: {condition: service_started}
"#;

const CRASHER: &str = r#"services:
  bad:
    image: berth-base:latest
    command: [sh, -c, "echo boom-line; sleep 1; exit 3"]
    ports: ["8080"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_one_shot_services_complete_and_failures_name_the_exit_code() {
    let w = worker("oneshot", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", ONE_SHOTS)]);
    let sid = id(&format!("one-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    assert_eq!(started.state, berth_worker_api::StackState::Running);
    // migrate may still be finishing when start answers; the status settles on completed.
    let mut states = Vec::new();
    for _ in 0..50 {
        let st = w.client.status(&sid).await.unwrap().unwrap();
        states = st
            .services
            .iter()
            .map(|s| format!("{}={}", s.name, s.state))
            .collect();
        if states
            .iter()
            .all(|s| !s.ends_with("=running") || s == "app=running")
            && states.contains(&"migrate=completed".to_owned())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    states.sort();
    assert_eq!(
        states,
        ["app=running", "migrate=completed", "seed=completed"]
    );
    w.client.delete(&sid, false).await.unwrap();

    // A non-zero exit is a failure naming the service, the exit code and the last log lines.
    let (repo, commit) = git_repo(&[("compose.yaml", CRASHER)]);
    let sid = id(&format!("crash-{}", w.node));
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let err = w
        .client
        .start(&sid, &berth_worker_api::StartRequest::default())
        .await
        .unwrap_err();
    let WorkerClientError::Api { body, .. } = err else {
        panic!("expected an API error, got {err:?}");
    };
    let msg = body.error.message;
    assert!(
        msg.contains("service bad") && msg.contains("code 3") && msg.contains("boom-line"),
        "{msg}"
    );
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
