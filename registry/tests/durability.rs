//! Durability of the real binary under SIGKILL: concurrent clients write distinct keys (plain
//! PUTs and two-key transactions) and record only what the server acknowledged; the server is
//! killed at a random moment and restarted on the same data directory; every acknowledged write
//! must be there with its value, nothing torn or invented may appear, transactions are all or
//! nothing, and the index never goes backwards. Several kill/restart rounds run in one test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use common::{Api, Server, header_index};

const ROUNDS: u32 = 6;
const WRITERS: u32 = 8;
/// Writers that use `/v1/txn` (two keys per transaction) instead of plain PUTs.
const TXN_WRITERS: u32 = 2;
/// Upper bound on writes per writer per round, so a round is bounded even if the kill is late.
const MAX_WRITES: u32 = 4000;

#[derive(Default, Clone)]
struct Ledger {
    /// Every write ever sent (acknowledged or not): key -> value.
    attempted: HashMap<String, Vec<u8>>,
    /// Writes the server acknowledged with 200 `true` (or txn 200).
    acked: Vec<String>,
    /// Transactions sent: (key a, key b); both keys carry the same value.
    txns: Vec<(String, String)>,
    /// Highest `X-Consul-Index` seen on any successful read.
    max_index: u64,
    /// ModifyIndex observed for a key after its write was acknowledged.
    modify_seen: HashMap<String, u64>,
}

async fn plain_writer(api: Api, round: u32, writer: u32, ledger: Arc<Mutex<Ledger>>) {
    for seq in 0..MAX_WRITES {
        let key = format!("dur/k/{round}/{writer}/{seq}");
        let value = format!("r{round}-w{writer}-s{seq}-{:08x}", rand::random::<u32>()).into_bytes();
        ledger
            .lock()
            .unwrap()
            .attempted
            .insert(key.clone(), value.clone());
        let sent = api
            .raw()
            .put(api.url(&format!("/v1/kv/{key}")))
            .body(value.clone())
            .send()
            .await;
        let Ok(resp) = sent else { return };
        if !resp.status().is_success() {
            return;
        }
        match resp.text().await {
            Ok(body) if body.trim() == "true" => {}
            _ => return,
        }
        ledger.lock().unwrap().acked.push(key.clone());

        if seq % 4 == 0 {
            let Ok(resp) = api
                .raw()
                .get(api.url(&format!("/v1/kv/{key}")))
                .send()
                .await
            else {
                return;
            };
            if !resp.status().is_success() {
                return;
            }
            let index = header_index(&resp);
            let Ok(body) = resp.json::<Vec<serde_json::Value>>().await else {
                return;
            };
            let entry = common::entry_from_json(&body[0]);
            assert_eq!(entry.value.as_deref(), Some(value.as_slice()));
            assert_eq!(
                index, entry.modify_index,
                "single-key index is its ModifyIndex"
            );
            let mut l = ledger.lock().unwrap();
            l.max_index = l.max_index.max(index);
            l.modify_seen.insert(key, entry.modify_index);
        }
    }
}

async fn txn_writer(api: Api, round: u32, writer: u32, ledger: Arc<Mutex<Ledger>>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for seq in 0..MAX_WRITES {
        let a = format!("dur/t/{round}/{writer}/{seq}/a");
        let b = format!("dur/t/{round}/{writer}/{seq}/b");
        let value = format!("t{round}-w{writer}-s{seq}-{:08x}", rand::random::<u32>()).into_bytes();
        {
            let mut l = ledger.lock().unwrap();
            l.attempted.insert(a.clone(), value.clone());
            l.attempted.insert(b.clone(), value.clone());
            l.txns.push((a.clone(), b.clone()));
        }
        let body = json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64.encode(&value)}},
            {"KV": {"Verb": "set", "Key": b, "Value": b64.encode(&value)}},
        ]);
        let sent = api.raw().put(api.url("/v1/txn")).json(&body).send().await;
        let Ok(resp) = sent else { return };
        if !resp.status().is_success() {
            return;
        }
        let Ok(answer) = resp.json::<serde_json::Value>().await else {
            return;
        };
        assert!(answer["Errors"].is_null(), "txn errors: {answer}");
        assert_eq!(answer["Results"].as_array().map(Vec::len), Some(2));
        let mut l = ledger.lock().unwrap();
        l.acked.push(a);
        l.acked.push(b);
    }
}

