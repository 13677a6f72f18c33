//! Forwarders against the real Docker engine: a service publishing a host port gets a
//! `-fwd` container holding it, and a deploy and a rollback of a two-service app lose no request
//! on the host port, neither with a new connection per request nor on a kept-alive one, nor
//! through a real nginx proxying to it as the front door does, while the answer switches. Stop stops the forwarder, delete removes it. A stop-first service (the
//! file asks for it) behind a forwarder makes clients wait through its gap (the forwarder holds
//! new connections and drains the open ones first) instead of refusing them, and the log says
//! how long the gap was.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_worker_api::StackState;
use common::*;

/// `api` (no port, a healthcheck) and `web` (port 8080, behind a forwarder), each answering with
/// its release; `web` rolls stop-first when `web_order` says so.
fn app(release: &str, web_extra: &str) -> Vec<(String, String)> {
    let compose = format!(
        r#"services:
  api:
    build: ./api
    init: true
    healthcheck:
      test: wget -q -O- http://127.0.0.1:8080/
      interval: 1s
      timeout: 2s
      retries: 3
  web:
    build: ./web
    init: true
{web_extra}    depends_on:
      api:
        condition: service_healthy
    ports:
      - "8080"
"#
    );
    let dockerfile = "FROM berth-base:latest\nCOPY release /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    vec![
        ("compose.yaml".into(), compose),
        ("api/Dockerfile".into(), dockerfile.into()),
        ("api/release".into(), format!("api {release}\n")),
        ("web/Dockerfile".into(), dockerfile.into()),
        ("web/release".into(), format!("web {release}\n")),
    ]
}

