//! Finding 3 of the security review: a `berth-worker:<node>` catalog registration that does not
//! hold the cluster token gets no instance, no request and no secret (cluster token or git
//! password), while a worker that proves it holds the token is placed as before.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_registry::dto::{
    CatalogCheckRegistration, CatalogRegistration, CatalogServiceRegistration,
};
use berth_worker_api::{META_CAPACITY, META_INSTANCES, WORKER_SERVICE};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP listener that records every request it receives and answers each with a
/// worker-shaped health body (without any proof).
async fn recorder(node: &str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = format!(
        r#"{{"status":"ok","node":"{node}","version":"0.1.0","instances":0,"capacity":100}}"#
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (log, body) = (log.clone(), body.clone());
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                // Everything that arrives within a moment: headers and body.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&raw).into_owned());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

async fn register_fake(reg: &Registry, node: &str, port: u16) {
    let id = worker_service_id(node);
    let mut meta = BTreeMap::new();
    meta.insert(META_INSTANCES.to_owned(), "0".to_owned());
    meta.insert(META_CAPACITY.to_owned(), "100".to_owned());
    reg.client
        .catalog_register(&CatalogRegistration {
            node: node.into(),
            address: "127.0.0.1".into(),
            service: Some(CatalogServiceRegistration {
                id: id.clone(),
                service: WORKER_SERVICE.into(),
                port,
                meta,
                ..CatalogServiceRegistration::default()
            }),
            check: Some(CatalogCheckRegistration {
                node: node.into(),
                check_id: format!("service:{id}"),
                name: "worker health".into(),
                status: "passing".into(),
                service_id: id,
                ..CatalogCheckRegistration::default()
            }),
            ..CatalogRegistration::default()
        })
        .await
        .unwrap();
}

fn assert_no_secret(seen: &[String]) {
    for request in seen {
        assert!(!request.contains(CLUSTER), "cluster token sent: {request}");
        assert!(!request.contains(GIT), "git password sent: {request}");
        assert!(
            request.starts_with("GET /healthz?challenge="),
            "the fake got more than a health challenge: {request}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_worker_registration_gets_nothing_and_no_secret() {
    let reg = registry().await;
    let (port, seen) = recorder("fake").await;
    register_fake(&reg, "fake", port).await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;

    // Only the fake is registered: nothing is placed, and it learns nothing.
    let (status, body) = m.upload("victim", "alice", "&wait=10s", app("v1")).await;
    assert_eq!(status, 503, "{body}");
    assert_no_secret(&seen.lock().unwrap());

    // With a real worker beside it, the real one is chosen every time.
    let worker = stand_in(&reg, "w1").await;
    for i in 0..3 {
        let id = format!("app-{i}");
        let (status, rec) = m.upload(&id, "alice", "&wait=30s", app("v1")).await;
        assert_eq!(status, 200, "{rec}");
        assert_eq!(rec["worker"]["node"], "w1", "{rec}");
    }
    assert_eq!(worker.state.cloned.lock().unwrap().len(), 3);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the fake was never even asked");
    assert_no_secret(&seen);
    m.stop().await;
}

/// The proof is asked again on later calls, not only at placement: when the catalog entry of the
/// worker an instance is placed on comes to point at a peer that cannot prove it holds the
/// cluster token, the next build (which carries a clone credential) is not sent there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_worker_taking_over_a_placed_workers_registration_gets_nothing_and_no_secret() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let m = master(config(&reg, dir.path())).await;
    let worker = stand_in(&reg, "w1").await;
    let (status, rec) = m.upload("victim", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["worker"]["node"], "w1", "{rec}");

    // w1's registration now names a recorder that claims to be w1.
    let (port, seen) = recorder("w1").await;
    register_fake(&reg, "w1", port).await;
    let (status, body) = m.upload("victim", "alice", "&wait=30s", app("v2")).await;
    assert_ne!(
        status, 200,
        "the build must not succeed on an unproven worker: {body}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the fake was never even asked");
    assert_no_secret(&seen);
    assert_eq!(
        worker.state.cloned.lock().unwrap().len(),
        1,
        "only the first build reached the real worker"
    );
    m.stop().await;
}
