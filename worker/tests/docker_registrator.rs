//! The registrator against a real in-process berth registry: registrations appear with their
//! health; a container killed with `kill -9` stays registered with berth's state check critical
//! (its service should run) and is passing again once started; stop removes them; a worker
//! killed with `kill -9` leaves no stale or duplicate registration once it is back. A crash
//! loop turns the state check critical with the FATAL line and a recovery turns it passing;
//! services without published ports are registered without a port. A stack cannot register a
//! name of berth or Consul, nor an HTTP check that leaves its own port.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_registry::client::Client;
use berth_registry::server;
use berth_worker_api::{Secret, StartRequest, WorkerClient, WorkerClientError};
use common::*;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(data: &std::path::Path, node: &str, port: u16, registry: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_berth-worker"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node-name",
                node,
                "--registry",
                registry,
                // No master here: nothing to fence against.
                "--no-fence",
            ])
            .arg("--data-dir")
            .arg(data)
            .env("BERTH_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Polls `probe` until it returns `Some`, for at most a minute (a hang guard, not a bound the
/// test depends on).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    for _ in 0..600 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// This node's container registrations: id -> (service name, port).
async fn own(kv: &Client, node: &str) -> Vec<(String, String, u16)> {
    let mut v: Vec<(String, String, u16)> = kv
        .agent_services()
        .await
        .unwrap()
        .into_values()
        .filter(|s| s.id.starts_with(&format!("{node}:")))
        .map(|s| (s.id, s.service, s.port))
        .collect();
    v.sort();
    v
}

/// The distinct statuses of the service checks of `name` (`["passing"]`: all pass).
async fn status_of(kv: &Client, name: &str) -> Vec<String> {
    let mut v: Vec<String> = kv
        .health_service(name, false)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|e| {
            e.checks
                .into_iter()
                .filter(|c| !c.service_id.is_empty())
                .map(|c| c.status)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Status and output of berth's state check on service id `service_id`, as the catalog has it.
async fn state_of(kv: &Client, name: &str, service_id: &str) -> Option<(String, String)> {
    kv.health_service(name, false)
        .await
        .ok()?
        .into_iter()
        .flat_map(|e| e.checks)
        .find(|c| c.check_id == format!("service:{service_id}:berth"))
        .map(|c| (c.status, c.output))
}

const STACK: &str = "services:
  app:
    image: berth-base:latest
    command: [httpd, -f, -p, \"8080\", -h, /]
    ports: [\"8080\"]
    environment:
      SERVICE_TAGS: t1,t2
      SERVICE_REGION: eu
  hc:
    image: berth-base:latest
    command: [sh, -c, \"mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 8081 -h /w\"]
    ports: [\"8081\"]
    environment:
      SERVICE_NAME: checked
    healthcheck:
      test: wget -q -O- http://127.0.0.1:8081/
      interval: 1s
      retries: 30
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_registrations_follow_containers_and_survive_worker_kill_9() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let stop_registry = CancellationToken::new();
    let server_task = tokio::spawn(server::run(
        server::Config::dev("reg-test"),
        listener,
        stop_registry.clone(),
    ));
    let kv = Client::new(&registry, None).unwrap();

    let node = format!("t{}-reg", std::process::id());
    let _cleanup = Cleanup { node: node.clone() };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = WorkerClient::new(format!("http://127.0.0.1:{port}"), Secret::new(TOKEN));
    let mut worker = spawn_worker(data.path(), &node, port, &registry);
    eventually("the worker", || async { client.health().await.ok() }).await;

    // Self-registration with its meta and a passing HTTP check on /healthz.
    let me = eventually("self-registration", || async {
        kv.agent_services()
            .await
            .ok()?
            .remove(&format!("berth-worker:{node}"))
    })
    .await;
    assert_eq!(me.service, "berth-worker");
    assert_eq!(me.meta["capacity"], "20");
    eventually("worker check passing", || async {
        (status_of(&kv, "berth-worker").await == ["passing"]).then_some(())
    })
    .await;

    let (repo, commit) = git_repo(&[("compose.yaml", STACK)]);
    let sid = id(&format!("reg-{node}"));
    client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let st = client.start(&sid, &StartRequest::default()).await.unwrap();
    let project = st.project_name.clone();
    let hc_health = st
        .services
        .iter()
        .find(|s| s.name == "hc")
        .and_then(|s| s.health.clone());
    // Ready on its healthcheck: Docker's, or the worker's run of it before Docker's first (Docker
    // then says `starting`; "hc passing" below waits for Docker's own verdict).
    assert!(
        matches!(hc_health.as_deref(), Some("healthy" | "starting")),
        "{st:?}"
    );
    let app_id = format!("{node}:{project}-app-1:8080");
    let hc_id = format!("{node}:{project}-hc-1:8081");
    let regs = eventually("two registrations", || async {
        let r = own(&kv, &node).await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let app_port = st
        .endpoints
        .iter()
        .find(|e| e.service == "app")
        .unwrap()
        .host_port;
    let hc_port = st
        .endpoints
        .iter()
        .find(|e| e.service == "hc")
        .unwrap()
        .host_port;
    assert_eq!(
        regs,
        [
            (app_id.clone(), format!("app.{sid}"), app_port),
            (hc_id.clone(), "checked".to_owned(), hc_port),
        ]
    );
    let app = kv.agent_services().await.unwrap().remove(&app_id).unwrap();
    assert_eq!(app.tags, ["t1", "t2"]);
    assert_eq!(app.meta["region"], "eu");
    assert_eq!(app.meta["berth_instance"], sid.as_str());
    // TCP check of the plain service, Docker's healthcheck relayed for the other.
    eventually("app passing", || async {
        (status_of(&kv, &format!("app.{sid}")).await == ["passing"]).then_some(())
    })
    .await;
    eventually("hc passing", || async {
        (status_of(&kv, "checked").await == ["passing"]).then_some(())
    })
    .await;

    eventually("app's state check passing", || async {
        (state_of(&kv, &format!("app.{sid}"), &app_id).await
            == Some(("passing".to_owned(), "running".to_owned())))
        .then_some(())
    })
    .await;

    // kill -9 of a container: it stays registered, berth's state check says it exited.
    let killed = Command::new("docker")
        .args(["kill", "-s", "KILL", &format!("{project}-app-1")])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let (_, output) = eventually("app's state check critical", || async {
        state_of(&kv, &format!("app.{sid}"), &app_id)
            .await
            .filter(|(status, _)| status == "critical")
    })
    .await;
    assert!(output.starts_with("exited (exit code 137)"), "{output}");
    assert_eq!(own(&kv, &node).await.len(), 2);

    // Start brings it back; kill -9 of the worker, then a container dies while it is down.
    client.start(&sid, &StartRequest::default()).await.unwrap();
    eventually("app passing again", || async {
        (status_of(&kv, &format!("app.{sid}")).await == ["passing"]).then_some(())
    })
    .await;
    worker.0.kill().unwrap();
    worker.0.wait().unwrap();
    Command::new("docker")
        .args(["kill", "-s", "KILL", &format!("{project}-hc-1")])
        .output()
        .unwrap();
    assert_eq!(
        own(&kv, &node).await.len(),
        2,
        "nobody cleaned up while the worker was dead"
    );
    let _worker = spawn_worker(data.path(), &node, port, &registry);
    // Back, it sees what happened meanwhile: hc exited (still registered, critical).
    eventually("hc's state check critical after the restart", || async {
        state_of(&kv, "checked", &hc_id)
            .await
            .filter(|(status, output)| status == "critical" && output.starts_with("exited"))
    })
    .await;
    assert_eq!(own(&kv, &node).await.len(), 2);
    let services = kv.agent_services().await.unwrap();
    assert_eq!(
        services
            .keys()
            .filter(|k| k.starts_with(&format!("berth-worker:{node}")))
            .count(),
        1
    );

    // Stop deregisters everything of the stack.
    client.stop(&sid).await.unwrap();
    eventually("all deregistered on stop", || async {
        own(&kv, &node).await.is_empty().then_some(())
    })
    .await;
    client.delete(&sid, false).await.unwrap();
    stop_registry.cancel();
    let _ = server_task.await;
}

/// Claims the worker's service name and placement meta, and points its HTTP check at the
/// registry's KV through user info (audit findings 2 and 9).
const SPOOF: &str = "services:
  fake:
    image: berth-base:latest
    command: [httpd, -f, -p, \"8833\", -h, /]
    ports: [\"8833\"]
    environment:
      SERVICE_NAME: berth-worker
      SERVICE_INSTANCES: \"0\"
      SERVICE_CAPACITY: \"1000\"
      SERVICE_CHECK_HTTP: \"@127.0.0.1:8500/v1/kv/secret?raw\"
  good:
    image: berth-base:latest
    command: [httpd, -f, -p, \"8080\", -h, /]
    ports: [\"8080\"]
";

/// The same claims from the image's environment, which only the registrator sees.
const SPOOF_IMAGE: &str = "services:
  fake:
    build: ./fake
    command: [httpd, -f, -p, \"8833\", -h, /]
    ports: [\"8833\"]
  ssrf:
    build: ./ssrf
    command: [httpd, -f, -p, \"8080\", -h, /]
    ports: [\"8080\"]
  good:
    image: berth-base:latest
    command: [httpd, -f, -p, \"8080\", -h, /]
    ports: [\"8080\"]
    environment:
      SERVICE_REGION: eu
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_reserved_names_and_check_urls_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let stop_registry = CancellationToken::new();
    let server_task = tokio::spawn(server::run(
        server::Config::dev("reg-test"),
        listener,
        stop_registry.clone(),
    ));
    let kv = Client::new(&registry, None).unwrap();
    let w = worker("regres", |c| {
        c.registry = Some(registry.clone());
        c.fence = false;
    })
    .await;
    let node = w.node.clone();
    let worker_ids = || async {
        let mut ids: Vec<String> = kv
            .health_service("berth-worker", false)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.service.id)
            .collect();
        ids.sort();
        ids
    };
    eventually("self-registration", || async {
        (worker_ids().await == [format!("berth-worker:{node}")]).then_some(())
    })
    .await;

    // From the compose file: refused before anything runs, naming each variable.
    let (repo, commit) = git_repo(&[("compose.yaml", SPOOF)]);
    let sid = id(&format!("spoof-{node}"));
    let err = w
        .client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422), "{err}");
    let WorkerClientError::Api { body, .. } = &err else {
        panic!("{err:?}");
    };
    let mut fields: Vec<&str> = body
        .error
        .details
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "services.fake.environment.SERVICE_CAPACITY",
            "services.fake.environment.SERVICE_CHECK_HTTP",
            "services.fake.environment.SERVICE_INSTANCES",
            "services.fake.environment.SERVICE_NAME",
        ],
        "{body:?}"
    );
    assert!(
        body.error
            .details
            .iter()
            .all(|d| d.service.as_deref() == Some("fake")),
        "{body:?}"
    );
    assert!(
        w.cleanup.leftovers().0.is_empty(),
        "no container was created"
    );
    assert!(own(&kv, &node).await.is_empty());
    assert_eq!(worker_ids().await, [format!("berth-worker:{node}")]);
    w.client.delete(&sid, false).await.unwrap();

    // From the image: the stack runs, the refused ports are not registered, and the instance
    // log says why.
    let (repo, commit) = git_repo(&[
        ("compose.yaml", SPOOF_IMAGE),
        (
            "fake/Dockerfile",
            "FROM berth-base:latest\nENV SERVICE_NAME=berth-worker SERVICE_INSTANCES=0 SERVICE_CAPACITY=1000\n",
        ),
        (
            "ssrf/Dockerfile",
            "FROM berth-base:latest\nENV SERVICE_CHECK_HTTP=@127.0.0.1:8500/v1/kv/secret?raw\n",
        ),
    ]);
    let sid = id(&format!("spoofimg-{node}"));
    let st = w.build_and_start(&sid, repo.path(), &commit).await;
    let project = st.project_name.clone();
    let log = eventually("both refusals in the instance log", || async {
        let log = instance_log(&w.client, &sid).await;
        (log.contains(&format!("{project}-fake-1: SERVICE_NAME"))
            && log.contains(&format!("{project}-ssrf-1: SERVICE_CHECK_HTTP")))
        .then_some(log)
    })
    .await;
    assert!(
        log.contains(&format!(
            "registrator: {project}-fake-1: SERVICE_NAME sets the reserved service name \"berth-worker\""
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "registrator: {project}-ssrf-1: SERVICE_CHECK_HTTP must be a path starting with /; port 8080 is not registered"
        )),
        "{log}"
    );
    // The resync that wrote those lines decided the rest: only `good` is registered, and it
    // carries its instance.
    let good_id = format!("{node}:{project}-good-1:8080");
    let regs = eventually("the good service", || async {
        let r = own(&kv, &node).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        regs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [good_id.as_str()]
    );
    let good = kv.agent_services().await.unwrap().remove(&good_id).unwrap();
    assert_eq!(good.meta["berth_instance"], sid.as_str());
    assert_eq!(good.meta["region"], "eu");
    assert_eq!(worker_ids().await, [format!("berth-worker:{node}")]);

    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
    stop_registry.cancel();
    let _ = server_task.await;
}

/// `crash` dies with a FATAL line 2 s after each boot, forever; `flaky` dies on its first two
/// boots, then runs; `steady` runs. None publishes a port.
const LOOP: &str = r#"services:
  crash:
    image: berth-base:latest
    restart: always
    command: ["sh", "-c", "echo booting; sleep 2; echo 'FATAL: no database' >&2; exit 1"]
  flaky:
    image: berth-base:latest
    restart: on-failure
    command: ["sh", "-c", "n=$$(cat /data/n 2>/dev/null || echo 0); n=$$((n+1)); echo $$n > /data/n; if [ $$n -le 2 ]; then sleep 2; echo 'FATAL: boot '$$n >&2; exit 3; fi; exec sleep 100000"]
    volumes: ["data:/data"]
  steady:
    image: berth-base:latest
    command: ["sleep", "100000"]
volumes:
  data:
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_the_state_check_follows_a_crash_loop_and_a_recovery_without_ports() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let stop_registry = CancellationToken::new();
    let server_task = tokio::spawn(server::run(
        server::Config::dev("reg-test"),
        listener,
        stop_registry.clone(),
    ));
    let kv = Client::new(&registry, None).unwrap();
    let w = worker("regloop", |c| {
        c.registry = Some(registry.clone());
        c.fence = false;
    })
    .await;
    let node = w.node.clone();
    let (repo, commit) = git_repo(&[("compose.yaml", LOOP)]);
    let sid = id(&format!("loop-{node}"));
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let begun = tokio::time::Instant::now();
    let st = w
        .client
        .start(&sid, &StartRequest::default())
        .await
        .unwrap();
    let project = st.project_name.clone();
    let reg_id = |service: &str| format!("{node}:{project}-{service}-1");

    // Registered without a port, each with berth's state check.
    let regs = eventually("three port-less registrations", || async {
        let r = own(&kv, &node).await;
        (r.len() == 3).then_some(r)
    })
    .await;
    assert_eq!(
        regs,
        ["crash", "flaky", "steady"].map(|s| (reg_id(s), format!("{s}.{sid}"), 0))
    );
    eventually("steady's state check passing", || async {
        (state_of(&kv, &format!("steady.{sid}"), &reg_id("steady")).await
            == Some(("passing".to_owned(), "running".to_owned())))
        .then_some(())
    })
    .await;

    // The crash loop: critical, saying why, with the FATAL line.
    let (_, output) = eventually("crash's state check critical", || async {
        state_of(&kv, &format!("crash.{sid}"), &reg_id("crash"))
            .await
            .filter(|(status, _)| status == "critical")
    })
    .await;
    eprintln!(
        "crash's state check critical {:?} after the start (first crash at 2 s)",
        begun.elapsed()
    );
    assert!(output.starts_with("restarting ("), "{output}");
    assert!(output.contains("exit code 1"), "{output}");
    assert!(output.contains("FATAL: no database"), "{output}");

    // flaky: critical while it crashes, passing once it has run for the restart window.
    eventually("flaky's state check critical", || async {
        state_of(&kv, &format!("flaky.{sid}"), &reg_id("flaky"))
            .await
            .filter(|(status, output)| status == "critical" && output.contains("FATAL: boot"))
    })
    .await;
    eventually("flaky passing again", || async {
        state_of(&kv, &format!("flaky.{sid}"), &reg_id("flaky"))
            .await
            .filter(|(status, _)| status == "passing")
    })
    .await;
    eprintln!(
        "flaky's state check passing again {:?} after the start (its last crash at about 4 s, then the 10 s restart window)",
        begun.elapsed()
    );
    // The crash loop is still critical meanwhile; stop removes every registration.
    assert_eq!(
        state_of(&kv, &format!("crash.{sid}"), &reg_id("crash"))
            .await
            .map(|s| s.0),
        Some("critical".to_owned())
    );
    w.client.stop(&sid).await.unwrap();
    eventually("all deregistered on stop", || async {
        own(&kv, &node).await.is_empty().then_some(())
    })
    .await;
    w.client.delete(&sid, true).await.unwrap();
    w.stop().await;
    stop_registry.cancel();
    let _ = server_task.await;
}

/// The stack's build and start log so far.
async fn instance_log(client: &WorkerClient, id: &berth_worker_api::ValidName) -> String {
    let mut stream = client.logs(id, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}