/// Reads everything under `dur/` and checks it against the ledger.
async fn verify(api: &Api, ledger: &Ledger, round: u32) -> u64 {
    let resp = api
        .raw()
        .get(api.url("/v1/kv/dur/?recurse"))
        .send()
        .await
        .expect("read back");
    assert!(resp.status().is_success(), "read back: {}", resp.status());
    let index = header_index(&resp);
    let body: Vec<serde_json::Value> = resp.json().await.expect("read back json");
    let stored: BTreeMap<String, common::Entry> = body
        .iter()
        .map(common::entry_from_json)
        .map(|e| (e.key.clone(), e))
        .collect();

    for key in &ledger.acked {
        let entry = stored
            .get(key)
            .unwrap_or_else(|| panic!("round {round}: acknowledged write {key} lost"));
        assert_eq!(
            entry.value.as_ref(),
            ledger.attempted.get(key),
            "round {round}: acknowledged write {key} has the wrong value"
        );
    }
    for (key, entry) in &stored {
        let expected = ledger
            .attempted
            .get(key)
            .unwrap_or_else(|| panic!("round {round}: {key} was never written"));
        assert_eq!(
            entry.value.as_ref(),
            Some(expected),
            "round {round}: {key} holds a value never written"
        );
        assert!(
            entry.modify_index <= index,
            "round {round}: {key} ModifyIndex {} above the store index {index}",
            entry.modify_index
        );
    }
    for (key, modify) in &ledger.modify_seen {
        assert_eq!(
            stored[key].modify_index, *modify,
            "round {round}: {key} changed ModifyIndex across restart"
        );
    }
    for (a, b) in &ledger.txns {
        assert_eq!(
            stored.contains_key(a),
            stored.contains_key(b),
            "round {round}: transaction {a} / {b} applied partially"
        );
    }
    assert!(
        index >= ledger.max_index,
        "round {round}: index went backwards: {index} < {} seen before the kill",
        ledger.max_index
    );
    index
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_across_restarts() {
    let mut server = Server::start().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut total_acked = 0;

    for round in 0..ROUNDS {
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let api = Api::new(server.url());
            let ledger = Arc::clone(&ledger);
            writers.push(if writer < TXN_WRITERS {
                tokio::spawn(txn_writer(api, round, writer, ledger))
            } else {
                tokio::spawn(plain_writer(api, round, writer, ledger))
            });
        }

        // Let the writers run, then pull the plug at a random moment.
        let run_for = Duration::from_millis(200 + u64::from(rand::random::<u32>() % 800));
        tokio::time::sleep(run_for).await;
        server.kill().await;
        for w in writers {
            w.await.expect("writer task");
        }

        server.restart().await;
        let api = Api::new(server.url());
        let snapshot = ledger.lock().unwrap().clone();
        let acked_this_round = snapshot.acked.len() - total_acked;
        total_acked = snapshot.acked.len();
        let max_before = snapshot.max_index;
        let index = verify(&api, &snapshot, round).await;

        // A write after the restart gets an index above everything seen before the kill.
        let probe = format!("dur/probe/{round}");
        assert!(api.put(&probe, b"p").await);
        let (entry, _) = api.get(&probe).await;
        let entry = entry.expect("probe written");
        assert!(
            entry.modify_index > max_before && entry.modify_index > index,
            "round {round}: new write got index {} after restart, store index was {index}",
            entry.modify_index
        );
        {
            let mut l = ledger.lock().unwrap();
            l.attempted.insert(probe.clone(), b"p".to_vec());
            l.acked.push(probe.clone());
            l.modify_seen.insert(probe, entry.modify_index);
            l.max_index = l.max_index.max(entry.modify_index);
        }
        eprintln!(
            "round {round}: killed after {run_for:?}, {acked_this_round} acknowledged writes, \
             index {index}"
        );
    }
    assert!(
        total_acked > ROUNDS as usize,
        "hardly any write was acknowledged; log:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn sessions_and_locks_survive_sigkill() {
    let mut server = Server::start().await;
    let api = Api::new(server.url());
    let session = api
        .create_session(json!({"Name": "survivor", "TTL": "60s", "LockDelay": "0s"}))
        .await;
    assert!(api.acquire("restart/lock", &session, b"held").await);
    let (before, _) = api.get("restart/lock").await;
    let before = before.expect("lock key");

    server.kill().await;
    server.restart().await;
    let api = Api::new(server.url());

    let info = api.session_info(&session).await;
    assert_eq!(info.len(), 1, "session lost across restart");
    assert_eq!(info[0]["Name"], "survivor");
    assert_eq!(info[0]["TTL"], "60s", "TTL echoed as sent");
    let (after, _) = api.get("restart/lock").await;
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "lock entry changed across restart"
    );

    // The restored session still works: it renews, holds, and releases.
    assert_eq!(api.renew_session(&session).await, 200);
    let other = api.create_session(json!({"LockDelay": "0s"})).await;
    assert!(!api.acquire("restart/lock", &other, b"x").await);
    assert!(api.release("restart/lock", &session).await);
    assert!(api.acquire("restart/lock", &other, b"x").await);
}

/// Issue 14, finding 11: after a SIGKILL restart of the registry, a worker (registered through
/// the server's own agent, as scripts/up.sh runs it) was missing from the healthy list for
/// ~28 s: the server's agent kept registrations in memory only, so anti-entropy removed the
/// service until the worker's next resync. It must be back as soon as its check passes again.
#[tokio::test]
async fn worker_stays_healthy_across_a_sigkill_restart_of_the_registry() {
    // The worker's health endpoint: any request gets 200.
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let Ok((mut tcp, _)) = health.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let mut server = Server::start().await;
    let http = reqwest::Client::new();
    let registration = json!({
        "Name": "berth-worker",
        "ID": "berth-worker:n1",
        "Port": 9000,
        "Check": {"HTTP": format!("http://{health_addr}/healthz"), "Interval": "10s"},
    });
    let resp = http
        .put(format!("{}/v1/agent/service/register", server.url()))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    async fn passing(http: &reqwest::Client, url: &str) -> bool {
        let Ok(resp) = http
            .get(format!("{url}/v1/health/service/berth-worker?passing"))
            .send()
            .await
        else {
            return false;
        };
        let list: serde_json::Value = resp.json().await.unwrap_or_default();
        list.as_array().is_some_and(|l| !l.is_empty())
    }
    let until_passing = |url: String| {
        let http = http.clone();
        async move {
            let started = std::time::Instant::now();
            while !passing(&http, &url).await {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the worker is not passing 10 s after the registry came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        }
    };
    until_passing(server.url()).await;
    for _ in 0..2 {
        server.restart().await;
        let gap = until_passing(server.url()).await;
        assert!(gap < Duration::from_secs(3), "missing for {gap:?}");
    }
}
