//! Locks through sessions against the real binary: two clients contend for one key, a TTL
//! session that is not renewed expires and releases its lock while a renewed one lives on,
//! lock-delay holds a key after invalidation, and Behavior delete removes held keys.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::{Api, Server};

/// Guard against a hung server in loops that wait for a state change (not a timing assertion).
const GUARD: Duration = Duration::from_secs(90);

/// Blocks on `key` until `done` holds for its entry, following `X-Consul-Index` as Consul clients
/// do. Returns the entry (None when the key is absent) that satisfied `done`.
async fn wait_for(
    api: &Api,
    key: &str,
    mut done: impl FnMut(Option<&common::Entry>) -> bool,
) -> Option<common::Entry> {
    let start = Instant::now();
    let mut index = 0;
    loop {
        let query = if index == 0 {
            String::new()
        } else {
            format!("index={index}&wait=5s")
        };
        let (mut entries, next) = api.get_with(key, &query).await;
        assert!(next > 0, "X-Consul-Index must never be 0");
        assert!(next >= index || index == 0, "index went backwards");
        let entry = entries.pop();
        if done(entry.as_ref()) {
            return entry;
        }
        assert!(start.elapsed() < GUARD, "gave up waiting on {key}");
        index = next;
    }
}

#[tokio::test]
async fn two_clients_contend_for_one_lock() {
    let server = Server::start().await;
    const ROUNDS: u64 = 15;
    let key = "locks/contended";
    let counter = "locks/counter";
    assert!(Api::new(server.url()).put(counter, b"0").await);

    let mut tasks = Vec::new();
    for name in ["alice", "bob"] {
        let api = Api::new(server.url());
        tasks.push(tokio::spawn(async move {
            let session = api
                .create_session(json!({"Name": name, "LockDelay": "0s"}))
                .await;
            let mut refused = 0u64;
            for _ in 0..ROUNDS {
                // Acquire, waiting on the key while the other client holds it.
                while !api.acquire(key, &session, name.as_bytes()).await {
                    refused += 1;
                    wait_for(&api, key, |e| e.is_none_or(|e| e.session.is_none())).await;
                }
                let (held, _) = api.get(key).await;
                let held = held.expect("lock key exists");
                assert_eq!(held.session.as_deref(), Some(session.as_str()));
                assert_eq!(held.value.as_deref(), Some(name.as_bytes()));

                // Critical section: an unguarded read-modify-write that loses updates unless
                // the lock really excludes the other client.
                let (current, _) = api.get(counter).await;
                let n: u64 = String::from_utf8(current.unwrap().value.unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::task::yield_now().await;
                assert!(api.put(counter, (n + 1).to_string().as_bytes()).await);

                assert!(api.release(key, &session).await);
                tokio::task::yield_now().await;
            }
            api.destroy_session(&session).await;
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.expect("contender");
    }

    let api = Api::new(server.url());
    let (count, _) = api.get(counter).await;
    assert_eq!(
        count.unwrap().value.as_deref(),
        Some((2 * ROUNDS).to_string().as_bytes())
    );
    let (lock, _) = api.get(key).await;
    let lock = lock.expect("lock key");
    assert!(lock.session.is_none());
    // Each successful acquire by a new holder bumps LockIndex; re-acquire by the same
    // holder after its own release bumps it too (Consul increments on every acquire of a free key).
    assert_eq!(lock.lock_index, 2 * ROUNDS);
    eprintln!("contention: {refused} refused acquisitions");
}

#[tokio::test]
async fn ttl_expiry_releases_lock_but_renewal_keeps_it() {
    let server = Server::start().await;
    let api = Api::new(server.url());
    const TTL: Duration = Duration::from_secs(10);

    let start = Instant::now();
    let lapsing = api
        .create_session(json!({"Name": "lapsing", "TTL": "10s", "LockDelay": "0s"}))
        .await;
    let renewed = api
        .create_session(json!({"Name": "renewed", "TTL": "10s", "LockDelay": "0s"}))
        .await;
    assert!(api.acquire("ttl/lapsing", &lapsing, b"l").await);
    assert!(api.acquire("ttl/renewed", &renewed, b"r").await);
    let info = api.session_info(&lapsing).await;
    assert_eq!(info.len(), 1);
    assert_eq!(info[0]["TTL"], "10s");

    let renewer = {
        let api = api.clone();
        let renewed = renewed.clone();
        tokio::spawn(async move {
            loop {
                assert_eq!(api.renew_session(&renewed).await, 200, "renew failed");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let released = wait_for(&api, "ttl/lapsing", |e| {
        e.is_some_and(|e| e.session.is_none())
    })
    .await
    .expect("key kept (behavior release)");
    let expired_after = start.elapsed();
    assert_eq!(released.value.as_deref(), Some(&b"l"[..]));
    assert_eq!(released.lock_index, 1);
    assert!(
        expired_after >= TTL,
        "session expired after {expired_after:?}, before its TTL"
    );
    assert!(api.session_info(&lapsing).await.is_empty());
    assert_eq!(api.renew_session(&lapsing).await, 404);
    eprintln!("unrenewed 10s session expired after {expired_after:?}");

    // With LockDelay 0 another session can take the released key at once.
    let next = api.create_session(json!({"LockDelay": "0s"})).await;
    assert!(api.acquire("ttl/lapsing", &next, b"n").await);

    // The renewed session outlives 2 x TTL from its creation.
    let past = 2 * TTL + Duration::from_secs(1);
    if let Some(rest) = past.checked_sub(start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let info = api.session_info(&renewed).await;
    assert_eq!(info.len(), 1, "renewed session expired");
    let (held, _) = api.get("ttl/renewed").await;
    assert_eq!(held.unwrap().session.as_deref(), Some(renewed.as_str()));
    renewer.abort();
}

#[tokio::test]
async fn lock_delay_is_honoured_after_invalidation() {
    let server = Server::start().await;
    let api = Api::new(server.url());
    const DELAY: Duration = Duration::from_secs(2);

    let first = api
        .create_session(json!({"Name": "first", "LockDelay": "2s"}))
        .await;
    let second = api
        .create_session(json!({"Name": "second", "LockDelay": "2s"}))
        .await;
    assert!(api.acquire("delay/k", &first, b"1").await);

    // The clock starts before the destroy request, so the server's lock-delay began later and
    // the measured wait is a lower bound that a slow machine cannot break.
    let start = Instant::now();
    api.destroy_session(&first).await;
    let (entry, _) = api.get("delay/k").await;
    assert!(entry.unwrap().session.is_none(), "destroy released the key");

    let mut refused = 0u32;
    while !api.acquire("delay/k", &second, b"2").await {
        refused += 1;
        assert!(start.elapsed() < GUARD, "lock-delay never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = start.elapsed();
    assert!(
        waited >= DELAY,
        "acquired after {waited:?}, inside the {DELAY:?} lock-delay"
    );
    eprintln!("lock-delay: {refused} refused acquisitions, acquired after {waited:?}");
    let (entry, _) = api.get("delay/k").await;
    let entry = entry.unwrap();
    assert_eq!(entry.session.as_deref(), Some(second.as_str()));
    assert_eq!(entry.lock_index, 2);

    // An explicit release starts no lock-delay.
    assert!(api.release("delay/k", &second).await);
    let third = api.create_session(json!({"LockDelay": "10s"})).await;
    assert!(api.acquire("delay/k", &third, b"3").await);
}

#[tokio::test]
async fn behavior_delete_removes_held_keys_on_destroy() {
    let server = Server::start().await;
    let api = Api::new(server.url());
    let session = api
        .create_session(json!({"Behavior": "delete", "LockDelay": "0s"}))
        .await;
    assert_eq!(api.session_info(&session).await[0]["Behavior"], "delete");
    assert!(api.acquire("eph/a", &session, b"a").await);
    assert!(api.acquire("eph/b", &session, b"b").await);
    assert!(api.put("eph/c", b"c").await);

    api.destroy_session(&session).await;
    let (entries, index) = api.get_with("eph/", "recurse").await;
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["eph/c"]);
    // The deletes leave tombstones, so the prefix index moved past eph/c's own index.
    assert!(index > entries[0].modify_index);
}
