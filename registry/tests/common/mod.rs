//! Test harness shared by the integration tests: runs the real `berth-registry` binary as a
//! child process on a free loopback port, waits until it answers `/v1/status/leader`, and can
//! SIGKILL and restart it on the same data directory.

// Each integration test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Path of the binary under test, built by cargo for integration tests.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_berth-registry");

/// Node name every test server runs under.
pub(crate) const NODE: &str = "berth-test";

/// How long a server may take to become ready before the test gives up (a guard against a hung
/// child, not a performance bound).
const READY_GUARD: Duration = Duration::from_secs(60);

/// Storage the child runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// `--data-dir` on a temporary directory: durable, survives restarts.
    Durable,
    /// `--dev`: in memory.
    Dev,
}

/// A running `berth-registry server` child process.
pub(crate) struct Server {
    child: Option<Child>,
    port: u16,
    storage: Storage,
    /// Holds the data directory and the child's log files; removed on drop.
    dir: TempDir,
    starts: u32,
    http: reqwest::Client,
}

impl Server {
    /// Starts a durable server (temporary `--data-dir`) and waits until it is ready.
    pub(crate) async fn start() -> Server {
        Self::start_with(Storage::Durable).await
    }

    /// Starts an in-memory (`--dev`) server and waits until it is ready.
    pub(crate) async fn start_dev() -> Server {
        Self::start_with(Storage::Dev).await
    }

    pub(crate) async fn start_with(storage: Storage) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-test-")
            .tempdir()
            .expect("create temp dir");
        let mut server = Server {
            child: None,
            port: 0,
            storage,
            dir,
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("build http client"),
        };
        server.spawn().await;
        server
    }

    /// `127.0.0.1:PORT` of the current child.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` of the current child.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the child with SIGKILL (no chance to flush anything) and reaps it.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's start_kill sends SIGKILL on Unix.
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts a new child on the same data directory (after `kill`, or kills first) on a fresh
    /// port, and waits until it is ready.
    pub(crate) async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        self.port = free_port();
        self.starts += 1;
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let log_err = log_file.try_clone().expect("clone log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--http-addr")
            .arg(self.addr())
            .arg("--node-name")
            .arg(NODE);
        match self.storage {
            Storage::Durable => {
                cmd.arg("--data-dir").arg(self.data_dir());
            }
            Storage::Dev => {
                cmd.arg("--dev");
            }
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn berth-registry");
        self.child = Some(child);
        self.wait_ready(&log).await;
    }

    /// Polls `/v1/status/leader` until it answers 200 with a non-empty leader, as real clients do.
    async fn wait_ready(&mut self, log: &Path) {
        let url = format!("{}/v1/status/leader", self.url());
        let deadline = tokio::time::Instant::now() + READY_GUARD;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "berth-registry exited early with {status}; log:\n{}",
                    read_log(log)
                );
            }
            if let Ok(resp) = self.http.get(&url).send().await
                && resp.status().is_success()
                && let Ok(body) = resp.text().await
                && body.trim() != "\"\""
                && !body.trim().is_empty()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "berth-registry not ready on {}; log:\n{}",
                self.addr(),
                read_log(log)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The log of the current child (for assertion messages).
    pub(crate) fn log(&self) -> String {
        read_log(&self.dir.path().join(format!("server-{}.log", self.starts)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A plain HTTP client for requests the third-party clients cannot make.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build http client")
}

/// A unique prefix so tests sharing nothing still never collide on keys.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", rand::random::<u32>())
}

/// A minimal Consul HTTP API client over reqwest, for behaviour the third-party clients do not
/// expose (explicit session bodies, headers, txn).
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
}

/// One KV entry as returned by `GET /v1/kv/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) session: Option<String>,
    pub(crate) lock_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) flags: u64,
}