fn inspect(name: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A client loop on `url` until `stop`: ok and failed counts and each answer's change.
struct Loop {
    ok: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
    answers: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    /// `keep_alive`: one pooled client reusing its connection; else a new connection per
    /// request.
    fn start(url: &str, keep_alive: bool, stop: Arc<AtomicBool>) -> Self {
        let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let answers = Arc::new(Mutex::new(Vec::<String>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let task = {
            let (ok, failed, answers, errors) =
                (ok.clone(), failed.clone(), answers.clone(), errors.clone());
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
                if !keep_alive {
                    http = http.pool_max_idle_per_host(0);
                }
                let http = http.build().unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let answer = match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            r.text().await.map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match answer {
                        Ok(text) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            let mut a = answers.lock().unwrap();
                            if a.last() != Some(&text) {
                                a.push(text);
                            }
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.lock().unwrap().push(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Self {
            ok,
            failed,
            answers,
            errors,
            task,
        }
    }

    async fn finish(self, what: &str) -> (u32, u32, Vec<String>) {
        self.task.await.unwrap();
        let (ok, failed) = (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        );
        eprintln!(
            "{what}: {ok} ok, {failed} failed; answers in turn {:?}; errors {:?}",
            self.answers.lock().unwrap(),
            self.errors.lock().unwrap()
        );
        let answers = self.answers.lock().unwrap().clone();
        (ok, failed, answers)
    }
}

/// A real nginx in front of `host_port`, with the front door's proxy settings and app server
/// block (master/frontdoor renders the same lines for `<id>.<apps domain>`), answering on the
/// returned port for any host name.
fn front_door(dir: &Path, host_port: u16) -> (Nginx, u16) {
    let nginx = "/usr/sbin/nginx";
    assert!(
        Path::new(nginx).exists(),
        "{nginx} is missing: run scripts/install-test-deps.sh"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        location / {{
            proxy_pass http://127.0.0.1:{host_port};
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = std::process::Command::new(nginx)
        .args(["-p", &d.to_string(), "-c", &path.display().to_string()])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (Nginx(child), port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(Nginx(child));
    panic!("nginx does not listen on {port}");
}

/// nginx's master, stopped with SIGQUIT when dropped (also on a panic): it then ends its worker,
/// which a SIGKILL of the master would leave running, orphaned.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-QUIT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn assert_forwarder_binary() {
    let bin = forwarder_bin();
    assert!(
        bin.is_file(),
        "no forwarder binary at {}: build it with `cargo build -p berth-forward --release --target x86_64-unknown-linux-musl` (scripts/test.sh does) or set BERTH_WORKER_FORWARDER_BIN",
        bin.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_deploy_and_rollback_lose_no_request_on_the_host_port() {
    assert_forwarder_binary();
    let w = worker("fwd", |_| {}).await;
    let id = id("fwd-1");
    let (repo, c1) = git_repo(&files(&app("v1", "")));
    let started = w.build_and_start(&id, repo.path(), &c1).await;
    let project = started.project_name.clone();
    let (web, fwd) = (format!("{project}-web-1"), format!("{project}-web-1-fwd"));
    let endpoint = started.endpoints[0].clone();
    assert_eq!(endpoint.service, "web");
    assert_eq!(endpoint.container_port, 8080);
    let url = format!("http://{}/", endpoint.address());
    assert_eq!(http_get(&url).await, "web v1\n");
    // The forwarder holds the host port; the app container publishes nothing.
    assert_eq!(inspect(&fwd, "{{.State.Running}}"), "true");
    assert!(
        inspect(&fwd, "{{json .HostConfig.PortBindings}}")
            .contains(&format!("\"{}\"", endpoint.host_port)),
        "{}",
        inspect(&fwd, "{{json .HostConfig.PortBindings}}")
    );
    let bound = inspect(&web, "{{json .HostConfig.PortBindings}}");
    assert!(bound == "null" || bound == "{}", "{bound}");
    let names: Vec<&str> = started.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"], "the forwarder is no service");

    let c2 = git_commit(repo.path(), &files(&app("v2", "")));
    w.client
        .build(&id, &build_request(repo.path(), &c2))
        .await
        .unwrap();

    let nginx_dir = tempfile::tempdir().unwrap();
    let (nginx, front_port) = front_door(nginx_dir.path(), endpoint.host_port);
    let front_url = format!("http://127.0.0.1:{front_port}/");
    assert_eq!(http_get(&front_url).await, "web v1\n");

    let stop = Arc::new(AtomicBool::new(false));
    let fresh = Loop::start(&url, false, stop.clone());
    let kept = Loop::start(&url, true, stop.clone());
    let front = Loop::start(&front_url, true, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    let done = w
        .client
        .deploy(&id, &deploy_request(repo.path(), &c2, 60))
        .await
        .unwrap();
    let deploy_secs = t.elapsed().as_secs_f64();
    assert_eq!(done.state, StackState::Running);
    assert_eq!(http_get(&url).await, "web v2\n");
    assert_eq!(done.endpoints, started.endpoints, "the endpoints stay");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    w.client
        .deploy(&id, &deploy_request(repo.path(), &c1, 60))
        .await
        .unwrap();
    let rollback_secs = t.elapsed().as_secs_f64();
    assert_eq!(http_get(&url).await, "web v1\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (fresh_ok, fresh_failed, fresh_answers) = fresh.finish("new connection per request").await;
    let (kept_ok, kept_failed, kept_answers) = kept.finish("kept-alive connection").await;
    let (front_ok, front_failed, front_answers) = front.finish("through nginx").await;
    drop(nginx);
    eprintln!("deploy {deploy_secs:.2} s, rollback to the kept release {rollback_secs:.2} s");
    let log = log_of(&w, &id).await;
    assert!(log.contains("forwarder switched"), "{log}");
    assert!(!log.contains("stop-first"), "{log}");
    for (what, ok, failed, answers) in [
        ("new connections", fresh_ok, fresh_failed, fresh_answers),
        ("kept-alive", kept_ok, kept_failed, kept_answers),
        ("through nginx", front_ok, front_failed, front_answers),
    ] {
        assert!(ok > 20, "{what}: only {ok} requests");
        assert_eq!(failed, 0, "{what}: failed requests");
        assert_eq!(answers, ["web v1\n", "web v2\n", "web v1\n"], "{what}");
    }
    // The deploy answers once the new release serves; the old container retires after it.
    let retired = Instant::now();
    while !inspect(&format!("{web}-old"), "{{.Id}}").is_empty() {
        assert!(
            retired.elapsed() < Duration::from_secs(60),
            "the old web container is never retired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A forwarder killed by hand leaves the app unreachable though its containers run: the
    // watcher starts it again (Docker leaves a killed container alone) and it forwards to the
    // target it kept.
    let killed = std::process::Command::new("docker")
        .args(["kill", &fwd])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let since = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
            && r.text().await.unwrap_or_default() == "web v1\n"
        {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the killed forwarder is never started again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "killed forwarder serving again after {:.2} s",
        since.elapsed().as_secs_f64()
    );
    let log = log_of(&w, &id).await;
    assert!(log.contains("was not running"), "{log}");

    // Stop stops the forwarder; delete removes it.
    w.client.stop(&id).await.unwrap();
    assert_eq!(inspect(&fwd, "{{.State.Running}}"), "false");
    w.client.delete(&id, false).await.unwrap();
    assert_eq!(inspect(&fwd, "{{.Id}}"), "");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_a_stop_first_service_behind_a_forwarder_keeps_clients_waiting() {
    assert_forwarder_binary();
    let w = worker("fwd-stop", |_| {}).await;
    let id = id("fwd-2");
    let order = "    deploy:\n      update_config:\n        order: stop-first\n";
    let (repo, c1) = git_repo(&files(&app("v1", order)));
    let started = w.build_and_start(&id, repo.path(), &c1).await;
    let url = format!("http://{}/", started.endpoints[0].address());
    let c2 = git_commit(repo.path(), &files(&app("v2", order)));
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = Loop::start(&url, false, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.client
        .deploy(&id, &deploy_request(repo.path(), &c2, 60))
        .await
        .unwrap();
    assert_eq!(http_get(&url).await, "web v2\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, answers) = fresh.finish("stop-first behind a forwarder").await;
    let log = log_of(&w, &id).await;
    let gap = log
        .lines()
        .find(|l| l.contains("stop-first gap"))
        .unwrap_or_else(|| panic!("no gap in the log: {log}"));
    eprintln!("{gap}");
    assert!(
        log.contains("service web: stop-first (the file asks for it)"),
        "{log}"
    );
    assert!(ok > 5);
    assert_eq!(failed, 0);
    assert!(log.contains("forwarder holds new connections"), "{log}");
    assert_eq!(answers, ["web v1\n", "web v2\n"]);
    w.client.delete(&id, false).await.unwrap();
    w.stop().await;
}
