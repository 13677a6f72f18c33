//! Issue 14, finding 7, against the real binary: a request whose body never comes is answered
//! or closed after the body timeout, idle connections are closed after the header timeout, and
//! a flood of idle connections beyond the descriptor limit does not stop a normal client from
//! being served.

mod common;

use std::process::Stdio;
use std::time::Duration;

use berth_kit::probe::{
    eventually, idle_connections, limited, time_to_answer_or_close, wait_until_answering,
};
use tokio::process::Child;

/// Timeouts the child runs with (the defaults are 30 s).
const TIMEOUT_MS: u64 = 1500;
/// Descriptor limit (soft and hard) of the child.
const FD_LIMIT: u32 = 256;

struct Child256 {
    _child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Child256 {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = limited(
        std::path::Path::new(common::BIN),
        &format!("server --dev --node-name t --http-addr {addr}"),
        FD_LIMIT,
    )
    .env("BERTH_HTTP_HEADER_TIMEOUT_MS", TIMEOUT_MS.to_string())
    .env("BERTH_HTTP_BODY_TIMEOUT_MS", TIMEOUT_MS.to_string())
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    wait_until_answering(&addr, "/v1/status/leader").await;
    Child256 {
        _child: child,
        addr,
        _dir: dir,
    }
}

#[tokio::test]
async fn content_length_without_body_is_answered_or_closed_after_the_timeout() {
    let server = start().await;
    // Promised and never sent: 10^12 bytes (refused by size at once) and 100 bytes, 10 sent.
    let (took, _) = time_to_answer_or_close(
        &server.addr,
        "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    )
    .await;
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for path in ["/v1/kv/slow", "/v1/txn", "/v1/catalog/register"] {
        let (took, answer) = time_to_answer_or_close(
            &server.addr,
            &format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"),
        )
        .await;
        assert!(took < Duration::from_secs(10), "{path}: took {took:?}");
        assert!(
            answer.is_empty() || !answer.starts_with("HTTP/1.1 200"),
            "{path}: {answer}"
        );
    }
    // An idle connection (nothing sent) is closed after the header timeout.
    let (took, answer) = time_to_answer_or_close(&server.addr, "").await;
    assert!(took < Duration::from_secs(10), "idle: took {took:?}");
    assert!(answer.is_empty() || answer.contains("408"), "{answer}");
}

#[tokio::test]
async fn idle_connections_beyond_the_fd_limit_leave_a_normal_client_served() {
    // This process opens more connections than its own default limit.
    berth_kit::serve::raise_fd_limit();
    let server = start().await;
    let idle = idle_connections(&server.addr, 1100).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let served = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("http://{}/v1/status/leader", server.addr))
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
    // And writes still work: the store kept its descriptors.
    let resp = client
        .put(format!("http://{}/v1/kv/after", server.addr))
        .body("ok")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    drop(idle);
}
