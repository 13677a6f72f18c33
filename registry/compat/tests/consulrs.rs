//! Compatibility: the `consulrs` crate (crates.io, third party) drives the registry server: KV get,
//! raw, keys with separator, recurse, put with flags / cas / acquire / release, delete with cas and
//! recurse, sessions and blocking reads.

mod common;

use std::time::Duration;

use consulrs::api::features::{Blocking, Features};
use consulrs::api::kv::common::KVPair;
use consulrs::api::kv::requests::{
    DeleteKeyRequest, ReadKeyRequest, ReadKeysRequest, SetKeyRequest,
};
use consulrs::api::session::requests::CreateSessionRequest;
use consulrs::client::{ConsulClient, ConsulClientSettingsBuilder};
use consulrs::error::ClientError;
use consulrs::{kv, session};

use common::{NODE, Server};

fn client(server: &Server) -> ConsulClient {
    client_at(server.url())
}

fn client_at(url: String) -> ConsulClient {
    ConsulClient::new(
        ConsulClientSettingsBuilder::default()
            .address(url)
            .build()
            .expect("consulrs settings"),
    )
    .expect("consulrs client")
}

fn value(pair: &KVPair) -> Option<Vec<u8>> {
    pair.value.clone().map(|v| {
        let bytes: Vec<u8> = v.try_into().expect("value is base64");
        bytes
    })
}

fn index(header: &Option<String>) -> u64 {
    header
        .as_deref()
        .expect("X-Consul-Index header")
        .parse()
        .expect("X-Consul-Index is a number")
}

