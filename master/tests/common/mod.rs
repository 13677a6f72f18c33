//! Test harness: an in-process registry, masters on 127.0.0.1:0, tar.gz builders and a stand-in
//! worker serving the worker route table of `berth_worker_api::routes` (the real worker is tested
//! end to end in its own and the cluster issues). The stand-in really clones the commit it is
//! asked to build, with the credentials the master hands it.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_master::Config;
use berth_registry::client::Client;
use berth_registry::dto::{
    CatalogCheckRegistration, CatalogRegistration, CatalogServiceRegistration,
};
use berth_worker_api::auth::{self, Verifier};
use berth_worker_api::{
    BuildRequest, DeleteResponse, Endpoint, ErrorBody, ErrorCode, ErrorDetail, META_CAPACITY,
    META_INSTANCES, Secret, StackState, StackStatus, ValidName, WORKER_SERVICE, WorkerHealth,
    routes,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API: &str = "api-token";
pub const CLUSTER: &str = "cluster-token";
pub const GIT: &str = "git-token";

// ---- registry ----

pub struct Registry {
    pub url: String,
    pub client: Client,
    shutdown: CancellationToken,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn registry() -> Registry {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(berth_registry::server::run(
        berth_registry::server::Config::dev("registry-test"),
        listener,
        shutdown.clone(),
    ));
    let client = Client::new(&url, None).unwrap();
    for _ in 0..200 {
        if client.status_leader().await.is_ok_and(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Registry {
        url,
        client,
        shutdown,
    }
}

// ---- master ----

pub struct Master {
    pub base: String,
    pub data: PathBuf,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), berth_master::RunError>>,
}

pub fn config(registry: &Registry, data: &Path) -> Config {
    Config {
        data_dir: data.to_owned(),
        registry: registry.url.clone(),
        api_token: Some(Secret::new(API)),
        cluster_token: Some(Secret::new(CLUSTER)),
        git_token: Some(Secret::new(GIT)),
        lock_wait_secs: 20,
        ..Config::default()
    }
}

pub async fn master(config: Config) -> Master {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let data = config.data_dir.clone();
    let task = tokio::spawn(berth_master::run(config, listener, shutdown.clone()));
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Master {
        base,
        data,
        http,
        shutdown,
        task,
    }
}

impl Master {
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(API)
    }

    pub async fn upload(
        &self,
        id: &str,
        user: &str,
        query: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("/v1/instances/{id}/code?user={user}&project=proj{query}"),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        json(resp).await
    }

    pub async fn call(&self, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
        json(self.req(method, path).send().await.unwrap()).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub async fn json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

// ---- archives ----

/// A tar.gz of `(path, content, mode)` regular files.
pub fn targz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub fn app(version: &str) -> Vec<u8> {
    let compose =
        format!("services:\n  web:\n    build: ./web\n    ports: [\"80\"]\n# {version}\n");
    targz(&[
        ("compose.yaml", compose.as_bytes(), 0o644),
        ("web/Dockerfile", b"FROM berth-base\nCOPY run.sh /\n", 0o644),
        ("web/run.sh", b"#!/bin/sh\nexec httpd -f\n", 0o755),
    ])
}

// ---- stand-in worker ----

#[derive(Default)]
pub struct WorkerState {
    pub stacks: Mutex<HashMap<String, StackStatus>>,
    /// `op:id:enter` / `op:id:exit`, in order.
    pub events: Mutex<Vec<String>>,
    /// Sleep inside build and start (to widen races).
    pub delay: Mutex<Duration>,
    /// Answer builds with a policy rejection.
    pub reject: Mutex<bool>,
    /// Commits cloned, checked out and read from the repo the master named.
    pub cloned: Mutex<Vec<(String, String)>>,
    /// When set, a build waits for a permit of this semaphore (after its `enter` event).
    pub gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Every request the stand-in received, as `method path`, its headers and its body.
    pub received: Mutex<Vec<String>>,
    pub node: String,
}

pub struct StandIn {
    pub node: String,
    pub addr: SocketAddr,
    pub state: Arc<WorkerState>,
    shutdown: CancellationToken,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn err(status: StatusCode, code: ErrorCode, message: &str, details: Vec<ErrorDetail>) -> Response {
    (status, axum::Json(ErrorBody::new(code, message, details))).into_response()
}

async fn event(state: &WorkerState, what: String) {
    state.events.lock().unwrap().push(what);
}

async fn build(
    State(state): State<Arc<WorkerState>>,
    UrlPath(id): UrlPath<String>,
    axum::Json(req): axum::Json<BuildRequest>,
) -> Response {
    event(&state, format!("build:{id}:enter")).await;
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let gate = state.gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        gate.acquire().await.unwrap().forget();
    }
    if *state.reject.lock().unwrap() {
        event(&state, format!("build:{id}:exit")).await;
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PolicyRejected,
            "compose file rejected by policy",
            vec![ErrorDetail {
                service: Some("web".into()),
                field: "privileged".into(),
                reason: "privileged containers are not allowed".into(),
            }],
        );
    }
    // Clone like a worker would, with the credentials the master gave.
    let url = match (&req.repo.username, &req.repo.password) {
        (Some(u), Some(p)) => req
            .repo
            .url
            .replacen("://", &format!("://{u}:{}@", p.expose()), 1),
        _ => req.repo.url.clone(),
    };
    let commit = req.commit.clone();
    let cloned = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("git")
            .env("GIT_TERMINAL_PROMPT", "0")
            .args(["clone", "-q", &url, "co"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let co = dir.path().join("co");
        let out = std::process::Command::new("git")
            .args(["checkout", "-q", &commit])
            .current_dir(&co)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::fs::read_to_string(co.join("compose.yaml")).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    event(&state, format!("build:{id}:exit")).await;
    match cloned {
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Failed,
            &format!("clone: {e}"),
            vec![],
        ),
        Ok(compose) => {
            state
                .cloned
                .lock()
                .unwrap()
                .push((req.commit.clone(), compose));
            let mut stacks = state.stacks.lock().unwrap();
            // A running stack keeps running while it builds (as the real worker does).
            let running = stacks
                .get(&id)
                .filter(|s| s.state == StackState::Running)
                .cloned();
            let status = StackStatus {
                id: ValidName::parse("id", &id).unwrap(),
                state: running.as_ref().map_or(StackState::Built, |s| s.state),
                commit: Some(req.commit),
                running_commit: running.as_ref().and_then(|s| s.running_commit.clone()),
                rolling: false,
                project_name: id.clone(),
                services: vec![],
                health: vec![],
                endpoints: running.map(|s| s.endpoints).unwrap_or_default(),
                error: None,
                kept: vec![],
            };
            stacks.insert(id, status.clone());
            axum::Json(status).into_response()
        }
    }
}

/// A rollout as the stand-in does it: the running stack takes the commit (no containers here).
async fn deploy(
    State(state): State<Arc<WorkerState>>,
    UrlPath(id): UrlPath<String>,
    axum::Json(req): axum::Json<berth_worker_api::DeployRequest>,
) -> Response {
    event(&state, format!("deploy:{id}:enter")).await;
    let result = {
        let mut stacks = state.stacks.lock().unwrap();
        match stacks.get_mut(&id) {
            Some(s) if s.state == StackState::Running => {
                s.commit = Some(req.commit.clone());
                s.running_commit = Some(req.commit.clone());
                s.kept.retain(|c| *c != req.commit);
                s.kept.insert(0, req.commit);
                Ok(s.clone())
            }
            _ => Err(err(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "not running",
                vec![],
            )),
        }
    };
    event(&state, format!("deploy:{id}:exit")).await;
    match result {
        Ok(s) => axum::Json(s).into_response(),
        Err(r) => r,
    }
}

async fn start(State(state): State<Arc<WorkerState>>, UrlPath(id): UrlPath<String>) -> Response {
    event(&state, format!("start:{id}:enter")).await;
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let result = {
        let mut stacks = state.stacks.lock().unwrap();
        match stacks.get_mut(&id) {
            None => Err(err(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such stack",
                vec![],
            )),
            Some(s) => {
                s.state = StackState::Running;
                s.running_commit = s.commit.clone();
                s.endpoints = vec![Endpoint {
                    service: "web".into(),
                    container_port: 80,
                    protocol: "tcp".into(),
                    host: "127.0.0.1".into(),
                    host_port: 32768,
                }];
                Ok(s.clone())
            }
        }
    };
    event(&state, format!("start:{id}:exit")).await;
    match result {
        Ok(s) => axum::Json(s).into_response(),
        Err(r) => r,
    }
}

async fn stop(State(state): State<Arc<WorkerState>>, UrlPath(id): UrlPath<String>) -> Response {
    event(&state, format!("stop:{id}:enter")).await;
    let mut stacks = state.stacks.lock().unwrap();
    match stacks.get_mut(&id) {
        None => err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such stack",
            vec![],
        ),
        Some(s) => {
            s.state = StackState::Stopped;
            s.running_commit = None;
            s.endpoints.clear();
            axum::Json(s.clone()).into_response()
        }
    }
}

async fn delete(
    State(state): State<Arc<WorkerState>>,
    UrlPath(id): UrlPath<String>,
    Query(_q): Query<BTreeMap<String, String>>,
) -> Response {
    event(&state, format!("delete:{id}:enter")).await;
    let existed = state.stacks.lock().unwrap().remove(&id).is_some();
    axum::Json(DeleteResponse {
        id: ValidName::parse("id", &id).unwrap(),
        existed,
        removed_containers: u32::from(existed),
        removed_images: u32::from(existed),
        removed_volumes: 0,
        removed_networks: u32::from(existed),
        not_removed: Vec::new(),
    })
    .into_response()
}

async fn status(State(state): State<Arc<WorkerState>>, UrlPath(id): UrlPath<String>) -> Response {
    match state.stacks.lock().unwrap().get(&id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such stack",
            vec![],
        ),
    }
}

async fn list(State(state): State<Arc<WorkerState>>) -> Response {
    let stacks: Vec<StackStatus> = state.stacks.lock().unwrap().values().cloned().collect();
    axum::Json(stacks).into_response()
}

async fn logs(UrlPath(id): UrlPath<String>) -> Response {
    format!("build of {id}: ok\nstart of {id}: ok\n").into_response()
}

#[derive(serde::Deserialize)]
struct HealthQuery {
    challenge: Option<String>,
}

/// Answers like the real worker: with a challenge, the proof that it holds [`CLUSTER`].
async fn health(State(state): State<Arc<WorkerState>>, Query(q): Query<HealthQuery>) -> Response {
    let n = state.stacks.lock().unwrap().len() as u32;
    let verifier = Verifier::new(Secret::new(CLUSTER));
    let proof = auth::proof_headers(&verifier, q.challenge.as_deref(), &state.node);
    (
        proof,
        axum::Json(WorkerHealth {
            status: "ok".into(),
            node: state.node.clone(),
            version: "test".into(),
            instances: n,
            capacity: 100,
        }),
    )
        .into_response()
}

/// Notes the whole request in `received` (what a peer could learn from it) and passes it on.
async fn record(
    State(state): State<Arc<WorkerState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let mut seen = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        seen.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    seen.push_str(&String::from_utf8_lossy(&body));
    state.received.lock().unwrap().push(seen);
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

/// Starts a stand-in worker and registers it in the catalog as node `node` (passing check).
pub async fn stand_in(registry: &Registry, node: &str) -> StandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(WorkerState {
        node: node.into(),
        ..WorkerState::default()
    });
    let app = Router::new()
        .route(routes::STACKS, get(list))
        .route(routes::STACK, get(status).delete(delete))
        .route(routes::STACK_BUILD, post(build))
        .route(routes::STACK_START, post(start))
        .route(routes::STACK_DEPLOY, post(deploy))
        .route(routes::STACK_STOP, post(stop))
        .route(routes::STACK_LOGS, get(logs))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(Verifier::new(Secret::new(CLUSTER))),
            auth::require_signature,
        ))
        .route(routes::HEALTHZ, get(health))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .with_state(state.clone());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    let worker = StandIn {
        node: node.into(),
        addr,
        state,
        shutdown,
    };
    set_health(registry, &worker, "passing").await;
    worker
}

