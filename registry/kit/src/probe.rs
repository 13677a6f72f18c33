//! Raw-socket probes the servers' timeout tests share (feature `probe`, for tests only): a
//! server binary started under a descriptor limit, a request sent half and timed until the
//! server answers or closes, and idle connections held open.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;

/// A free `127.0.0.1:<port>` (bound, then let go).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").to_string()
}

/// `program args...` under `ulimit -n fd_limit`, which sets the soft and the hard limit, so the
/// program cannot raise it. The caller adds the environment and spawns it.
pub fn limited(program: &Path, args: &str, fd_limit: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {fd_limit} && exec \"$0\" {args}"))
        .arg(program)
        .kill_on_drop(true);
    cmd
}

/// Waits up to 30 s until `GET path` on `addr` gets any HTTP answer.
pub async fn wait_until_answering(addr: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, answer) = exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            Duration::from_secs(5),
        )
        .await;
        if answer.starts_with("HTTP/1.1 ") {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} does not answer {path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `head` (and nothing more) and returns how long until the server answered or closed,
/// with what it sent; panics if the connection is still open after 20 s.
pub async fn time_to_answer_or_close(addr: &str, head: &str) -> (Duration, String) {
    let (took, answer) = exchange(addr, head, Duration::from_secs(20)).await;
    assert!(
        took < Duration::from_secs(20),
        "connection still open after 20 s"
    );
    (took, answer)
}

async fn exchange(addr: &str, head: &str, limit: Duration) -> (Duration, String) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return (Duration::ZERO, String::new());
    };
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return (Duration::ZERO, String::new());
    }
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

/// Opens up to `n` connections to `addr` that send nothing (each given 0.5 s to connect) and
/// returns the ones that connected.
pub async fn idle_connections(addr: &str, n: u32) -> Vec<TcpStream> {
    let mut idle = Vec::new();
    for _ in 0..n {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            idle.push(tcp);
        }
    }
    idle
}

/// Tries `attempt` every 100 ms until it says yes or `limit` has passed; whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if attempt().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
