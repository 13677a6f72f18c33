//! Issue 14, finding 1: no KV listing hands out a value the token may not read. `/v1/txn`
//! `get-tree`, `GET /v1/kv/<prefix>?recurse` and `?keys` are filtered per key by the token's
//! rules (Consul's `FilterTxnResults` / `FilterDirEnt`), against a real server over TCP.

use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use berth_registry::server::{self, AclToken, Config};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The keys every test server holds and their values; no value is part of another.
const KEYS: [(&str, &str); 5] = [
    ("app/a", "A-app"),
    ("app/private/s", "P-private"),
    ("secret-public", "Q-public"),
    ("secret/s", "S-secret"),
    ("top", "T-top"),
];

struct Server {
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    /// Values the tokens of this test may not read, as they would appear in JSON (base64).
    denied: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Answer {
    status: u16,
    filtered: bool,
    body: String,
}

impl Server {
    /// An ACL-enabled server holding [`KEYS`] and one token per policy in `tokens`
    /// (`(secret, rules)`); no answer may carry the value of a key in `denied`.
    async fn start(tokens: &[(&str, &str)], denied: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = Config::dev("node1");
        config.acl_master_token = Some(AclToken::new("root"));
        let shutdown = CancellationToken::new();
        tokio::spawn(server::run(config, listener, shutdown.clone()));
        let server = Self {
            url,
            http: reqwest::Client::new(),
            shutdown,
            denied: KEYS
                .iter()
                .filter(|(key, _)| denied.contains(key))
                .map(|(_, value)| BASE64_STANDARD.encode(value))
                .collect(),
        };
        for _ in 0..100 {
            let leader = server.call("GET", "/v1/status/leader", "", "root").await;
            if leader.status == 200 && leader.body.len() > 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (key, value) in KEYS {
            let put = server
                .call("PUT", &format!("/v1/kv/{key}"), value, "root")
                .await;
            assert_eq!(put.status, 200, "put {key}: {}", put.body);
        }
        for (i, (secret, rules)) in tokens.iter().enumerate() {
            let name = format!("p{i}");
            let policy = json!({"Name": name, "Rules": rules}).to_string();
            let made = server.call("PUT", "/v1/acl/policy", &policy, "root").await;
            assert_eq!(made.status, 200, "policy {rules}: {}", made.body);
            let token = json!({"SecretID": secret, "Policies": [{"Name": name}]}).to_string();
            let made = server.call("PUT", "/v1/acl/token", &token, "root").await;
            assert_eq!(made.status, 200, "token {secret}: {}", made.body);
        }
        server
    }

    async fn call(&self, method: &str, path: &str, body: &str, token: &str) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Consul-Token", token)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let filtered = response
            .headers()
            .get("x-consul-results-filtered-by-acls")
            .is_some_and(|v| v == "true");
        Answer {
            status,
            filtered,
            body: response.text().await.unwrap(),
        }
    }

    fn no_secret(&self, answer: &Answer) {
        for value in &self.denied {
            assert!(
                !answer.body.contains(value.as_str()),
                "a denied value leaked: {}",
                answer.body
            );
        }
    }

