//! `berth_kit::serve` with short limits: a body that stops coming is answered or closed after
//! the body timeout, an idle connection is closed after the header timeout, and connections
//! beyond the cap are closed at once while a normal client is still served.

#![cfg(feature = "serve")]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, put};
use berth_kit::serve::{Limits, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

async fn start(max_connections: usize) -> String {
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/echo",
        put(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        max_connections,
    };
    tokio::spawn(serve(listener, app, limits, std::future::pending()));
    addr
}

/// Writes `head` and returns how long until the peer answered and/or closed, and what it sent.
async fn answer_or_close(addr: &str, head: &str) -> (Duration, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("connection still open after 10 s");
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

#[tokio::test]
async fn stalled_body_and_idle_connections_are_closed() {
    let addr = start(64).await;
    let (took, answer) = answer_or_close(
        &addr,
        "PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    )
    .await;
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (took, _) = answer_or_close(&addr, "").await;
    assert!(took < Duration::from_secs(3), "idle: took {took:?}");
    // Half a header.
    let (took, _) = answer_or_close(&addr, "GET / HTTP/1.1\r\nHost:").await;
    assert!(
        took < Duration::from_secs(3),
        "half a header: took {took:?}"
    );
    // A complete request is still served.
    let (_, answer) = answer_or_close(
        &addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_a_client_is_served_again() {
    let addr = start(8).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(resp) = client.get(format!("http://{addr}/")).send().await
            && resp.status().is_success()
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);
}