/// The id a worker registers its `berth-worker` service under, as the real worker does.
pub fn worker_service_id(node: &str) -> String {
    berth_model::keys::worker_service_id(node)
}

/// (Re-)registers the stand-in's `berth-worker` service with its check in `status`.
pub async fn set_health(registry: &Registry, worker: &StandIn, status: &str) {
    let mut meta = BTreeMap::new();
    meta.insert(META_INSTANCES.to_owned(), "0".to_owned());
    meta.insert(META_CAPACITY.to_owned(), "100".to_owned());
    registry
        .client
        .catalog_register(&CatalogRegistration {
            node: worker.node.clone(),
            address: "127.0.0.1".into(),
            service: Some(CatalogServiceRegistration {
                id: worker_service_id(&worker.node),
                service: WORKER_SERVICE.into(),
                port: worker.addr.port(),
                meta,
                ..CatalogServiceRegistration::default()
            }),
            check: Some(CatalogCheckRegistration {
                node: worker.node.clone(),
                check_id: format!("service:{}", worker_service_id(&worker.node)),
                name: "worker health".into(),
                status: status.into(),
                service_id: worker_service_id(&worker.node),
                ..CatalogCheckRegistration::default()
            }),
            ..CatalogRegistration::default()
        })
        .await
        .unwrap();
}

/// Polls `check` until it holds (every 50 ms, for up to a generous minute).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within a minute");
}

/// The master's metrics text.
pub async fn metrics(master: &Master) -> String {
    reqwest::get(format!("{}/metrics", master.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs `git` in `dir` off the async threads; panics with its output on failure.
pub async fn git(dir: &Path, args: &[&str]) -> String {
    let (dir, args): (PathBuf, Vec<String>) =
        (dir.to_owned(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}
