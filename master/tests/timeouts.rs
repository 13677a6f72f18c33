//! Issue 14, finding 7, against the real master binary (the registry's own test is
//! registry/tests/timeouts.rs): a request whose body never comes and an idle connection are
//! answered or closed after the timeouts, and more idle connections than the master's descriptor
//! limit leave a normal client served.

mod common;

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
    _registry: common::Registry,
}

async fn start() -> Running {
    let registry = common::registry().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
    let child = limited(
        std::path::Path::new(env!("CARGO_BIN_EXE_berth-master")),
        "",
        FD_LIMIT,
    )
    .env("BERTH_MASTER_LISTEN", &addr)
    .env("BERTH_MASTER_DATA_DIR", dir.path().join("data"))
    .env("BERTH_MASTER_REGISTRY", &registry.url)
    .env("BERTH_API_TOKEN", common::API)
    .env("BERTH_CLUSTER_TOKEN", common::CLUSTER)
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
        _registry: registry,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_half_sent_and_idle_requests_are_answered_or_closed_after_the_timeout() {
    let m = start().await;
    let auth = format!("Authorization: Bearer {}\r\n", common::API);
    for head in [
        // An upload promising 10^12 bytes, and one sending 10 of 100.
        format!(
            "PUT /v1/instances/big/code?user=alice&project=p HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000000000000\r\n\r\n"
        ),
        format!(
            "PUT /v1/instances/slow/code?user=alice&project=p HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n0123456789"
        ),
        // Headers that never end.
        "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_owned(),
        // Nothing at all.
        String::new(),
    ] {
        let (took, answer) = time_to_answer_or_close(&m.addr, &head).await;
        assert!(took < Duration::from_secs(10), "{head:?}: took {took:?}");
        assert!(!answer.starts_with("HTTP/1.1 200"), "{head:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_idle_connections_beyond_the_fd_limit_leave_a_normal_client_served() {
    // This process opens more connections than its own default limit.
    berth_kit::serve::raise_fd_limit();
    let m = start().await;
    let idle = idle_connections(&m.addr, FD_LIMIT * 2).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let served = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("http://{}/v1/instances", m.addr))
            .bearer_auth(common::API)
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
