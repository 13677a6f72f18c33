//! Test harness of the compatibility tests: a registry server run in-process (the library's
//! `server::run`, as the binary runs it) on its own thread and runtime, as a separate process
//! would be (a client that blocks its caller, such as rs-consul releasing a lock on drop, cannot
//! stall the server), on a free loopback port, ready once it answers `/v1/status/leader`.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::time::Duration;

use berth_registry::server::{self, Config};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Node name every test server runs under.
pub(crate) const NODE: &str = "berth-test";

/// How long a server may take to become ready before the test gives up (a guard against a hung
/// server, not a performance bound).
const READY_GUARD: Duration = Duration::from_secs(60);

/// A running registry server; stopped on drop.
pub(crate) struct Server {
    url: String,
    stop: CancellationToken,
    /// Holds the data directory of a durable server; removed on drop.
    _dir: TempDir,
}

impl Server {
    /// Starts a durable server (temporary data directory) and waits until it is ready.
    pub(crate) async fn start() -> Server {
        Self::start_with(false).await
    }

    /// Starts an in-memory (dev) server and waits until it is ready.
    pub(crate) async fn start_dev() -> Server {
        Self::start_with(true).await
    }

    async fn start_with(dev: bool) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("berth-compat-test-")
            .tempdir()
            .expect("create temp dir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let mut config = Config::dev(NODE);
        config.http_addr = addr;
        if !dev {
            config.dev = false;
            config.data_dir = Some(dir.path().join("data"));
        }
        config.validate().expect("valid test config");
        let stop = CancellationToken::new();
        let until = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                server::run(config, listener, until)
                    .await
                    .expect("registry server runs");
            });
        });
        let server = Server {
            url: format!("http://{addr}"),
            stop,
            _dir: dir,
        };
        server.wait_ready().await;
        server
    }

    /// Polls `/v1/status/leader` until it answers 200 with a non-empty leader, as real clients do.
    async fn wait_ready(&self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build http client");
        let url = format!("{}/v1/status/leader", self.url);
        let deadline = tokio::time::Instant::now() + READY_GUARD;
        loop {
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
                && let Ok(body) = resp.text().await
                && body.trim() != "\"\""
                && !body.trim().is_empty()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "registry not ready on {}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of the server.
    pub(crate) fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
