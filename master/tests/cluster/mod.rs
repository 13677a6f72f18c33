//! Harness of the cluster fault tests: registry server, master(s), the nginx front door and
//! workers, each its own container with its own address on a Docker network of its own, built
//! from the project's images (`scripts/build-images.sh --debug`: the debug binaries with their
//! shared libraries, so CI does not pay for a release build).
//!
//! The worker containers mount the host's Docker socket, so the "hosts" share one engine: each
//! worker still sees only its own stacks (every lookup filters on its node label), stacks get
//! distinct names and host ports, and a worker advertises the network's gateway address, where
//! the engine publishes those ports. Everything a cluster creates carries the label
//! `org.berth.test=<cluster id>` or the node label of one of its workers, and is removed by it.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const API_TOKEN: &str = "cluster-test-api-token";
pub const CLUSTER_TOKEN: &str = "cluster-test-cluster-token";
pub const GIT_TOKEN: &str = "cluster-test-git-token";
pub const APPS_DOMAIN: &str = "apps.test";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("master/ has a parent")
        .to_owned()
}

/// Runs `docker args`, panicking with its stderr on failure; returns trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `docker args`, ignoring failure (clean-up).
pub fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The tag of the images the cluster runs: `$BERTH_IMAGE_TAG`, else `test` (a tag of one's own
/// keeps several checkouts on one engine from running each other's binaries).
pub fn image_tag() -> String {
    std::env::var("BERTH_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "test".to_owned())
}

/// `name:<image_tag()>`.
fn image(name: &str) -> String {
    format!("{name}:{}", image_tag())
}

/// Builds (or finds up to date) the `berth-*:<image_tag()>` images, once per test process.
pub fn build_images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(repo_root().join("scripts/build-images.sh"))
            .arg("--debug")
            .env("BERTH_IMAGE_TAG", image_tag())
            .current_dir(repo_root())
            .output()
            .expect("scripts/build-images.sh runs");
        assert!(
            out.status.success(),
            "scripts/build-images.sh --debug failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One worker "host": a `berth-worker --join` container (the registry agent in-process) in the
/// engine host's network namespace, as `docker-compose.worker.yml` runs it. Killing it is losing
/// the machine.
pub struct Worker {
    /// The `berth-worker` container.
    pub container: String,
    pub node: String,
    pub port: u16,
    pub data: PathBuf,
}

pub struct Cluster {
    pub id: String,
    /// Network worker hosts reach the registry over, and the registry's fixed address on it.
    pub link: String,
    pub link_ip: String,
    pub network: String,
    pub gateway: String,
    pub dir: tempfile::TempDir,
    pub workers: Vec<Worker>,
    pub masters: Vec<String>,
    pub http: reqwest::Client,
    /// `--capacity` of the workers (`None`: the worker's default).
    pub worker_capacity: Option<u32>,
}

/// What a cluster is started with.
pub struct Options {
    pub workers: usize,
    pub masters: usize,
    /// The front door's cap on request bodies (nginx `client_max_body_size`).
    pub max_body: &'static str,
    /// `--capacity` of every worker (`None`: the worker's default).
    pub capacity: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 0,
            masters: 1,
            max_body: "1m",
            capacity: None,
        }
    }
}

impl Cluster {
    pub async fn start(options: Options) -> Cluster {
        build_images();
        let id = format!("bct{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let label = format!("org.berth.test={id}");
        docker(&["network", "create", "--label", &label, &id]);
        let gateway = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &id,
        ]);
        // The link worker hosts in the engine's namespace join the registry over: a network of
        // its own with a fixed subnet, so the registry can be cut off from them and come back
        // at the same address (`cut_registry_link`, `restore_registry_link`).
        let link = format!("{id}-link");
        docker(&["network", "create", "--label", &label, &link]);
        let subnet = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            &link,
        ]);
        docker(&["network", "rm", &link]);
        docker(&[
            "network", "create", "--label", &label, "--subnet", &subnet, &link,
        ]);
        let link_ip = {
            let base = subnet.split('/').next().expect("subnet address");
            let mut octets: Vec<u8> = base.split('.').map(|o| o.parse().expect("octet")).collect();
            octets[3] = octets[3].saturating_add(10);
            octets
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(".")
        };
        let mut cluster = Cluster {
            link,
            link_ip,
            id: id.clone(),
            network: id.clone(),
            gateway,
            dir: tempfile::tempdir().expect("temp dir"),
            workers: Vec::new(),
            masters: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .expect("reqwest client"),
            worker_capacity: options.capacity,
        };
        // A fixed host port: worker hosts in the engine's namespace join through it, and a
        // random one would change when the registry restarts.
        let registry_publish = format!("127.0.0.1:{}:8500", free_port());
        cluster.run(
            "registry",
            &["--network-alias", "registry", "-p", &registry_publish],
            &image("berth-registry"),
            &["server", "--node-name", "registry", "--data-dir", "/data"],
        );
        for n in 0..options.masters.max(1) {
            cluster.add_master(n);
        }
        let masters: Vec<String> = (0..options.masters.max(1))
            .map(|n| format!("--master=master{n}:8080"))
            .collect();
        let max_body = format!("--client-max-body-size={}", options.max_body);
        let mut args = vec![
            max_body.as_str(),
            "--registry=http://registry:8500",
            "--ui-listen=8500",
            "--apps-domain",
            APPS_DOMAIN,
        ];
        args.extend(masters.iter().map(String::as_str));
        cluster.run(
            "nginx",
            &["-p", "127.0.0.1::80", "-p", "127.0.0.1::8500"],
            &image("berth-nginx"),
            &args,
        );
        docker(&[
            "network",
            "connect",
            "--ip",
            &cluster.link_ip,
            &cluster.link,
            &cluster.container("registry"),
        ]);
        cluster.wait_registry().await;
        for n in 0..options.workers {
            cluster.add_worker(n);
        }
        cluster.wait_front_door().await;
        let nodes: Vec<String> = cluster.workers.iter().map(|w| w.node.clone()).collect();
        for node in nodes {
            cluster.wait_worker_status(&node, "passing").await;
        }
        cluster
    }

    /// `docker run -d` a container of this cluster named `<id>-<name>` on its network.
    fn run(&self, name: &str, extra: &[&str], image: &str, args: &[&str]) -> String {
        let network = self.network.clone();
        self.run_in(name, &network, extra, image, args)
    }

    /// As [`Cluster::run`], on `network` (`container:<name>` shares another's namespace).
    fn run_in(
        &self,
        name: &str,
        network: &str,
        extra: &[&str],
        image: &str,
        args: &[&str],
    ) -> String {
        let container = format!("{}-{name}", self.id);
        let label = format!("org.berth.test={}", self.id);
        let mut cmd = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--label",
            &label,
            "--network",
            network,
        ];
        cmd.extend_from_slice(extra);
        cmd.push(image);
        cmd.extend_from_slice(args);
        docker(&cmd);
        container
    }

    fn add_master(&mut self, n: usize) {
        let alias = format!("master{n}");
        let port = free_port();
        if n == 0 {
            let label = format!("org.berth.test={}", self.id);
            docker(&[
                "volume",
                "create",
                "--label",
                &label,
                &format!("{}-master-data", self.id),
            ]);
        }
        let env = [
            "BERTH_MASTER_REGISTRY=http://registry:8500".to_owned(),
            format!("BERTH_API_TOKEN={API_TOKEN}"),
            format!("BERTH_CLUSTER_TOKEN={CLUSTER_TOKEN}"),
            format!("BERTH_GIT_TOKEN={GIT_TOKEN}"),
            // Workers clone from here: the gateway address reaches the published port from the
            // engine host's namespace and from the test network alike.
            format!("BERTH_MASTER_PUBLIC_URL=http://{}:{port}", self.gateway),
        ];
        let publish = format!("{port}:8080");
        // Masters share one code store, as several masters need (a shared volume here; an
        // external forge in production): a build may be asked of any master after an upload
        // to another.
        let volume = format!("{}-master-data", self.id);
        let mount = format!("{volume}:/data");
        let mut extra = vec!["--network-alias", &alias, "-p", &publish, "-v", &mount];
        for e in &env {
            extra.push("-e");
            extra.push(e);
        }
        let c = self.run(&alias, &extra, &image("berth-master"), &[]);
        self.masters.push(c);
    }

    /// A worker host in the engine host's network namespace, as `docker-compose.worker.yml`
    /// runs it (`network_mode: host`): the worker reaches its stacks' ports and containers as on
    /// a real worker host. It listens on the test network's gateway address, its agent on a
    /// loopback port of its own.
    pub fn add_worker(&mut self, n: usize) {
        self.add_worker_with(n, &[]);
    }

    /// As [`Cluster::add_worker`], with more `BERTH_WORKER_*` settings (`NAME=value`).
    pub fn add_worker_with(&mut self, n: usize, settings: &[&str]) {
        let node = format!("{}-w{n}", self.id);
        let port = free_port();
        let agent_port = free_port();
        let data = self.dir.path().join(format!("w{n}"));
        std::fs::create_dir_all(&data).expect("worker data dir");
        let data_s = data.display().to_string();
        let join = format!("http://{}:8500", self.link_ip);
        let mut env = vec![
            format!("BERTH_WORKER_LISTEN={}:{port}", self.gateway),
            format!("BERTH_WORKER_ADVERTISE={}", self.gateway),
            format!("BERTH_WORKER_DATA_DIR={data_s}"),
            format!("BERTH_WORKER_NODE_NAME={node}"),
            format!("BERTH_WORKER_JOIN={join}"),
            format!("BERTH_WORKER_AGENT_LISTEN=127.0.0.1:{agent_port}"),
            format!("BERTH_CLUSTER_TOKEN={CLUSTER_TOKEN}"),
        ];
        if let Some(capacity) = self.worker_capacity {
            env.push(format!("BERTH_WORKER_CAPACITY={capacity}"));
        }
        env.extend(settings.iter().map(|s| (*s).to_owned()));
        let mount = format!("{data_s}:{data_s}");
        let mut extra = vec![
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &mount,
        ];
        for e in &env {
            extra.push("-e");
            extra.push(e);
        }
        let container = self.run_in(
            &format!("w{n}"),
            "host",
            &extra,
            &image("berth-worker"),
            &[],
        );
        self.workers.push(Worker {
            container,
            node,
            port,
            data,
        });
    }

    /// Cuts the worker hosts off from the registry (their heartbeats and syncs fail).
    pub fn cut_registry_link(&self) {
        docker(&[
            "network",
            "disconnect",
            &self.link,
            &self.container("registry"),
        ]);
    }

    pub fn restore_registry_link(&self) {
        docker(&[
            "network",
            "connect",
            "--ip",
            &self.link_ip,
            &self.link,
            &self.container("registry"),
        ]);
    }

    /// Kills a worker host (the worker and its in-process agent), as a machine dying would. A
    /// dead machine takes its stacks along; on the shared engine its objects are removed, since
    /// they would otherwise keep running under the names the instance's next worker uses (and a
    /// worker never touches another node's objects).
    pub fn kill_worker(&self, node: &str) {
        let w = self
            .workers
            .iter()
            .find(|w| w.node == node)
            .expect("a worker of this cluster");
        docker(&["kill", &w.container]);
        remove_objects_of(node);
    }

    /// Kills only a worker's process (the `berth-worker` container), leaving its stacks running
    /// on the engine, as a worker process crashing on a host that stays up would.
    pub fn kill_worker_process(&self, node: &str) {
        docker(&["kill", &self.worker(node).container]);
    }

    /// Starts a killed worker again: the same container, data dir and node name.
    pub fn restart_worker(&self, node: &str) {
        docker(&["start", &self.worker(node).container]);
    }

    pub fn worker(&self, node: &str) -> &Worker {
        self.workers
            .iter()
            .find(|w| w.node == node)
            .expect("a worker of this cluster")
    }

    /// The worker API base URL of `node`.
    pub fn worker_url(&self, node: &str) -> String {
        format!("http://{}:{}", self.gateway, self.worker(node).port)
    }

    /// Moves the stack objects of `node` aside, running, under names no other worker uses:
    /// containers renamed, networks recreated with their labels and containers, image tags
    /// retagged (volumes cannot be renamed; a stack parked here has none). On separate hosts
    /// each engine has names of its own; on the shared engine this lets a second worker run the
    /// same instance while the first one's copy lives on, labelled with its node.
    pub fn park_objects_of(&self, node: &str) {
        let filter = format!("label=org.berth.node={node}");
        let volumes = docker_quiet(&["volume", "ls", "-q", "--filter", &filter]);
        assert!(volumes.is_empty(), "volumes cannot be parked: {volumes}");
        for name in docker_quiet(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter])
            .lines()
            .filter(|l| !l.is_empty())
        {
            docker(&["rename", name, &format!("{name}-parked")]);
        }
        for network in docker_quiet(&[
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &filter,
        ])
        .lines()
        .filter(|l| !l.is_empty())
        {
            let labels: serde_json::Map<String, Value> = serde_json::from_str(&docker(&[
                "network",
                "inspect",
                "-f",
                "{{json .Labels}}",
                network,
            ]))
            .expect("network labels");
            let parked = format!("{network}-parked");
            let mut create = vec!["network".to_owned(), "create".to_owned()];
            for (k, v) in &labels {
                create.push("--label".to_owned());
                create.push(format!("{k}={}", v.as_str().unwrap_or_default()));
            }
            create.push(parked.clone());
            docker(&create.iter().map(String::as_str).collect::<Vec<_>>());
            let attached = docker(&[
                "network",
                "inspect",
                "-f",
                "{{range .Containers}}{{.Name}} {{end}}",
                network,
            ]);
            for container in attached.split_whitespace() {
                docker(&["network", "connect", &parked, container]);
                docker(&["network", "disconnect", network, container]);
            }
            docker(&["network", "rm", network]);
        }
        for tag in docker_quiet(&[
            "image",
            "ls",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &filter,
        ])
        .lines()
        .filter(|l| !l.is_empty() && !l.contains("<none>"))
        {
            let (repo, t) = tag.rsplit_once(':').expect("repo:tag");
            docker(&["tag", tag, &format!("{repo}-parked:{t}")]);
            docker(&["rmi", tag]);
        }
    }

    /// The host port a container port is published on.
    pub fn host_port(&self, container: &str, port: u16) -> u16 {
        let out = docker(&["port", container, &format!("{port}/tcp")]);
        out.lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{container} publishes {port}: {out:?}"))
    }

    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// The front door (nginx) API base URL.
    pub fn api(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.host_port(&self.container("nginx"), 80)
        )
    }

    pub fn ui(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.host_port(&self.container("nginx"), 8500)
        )
    }

    pub fn registry(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.host_port(&self.container("registry"), 8500)
        )
    }

    async fn wait_registry(&self) {
        let url = format!("{}/v1/status/leader", self.registry());
        let http = self.http.clone();
        eventually("the registry", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok()?.error_for_status().ok() }
        })
        .await;
    }

    pub async fn wait_front_door(&self) {
        let url = format!("{}/healthz", self.api());
        let http = self.http.clone();
        eventually("the master through nginx", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok()?.error_for_status().ok() }
        })
        .await;
    }

    /// The aggregated status (`passing` / `warning` / `critical`) of a worker node's
    /// `berth-worker` service, or `None` when it is not in the catalog.
    pub async fn worker_status(&self, node: &str) -> Option<String> {
        let url = format!("{}/v1/health/service/berth-worker", self.registry());
        let entries: Value = self.http.get(&url).send().await.ok()?.json().await.ok()?;
        let entry = entries
            .as_array()?
            .iter()
            .find(|e| e["Node"]["Node"] == node)?;
        let statuses: Vec<&str> = entry["Checks"]
            .as_array()?
            .iter()
            .filter_map(|c| c["Status"].as_str())
            .collect();
        Some(if statuses.contains(&"critical") {
            "critical".into()
        } else if statuses.contains(&"warning") {
            "warning".into()
        } else {
            "passing".into()
        })
    }

    pub async fn wait_worker_status(&self, node: &str, want: &str) {
        eventually(
            &format!("worker {node} to be {want}"),
            Duration::from_secs(90),
            || async move { (self.worker_status(node).await.as_deref() == Some(want)).then_some(()) },
        )
        .await;
    }

    /// Number of `berth-worker` registrations of `node` in the catalog.
    pub async fn registrations(&self, node: &str) -> usize {
        let url = format!("{}/v1/catalog/service/berth-worker", self.registry());
        let entries: Value = self
            .http
            .get(&url)
            .send()
            .await
            .expect("catalog")
            .json()
            .await
            .expect("catalog json");
        entries
            .as_array()
            .map(|a| a.iter().filter(|e| e["Node"] == node).count())
            .unwrap_or(0)
    }

    /// A call through the front door with the API token; returns status and JSON (or text).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        self.call_as(Some(API_TOKEN), method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/gzip").body(b);
        }
        let resp = req.send().await.expect("front door answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The raw KV value of `key` (`None` when absent).
    pub async fn kv(&self, key: &str) -> Option<Value> {
        let url = format!("{}/v1/kv/{key}?raw=1", self.registry());
        let resp = self.http.get(&url).send().await.expect("registry answers");
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let text = resp.text().await.expect("kv body");
        Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The session holding `key`, if any.
    pub async fn kv_session(&self, key: &str) -> Option<String> {
        let url = format!("{}/v1/kv/{key}", self.registry());
        let entries: Value = self.http.get(&url).send().await.ok()?.json().await.ok()?;
        entries[0]["Session"].as_str().map(str::to_owned)
    }

    /// Every key under `prefix`.
    pub async fn kv_keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/v1/kv/{prefix}?keys=1", self.registry());
        let resp = self.http.get(&url).send().await.expect("registry answers");
        if resp.status() == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        resp.json().await.expect("keys json")
    }

    /// `GET` an app through nginx by its `<id>.<apps domain>` name.
    pub async fn app_through_front_door(&self, id: &str, path: &str) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.api()))
            .header("Host", format!("{id}.{APPS_DOMAIN}"))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// Containers, networks, volumes and images the stacks of this cluster's workers made.
    pub fn stack_objects(&self) -> Vec<String> {
        self.stack_objects_except(&[])
    }

    /// As [`Cluster::stack_objects`], leaving out what the workers `skip` made.
    pub fn stack_objects_except(&self, skip: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for w in self
            .workers
            .iter()
            .filter(|w| !skip.contains(&w.node.as_str()))
        {
            let filter = format!("label=org.berth.node={}", w.node);
            for kind in [
                vec!["ps", "-aq", "--filter", &filter],
                vec!["network", "ls", "-q", "--filter", &filter],
                vec!["volume", "ls", "-q", "--filter", &filter],
                vec!["image", "ls", "-q", "--filter", &filter],
            ] {
                out.extend(
                    docker_quiet(&kind)
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| format!("{}:{l}", kind[0])),
                );
            }
        }
        // `docker image ls` orders images made in the same second arbitrarily.
        out.sort();
        out
    }
}

