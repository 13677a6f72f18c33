//! Issue 14, finding 7, against the real master binary (the registry's own test is
//! registry/tests/timeouts.rs): a request whose body never comes and an idle connection are
//! answered or closed after the timeouts, and more idle connections than the master's descriptor
//! limit leave a normal client served.

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

struct Running {
    _child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    _registry: common::Registry,
}

async fn start() -> Running {
    let registry = common::registry().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
    // `ulimit -n` sets the soft and the hard limit: the master cannot raise it.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_berth-master"))
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
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "master not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running {
        _child: child,
        addr,
        _dir: dir,
        _registry: registry,
    }
}

/// Sends `head` (and nothing more) and returns how long until the master answered or closed.
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
    let mut idle = Vec::new();
    for _ in 0..(FD_LIMIT * 2) {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&m.addr)).await
        {
            idle.push(tcp);
        }
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let served = loop {
        match client
            .get(format!("http://{}/v1/instances", m.addr))
            .bearer_auth(common::API)
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
    drop(idle);
}
