//! Compatibility: the `rs-consul` crate (crates.io, third party) drives the registry server: KV
//! read (which always sends `recurse=<bool>`, so it reads a tree), put with flags / cas, delete,
//! blocking reads, and its session-based distributed lock.

mod common;

use std::time::Duration;

use rs_consul::{
    Config, Consul, ConsulError, CreateOrUpdateKeyRequest, DeleteKeyRequest, LockRequest,
    LockWatchRequest, ReadKeyRequest, ReadKeyResponse,
};

use common::Server;

fn consul(url: String) -> Consul {
    Consul::new(Config {
        address: url,
        token: None,
        ..Default::default()
    })
}

async fn put(c: &Consul, key: &str, value: &str) -> (bool, u64) {
    c.create_or_update_key(
        CreateOrUpdateKeyRequest {
            key,
            ..Default::default()
        },
        value.as_bytes().to_vec(),
    )
    .await
    .expect("put")
}

async fn read(c: &Consul, key: &str) -> Result<(Vec<ReadKeyResponse>, u64), ConsulError> {
    c.read_key(ReadKeyRequest {
        key,
        ..Default::default()
    })
    .await
    .map(|meta| (meta.response, meta.index))
}

fn status_of(err: &ConsulError) -> u16 {
    match err {
        ConsulError::UnexpectedResponseCode(code, _) => code.as_u16(),
        other => panic!("expected an HTTP status error, got {other:?}"),
    }
}

#[tokio::test]
async fn rs_consul_kv_roundtrip_flags_and_cas() {
    let server = Server::start().await;
    let c = consul(server.url());

    let (ok, _) = put(&c, "rs/app/config", "v1").await;
    assert!(ok);
    let (entries, idx) = read(&c, "rs/app/config").await.expect("read");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.key, "rs/app/config");
    assert_eq!(e.value.as_deref(), Some("v1"));
    assert_eq!(e.flags, 0);
    assert!(e.session.is_none());
    assert!(idx >= e.modify_index as u64);

    let (ok, _) = c
        .create_or_update_key(
            CreateOrUpdateKeyRequest {
                key: "rs/app/config",
                flags: 7,
                ..Default::default()
            },
            b"v2".to_vec(),
        )
        .await
        .expect("put with flags");
    assert!(ok);
    let (entries, _) = read(&c, "rs/app/config").await.expect("read");
    assert_eq!(entries[0].flags, 7);
    assert_eq!(entries[0].value.as_deref(), Some("v2"));
    let modify = entries[0].modify_index;

    // Check-and-set: a stale index loses, the current one wins, 0 means create-only.
    let cas = |index: i64, value: &'static str| {
        let c = &c;
        async move {
            c.create_or_update_key(
                CreateOrUpdateKeyRequest {
                    key: "rs/app/config",
                    check_and_set: Some(index),
                    ..Default::default()
                },
                value.as_bytes().to_vec(),
            )
            .await
            .expect("cas put")
            .0
        }
    };
    assert!(!cas(modify + 100, "stale").await);
    assert!(!cas(0, "create-only").await);
    assert!(cas(modify, "v3").await);
    let (entries, _) = read(&c, "rs/app/config").await.expect("read");
    assert_eq!(entries[0].value.as_deref(), Some("v3"));
    assert!(entries[0].modify_index > modify);

    // rs-consul deletes with `?recurse=false`; Consul counts the flag by presence.
    let (ok, _) = put(&c, "rs/app/config-extra", "x").await;
    assert!(ok);
    assert!(
        c.delete_key(DeleteKeyRequest {
            key: "rs/app/config",
            ..Default::default()
        })
        .await
        .expect("delete")
    );
    let err = read(&c, "rs/app/config").await.unwrap_err();
    assert_eq!(status_of(&err), 404);
    let err = read(&c, "rs/app/config-extra").await.unwrap_err();
    assert_eq!(
        status_of(&err),
        404,
        "recurse=false is a recursive delete in Consul"
    );
}

