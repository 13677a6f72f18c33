//! Issue 14, finding 7, against the real binary: a request whose body never comes is answered
//! or closed after the body timeout, idle connections are closed after the header timeout, and
//! a flood of idle connections beyond the descriptor limit does not stop a normal client from
//! being served.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

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
    // `ulimit -n` sets the soft and the hard limit: the server cannot raise it.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {FD_LIMIT} && exec \"$0\" server --dev --node-name t --http-addr {addr}"
        ))
        .arg(common::BIN)
        .env("BERTH_HTTP_HEADER_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .env("BERTH_HTTP_BODY_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://{addr}/v1/status/leader"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Child256 {
        _child: child,
        addr,
        _dir: dir,
    }
}

/// Sends `head` (and nothing more) and returns how long until the server answered or closed.
async fn time_to_answer_or_close(addr: &str, head: &str) -> (Duration, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after 20 s");
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
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
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&server.addr))
            .await
        {
            Ok(Ok(tcp)) => idle.push(tcp),
            _ => continue,
        }
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let served = loop {
        match client
            .get(format!("http://{}/v1/status/leader", server.addr))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => break true,
            _ if started.elapsed() > Duration::from_secs(20) => break false,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
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
