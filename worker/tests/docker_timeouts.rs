//! Issue 14, finding 7, against the real worker binary (the registry's and the master's own
//! tests are registry/tests/timeouts.rs and master/tests/timeouts.rs): half-sent and idle
//! requests are answered or closed after the timeouts, and more idle connections than the
//! worker's descriptor limit leave a normal client served. Docker: the worker talks to it at start.

use std::process::Stdio;
use std::time::Duration;

use berth_kit::probe::{
    eventually, free_addr, idle_connections, limited, time_to_answer_or_close, wait_until_answering,
};
use tokio::process::Child;

/// Timeouts the child runs with (the defaults are 30 s).
const TIMEOUT_MS: u64 = 1500;
/// Descriptor limit (soft and hard) of the child.
const FD_LIMIT: u32 = 256;

struct Running {
    _child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let child = limited(
        std::path::Path::new(env!("CARGO_BIN_EXE_berth-worker")),
        "--no-registry --no-fence",
        FD_LIMIT,
    )
    .env("BERTH_WORKER_LISTEN", &addr)
    .env("BERTH_WORKER_DATA_DIR", dir.path().join("data"))
    .env(
        "BERTH_WORKER_NODE_NAME",
        format!("t{}-timeouts", std::process::id()),
    )
    .env("BERTH_CLUSTER_TOKEN", "cluster-token")
    .env("BERTH_HTTP_HEADER_TIMEOUT_MS", TIMEOUT_MS.to_string())
    .env("BERTH_HTTP_BODY_TIMEOUT_MS", TIMEOUT_MS.to_string())
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    wait_until_answering(&addr, "/healthz").await;
    Running {
        _child: child,
        addr,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_worker_half_sent_and_idle_requests_are_answered_or_closed_after_the_timeout() {
    let w = start().await;
    for head in [
        "POST /v1/stacks/x/build HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        "POST /v1/stacks/x/build HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "",
    ] {
        let (took, answer) = time_to_answer_or_close(&w.addr, head).await;
        assert!(took < Duration::from_secs(10), "{head:?}: took {took:?}");
        assert!(!answer.starts_with("HTTP/1.1 200"), "{head:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_worker_idle_connections_beyond_the_fd_limit_leave_a_normal_client_served() {
    // This process opens more connections than its own default limit.
    berth_kit::serve::raise_fd_limit();
    let w = start().await;
    let idle = idle_connections(&w.addr, FD_LIMIT * 2).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let served = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("http://{}/healthz", w.addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(
        served,
        "no answer within 20 s while {} idle connections were open",
        idle.len()
    );
    drop(idle);
}
