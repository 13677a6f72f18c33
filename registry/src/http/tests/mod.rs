//! Router tests: each Consul rule as a request and the exact answer expected.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::server::{Config, build};

/// A dev server's router plus named values captured from earlier answers (`{s1}` in uris).
struct Harness {
    app: Router,
    vars: HashMap<String, String>,
    _stop: CancellationToken,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Harness {
    async fn new() -> Self {
        let stop = CancellationToken::new();
        let config = Config::dev("node1");
        let (app, _writer) = build(
            &config,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8500,
            stop.clone(),
            stop.clone(),
        )
        .await
        .expect("dev server builds");
        Self {
            app,
            vars: HashMap::new(),
            _stop: stop,
        }
    }

    fn expand(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    async fn call(&self, method: &str, uri: &str, body: impl Into<Body>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(self.expand(uri))
            .body(body.into())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Sends a request and checks status and the exact body (`*` accepts any body).
    async fn check(
        &self,
        method: &str,
        uri: &str,
        body: &str,
        status: u16,
        expected: &str,
    ) -> Answer {
        let body = self.expand(body);
        let answer = self.call(method, uri, body).await;
        let expected = self.expand(expected);
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {uri}: body {}",
            answer.body
        );
        if expected != "*" {
            assert_eq!(answer.body, expected, "{method} {uri}");
        }
        answer
    }

    /// Creates a session from `body` and remembers its id as `name`.
    async fn session(&mut self, name: &str, body: &str) {
        let answer = self
            .check("PUT", "/v1/session/create", body, 200, "*")
            .await;
        let value: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        self.vars
            .insert(name.to_owned(), value["ID"].as_str().unwrap().to_owned());
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

// Index 1 is the server's own catalog registration, so the first KV write gets index 2.

#[tokio::test]
async fn kv_get_put_delete_rules() {
    let h = Harness::new().await;
    let table: &[(&str, &str, &str, u16, &str)] = &[
        ("GET", "/v1/kv/missing", "", 404, ""),
        ("PUT", "/v1/kv/a", "hello", 200, "true"),
        (
            "GET",
            "/v1/kv/a",
            "",
            200,
            r#"[{"LockIndex":0,"Key":"a","Flags":0,"Value":"aGVsbG8=","CreateIndex":2,"ModifyIndex":2}]"#,
        ),
        ("GET", "/v1/kv/a?raw", "", 200, "hello"),
        // an identical write does not bump the index
        ("PUT", "/v1/kv/a", "hello", 200, "true"),
        (
            "GET",
            "/v1/kv/a?raw&recurse",
            "",
            200,
            r#"[{"LockIndex":0,"Key":"a","Flags":0,"Value":"aGVsbG8=","CreateIndex":2,"ModifyIndex":2}]"#,
        ),
        ("PUT", "/v1/kv/empty", "", 200, "true"),
        (
            "GET",
            "/v1/kv/empty",
            "",
            200,
            r#"[{"LockIndex":0,"Key":"empty","Flags":0,"Value":null,"CreateIndex":3,"ModifyIndex":3}]"#,
        ),
        ("PUT", "/v1/kv/f?flags=42", "v", 200, "true"),
        (
            "GET",
            "/v1/kv/f",
            "",
            200,
            r#"[{"LockIndex":0,"Key":"f","Flags":42,"Value":"dg==","CreateIndex":4,"ModifyIndex":4}]"#,
        ),
        ("PUT", "/v1/kv/f?flags=x", "v", 400, "Invalid flags"),
        // a trailing slash is a different key
        ("PUT", "/v1/kv/dir/", "", 200, "true"),
        ("GET", "/v1/kv/dir", "", 404, ""),
        ("GET", "/v1/kv/dir/?raw", "", 200, ""),
        // missing key names
        ("GET", "/v1/kv/", "", 400, "Missing key name"),
        ("PUT", "/v1/kv/", "x", 400, "Missing key name"),
        ("DELETE", "/v1/kv/", "", 400, "Missing key name"),
        // percent-decoding and unicode
        ("PUT", "/v1/kv/sp%20ace/%E6%97%A5", "u", 200, "true"),
        ("GET", "/v1/kv/sp%20ace/%e6%97%a5?raw", "", 200, "u"),
        // traversal and surrounding spaces
        (
            "PUT",
            "/v1/kv/a/../b",
            "x",
            400,
            r#"Invalid key name "a/../b""#,
        ),
        (
            "PUT",
            "/v1/kv/a/%2e%2e/b",
            "x",
            400,
            r#"Invalid key name "a/../b""#,
        ),
        (
            "PUT",
            "/v1/kv/%20lead",
            "x",
            400,
            r#"Invalid key name " lead""#,
        ),
        (
            "PUT",
            "/v1/kv/trail%20",
            "x",
            400,
            r#"Invalid key name "trail ""#,
        ),
        // delete answers true, also for a missing key
        ("DELETE", "/v1/kv/a", "", 200, "true"),
        ("DELETE", "/v1/kv/a", "", 200, "true"),
        ("GET", "/v1/kv/a", "", 404, ""),
        // flags by presence only
        ("PUT", "/v1/kv/r/1", "1", 200, "true"),
        (
            "GET",
            "/v1/kv/r?recurse=false&keys=false",
            "",
            200,
            r#"["r/1"]"#,
        ),
        ("GET", "/v1/kv/nothing?recurse", "", 404, ""),
    ];
    for (method, uri, body, status, expected) in table {
        h.check(method, uri, body, *status, expected).await;
    }
}

#[tokio::test]
async fn kv_raw_headers_and_index_headers() {
    let h = Harness::new().await;
    h.check("PUT", "/v1/kv/x", "<b>v</b>", 200, "true").await;
    let raw = h.check("GET", "/v1/kv/x?raw", "", 200, "<b>v</b>").await;
    assert_eq!(header(&raw, "content-type"), "text/plain");
    assert_eq!(header(&raw, "x-content-type-options"), "nosniff");
    assert_eq!(header(&raw, "content-security-policy"), "sandbox");
    assert_eq!(header(&raw, "x-consul-index"), "2");
    assert_eq!(header(&raw, "x-consul-knownleader"), "true");
    assert_eq!(header(&raw, "x-consul-lastcontact"), "0");
    let put = h.check("PUT", "/v1/kv/y", "", 200, "true").await;
    assert_eq!(header(&put, "content-type"), "application/json");
    // a missing key reports the KV table index, still with headers
    let missing = h.check("GET", "/v1/kv/nope", "", 404, "").await;
    assert_eq!(header(&missing, "x-consul-index"), "3");
    // deleting leaves a tombstone: the prefix index moves forward although no entry remains
    h.check("PUT", "/v1/kv/t/1", "", 200, "true").await;
    h.check("DELETE", "/v1/kv/t/1", "", 200, "true").await;
    let listing = h.check("GET", "/v1/kv/t/?recurse", "", 404, "").await;
    assert_eq!(header(&listing, "x-consul-index"), "5");
    h.check("PUT", "/v1/kv/u", "", 200, "true").await;
    let listing = h.check("GET", "/v1/kv/t/?recurse", "", 404, "").await;
    assert_eq!(header(&listing, "x-consul-index"), "5");
}

#[tokio::test]
async fn kv_keys_and_separator() {
    let h = Harness::new().await;
    h.check("GET", "/v1/kv/?keys", "", 200, "[]").await;
    for key in ["a/b/c", "a/b/d", "a/e", "ab", "z"] {
        h.check("PUT", &format!("/v1/kv/{key}"), "", 200, "true")
            .await;
    }
    let table: &[(&str, u16, &str)] = &[
        ("/v1/kv/?keys", 200, r#"["a/b/c","a/b/d","a/e","ab","z"]"#),
        ("/v1/kv/?keys&separator=/", 200, r#"["a/","ab","z"]"#),
        ("/v1/kv/a/?keys&separator=/", 200, r#"["a/b/","a/e"]"#),
        ("/v1/kv/a/?keys&seperator=/", 200, r#"["a/b/","a/e"]"#),
        ("/v1/kv/a?keys", 200, r#"["a/b/c","a/b/d","a/e","ab"]"#),
        ("/v1/kv/q?keys", 404, ""),
        ("/v1/kv/a/?recurse", 200, "*"),
    ];
    for (uri, status, expected) in table {
        h.check("GET", uri, "", *status, expected).await;
    }
}

#[tokio::test]
async fn kv_cas_and_delete_cas() {
    let h = Harness::new().await;
    let table: &[(&str, &str, &str, u16, &str)] = &[
        ("PUT", "/v1/kv/c?cas=0", "1", 200, "true"),
        ("PUT", "/v1/kv/c?cas=0", "2", 200, "false"),
        ("PUT", "/v1/kv/c?cas=99", "2", 200, "false"),
        ("PUT", "/v1/kv/c?cas=2", "2", 200, "true"),
        ("PUT", "/v1/kv/c?cas=x", "2", 400, "Invalid cas index"),
        ("PUT", "/v1/kv/n?cas=5", "2", 200, "false"),
        ("GET", "/v1/kv/c?raw", "", 200, "2"),
        ("DELETE", "/v1/kv/c?cas=2", "", 200, "false"),
        ("DELETE", "/v1/kv/c?cas=3", "", 200, "true"),
        ("DELETE", "/v1/kv/c?cas=3", "", 200, "true"),
        ("DELETE", "/v1/kv/gone?cas=7", "", 200, "true"),
        (
            "PUT",
            "/v1/kv/c?cas=0&acquire=x",
            "",
            400,
            "Conflicting flags",
        ),
        (
            "PUT",
            "/v1/kv/c?release=x&acquire=x",
            "",
            400,
            "Conflicting flags",
        ),
        (
            "DELETE",
            "/v1/kv/c?recurse&cas=1",
            "",
            400,
            "Conflicting flags",
        ),
        ("PUT", "/v1/kv/p/1", "", 200, "true"),
        ("PUT", "/v1/kv/p/2", "", 200, "true"),
        ("PUT", "/v1/kv/q", "", 200, "true"),
        ("DELETE", "/v1/kv/p?recurse", "", 200, "true"),
        ("GET", "/v1/kv/?keys", "", 200, r#"["q"]"#),
        ("DELETE", "/v1/kv/?recurse", "", 200, "true"),
        ("GET", "/v1/kv/?keys", "", 200, "[]"),
    ];
    for (method, uri, body, status, expected) in table {
        h.check(method, uri, body, *status, expected).await;
    }
}

#[tokio::test]
async fn kv_value_limit() {
    let h = Harness::new().await;
    let limit = 512 * 1024;
    h.check("PUT", "/v1/kv/big", &"x".repeat(limit), 200, "true")
        .await;
    let too_big = "x".repeat(limit + 1);
    h.check(
        "PUT",
        "/v1/kv/big",
        &too_big,
        413,
        "Request body(524289 bytes) too large, max size: 524288 bytes",
    )
    .await;
    let stored = h.check("GET", "/v1/kv/big?raw", "", 200, "*").await;
    assert_eq!(stored.body.len(), limit);
}

#[tokio::test]
async fn locks_acquire_release_and_session_end() {
    let mut h = Harness::new().await;
    h.session("s1", r#"{"LockDelay":"0s"}"#).await;
    h.session("s2", r#"{"LockDelay":0}"#).await;
    let table: &[(&str, &str, &str, u16, &str)] = &[
        ("PUT", "/v1/kv/lock?acquire={s1}", "v1", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":1,"Key":"lock","Flags":0,"Value":"djE=","CreateIndex":4,"ModifyIndex":4,"Session":"{s1}"}]"#,
        ),
        // the holder updates without bumping LockIndex
        ("PUT", "/v1/kv/lock?acquire={s1}", "v2", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":1,"Key":"lock","Flags":0,"Value":"djI=","CreateIndex":4,"ModifyIndex":5,"Session":"{s1}"}]"#,
        ),
        ("PUT", "/v1/kv/lock?acquire={s2}", "x", 200, "false"),
        ("PUT", "/v1/kv/lock?release={s2}", "x", 200, "false"),
        ("PUT", "/v1/kv/lock?acquire=", "x", 500, "missing session"),
        ("PUT", "/v1/kv/lock?release=", "x", 500, "missing session"),
        (
            "PUT",
            "/v1/kv/lock?acquire=nope",
            "x",
            500,
            r#"invalid session "nope""#,
        ),
        // a plain put on a locked key succeeds and keeps the holder
        ("PUT", "/v1/kv/lock", "v3", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":1,"Key":"lock","Flags":0,"Value":"djM=","CreateIndex":4,"ModifyIndex":6,"Session":"{s1}"}]"#,
        ),
        ("PUT", "/v1/kv/lock?release={s1}", "v4", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":1,"Key":"lock","Flags":0,"Value":"djQ=","CreateIndex":4,"ModifyIndex":7}]"#,
        ),
        ("PUT", "/v1/kv/lock?release={s1}", "v4", 200, "false"),
        ("PUT", "/v1/kv/lock?acquire={s2}", "v5", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":2,"Key":"lock","Flags":0,"Value":"djU=","CreateIndex":4,"ModifyIndex":8,"Session":"{s2}"}]"#,
        ),
        ("PUT", "/v1/kv/new?release={s2}", "x", 200, "false"),
        // destroying the holder releases the lock, keeps LockIndex, bumps ModifyIndex
        ("PUT", "/v1/session/destroy/{s2}", "", 200, "true"),
        (
            "GET",
            "/v1/kv/lock",
            "",
            200,
            r#"[{"LockIndex":2,"Key":"lock","Flags":0,"Value":"djU=","CreateIndex":4,"ModifyIndex":9}]"#,
        ),
        ("PUT", "/v1/session/destroy/{s2}", "", 200, "true"),
    ];
    for (method, uri, body, status, expected) in table {
        h.check(method, uri, body, *status, expected).await;
    }
    // Behavior delete removes the held key
    h.session("d", r#"{"Behavior":"delete","LockDelay":"0s"}"#)
        .await;
    h.check("PUT", "/v1/kv/eph?acquire={d}", "x", 200, "true")
        .await;
    h.check("PUT", "/v1/session/destroy/{d}", "", 200, "true")
        .await;
    h.check("GET", "/v1/kv/eph", "", 404, "").await;
}

#[tokio::test(start_paused = true)]
async fn lock_delay_blocks_reacquire_until_it_passes() {
    let mut h = Harness::new().await;
    h.session("s1", r#"{"LockDelay":"5s"}"#).await;
    h.session("s2", r#"{"LockDelay":"5s"}"#).await;
    h.check("PUT", "/v1/kv/l?acquire={s1}", "", 200, "true")
        .await;
    h.check("PUT", "/v1/session/destroy/{s1}", "", 200, "true")
        .await;
    h.check("PUT", "/v1/kv/l?acquire={s2}", "", 200, "false")
        .await;
    tokio::time::advance(Duration::from_secs(4)).await;
    h.check("PUT", "/v1/kv/l?acquire={s2}", "", 200, "false")
        .await;
    tokio::time::advance(Duration::from_secs(2)).await;
    h.check("PUT", "/v1/kv/l?acquire={s2}", "", 200, "true")
        .await;
    // an explicit release starts no lock-delay
    h.session("s3", r#"{"LockDelay":"5s"}"#).await;
    h.check("PUT", "/v1/kv/l?release={s2}", "", 200, "true")
        .await;
    h.check("PUT", "/v1/kv/l?acquire={s3}", "", 200, "true")
        .await;
}

#[tokio::test(start_paused = true)]
async fn session_ttl_expires_at_twice_the_ttl() {
    let mut h = Harness::new().await;
    h.session("s", r#"{"TTL":"10s","LockDelay":"0s"}"#).await;
    h.check("PUT", "/v1/kv/held?acquire={s}", "", 200, "true")
        .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.check("PUT", "/v1/session/renew/{s}", "", 200, "*").await;
    tokio::time::sleep(Duration::from_secs(19)).await;
    h.check("GET", "/v1/session/info/{s}", "", 200, "*").await;
    let held = h.check("GET", "/v1/kv/held", "", 200, "*").await;
    assert!(held.body.contains("Session"), "{}", held.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.check("GET", "/v1/session/info/{s}", "", 200, "[]").await;
    let released = h.check("GET", "/v1/kv/held", "", 200, "*").await;
    assert!(!released.body.contains("Session"), "{}", released.body);
    h.check(
        "PUT",
        "/v1/session/renew/{s}",
        "",
        404,
        "Session id '{s}' not found",
    )
    .await;
}

#[tokio::test]
async fn session_create_rules() {
    let mut h = Harness::new().await;
    h.session("s", r#"{"Name":"web-lock","TTL":"15s","LockDelay":3}"#)
        .await;
    h.check(
        "GET",
        "/v1/session/info/{s}",
        "",
        200,
        r#"[{"ID":"{s}","Name":"web-lock","Node":"node1","LockDelay":3000000000,"Behavior":"release","TTL":"15s","NodeChecks":["serfHealth"],"ServiceChecks":[],"CreateIndex":2,"ModifyIndex":2}]"#,
    )
    .await;
    // the TTL comes back as the client wrote it
    h.session("sixty", r#"{"TTL":"60s"}"#).await;
    let info = h
        .check("GET", "/v1/session/info/{sixty}", "", 200, "*")
        .await;
    assert!(info.body.contains(r#""TTL":"60s""#), "{}", info.body);
    h.session("ns", r#"{"LockDelay":2000000000,"NodeChecks":[]}"#)
        .await;
    let info = h.check("GET", "/v1/session/info/{ns}", "", 200, "*").await;
    assert!(
        info.body.contains(r#""LockDelay":2000000000"#) && info.body.contains(r#""NodeChecks":[]"#),
        "{}",
        info.body
    );
    h.session("capped", r#"{"lockdelay":"5m","checks":["serfHealth"]}"#)
        .await;
    let info = h
        .check("GET", "/v1/session/info/{capped}", "", 200, "*")
        .await;
    assert!(
        info.body.contains(r#""LockDelay":60000000000"#),
        "{}",
        info.body
    );
    h.session("empty", "").await;
    let table: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/v1/session/create",
            r#"{"Behavior":"bogus"}"#,
            500,
            "Invalid Behavior setting 'bogus'",
        ),
        (
            "PUT",
            "/v1/session/create",
            r#"{"Node":"other"}"#,
            500,
            "Missing node registration",
        ),
        (
            "PUT",
            "/v1/session/create",
            r#"{"NodeChecks":["nope"]}"#,
            500,
            "Missing check 'nope' registration",
        ),
        (
            "PUT",
            "/v1/session/create",
            r#"{"TTL":"5s"}"#,
            500,
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        ),
        (
            "PUT",
            "/v1/session/create",
            r#"{"TTL":"abc"}"#,
            500,
            "Session TTL 'abc' invalid",
        ),
        (
            "PUT",
            "/v1/session/create",
            r#"{"Bogus":1}"#,
            400,
            r#"Request decode failed: json: unknown field "Bogus""#,
        ),
        ("PUT", "/v1/session/create", r#"{"Name":"#, 400, "*"),
        (
            "PUT",
            "/v1/session/create",
            r#"{"LockDelay":"x"}"#,
            400,
            "*",
        ),
        ("GET", "/v1/session/info/unknown", "", 200, "[]"),
        ("GET", "/v1/session/node/other", "", 200, "[]"),
        (
            "PUT",
            "/v1/session/renew/unknown",
            "",
            404,
            "Session id 'unknown' not found",
        ),
        ("PUT", "/v1/session/destroy/unknown", "", 200, "true"),
        ("PUT", "/v1/session/destroy/", "", 400, "Missing session"),
        ("PUT", "/v1/session/renew/", "", 400, "Missing session"),
        ("GET", "/v1/session/info/", "", 400, "Missing session"),
        ("GET", "/v1/session/node/", "", 400, "Missing node name"),
    ];
    for (method, uri, body, status, expected) in table {
        h.check(method, uri, body, *status, expected).await;
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&h.check("GET", "/v1/session/list", "", 200, "*").await.body).unwrap();
    assert_eq!(list.len(), 5, "{list:#?}");
    let node: Vec<serde_json::Value> = serde_json::from_str(
        &h.check("GET", "/v1/session/node/node1", "", 200, "*")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(node.len(), 5);
    let renewed = h.check("PUT", "/v1/session/renew/{s}", "", 200, "*").await;
    assert!(renewed.body.starts_with(r#"[{"ID":""#), "{}", renewed.body);
}

#[tokio::test]
async fn txn_rules() {
    let mut h = Harness::new().await;
    h.session("s", r#"{"LockDelay":"0s"}"#).await;
    h.check(
        "PUT",
        "/v1/txn",
        r#"[{"KV":{"Verb":"set","Key":"t/a","Value":"YQ==","Flags":7}},{"KV":{"Verb":"set","Key":"t/b","Value":"Yg=="}},{"KV":{"Verb":"get","Key":"t/a"}}]"#,
        200,
        r#"{"Results":[{"KV":{"LockIndex":0,"Key":"t/a","Flags":7,"Value":null,"CreateIndex":3,"ModifyIndex":3}},{"KV":{"LockIndex":0,"Key":"t/b","Flags":0,"Value":null,"CreateIndex":3,"ModifyIndex":3}},{"KV":{"LockIndex":0,"Key":"t/a","Flags":7,"Value":"YQ==","CreateIndex":3,"ModifyIndex":3}}],"Errors":null}"#,
    )
    .await;
    // all or nothing: the failing check rolls back the set before it
    h.check(
        "PUT",
        "/v1/txn",
        r#"[{"KV":{"Verb":"set","Key":"t/c","Value":"Yw=="}},{"KV":{"Verb":"check-index","Key":"t/a","Index":1}},{"KV":{"Verb":"cas","Key":"t/b","Index":1}},{"KV":{"Verb":"bogus","Key":"t/b"}}]"#,
        409,
        r#"{"Results":null,"Errors":[{"OpIndex":1,"What":"failed index check for key \"t/a\", current modify index 3 != 1"},{"OpIndex":2,"What":"failed to set key \"t/b\", index is stale"},{"OpIndex":3,"What":"unknown KV verb \"bogus\""}]}"#,
    )
    .await;
    h.check("GET", "/v1/kv/t/c", "", 404, "").await;
    let table: &[(&str, u16, &str)] = &[
        (
            r#"[{"KV":{"Verb":"get","Key":"t/none"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"key \"t/none\" doesn't exist"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"check-session","Key":"t/none"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to check session, key \"t/none\" doesn't exist"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"check-index","Key":"t/none","Index":1}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to check index, key \"t/none\" doesn't exist"}]}"#,
        ),
        // every verb but delete-tree needs a key; refused ops stop the whole transaction
        (
            r#"[{"KV":{"Verb":"set","Key":"","Value":"YQ=="}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"Must provide key"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"set","Key":"t/ok"}},{"KV":{"Verb":"lock","Key":"","Session":"{s}"}},{"KV":{"Verb":"delete","Key":""}},{"KV":{"Verb":"check-not-exists"}},{"KV":{"Verb":"get","Key":""}},{"KV":{"Verb":"cas","Key":"","Index":0}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":1,"What":"Must provide key"},{"OpIndex":2,"What":"Must provide key"},{"OpIndex":3,"What":"Must provide key"},{"OpIndex":4,"What":"Must provide key"},{"OpIndex":5,"What":"Must provide key"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"get","Key":"t/ok"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"key \"t/ok\" doesn't exist"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"unlock","Key":"t/a"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"missing session"}]}"#,
        ),
        (
            r#"[{"KV":["set","posk"]}]"#,
            400,
            "Failed to parse body: json: cannot unmarshal array into Go value of type api.KVTxnOp",
        ),
        (
            r#"[{"KV":{"Verb":"check-not-exists","Key":"t/a"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"key \"t/a\" exists"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"check-not-exists","Key":"t/z"}}]"#,
            200,
            r#"{"Results":[],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"get-or-empty","Key":"t/z"}}]"#,
            200,
            r#"{"Results":[{"KV":{"LockIndex":0,"Key":"t/z","Flags":0,"Value":null,"CreateIndex":0,"ModifyIndex":0}}],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"get-tree","Key":"t/"}}]"#,
            200,
            r#"{"Results":[{"KV":{"LockIndex":0,"Key":"t/a","Flags":7,"Value":"YQ==","CreateIndex":3,"ModifyIndex":3}},{"KV":{"LockIndex":0,"Key":"t/b","Flags":0,"Value":"Yg==","CreateIndex":3,"ModifyIndex":3}}],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"lock","Key":"t/l","Session":"{s}"}}]"#,
            200,
            r#"{"Results":[{"KV":{"LockIndex":1,"Key":"t/l","Flags":0,"Value":null,"CreateIndex":4,"ModifyIndex":4,"Session":"{s}"}}],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"check-session","Key":"t/l","Session":"other"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed session check for key \"t/l\", current session \"{s}\" != \"other\""}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"lock","Key":"t/m","Session":"nope"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"invalid session \"nope\""}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"unlock","Key":"t/l","Session":"other"}}]"#,
            409,
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to unlock key \"t/l\", lock isn't held, or is held by another session"}]}"#,
        ),
        (
            r#"[{"KV":{"Verb":"unlock","Key":"t/l","Session":"{s}"}},{"KV":{"Verb":"delete-cas","Key":"t/a","Index":3}},{"KV":{"Verb":"delete-tree","Key":"t/"}}]"#,
            200,
            r#"{"Results":[{"KV":{"LockIndex":1,"Key":"t/l","Flags":0,"Value":null,"CreateIndex":4,"ModifyIndex":5}}],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"delete-cas","Key":"x","Index":3}},{"KV":{"Verb":"delete","Key":"x"}}]"#,
            200,
            r#"{"Results":[],"Errors":null}"#,
        ),
        (
            r#"[{"KV":{"Verb":"set","Key":"k","Value":"!!"}}]"#,
            400,
            "*",
        ),
        (
            r#"[{"KV":{"Verb":"set","Key":"k","Extra":1}}]"#,
            400,
            r#"Failed to parse body: json: unknown field "Extra""#,
        ),
        (r#"{"#, 400, "*"),
        (
            r#"[{"KV":{"Verb":"set","Key":"a/../b"}}]"#,
            400,
            r#"Invalid key name "a/../b""#,
        ),
    ];
    for (body, status, expected) in table {
        h.check("PUT", "/v1/txn", body, *status, expected).await;
    }
    h.check("GET", "/v1/kv/?keys", "", 200, "[]").await;
    let ops: Vec<String> = (0..129)
        .map(|i| format!(r#"{{"KV":{{"Verb":"get","Key":"{i}"}}}}"#))
        .collect();
    h.check(
        "PUT",
        "/v1/txn",
        &format!("[{}]", ops.join(",")),
        413,
        "Transaction contains too many operations (129 > 128)",
    )
    .await;
    let big = format!(
        r#"[{{"KV":{{"Verb":"set","Key":"k","Value":"{}"}}}}]"#,
        "A".repeat(600 * 1024)
    );
    h.check("PUT", "/v1/txn", &big, 413, "*").await;
}

#[tokio::test(start_paused = true)]
async fn blocking_queries_wake_on_change_and_time_out() {
    let h = Harness::new().await;
    h.check("PUT", "/v1/kv/w", "1", 200, "true").await;
    let first = h.check("GET", "/v1/kv/w", "", 200, "*").await;
    assert_eq!(header(&first, "x-consul-index"), "2");
    // times out after `wait` (plus at most wait/16) with the same index
    let started = tokio::time::Instant::now();
    let timed_out = h
        .check("GET", "/v1/kv/w?index=2&wait=2s", "", 200, "*")
        .await;
    assert_eq!(header(&timed_out, "x-consul-index"), "2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2125),
        "{waited:?}"
    );
    // a write elsewhere does not end it; a write to the key does
    let app = h.app.clone();
    let watcher = tokio::spawn(async move {
        let request = Request::builder()
            .uri("/v1/kv/w?index=2&wait=1m")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let index = response.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (index, String::from_utf8_lossy(&body).into_owned())
    });
    tokio::task::yield_now().await;
    h.check("PUT", "/v1/kv/other", "x", 200, "true").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!watcher.is_finished());
    h.check("PUT", "/v1/kv/w", "2", 200, "true").await;
    let (index, body) = watcher.await.unwrap();
    assert_eq!(index, "4");
    assert!(body.contains(r#""Value":"Mg==""#), "{body}");
    // sessions block too
    let started = tokio::time::Instant::now();
    let sessions = h
        .check("GET", "/v1/session/list?index=100&wait=1s", "", 200, "[]")
        .await;
    assert_eq!(header(&sessions, "x-consul-index"), "1");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // bad parameters
    h.check(
        "GET",
        "/v1/kv/w?index=2&wait=soon",
        "",
        400,
        "Invalid wait time",
    )
    .await;
    h.check("GET", "/v1/kv/w?index=-2", "", 400, "Invalid index")
        .await;
    // empty values count as absent, a negative wait means the default
    for query in ["index=&wait=1s", "index=&wait=", "wait=-1s"] {
        h.check("GET", &format!("/v1/kv/w?{query}"), "", 200, "*")
            .await;
    }
}

#[tokio::test]
async fn consistency_modes_and_datacenters() {
    let h = Harness::new().await;
    h.check("PUT", "/v1/kv/a", "1", 200, "true").await;
    let stale_consistent = "Cannot specify ?stale with ?consistent, conflicting semantics.";
    let cached_consistent = "Cannot specify ?cached with ?consistent, conflicting semantics.";
    let table: &[(&str, &str, u16, &str)] = &[
        ("GET", "/v1/kv/a?stale&raw", 200, "1"),
        ("GET", "/v1/kv/a?consistent&raw", 200, "1"),
        ("GET", "/v1/kv/a?cached&raw", 200, "1"),
        ("GET", "/v1/kv/a?stale&cached&raw", 200, "1"),
        ("GET", "/v1/kv/a?stale&consistent", 400, stale_consistent),
        (
            "GET",
            "/v1/kv/a?consistent=false&stale=0",
            400,
            stale_consistent,
        ),
        ("GET", "/v1/kv/a?cached&consistent", 400, cached_consistent),
        (
            "GET",
            "/v1/session/list?stale&consistent",
            400,
            stale_consistent,
        ),
        (
            "GET",
            "/v1/catalog/nodes?stale&consistent",
            400,
            stale_consistent,
        ),
        (
            "GET",
            "/v1/health/state/any?consistent&stale",
            400,
            stale_consistent,
        ),
        // this server's datacenter, or none, is served; any other has no path
        ("GET", "/v1/kv/a?dc=dc1&raw", 200, "1"),
        ("GET", "/v1/kv/a?dc=&raw", 200, "1"),
        ("GET", "/v1/kv/a?dc=dc2", 500, "No path to datacenter"),
        ("PUT", "/v1/kv/a?dc=dc2", 500, "No path to datacenter"),
        ("DELETE", "/v1/kv/a?dc=dc2", 500, "No path to datacenter"),
        ("PUT", "/v1/txn?dc=dc2", 500, "No path to datacenter"),
        (
            "GET",
            "/v1/catalog/services?dc=DC1",
            500,
            "No path to datacenter",
        ),
        (
            "GET",
            "/v1/health/service/consul?dc=other",
            500,
            "No path to datacenter",
        ),
        (
            "PUT",
            "/v1/session/create?dc=dc2",
            500,
            "No path to datacenter",
        ),
        ("GET", "/v1/kv/a?raw", 200, "1"),
    ];
    for (method, uri, status, expected) in table {
        h.check(method, uri, "", *status, expected).await;
    }
}

#[tokio::test]
async fn status_agent_and_self_registration() {
    let h = Harness::new().await;
    h.check("GET", "/v1/status/leader", "", 200, r#""127.0.0.1:8500""#)
        .await;
    h.check("GET", "/v1/status/peers", "", 200, r#"["127.0.0.1:8500"]"#)
        .await;
    let me: serde_json::Value =
        serde_json::from_str(&h.check("GET", "/v1/agent/self", "", 200, "*").await.body).unwrap();
    assert_eq!(me["Config"]["Version"], "1.22.0");
    assert_eq!(me["Config"]["NodeName"], "node1");
    assert_eq!(me["Stats"]["consul"]["leader_addr"], "127.0.0.1:8500");
    assert_eq!(me["Stats"]["berth"]["version"], env!("CARGO_PKG_VERSION"));
    let members: serde_json::Value =
        serde_json::from_str(&h.check("GET", "/v1/agent/members", "", 200, "*").await.body)
            .unwrap();
    assert_eq!(members[0]["Name"], "node1");
    assert_eq!(members[0]["Status"], 1);
    let health: serde_json::Value = serde_json::from_str(
        &h.check("GET", "/v1/health/service/consul?passing", "", 200, "*")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(health[0]["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(health[0]["Checks"][0]["Status"], "passing");
    h.check("GET", "/v1/catalog/services", "", 200, r#"{"consul":[]}"#)
        .await;
}

/// Issue 14, finding 5: one anonymous `/v1/internal/berth/leave` or `/v1/catalog/deregister`
/// of the server's own node ended every session and broke session creation until a restart.
#[tokio::test]
async fn server_node_deregistration_refused() {
    let mut h = Harness::new().await;
    h.session("s1", "").await;
    let own = "Permission denied: \"node1\" is the registry server's own node;";
    for body in [
        r#"{"Node":"node1"}"#,
        r#"{"Node":"node1","CheckID":"serfHealth"}"#,
        r#"{"Node":"node1","ServiceID":"consul"}"#,
    ] {
        let answer = h
            .check("PUT", "/v1/catalog/deregister", body, 403, "*")
            .await;
        assert!(answer.body.starts_with(own), "{body}: {}", answer.body);
    }
    let answer = h
        .check(
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"node1","Address":"10.0.0.9","Check":{"CheckID":"serfHealth","Status":"critical"}}"#,
            403,
            "*",
        )
        .await;
    assert!(answer.body.starts_with(own), "{}", answer.body);
    h.check(
        "PUT",
        "/v1/internal/berth/leave",
        r#"{"Node":"node1","ID":"x","Address":"127.0.0.1","Port":8500}"#,
        400,
        "node name is the server's own",
    )
    .await;
    // The session lives on and new ones can still be made.
    h.check("GET", "/v1/session/info/{s1}", "", 200, "*").await;
    let info = h.call("GET", "/v1/session/info/{s1}", "").await;
    assert!(info.body.contains(&h.vars["s1"]), "{}", info.body);
    h.session("s2", "").await;
    let health = h.check("GET", "/v1/health/node/node1", "", 200, "*").await;
    assert!(
        health.body.contains(r#""Status":"passing""#),
        "{}",
        health.body
    );
    // What a client registered on the server's node it may still remove.
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"node1","Address":"127.0.0.1","Service":{"Service":"extra"}}"#,
        200,
        "true",
    )
    .await;
    h.check(
        "PUT",
        "/v1/catalog/deregister",
        r#"{"Node":"node1","ServiceID":"extra"}"#,
        200,
        "true",
    )
    .await;
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let h = Harness::new().await;
    for (method, uri, allow) in [
        ("POST", "/v1/kv/a", "OPTIONS,GET,HEAD,PUT,DELETE"),
        ("PATCH", "/v1/kv/a", "OPTIONS,GET,HEAD,PUT,DELETE"),
        ("GET", "/v1/txn", "OPTIONS,PUT"),
        ("GET", "/v1/session/create", "OPTIONS,PUT"),
        ("DELETE", "/v1/status/leader", "OPTIONS,GET,HEAD"),
        ("PUT", "/v1/session/list", "OPTIONS,GET,HEAD"),
        ("PUT", "/v1/agent/services", "OPTIONS,GET,HEAD"),
        ("POST", "/ui/", "OPTIONS,GET,HEAD"),
    ] {
        let answer = h
            .check(
                method,
                uri,
                "",
                405,
                &format!("method {method} not allowed"),
            )
            .await;
        assert_eq!(header(&answer, "allow"), allow, "{method} {uri}");
        assert_eq!(header(&answer, "content-type"), "text/plain; charset=utf-8");
        // OPTIONS is answered for every route, with the same list
        let options = h.check("OPTIONS", uri, "", 200, "").await;
        assert_eq!(header(&options, "allow"), allow, "OPTIONS {uri}");
    }
    let api = "Invalid URL path: not a recognized HTTP API endpoint\n";
    let other =
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n";
    for (method, uri, expected) in [
        ("GET", "/v1/nothing", api),
        ("GET", "/v1/kvx", api),
        ("OPTIONS", "/v1/nothing/here", api),
        ("GET", "/nothing", other),
        ("DELETE", "/v2/kv/a", other),
    ] {
        let answer = h.check(method, uri, "", 404, expected).await;
        assert_eq!(header(&answer, "content-type"), "text/plain; charset=utf-8");
    }
    // a missing key is still a 404 with an empty body
    h.check("GET", "/v1/kv/missing", "", 404, "").await;
}

#[tokio::test]
async fn check_going_critical_ends_dependent_sessions() {
    let mut h = Harness::new().await;
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"n2","Address":"10.0.0.2","Check":{"CheckID":"serfHealth","Status":"passing"}}"#,
        200,
        "true",
    )
    .await;
    h.session("s", r#"{"Node":"n2","LockDelay":"0s"}"#).await;
    h.check("PUT", "/v1/kv/k?acquire={s}", "", 200, "true")
        .await;
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"n2","Address":"10.0.0.2","Check":{"CheckID":"serfHealth","Status":"critical"}}"#,
        200,
        "true",
    )
    .await;
    h.check("GET", "/v1/session/info/{s}", "", 200, "[]").await;
    let held = h.check("GET", "/v1/kv/k", "", 200, "*").await;
    assert!(!held.body.contains("Session"), "{}", held.body);
    h.check(
        "PUT",
        "/v1/session/create",
        r#"{"Node":"n2"}"#,
        500,
        "Check 'serfHealth' is in critical state",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_command_leaves_session_clocks_alone() {
    let mut h = Harness::new().await;
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"n4","Address":"10.0.0.4","Check":{"CheckID":"serfHealth","Status":"passing"}}"#,
        200,
        "true",
    )
    .await;
    h.session("s", r#"{"Node":"n4","TTL":"10s","LockDelay":"30s"}"#)
        .await;
    h.session("other", r#"{"LockDelay":"0s"}"#).await;
    h.check("PUT", "/v1/kv/leader?acquire={s}", "me", 200, "true")
        .await;
    // the first check going critical ends the session inside the command, the second check
    // then fails it: the whole command is refused
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"n4","Address":"10.0.0.4","Checks":[{"CheckID":"serfHealth","Status":"critical"},{"CheckID":"x","ServiceID":"nosuch"}]}"#,
        500,
        "Unknown service ID 'nosuch' for check ID 'x'",
    )
    .await;
    // no lock-delay was left behind: an explicit release starts none
    h.check("PUT", "/v1/kv/leader?release={s}", "", 200, "true")
        .await;
    h.check("PUT", "/v1/kv/leader?acquire={other}", "", 200, "true")
        .await;
    h.check("PUT", "/v1/kv/leader?release={other}", "", 200, "true")
        .await;
    // and the TTL clock still runs: the session ends 2 x TTL after it was created
    h.check("PUT", "/v1/kv/leader?acquire={s}", "", 200, "true")
        .await;
    tokio::time::sleep(Duration::from_secs(21)).await;
    h.check("GET", "/v1/session/info/{s}", "", 200, "[]").await;
    let released = h.check("GET", "/v1/kv/leader", "", 200, "*").await;
    assert!(!released.body.contains("Session"), "{}", released.body);
}

#[tokio::test(start_paused = true)]
async fn txn_lock_inside_a_lock_delay_says_so() {
    let mut h = Harness::new().await;
    h.session("s", r#"{"LockDelay":"20s"}"#).await;
    h.session("s2", r#"{"LockDelay":"0s"}"#).await;
    h.check("PUT", "/v1/kv/txld?acquire={s}", "v", 200, "true")
        .await;
    h.check("PUT", "/v1/session/destroy/{s}", "", 200, "true")
        .await;
    let lock = r#"[{"KV":{"Verb":"lock","Key":"txld","Session":"{s2}"}}]"#;
    h.check(
        "PUT",
        "/v1/txn",
        lock,
        409,
        r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to lock key \"txld\" due to lock delay"}]}"#,
    )
    .await;
    // a key held by another session still says so
    h.session("s3", r#"{"LockDelay":"0s"}"#).await;
    h.check("PUT", "/v1/kv/held?acquire={s3}", "v", 200, "true")
        .await;
    h.check(
        "PUT",
        "/v1/txn",
        r#"[{"KV":{"Verb":"lock","Key":"held","Session":"{s2}"}}]"#,
        409,
        r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to lock key \"held\", lock is already held"}]}"#,
    )
    .await;
    tokio::time::advance(Duration::from_secs(21)).await;
    h.check("PUT", "/v1/txn", lock, 200, "*").await;
}

#[tokio::test]
async fn array_bodies_are_not_objects() {
    let h = Harness::new().await;
    let session =
        "Request decode failed: json: cannot unmarshal array into Go value of type structs.Session";
    for body in [r#"["x","myname","vm","5s","delete"]"#, "[null]", "[]"] {
        h.check("PUT", "/v1/session/create", body, 400, session)
            .await;
    }
    h.check(
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"n","Address":"a","Service":["web"]}"#,
        400,
        "Request decode failed: json: cannot unmarshal array into Go value of type structs.NodeService",
    )
    .await;
    h.check("GET", "/v1/session/list", "", 200, "[]").await;
    h.check("GET", "/v1/kv/?keys", "", 200, "[]").await;
}

#[tokio::test]
async fn body_read_errors_and_chunked_sizes() {
    let h = Harness::new().await;
    let chunked = |sizes: Vec<usize>, fail: bool| {
        let mut items: Vec<Result<bytes::Bytes, std::io::Error>> = sizes
            .into_iter()
            .map(|n| Ok(bytes::Bytes::from(vec![b'x'; n])))
            .collect();
        if fail {
            items.push(Err(std::io::Error::other("connection cut")));
        }
        Body::from_stream(futures::stream::iter(items))
    };
    let broken = h
        .call("PUT", "/v1/kv/chunkbad", chunked(vec![5], true))
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{}", broken.body);
    assert!(
        broken.body.starts_with("Failed to read request body"),
        "{}",
        broken.body
    );
    h.check("GET", "/v1/kv/chunkbad", "", 404, "").await;
    // without Content-Length the real size is reported...
    let over = h
        .call("PUT", "/v1/kv/big", chunked(vec![200 * 1024; 3], false))
        .await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        over.body,
        "Request body(614400 bytes) too large, max size: 524288 bytes"
    );
    // ...up to what is drained; past that, as a lower bound
    let huge = h
        .call("PUT", "/v1/kv/big", chunked(vec![64 * 1024; 48], false))
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        huge.body,
        "Request body(at least 1638400 bytes) too large, max size: 524288 bytes"
    );
    let within = h
        .call("PUT", "/v1/kv/big", chunked(vec![256 * 1024; 2], false))
        .await;
    assert_eq!(within.status, StatusCode::OK, "{}", within.body);
}

/// A small deterministic generator for the robustness test (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len).map(|_| (self.next() & 0xff) as u8).collect()
    }
}

#[tokio::test]
async fn random_requests_never_crash_or_corrupt() {
    let h = Harness::new().await;
    h.check("PUT", "/v1/kv/keep/me", "precious", 200, "true")
        .await;
    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let paths = [
        "/v1/kv/",
        "/v1/kv/x",
        "/v1/kv/a/b",
        "/v1/txn",
        "/v1/session/create",
        "/v1/session/renew/x",
        "/v1/session/destroy/x",
        "/v1/session/info/x",
        "/v1/session/list",
        "/v1/catalog/register",
        "/v1/catalog/deregister",
        "/v1/catalog/service/web",
        "/v1/health/service/web",
        "/v1/agent/self",
    ];
    let queries = [
        "",
        "?recurse",
        "?keys&separator=/",
        "?raw",
        "?cas=abc",
        "?cas=0",
        "?flags=-1",
        "?acquire=",
        "?release=zz",
        "?index=1&wait=1ms",
        "?index=99999999999999999999",
        "?wait=1.5.5s",
        "?index=1&wait=1ns",
        "?passing=maybe",
        "?tag=%ff",
        "?%zz=%",
        "?&&=&",
    ];
    let json_bodies = [
        r#"{"Name":"x","TTL":"11s"}"#,
        r#"{"ttl":5}"#,
        r#"[{"KV":{"Verb":"set","Key":"k"}}]"#,
        r#"[{"KV":{"Verb":"lock","Key":"k","Session":""}}]"#,
        r#"{"Node":"n","Address":"a","Check":{"CheckID":"c","Status":"odd"}}"#,
        r#"{"Node":"","Address":""}"#,
        r#"[{"KV":null}]"#,
        "[]",
        "{}",
        "null",
        "\"str\"",
        "1e999",
        r#"{"LockDelay":-1}"#,
        r#"{"LockDelay":1e30}"#,
        r#"{"Behavior":7}"#,
        r#"{"NODE":"n","ADDRESS":"a"}"#,
    ];
    for _ in 0..600 {
        let method = noise.pick(&["GET", "PUT", "DELETE", "POST", "PATCH"]);
        let uri = format!("{}{}", noise.pick(&paths), noise.pick(&queries));
        let body = match noise.next() % 3 {
            0 => noise.pick(&json_bodies).as_bytes().to_vec(),
            1 => noise.bytes(64),
            _ => {
                let mut b = noise.pick(&json_bodies).as_bytes().to_vec();
                let cut = (noise.next() as usize) % (b.len() + 1);
                b.truncate(cut);
                b
            }
        };
        let answer = h.call(method, &uri, body).await;
        let status = answer.status.as_u16();
        assert!(
            matches!(status, 200 | 400 | 404 | 405 | 409 | 413 | 500),
            "{method} {uri}: {status} {}",
            answer.body
        );
        if status == 500 {
            assert_ne!(answer.body, "internal store error", "{method} {uri}");
        }
    }
    h.check("GET", "/v1/kv/keep/me?raw", "", 200, "precious")
        .await;
    h.check("PUT", "/v1/kv/after", "ok", 200, "true").await;
    h.check("GET", "/v1/kv/after?raw", "", 200, "ok").await;
}

mod discovery;