#[tokio::test]
async fn rs_consul_reads_are_prefix_reads() {
    // In-memory (`--dev`) server: same API without a data dir.
    let server = Server::start_dev().await;
    let c = consul(server.url());
    for (k, v) in [("rs/p/a", "1"), ("rs/p/ab", "2"), ("rs/p/b/c", "3")] {
        assert!(put(&c, k, v).await.0);
    }
    // `recurse=false` is present, so Consul answers the prefix, in key order.
    let (entries, idx) = read(&c, "rs/p/a").await.expect("read");
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["rs/p/a", "rs/p/ab"]);
    let max = entries.iter().map(|e| e.modify_index).max().unwrap() as u64;
    assert_eq!(idx, max);

    let (entries, _) = read(&c, "rs/p/").await.expect("read tree");
    let values: Vec<Option<&str>> = entries.iter().map(|e| e.value.as_deref()).collect();
    assert_eq!(values, [Some("1"), Some("2"), Some("3")]);

    let err = read(&c, "rs/none/").await.unwrap_err();
    assert_eq!(status_of(&err), 404);
}

#[tokio::test]
async fn rs_consul_blocking_read_wakes_on_put() {
    let server = Server::start().await;
    let c = consul(server.url());
    assert!(put(&c, "rs/watch/key", "old").await.0);
    let (_, idx) = read(&c, "rs/watch/key").await.expect("read");

    let url = server.url();
    let watcher = tokio::spawn(async move {
        let c = consul(url);
        c.read_key(ReadKeyRequest {
            key: "rs/watch/key",
            index: Some(idx),
            wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("blocking read")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "returned before any change");

    assert!(put(&c, "rs/watch/key", "new").await.0);
    let woke = watcher.await.expect("watcher");
    assert!(woke.index > idx);
    assert_eq!(woke.response[0].value.as_deref(), Some("new"));
}

#[tokio::test]
async fn rs_consul_lock_contention_and_handover() {
    let server = Server::start().await;
    let alice = consul(server.url());
    let bob = consul(server.url());
    let request = LockRequest {
        key: "rs/locks/leader",
        timeout: Duration::from_secs(10),
        lock_delay: Duration::from_secs(1),
        ..Default::default()
    };

    let lock = alice
        .get_lock(request, b"alice")
        .await
        .expect("alice takes the free lock");
    let (entries, _) = read(&alice, "rs/locks/leader").await.expect("read");
    assert_eq!(
        entries[0].session.as_deref(),
        Some(lock.session_id.as_str())
    );
    assert_eq!(entries[0].lock_index, 1);
    assert_eq!(entries[0].value.as_deref(), Some("alice"));

    let index = match bob.get_lock(request, b"bob").await {
        Err(ConsulError::LockAcquisitionFailure(index)) => index,
        Err(other) => panic!("bob: unexpected error {other:?}"),
        Ok(_) => panic!("bob took a held lock"),
    };
    assert!(index > 0);

    // Bob watches the lock key; alice drops her lock (rs-consul releases it on drop).
    let url = server.url();
    let watcher = tokio::spawn(async move {
        let c = consul(url);
        c.watch_lock(LockWatchRequest {
            key: "rs/locks/leader",
            index: Some(index),
            wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("watch lock")
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !watcher.is_finished(),
        "watch returned while the lock was held"
    );
    drop(lock);
    let seen = watcher.await.expect("watcher");
    assert!(seen.index > index);
    assert!(seen.response[0].session.is_none(), "lock not released");
    assert_eq!(seen.response[0].lock_index, 1);

    // An explicit release starts no lock-delay: bob gets it at once.
    let lock = bob
        .get_lock(request, b"bob")
        .await
        .expect("bob takes the released lock");
    let (entries, _) = read(&bob, "rs/locks/leader").await.expect("read");
    assert_eq!(
        entries[0].session.as_deref(),
        Some(lock.session_id.as_str())
    );
    assert_eq!(entries[0].lock_index, 2);
    assert_eq!(entries[0].value.as_deref(), Some("bob"));
}