fn assert_status(err: ClientError, code: u16) {
    match err {
        ClientError::APIError { code: got, .. } => assert_eq!(got, code),
        other => panic!("expected HTTP {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn consulrs_kv_put_get_raw_flags() {
    let server = Server::start().await;
    let c = client(&server);

    let put = kv::set(&c, "app/one", b"first", None).await.expect("put");
    assert!(put.response);

    let got = kv::read(&c, "app/one", None).await.expect("read");
    assert_eq!(got.response.len(), 1);
    let pair = &got.response[0];
    assert_eq!(pair.key, "app/one");
    assert_eq!(value(pair).as_deref(), Some(&b"first"[..]));
    assert_eq!(pair.flags, 0);
    assert_eq!(pair.lock_index, 0);
    assert!(pair.session.is_none());
    assert!(pair.create_index > 0);
    assert_eq!(pair.create_index, pair.modify_index);
    // A single existing key reports its ModifyIndex as the index.
    assert_eq!(index(&got.index), pair.modify_index);
    assert_eq!(got.known_leader.as_deref(), Some("true"));
    assert!(got.last_contact.is_some());

    let raw = kv::raw(&c, "app/one", None).await.expect("raw");
    assert_eq!(raw.response, b"first");

    let put = kv::set(
        &c,
        "app/one",
        b"second",
        Some(SetKeyRequest::builder().flags(42u64)),
    )
    .await
    .expect("put with flags");
    assert!(put.response);
    let got = kv::read(&c, "app/one", None).await.expect("read");
    let pair2 = &got.response[0];
    assert_eq!(value(pair2).as_deref(), Some(&b"second"[..]));
    assert_eq!(pair2.flags, 42);
    assert_eq!(pair2.create_index, pair.create_index);
    assert!(pair2.modify_index > pair.modify_index);

    // An empty value reads back as null.
    kv::set(&c, "app/empty", b"", None)
        .await
        .expect("put empty");
    let got = kv::read(&c, "app/empty", None).await.expect("read empty");
    assert!(got.response[0].value.is_none(), "empty value must be null");

    // Binary values round-trip untouched.
    kv::set(&c, "app/bin", &[0, 159, 146, 150, 255], None)
        .await
        .expect("put binary");
    let raw = kv::raw(&c, "app/bin", None).await.expect("raw binary");
    assert_eq!(raw.response, vec![0, 159, 146, 150, 255]);

    let missing = kv::read(&c, "app/missing", None).await.unwrap_err();
    assert_status(missing, 404);
}

#[tokio::test]
async fn consulrs_kv_recurse_keys_separator_and_delete() {
    let server = Server::start().await;
    let c = client(&server);

    for key in ["tree/a", "tree/b/c", "tree/b/d", "tree/e/", "treeish"] {
        assert!(kv::set(&c, key, b"x", None).await.expect("put").response);
    }

    let all = kv::read(&c, "tree/", Some(ReadKeyRequest::builder().recurse(true)))
        .await
        .expect("recurse");
    let keys: Vec<&str> = all.response.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["tree/a", "tree/b/c", "tree/b/d", "tree/e/"]);
    let max_modify = all.response.iter().map(|p| p.modify_index).max().unwrap();
    assert_eq!(index(&all.index), max_modify);

    let listed = kv::keys(&c, "tree/", None).await.expect("keys");
    assert_eq!(
        listed.response,
        ["tree/a", "tree/b/c", "tree/b/d", "tree/e/"]
    );

    let cut = kv::keys(&c, "tree/", Some(ReadKeysRequest::builder().separator("/")))
        .await
        .expect("keys with separator");
    assert_eq!(cut.response, ["tree/a", "tree/b/", "tree/e/"]);

    // A prefix that matches nothing: 404.
    let none = kv::keys(&c, "nothing/", None).await.unwrap_err();
    assert_status(none, 404);

    // Delete one key, then the rest of the prefix.
    assert!(
        kv::delete(&c, "tree/a", None)
            .await
            .expect("delete")
            .response
    );
    assert_status(kv::read(&c, "tree/a", None).await.unwrap_err(), 404);
    // Deleting a missing key is still `true`.
    assert!(
        kv::delete(&c, "tree/a", None)
            .await
            .expect("delete missing")
            .response
    );
    assert!(
        kv::delete(&c, "tree/", Some(DeleteKeyRequest::builder().recurse(true)))
            .await
            .expect("delete recurse")
            .response
    );
    assert_status(
        kv::read(&c, "tree/", Some(ReadKeyRequest::builder().recurse(true)))
            .await
            .unwrap_err(),
        404,
    );
    // A key outside the prefix survives.
    assert_eq!(
        kv::raw(&c, "treeish", None)
            .await
            .expect("survivor")
            .response,
        b"x"
    );
}

#[tokio::test]
async fn consulrs_kv_check_and_set() {
    let server = Server::start().await;
    let c = client(&server);

    // cas=0: create only if absent.
    let created = kv::set(&c, "cas/k", b"v1", Some(SetKeyRequest::builder().cas(0u64)))
        .await
        .expect("cas create");
    assert!(created.response);
    let again = kv::set(&c, "cas/k", b"v2", Some(SetKeyRequest::builder().cas(0u64)))
        .await
        .expect("cas create again");
    assert!(!again.response, "cas=0 on an existing key must fail");

    let modify = kv::read(&c, "cas/k", None).await.expect("read").response[0].modify_index;
    let stale = kv::set(
        &c,
        "cas/k",
        b"v3",
        Some(SetKeyRequest::builder().cas(modify + 1000)),
    )
    .await
    .expect("cas stale");
    assert!(!stale.response);
    let fresh = kv::set(
        &c,
        "cas/k",
        b"v4",
        Some(SetKeyRequest::builder().cas(modify)),
    )
    .await
    .expect("cas fresh");
    assert!(fresh.response);
    assert_eq!(
        kv::raw(&c, "cas/k", None).await.expect("raw").response,
        b"v4"
    );

    let modify = kv::read(&c, "cas/k", None).await.expect("read").response[0].modify_index;
    let wrong = kv::delete(
        &c,
        "cas/k",
        Some(DeleteKeyRequest::builder().cas(modify + 1000)),
    )
    .await
    .expect("delete cas wrong");
    assert!(!wrong.response);
    assert_eq!(
        kv::raw(&c, "cas/k", None)
            .await
            .expect("still there")
            .response,
        b"v4"
    );
    let right = kv::delete(&c, "cas/k", Some(DeleteKeyRequest::builder().cas(modify)))
        .await
        .expect("delete cas right");
    assert!(right.response);
    assert_status(kv::read(&c, "cas/k", None).await.unwrap_err(), 404);
}

#[tokio::test]
async fn consulrs_sessions_and_locks() {
    let server = Server::start().await;
    let c = client(&server);

    let a = session::create(
        &c,
        Some(
            CreateSessionRequest::builder()
                .name("holder")
                .ttl("30s")
                .lock_delay("1s")
                .behavior("release"),
        ),
    )
    .await
    .expect("create session a")
    .response
    .id;
    let b = session::create(&c, None)
        .await
        .expect("create session b (defaults)")
        .response
        .id;
    assert_ne!(a, b);

    let info = session::read(&c, &a, None).await.expect("info");
    assert_eq!(info.response.len(), 1);
    let entry = &info.response[0];
    assert_eq!(entry.id.as_deref(), Some(a.as_str()));
    assert_eq!(entry.name.as_deref(), Some("holder"));
    assert_eq!(entry.node.as_deref(), Some(NODE));
    assert_eq!(entry.behavior.as_deref(), Some("release"));
    assert_eq!(entry.ttl.as_deref(), Some("30s"));
    assert_eq!(entry.lock_delay, Some(1_000_000_000));
    let defaults = &session::read(&c, &b, None).await.expect("info b").response[0];
    assert_eq!(defaults.lock_delay, Some(15_000_000_000));
    assert_eq!(defaults.behavior.as_deref(), Some("release"));
    assert_eq!(
        defaults.node_checks.as_deref(),
        Some(&["serfHealth".to_string()][..])
    );

    let listed = session::list(&c, None).await.expect("list").response;
    let ids: Vec<&str> = listed.iter().filter_map(|s| s.id.as_deref()).collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    let on_node = session::list_by_node(&c, NODE, None)
        .await
        .expect("node")
        .response;
    assert_eq!(on_node.len(), listed.len());

    let renewed = session::renew(&c, &a, None).await.expect("renew").response;
    assert_eq!(renewed[0].id.as_deref(), Some(a.as_str()));

    // Lock: a takes it, b is refused, a's holder sees LockIndex 1.
    let take = kv::set(
        &c,
        "locks/leader",
        b"a-data",
        Some(SetKeyRequest::builder().acquire(a.clone())),
    )
    .await
    .expect("acquire a");
    assert!(take.response);
    let refused = kv::set(
        &c,
        "locks/leader",
        b"b-data",
        Some(SetKeyRequest::builder().acquire(b.clone())),
    )
    .await
    .expect("acquire b");
    assert!(!refused.response);
    let held = &kv::read(&c, "locks/leader", None)
        .await
        .expect("read")
        .response[0];
    assert_eq!(held.session.as_deref(), Some(a.as_str()));
    assert_eq!(held.lock_index, 1);
    assert_eq!(value(held).as_deref(), Some(&b"a-data"[..]));

    // Release by a non-holder fails; by the holder succeeds and keeps LockIndex.
    let wrong = kv::set(
        &c,
        "locks/leader",
        b"b-data",
        Some(SetKeyRequest::builder().release(b.clone())),
    )
    .await
    .expect("release by b");
    assert!(!wrong.response);
    let released = kv::set(
        &c,
        "locks/leader",
        b"a-data",
        Some(SetKeyRequest::builder().release(a.clone())),
    )
    .await
    .expect("release by a");
    assert!(released.response);
    let free = &kv::read(&c, "locks/leader", None)
        .await
        .expect("read")
        .response[0];
    assert!(free.session.is_none());
    assert_eq!(free.lock_index, 1);

    // An explicit release starts no lock-delay: b takes it at once.
    let take_b = kv::set(
        &c,
        "locks/leader",
        b"b-data",
        Some(SetKeyRequest::builder().acquire(b.clone())),
    )
    .await
    .expect("acquire b after release");
    assert!(take_b.response);
    let held = &kv::read(&c, "locks/leader", None)
        .await
        .expect("read")
        .response[0];
    assert_eq!(held.session.as_deref(), Some(b.as_str()));
    assert_eq!(held.lock_index, 2);

    // Destroy b: the key is released (behavior release), and b is gone.
    session::delete(&c, &b, None).await.expect("destroy b");
    let after = &kv::read(&c, "locks/leader", None)
        .await
        .expect("read")
        .response[0];
    assert!(after.session.is_none());
    assert_eq!(value(after).as_deref(), Some(&b"b-data"[..]));
    assert!(
        session::read(&c, &b, None)
            .await
            .expect("info gone")
            .response
            .is_empty()
    );

    // Acquire with an unknown session: 500.
    let unknown = kv::set(
        &c,
        "locks/other",
        b"",
        Some(SetKeyRequest::builder().acquire("00000000-0000-0000-0000-000000000000")),
    )
    .await
    .unwrap_err();
    assert_status(unknown, 500);
}

#[tokio::test]
async fn consulrs_blocking_read_wakes_on_change() {
    let server = Server::start().await;
    let c = client(&server);

    kv::set(&c, "watch/k", b"before", None).await.expect("put");
    let first = kv::read(&c, "watch/k", None).await.expect("read");
    let idx = index(&first.index);

    let url = server.url();
    let watcher = tokio::spawn(async move {
        let c = client_at(url);
        let features = Features::builder()
            .blocking(Blocking {
                index: idx,
                wait: Some("30s".into()),
            })
            .build()
            .expect("features");
        kv::read(
            &c,
            "watch/k",
            Some(ReadKeyRequest::builder().features(features)),
        )
        .await
        .expect("blocking read")
    });

    // The watcher must still be waiting: nothing changed yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !watcher.is_finished(),
        "blocking read returned without a change"
    );

    kv::set(&c, "watch/k", b"after", None).await.expect("put");
    let woke = watcher.await.expect("watcher task");
    assert_eq!(value(&woke.response[0]).as_deref(), Some(&b"after"[..]));
    assert!(index(&woke.index) > idx);

    // A short wait with no change returns the current data at the same index.
    let features = Features::builder()
        .blocking(Blocking {
            index: index(&woke.index),
            wait: Some("100ms".into()),
        })
        .build()
        .expect("features");
    let timed_out = kv::read(
        &c,
        "watch/k",
        Some(ReadKeyRequest::builder().features(features)),
    )
    .await
    .expect("blocking read timeout");
    assert_eq!(index(&timed_out.index), index(&woke.index));
    assert_eq!(
        value(&timed_out.response[0]).as_deref(),
        Some(&b"after"[..])
    );
}
