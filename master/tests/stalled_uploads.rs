//! Issue 14, finding 8, against the real binary: two uploads whose bodies stall must not hold
//! both upload slots forever; once their bodies stop making progress for the body timeout they
//! are ended, their slots are given back and a third upload goes through.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Body-progress timeout the child runs with (the default is 30 s).
const BODY_TIMEOUT_MS: u64 = 1000;

/// Sends an upload's header and the first bytes of a much longer body, then nothing more.
async fn stalled_upload(addr: &str, id: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/instances/{id}/code?user=alice&project=proj&build=false HTTP/1.1\r\n\
         host: {addr}\r\nauthorization: Bearer {API}\r\ncontent-type: application/gzip\r\n\
         content-length: 100000\r\n\r\n0123456789"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_uploads_give_their_slots_back() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = berth_kit::probe::free_addr();
    let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
    let _child = Command::new(env!("CARGO_BIN_EXE_berth-master"))
        .args([
            "--listen",
            &addr,
            "--registry",
            &reg.url,
            "--max-concurrent-uploads",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BERTH_API_TOKEN", API)
        .env("BERTH_CLUSTER_TOKEN", CLUSTER)
        .env("BERTH_GIT_TOKEN", GIT)
        .env("BERTH_HTTP_BODY_TIMEOUT_MS", BODY_TIMEOUT_MS.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    berth_kit::probe::wait_until_answering(&addr, "/healthz").await;
    let http = reqwest::Client::new();

    let mut stalled = vec![
        stalled_upload(&addr, "stall-1").await,
        stalled_upload(&addr, "stall-2").await,
    ];
    // Both slots are taken (the metrics say a third waits), then the stalled bodies time out.
    let third = tokio::spawn({
        let req = http
            .put(format!(
                "http://{addr}/v1/instances/quick/code?user=alice&project=proj&build=false"
            ))
            .bearer_auth(API)
            .timeout(Duration::from_secs(20))
            .body(app("v1"));
        async move { req.send().await }
    });
    let resp = third
        .await
        .unwrap()
        .expect("the third upload was answered within 20 s");
    let (status, rec) = json(resp).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "uploaded");
    // The stalled uploads were answered with an error (or closed), not left open.
    for conn in &mut stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("a stalled upload is ended");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            read.is_err() || answer.is_empty() || !text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
    }
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_master_uploads_waiting 0"),
        "{metrics}"
    );
}