impl Api {
    pub(crate) fn new(base: impl Into<String>) -> Api {
        Api {
            http: http(),
            base: base.into(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// `PUT /v1/session/create` with a JSON body; returns the session id.
    pub(crate) async fn create_session(&self, body: serde_json::Value) -> String {
        let resp = self
            .http
            .put(self.url("/v1/session/create"))
            .json(&body)
            .send()
            .await
            .expect("session create request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "session create: {status} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("session create json");
        v["ID"].as_str().expect("ID in answer").to_string()
    }

    pub(crate) async fn destroy_session(&self, id: &str) {
        let resp = self
            .http
            .put(self.url(&format!("/v1/session/destroy/{id}")))
            .send()
            .await
            .expect("session destroy request");
        assert!(resp.status().is_success(), "destroy: {}", resp.status());
        assert_eq!(resp.text().await.unwrap_or_default().trim(), "true");
    }

    /// `PUT /v1/session/renew/<id>`: the HTTP status.
    pub(crate) async fn renew_session(&self, id: &str) -> u16 {
        self.http
            .put(self.url(&format!("/v1/session/renew/{id}")))
            .send()
            .await
            .expect("session renew request")
            .status()
            .as_u16()
    }

    /// `GET /v1/session/info/<id>`: the array answered.
    pub(crate) async fn session_info(&self, id: &str) -> Vec<serde_json::Value> {
        self.http
            .get(self.url(&format!("/v1/session/info/{id}")))
            .send()
            .await
            .expect("session info request")
            .json()
            .await
            .expect("session info json")
    }

    /// `PUT /v1/kv/<key>?<query>` with `body`; the boolean answer (panics on non-200).
    pub(crate) async fn put_with(&self, key: &str, query: &str, body: &[u8]) -> bool {
        let resp = self
            .http
            .put(self.url(&format!("/v1/kv/{key}?{query}")))
            .body(body.to_vec())
            .send()
            .await
            .expect("kv put request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "kv put {key}?{query}: {status} {text}");
        match text.trim() {
            "true" => true,
            "false" => false,
            other => panic!("kv put answered {other:?}"),
        }
    }

    pub(crate) async fn put(&self, key: &str, body: &[u8]) -> bool {
        self.put_with(key, "", body).await
    }

    pub(crate) async fn acquire(&self, key: &str, session: &str, body: &[u8]) -> bool {
        self.put_with(key, &format!("acquire={session}"), body)
            .await
    }

    pub(crate) async fn release(&self, key: &str, session: &str) -> bool {
        self.put_with(key, &format!("release={session}"), b"").await
    }

    /// `GET /v1/kv/<key>?<query>`: the entries (empty on 404) and `X-Consul-Index`.
    pub(crate) async fn get_with(&self, key: &str, query: &str) -> (Vec<Entry>, u64) {
        let resp = self
            .http
            .get(self.url(&format!("/v1/kv/{key}?{query}")))
            .send()
            .await
            .expect("kv get request");
        let status = resp.status();
        let index = header_index(&resp);
        if status == reqwest::StatusCode::NOT_FOUND {
            return (Vec::new(), index);
        }
        assert!(status.is_success(), "kv get {key}: {status}");
        let raw: Vec<serde_json::Value> = resp.json().await.expect("kv get json");
        (raw.iter().map(entry_from_json).collect(), index)
    }

    pub(crate) async fn get(&self, key: &str) -> (Option<Entry>, u64) {
        let (mut entries, index) = self.get_with(key, "").await;
        assert!(entries.len() <= 1, "a single-key read returned {entries:?}");
        (entries.pop(), index)
    }
}

/// `X-Consul-Index` of a response (panics when missing: every KV read must carry it).
pub(crate) fn header_index(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("x-consul-index")
        .expect("X-Consul-Index header")
        .to_str()
        .expect("ascii index")
        .parse()
        .expect("numeric index")
}

pub(crate) fn entry_from_json(v: &serde_json::Value) -> Entry {
    use base64::Engine as _;
    let value = match &v["Value"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("Value is base64"),
        ),
        other => panic!("Value is neither null nor a string: {other}"),
    };
    Entry {
        key: v["Key"].as_str().expect("Key").to_string(),
        value,
        session: v["Session"].as_str().map(str::to_string),
        lock_index: v["LockIndex"].as_u64().expect("LockIndex"),
        modify_index: v["ModifyIndex"].as_u64().expect("ModifyIndex"),
        flags: v["Flags"].as_u64().expect("Flags"),
    }
}