    /// The keys a `get-tree` of `prefix` returns to `token`.
    async fn txn_tree(&self, prefix: &str, token: &str) -> Vec<String> {
        let ops = json!([{"KV": {"Verb": "get-tree", "Key": prefix}}]).to_string();
        let answer = self.call("PUT", "/v1/txn", &ops, token).await;
        assert_eq!(answer.status, 200, "txn get-tree {prefix}: {}", answer.body);
        self.no_secret(&answer);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        body["Results"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .map(|r| r["KV"]["Key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys `?recurse` of `prefix` returns to `token` (none on a 404), and whether the
    /// answer says it was filtered.
    async fn recurse(&self, prefix: &str, token: &str) -> (Vec<String>, bool) {
        let answer = self
            .call("GET", &format!("/v1/kv/{prefix}?recurse"), "", token)
            .await;
        self.no_secret(&answer);
        if answer.status == 404 {
            return (Vec::new(), answer.filtered);
        }
        assert_eq!(answer.status, 200, "recurse {prefix}: {}", answer.body);
        let body: Vec<Value> = serde_json::from_str(&answer.body).unwrap();
        let keys = body
            .iter()
            .map(|e| e["Key"].as_str().unwrap().to_owned())
            .collect();
        (keys, answer.filtered)
    }

    /// The key names `?keys` of `prefix` returns to `token` (none on a 404).
    async fn keys(&self, prefix: &str, token: &str) -> Vec<String> {
        let answer = self
            .call("GET", &format!("/v1/kv/{prefix}?keys"), "", token)
            .await;
        if answer.status == 404 {
            return Vec::new();
        }
        assert_eq!(answer.status, 200, "keys {prefix}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }
}

#[tokio::test]
async fn acl_leak_list_only_token_reads_no_values() {
    let s = Server::start(
        &[("lister", r#"key_prefix "app/" { policy = "list" }"#)],
        &["app/a", "app/private/s"],
    )
    .await;
    // Consul: get-tree has no check up front and every result needs read: nothing comes back.
    assert!(s.txn_tree("app/", "lister").await.is_empty());
    assert!(s.txn_tree("a", "lister").await.is_empty());
    let (keys, filtered) = s.recurse("app/", "lister").await;
    assert!(keys.is_empty(), "{keys:?}");
    assert!(filtered);
    // Listing names is what `list` grants; names only, never a value.
    assert_eq!(s.keys("app/", "lister").await, ["app/a", "app/private/s"]);
    let single = s.call("GET", "/v1/kv/app/a", "", "lister").await;
    assert_eq!(single.status, 403);
}

#[tokio::test]
async fn acl_leak_read_prefix_with_a_deny_below_it() {
    let rules = r#"key_prefix "" { policy = "read" }
                   key_prefix "secret/" { policy = "deny" }"#;
    let s = Server::start(&[("reader", rules)], &["secret/s"]).await;
    assert_eq!(s.txn_tree("secret", "reader").await, ["secret-public"]);
    assert!(s.txn_tree("secret/", "reader").await.is_empty());
    let (keys, filtered) = s.recurse("", "reader").await;
    assert_eq!(keys, ["app/a", "app/private/s", "secret-public", "top"]);
    assert!(filtered);
    let (keys, _) = s.recurse("secret", "reader").await;
    assert_eq!(keys, ["secret-public"]);
    assert_eq!(
        s.keys("", "reader").await,
        ["app/a", "app/private/s", "secret-public", "top"]
    );
    let single = s.call("GET", "/v1/kv/secret/s", "", "reader").await;
    assert_eq!(single.status, 403);
}

#[tokio::test]
async fn acl_leak_app_read_with_app_private_denied() {
    let rules = r#"key_prefix "app/" { policy = "read" }
                   key_prefix "app/private/" { policy = "deny" }"#;
    let s = Server::start(&[("app", rules)], &["app/private/s"]).await;
    assert_eq!(s.txn_tree("app/", "app").await, ["app/a"]);
    assert_eq!(s.txn_tree("app", "app").await, ["app/a"]);
    assert!(s.txn_tree("app/private/", "app").await.is_empty());
    // A tree above the readable prefix: only what the token may read.
    assert_eq!(s.txn_tree("a", "app").await, ["app/a"]);
    let (keys, filtered) = s.recurse("app/", "app").await;
    assert_eq!(keys, ["app/a"]);
    assert!(filtered);
    let (keys, _) = s.recurse("app/private/", "app").await;
    assert!(keys.is_empty());
    assert_eq!(s.keys("app/", "app").await, ["app/a"]);
    assert!(s.keys("app/private/", "app").await.is_empty());
    // Several verbs in one transaction: the readable get is answered, the tree is filtered.
    let ops = json!([
        {"KV": {"Verb": "get", "Key": "app/a"}},
        {"KV": {"Verb": "get-tree", "Key": "app/"}},
    ])
    .to_string();
    let both = s.call("PUT", "/v1/txn", &ops, "app").await;
    assert_eq!(both.status, 200, "{}", both.body);
    s.no_secret(&both);
    let denied_get = json!([{"KV": {"Verb": "get", "Key": "app/private/s"}}]).to_string();
    let denied = s.call("PUT", "/v1/txn", &denied_get, "app").await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    s.no_secret(&denied);
}

/// Every KV verb of `/v1/txn` on a key the token may not read, alone and behind a readable
/// `get`: refused (no result of any op), no denied value in the answer, and the key unchanged.
#[tokio::test]
async fn acl_leak_every_txn_verb_on_a_denied_key() {
    let rules = r#"key_prefix "app/" { policy = "read" }
                   key_prefix "app/private/" { policy = "deny" }
                   key_prefix "lst/" { policy = "list" }"#;
    let s = Server::start(&[("app", rules)], &["app/private/s"]).await;
    let session = s.call("PUT", "/v1/session/create", "{}", "root").await;
    assert_eq!(session.status, 200, "{}", session.body);
    let session: Value = serde_json::from_str(&session.body).unwrap();
    let session = session["ID"].as_str().unwrap();
    let key = "app/private/s";
    let verbs = [
        json!({"Verb": "get", "Key": key}),
        json!({"Verb": "get-tree", "Key": key}),
        json!({"Verb": "check-index", "Key": key, "Index": 1}),
        json!({"Verb": "check-session", "Key": key, "Session": session}),
        json!({"Verb": "check-not-exists", "Key": key}),
        json!({"Verb": "set", "Key": key, "Value": BASE64_STANDARD.encode("X")}),
        json!({"Verb": "cas", "Key": key, "Index": 0, "Value": BASE64_STANDARD.encode("X")}),
        json!({"Verb": "lock", "Key": key, "Session": session, "Value": BASE64_STANDARD.encode("X")}),
        json!({"Verb": "unlock", "Key": key, "Session": session}),
        json!({"Verb": "delete", "Key": key}),
        json!({"Verb": "delete-cas", "Key": key, "Index": 1}),
        json!({"Verb": "delete-tree", "Key": "app/private/"}),
    ];
    for op in &verbs {
        for ops in [
            json!([{"KV": op}]),
            json!([{"KV": {"Verb": "get", "Key": "app/a"}}, {"KV": op}]),
        ] {
            let answer = s.call("PUT", "/v1/txn", &ops.to_string(), "app").await;
            s.no_secret(&answer);
            if op["Verb"] == "get-tree" {
                // A tree is filtered, not refused: the denied key is simply not in it.
                assert_eq!(answer.status, 200, "{ops}: {}", answer.body);
                assert!(!answer.body.contains(key), "{ops}: {}", answer.body);
            } else {
                assert_eq!(answer.status, 403, "{ops}: {}", answer.body);
                assert!(
                    !answer.body.contains("\"Results\":["),
                    "{ops}: {}",
                    answer.body
                );
            }
        }
    }
    // A list-only prefix grants no verb either, get-tree included (names come from ?keys only).
    let listed = s.call("PUT", "/v1/kv/lst/k", "L-listed", "root").await;
    assert_eq!(listed.status, 200);
    let tree = json!([{"KV": {"Verb": "get-tree", "Key": "lst/"}}]).to_string();
    let answer = s.call("PUT", "/v1/txn", &tree, "app").await;
    assert!(
        !answer.body.contains(&BASE64_STANDARD.encode("L-listed")),
        "{}",
        answer.body
    );
    let get = json!([{"KV": {"Verb": "get", "Key": "lst/k"}}]).to_string();
    assert_eq!(s.call("PUT", "/v1/txn", &get, "app").await.status, 403);
    // Nothing the refused writes asked for happened.
    let kept = s.call("GET", "/v1/kv/app/private/s?raw", "", "root").await;
    assert_eq!((kept.status, kept.body.as_str()), (200, "P-private"));
}