/// Removes every container, network, volume and image labelled with `node`.
fn remove_objects_of(node: &str) {
    let filter = format!("label=org.berth.node={node}");
    for id in docker_quiet(&["ps", "-aq", "--filter", &filter]).lines() {
        docker_quiet(&["rm", "-f", "-v", id]);
    }
    for id in docker_quiet(&["network", "ls", "-q", "--filter", &filter]).lines() {
        docker_quiet(&["network", "rm", id]);
    }
    for id in docker_quiet(&["volume", "ls", "-q", "--filter", &filter]).lines() {
        docker_quiet(&["volume", "rm", "-f", id]);
    }
    for id in docker_quiet(&["image", "ls", "-q", "--filter", &filter]).lines() {
        docker_quiet(&["rmi", "-f", id]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let own = format!("label=org.berth.test={}", self.id);
        for id in docker_quiet(&["ps", "-aq", "--filter", &own]).lines() {
            docker_quiet(&["rm", "-f", "-v", id]);
        }
        for w in &self.workers {
            remove_objects_of(&w.node);
        }
        docker_quiet(&["network", "rm", &self.network]);
        docker_quiet(&["network", "rm", &self.link]);
        for id in docker_quiet(&["volume", "ls", "-q", "--filter", &own]).lines() {
            docker_quiet(&["volume", "rm", "-f", id]);
        }
    }
}

/// The sample app (scripts/sample-app) as a tar.gz, as the main system would upload it.
pub fn sample_app() -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-C"])
        .arg(repo_root().join("scripts/sample-app"))
        .args(["-czf", "-", "."])
        .output()
        .expect("tar runs");
    assert!(out.status.success());
    out.stdout
}

/// A tar.gz of `files` (path, contents) written with raw headers, so hostile names survive.
pub fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).expect("tar entry");
    }
    let tar = builder.into_inner().expect("tar");
    gzip(&tar)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// A tar.gz holding a symlink `name` pointing at `target`.
pub fn targz_symlink(name: &str, target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let compose = b"services: {}\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(compose.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "compose.yaml", &compose[..])
        .expect("compose entry");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder
        .append_link(&mut link, name, target)
        .expect("symlink entry");
    gzip(&builder.into_inner().expect("tar"))
}
