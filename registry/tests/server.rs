//! In-process servers on 127.0.0.1:0 driven through the typed client: every client call against
//! the real server, and a restart on the same data directory that must lose nothing.

use std::path::Path;
use std::time::Duration;

use berth_registry::client::{Behavior, Client, PutOptions, SessionRequest, TxnError, TxnOp};
use berth_registry::dto::{CatalogDeregistration, CatalogRegistration, CatalogServiceRegistration};
use berth_registry::server::{self, Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), server::Error>>,
}

impl Running {
    async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(config, listener, shutdown.clone()));
        let client = Client::new(&url, None).unwrap();
        for _ in 0..100 {
            if client.status_leader().await.is_ok_and(|l| !l.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            client,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn durable(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_owned()),
        dev: false,
        ..Config::dev("durable-node")
    }
}

#[tokio::test]
async fn restart_on_the_same_data_dir_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = Running::start(durable(dir.path())).await;
    let c = &first.client;
    assert!(c.kv_put("app/a", "one").await.unwrap());
    assert!(
        c.kv_put_with(
            "app/b",
            "two",
            &PutOptions {
                flags: 9,
                ..PutOptions::default()
            }
        )
        .await
        .unwrap()
    );
    assert!(c.kv_put("app/gone", "x").await.unwrap());
    c.kv_delete("app/gone").await.unwrap();
    let session = c
        .session_create(&SessionRequest {
            name: "holder".into(),
            ttl: Some(Duration::from_secs(30)),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .unwrap();
    let acquire = PutOptions {
        acquire: Some(session.clone()),
        ..PutOptions::default()
    };
    assert!(c.kv_put_with("app/lock", "me", &acquire).await.unwrap());
    let (_, index_before) = c
        .kv_list_blocking("app/", 0, Duration::from_secs(1))
        .await
        .unwrap();
    let before = c.kv_list("app/").await.unwrap();
    first.stop().await;

    let second = Running::start(durable(dir.path())).await;
    let c = &second.client;
    assert_eq!(c.kv_list("app/").await.unwrap(), before);
    let b = c.kv_get("app/b").await.unwrap().unwrap();
    assert_eq!((b.value.as_slice(), b.flags), (b"two".as_slice(), 9));
    assert_eq!(c.kv_get("app/gone").await.unwrap(), None);
    let lock = c.kv_get("app/lock").await.unwrap().unwrap();
    assert_eq!(lock.session.as_deref(), Some(session.as_str()));
    let restored = c
        .session_info(&session)
        .await
        .unwrap()
        .expect("session survives a restart");
    assert_eq!(restored.ttl, Some(Duration::from_secs(30)));
    assert_eq!(restored.name, "holder");
    assert!(c.session_renew(&session).await.unwrap().is_some());
    let (_, index_after) = c
        .kv_list_blocking("app/", 0, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        index_after >= index_before,
        "{index_after} < {index_before}"
    );
    assert!(c.kv_put("app/c", "three").await.unwrap());
    let fresh = c.kv_get("app/c").await.unwrap().unwrap();
    assert!(fresh.modify_index > index_before);
    second.stop().await;
}

#[tokio::test]
async fn typed_client_round_trip() {
    let server = Running::start(Config::dev("client-node")).await;
    let c = &server.client;
    assert!(c.status_leader().await.unwrap().starts_with("127.0.0.1:"));
    assert_eq!(c.status_peers().await.unwrap().len(), 1);
    assert_eq!(c.agent_self().await.unwrap().config.version, "1.22.0");

    // KV
    assert_eq!(c.kv_get("k/none").await.unwrap(), None);
    assert!(c.kv_list("k/").await.unwrap().is_empty());
    assert!(c.kv_keys("k/", None).await.unwrap().is_empty());
    assert!(c.kv_put("k/a/1", "v1").await.unwrap());
    assert!(c.kv_put("k/b", Vec::new()).await.unwrap());
    assert!(c.kv_put("k/odd key?#&+%", "odd").await.unwrap());
    assert_eq!(
        c.kv_get("k/odd key?#&+%").await.unwrap().unwrap().value,
        b"odd"
    );
    let a = c.kv_get("k/a/1").await.unwrap().unwrap();
    assert_eq!(a.value, b"v1");
    assert_eq!(c.kv_get("k/b").await.unwrap().unwrap().value, b"");
    assert_eq!(
        c.kv_keys("k/", Some("/")).await.unwrap(),
        vec!["k/a/", "k/b", "k/odd key?#&+%"]
    );
    let cas = |index| PutOptions {
        cas: Some(index),
        ..PutOptions::default()
    };
    assert!(
        !c.kv_put_with("k/a/1", "v2", &cas(a.modify_index + 100))
            .await
            .unwrap()
    );
    assert!(
        c.kv_put_with("k/a/1", "v2", &cas(a.modify_index))
            .await
            .unwrap()
    );
    let a2 = c.kv_get("k/a/1").await.unwrap().unwrap();
    assert!(!c.kv_delete_cas("k/a/1", a.modify_index).await.unwrap());
    assert!(c.kv_delete_cas("k/a/1", a2.modify_index).await.unwrap());
    c.kv_delete_tree("k/").await.unwrap();
    assert!(c.kv_list("k/").await.unwrap().is_empty());

    // blocking get wakes on a write
    assert!(c.kv_put("w", "1").await.unwrap());
    let (_, index) = c
        .kv_get_blocking("w", 0, Duration::from_secs(1))
        .await
        .unwrap();
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move { c.kv_get_blocking("w", index, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(c.kv_put("w", "2").await.unwrap());
    let (entry, new_index) = watcher.await.unwrap().unwrap();
    assert_eq!(entry.unwrap().value, b"2");
    assert!(new_index > index);

    // sessions and locks
    let s1 = c
        .session_create(&SessionRequest {
            name: "one".into(),
            lock_delay: Some(Duration::ZERO),
            behavior: Behavior::Delete,
            ..SessionRequest::default()
        })
        .await
        .unwrap();
    let info = c.session_info(&s1).await.unwrap().unwrap();
    assert_eq!(
        (info.behavior, info.lock_delay, info.node.as_str()),
        (Behavior::Delete, Duration::ZERO, "client-node")
    );
    assert_eq!(info.node_checks, vec!["serfHealth"]);
    assert_eq!(c.session_list().await.unwrap().len(), 1);
    assert_eq!(c.session_node("client-node").await.unwrap().len(), 1);
    let acquire = PutOptions {
        acquire: Some(s1.clone()),
        ..PutOptions::default()
    };
    assert!(c.kv_put_with("l", "x", &acquire).await.unwrap());
    assert_eq!(c.kv_get("l").await.unwrap().unwrap().lock_index, 1);
    c.session_destroy(&s1).await.unwrap();
    assert_eq!(c.kv_get("l").await.unwrap(), None);
    assert_eq!(c.session_info(&s1).await.unwrap(), None);
    assert_eq!(c.session_renew(&s1).await.unwrap(), None);
    let err = c.kv_put_with("l", "x", &acquire).await.unwrap_err();
    assert!(err.to_string().contains("invalid session"), "{err}");

    // transactions
    let results = c
        .txn(vec![
            TxnOp::Set {
                key: "t/a".into(),
                value: b"a".to_vec(),
                flags: 1,
            },
            TxnOp::Get { key: "t/a".into() },
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1].value, b"a");
    match c
        .txn(vec![TxnOp::CheckNotExists { key: "t/a".into() }])
        .await
    {
        Err(TxnError::RolledBack(errors)) => assert_eq!(errors[0].op_index, 0),
        other => panic!("expected a rollback, got {other:?}"),
    }

    // catalog and health
    c.catalog_register(&CatalogRegistration {
        node: "web-1".into(),
        address: "10.1.0.1".into(),
        service: Some(CatalogServiceRegistration {
            service: "web".into(),
            tags: vec!["v1".into()],
            port: 8080,
            ..CatalogServiceRegistration::default()
        }),
        ..CatalogRegistration::default()
    })
    .await
    .unwrap();
    assert_eq!(c.catalog_nodes().await.unwrap().len(), 2);
    assert_eq!(
        c.catalog_service("web", Some("v1")).await.unwrap()[0].service_port,
        8080
    );
    assert!(
        c.catalog_service("web", Some("v2"))
            .await
            .unwrap()
            .is_empty()
    );
    let healthy = c.health_service("web", true).await.unwrap();
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].service.id, "web");
    c.catalog_deregister(&CatalogDeregistration {
        node: "web-1".into(),
        ..CatalogDeregistration::default()
    })
    .await
    .unwrap();
    assert!(c.health_service("web", false).await.unwrap().is_empty());

    server.stop().await;
}
