//! Router tests for the discovery half: agent services and checks, catalog and health
//! listings, liveness and ACLs. Each table row is a request and the answer expected.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::server::{AclToken, Config, build};

struct H {
    app: Router,
    stop: CancellationToken,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Drop for H {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl H {
    async fn with(config: Config) -> Self {
        let stop = CancellationToken::new();
        let (app, _writer) = build(
            &config,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8500,
            stop.clone(),
            stop.clone(),
        )
        .await
        .expect("dev server builds");
        Self { app, stop }
    }

    async fn new() -> Self {
        Self::with(Config::dev("node1")).await
    }

    async fn call(&self, method: &str, uri: &str, body: &str, token: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        let response = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
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

    /// Runs rows `(method, uri, body, status, expected)`; `expected` is the exact body, or
    /// with a leading `~` a substring of it, or `*` for anything.
    async fn table(&self, token: Option<&str>, rows: &[(&str, &str, &str, u16, &str)]) {
        for (method, uri, body, status, expected) in rows {
            let a = self.call(method, uri, body, token).await;
            assert_eq!(a.status, *status, "{method} {uri}: {}", a.body);
            if let Some(part) = expected.strip_prefix('~') {
                assert!(
                    a.body.contains(part),
                    "{method} {uri}: {:?} lacks {part:?}",
                    a.body
                );
            } else if *expected != "*" {
                assert_eq!(a.body, *expected, "{method} {uri}");
            }
        }
    }

    async fn json(&self, uri: &str) -> serde_json::Value {
        let a = self.call("GET", uri, "", None).await;
        assert_eq!(a.status, 200, "{uri}: {}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    /// Waits (by blocking queries, no sleeps) until `uri` answers something `done` accepts.
    async fn until(
        &self,
        uri: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut index = 0u64;
        for _ in 0..50 {
            let sep = if uri.contains('?') { '&' } else { '?' };
            let a = self
                .call("GET", &format!("{uri}{sep}index={index}&wait=2s"), "", None)
                .await;
            let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            if done(&v) {
                return v;
            }
            index = a.headers["x-consul-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
        }
        panic!("{uri} never matched");
    }
}

#[tokio::test]
async fn agent_service_and_check_rules() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/agent/service/register", r#"{"Port":1}"#, 400, "Missing service name"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"x","Bogus":1}"#, 400, r#"Request decode failed: json: unknown field "Bogus""#),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"web","Port":80,"Tags":["a"],"Check":{"TTL":"10s"}}"#, 200, ""),
        ("PUT", "/v1/agent/service/register", r#"{"name":"db","id":"db1","port":5432,"checks":[{"tcp":"127.0.0.1:9","interval":"1h"},{"ttl":"30s","status":"passing","deregister_critical_service_after":"1s"}]}"#, 200, ""),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"TTL":"10s","Status":"weird"}}"#, 400, "~Invalid check status"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"HTTP":"http://127.0.0.1:9/"}}"#, 400, "~Interval"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"Args":["/bin/true"],"Interval":"10s"}}"#, 400, "~Scripts are disabled"),
        ("GET", "/v1/agent/services", "", 200, r#"~"web":{"ID":"web","Service":"web","Tags":["a"],"Meta":{},"Port":80"#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"service:web":{"Node":"node1","CheckID":"service:web","Name":"Service 'web' check","Status":"critical""#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"service:db1:1""#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"service:db1:2""#),
        ("PUT", "/v1/agent/check/pass/service:web?note=fine", "", 200, ""),
        ("GET", "/v1/agent/checks", "", 200, r#"~"Status":"passing","Notes":"","Output":"fine""#),
        ("PUT", "/v1/agent/check/warn/service:web", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/web", "", 429, r#"~"AggregatedStatus":"warning""#),
        ("PUT", "/v1/agent/check/update/service:web", r#"{"Status":"passing","Output":"up"}"#, 200, ""),
        ("GET", "/v1/agent/health/service/name/web?format=text", "", 200, "passing"),
        ("PUT", "/v1/agent/check/update/service:web", r#"{"Status":"nope"}"#, 400, "~Invalid check status"),
        ("PUT", "/v1/agent/check/fail/nope", "", 404, r#"Unknown check ID "nope""#),
        ("PUT", "/v1/agent/check/pass/service:db1:1", "", 500, r#"CheckID "service:db1:1" does not have associated TTL"#),
        ("PUT", "/v1/agent/service/maintenance/web?enable=true&reason=upgrade", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/web", "", 503, r#"~"AggregatedStatus":"maintenance""#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"_service_maintenance:web":{"Node":"node1","CheckID":"_service_maintenance:web","Name":"Service Maintenance Mode","Status":"critical","Notes":"upgrade""#),
        ("PUT", "/v1/agent/service/maintenance/web?enable=false", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/web", "", 200, r#"~"AggregatedStatus":"passing""#),
        ("PUT", "/v1/agent/service/maintenance/web", "", 400, "Missing value for enable"),
        ("PUT", "/v1/agent/service/maintenance/nope?enable=true", "", 404, "~Unknown service ID"),
        ("GET", "/v1/agent/health/service/name/nope", "", 404, "ServiceName nope Not Found"),
        ("GET", "/v1/agent/health/service/id/nope", "", 404, "ServiceId nope not found"),
        ("PUT", "/v1/agent/service/deregister/nope", "", 404, r#"Unknown service ID "nope". Ensure that the service ID is passed, not the service name."#),
        ("PUT", "/v1/agent/check/register", r#"{"Name":"disk","TTL":"1m"}"#, 200, ""),
        ("PUT", "/v1/agent/check/pass/disk", "", 200, ""),
        ("PUT", "/v1/agent/check/deregister/disk", "", 200, ""),
        ("PUT", "/v1/agent/check/deregister/disk", "", 404, r#"Unknown check ID "disk""#),
        ("PUT", "/v1/agent/service/deregister/db1", "", 200, ""),
        ("GET", "/v1/agent/checks", "", 200, "~service:web"),
    ]).await;
    let checks = h.json("/v1/agent/checks").await;
    assert!(
        checks.get("service:db1:1").is_none(),
        "deregistering a service removes its checks"
    );
    // Anti-entropy puts the server's own agent services into the catalog.
    let entries = h
        .until("/v1/health/service/web?passing", |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let checks = entries[0]["Checks"].as_array().unwrap();
    let ids: Vec<&str> = checks
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["serfHealth", "service:web"]);
    h.call("PUT", "/v1/agent/service/deregister/web", "", None)
        .await;
    h.until("/v1/catalog/service/web", |v| {
        v.as_array().is_some_and(Vec::is_empty)
    })
    .await;
}

/// TTL checks ignore `FailuresBeforeCritical` and `SuccessBeforePassing` (Consul's CheckTTL has
/// no StatusHandler): an update applies at once and expiry is critical at once.
#[tokio::test(start_paused = true)]
async fn ttl_checks_ignore_thresholds() {
    let h = H::new().await;
    let reg = r#"{"Name":"ttlfbc","Check":{"TTL":"2s","FailuresBeforeCritical":3,"SuccessBeforePassing":3}}"#;
    h.table(
        None,
        &[
            ("PUT", "/v1/agent/service/register", reg, 200, ""),
            (
                "PUT",
                "/v1/agent/check/pass/service:ttlfbc?note=ok",
                "",
                200,
                "",
            ),
            (
                "GET",
                "/v1/agent/checks",
                "",
                200,
                r#"~"Status":"passing","Notes":"","Output":"ok""#,
            ),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.table(None, &[
        ("GET", "/v1/agent/checks", "", 200, r#"~"Status":"critical","Notes":"","Output":"TTL expired (last output before timeout follows): ok""#),
    ]).await;
}

/// A service in maintenance has a critical `_service_maintenance:<id>` check (Consul's); only
/// the agent's aggregated status says `maintenance`, and the catalog takes no such status.
#[tokio::test]
async fn maintenance_checks_are_critical() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/agent/service/register", r#"{"Name":"web","Check":{"TTL":"1h","Status":"passing"}}"#, 200, ""),
        ("PUT", "/v1/agent/service/maintenance/web?enable=true&reason=upgrade", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/web", "", 503, r#"~"AggregatedStatus":"maintenance""#),
        ("PUT", "/v1/catalog/register", r#"{"Node":"n1","Address":"10.0.0.1","Check":{"CheckID":"m","Status":"maintenance"}}"#, 400, "Invalid check status"),
    ]).await;
    let critical = h
        .until("/v1/health/state/critical", |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|c| c["CheckID"] == "_service_maintenance:web"))
        })
        .await;
    let check = critical
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "_service_maintenance:web")
        .unwrap();
    assert_eq!(
        (&check["Status"], &check["Notes"], &check["ServiceID"]),
        (&"critical".into(), &"upgrade".into(), &"web".into())
    );
}

#[tokio::test]
async fn catalog_and_health_rules() {
    let h = H::new().await;
    let n1 = r#"{"Node":"n1","Address":"10.0.0.1","NodeMeta":{"env":"prod"},"Service":{"ID":"web1","Service":"web","Tags":["a","b"],"Port":80},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web1-http","ServiceID":"web1","Status":"passing"}]}"#;
    let n2 = r#"{"Node":"n2","Address":"10.0.0.2","NodeMeta":{"env":"dev"},"Service":{"ID":"web2","Service":"web","Tags":["a"],"Port":80},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web2-http","ServiceID":"web2","Status":"warning"}]}"#;
    h.table(
        None,
        &[
            ("PUT", "/v1/catalog/register", n1, 200, "true"),
            ("PUT", "/v1/catalog/register", n2, 200, "true"),
            (
                "PUT",
                "/v1/catalog/register",
                r#"{"Node":"","Address":"x"}"#,
                400,
                "Must provide node",
            ),
            (
                "GET",
                "/v1/catalog/services",
                "",
                200,
                r#"{"consul":[],"web":["a","b"]}"#,
            ),
            (
                "GET",
                "/v1/catalog/services?node-meta=env:dev",
                "",
                200,
                r#"{"web":["a"]}"#,
            ),
            (
                "GET",
                "/v1/catalog/service/web?tag=b",
                "",
                200,
                r#"~"ServiceID":"web1""#,
            ),
            (
                "GET",
                "/v1/catalog/service/web?node-meta=env:dev",
                "",
                200,
                r#"~"Node":"n2""#,
            ),
            ("GET", "/v1/catalog/service/nope", "", 200, "[]"),
            (
                "GET",
                "/v1/catalog/service/web?filter=Service%20==%20web",
                "",
                400,
                "~filter expressions are not supported",
            ),
            (
                "GET",
                "/v1/catalog/node/n1",
                "",
                200,
                r#"~"Services":{"web1":{"ID":"web1","Service":"web""#,
            ),
            ("GET", "/v1/catalog/node/nope", "", 200, "null"),
            (
                "GET",
                "/v1/catalog/nodes?node-meta=env:prod",
                "",
                200,
                r#"~"Node":"n1""#,
            ),
            (
                "GET",
                "/v1/health/service/web?passing=bogus",
                "",
                400,
                "~passing",
            ),
            (
                "GET",
                "/v1/health/checks/web",
                "",
                200,
                r#"~"CheckID":"web2-http""#,
            ),
            (
                "GET",
                "/v1/health/node/n2",
                "",
                200,
                r#"~"CheckID":"serfHealth""#,
            ),
            (
                "GET",
                "/v1/health/state/warning",
                "",
                200,
                r#"~"CheckID":"web2-http""#,
            ),
            (
                "GET",
                "/v1/health/state/bogus",
                "",
                400,
                "~Invalid check state",
            ),
        ],
    )
    .await;
    let count = |v: serde_json::Value| v.as_array().unwrap().len();
    assert_eq!(count(h.json("/v1/health/service/web").await), 2);
    assert_eq!(
        count(h.json("/v1/health/service/web?passing").await),
        1,
        "warning fails ?passing"
    );
    assert_eq!(
        count(h.json("/v1/health/service/web?passing=false").await),
        2
    );
    assert_eq!(count(h.json("/v1/health/service/web?tag=b").await), 1);
    assert_eq!(count(h.json("/v1/health/state/passing").await), 4);
    assert_eq!(count(h.json("/v1/catalog/service/web?tag=a").await), 2);
    // A blocking query on the service wakes when its health changes.
    let first = h
        .call("GET", "/v1/health/service/web?passing", "", None)
        .await;
    let index: u64 = first.headers["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let app = h.app.clone();
    let waiter = tokio::spawn(async move {
        let req = Request::get(format!(
            "/v1/health/service/web?passing&index={index}&wait=30s"
        ))
        .body(Body::empty())
        .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
    });
    let fix = r#"{"Node":"n2","Address":"10.0.0.2","NodeMeta":{"env":"dev"},"Check":{"CheckID":"web2-http","ServiceID":"web2","Status":"passing"}}"#;
    h.table(None, &[("PUT", "/v1/catalog/register", fix, 200, "true")])
        .await;
    let woke: serde_json::Value = serde_json::from_slice(&waiter.await.unwrap()).unwrap();
    assert_eq!(woke.as_array().unwrap().len(), 2);
    h.table(
        None,
        &[
            (
                "PUT",
                "/v1/catalog/deregister",
                r#"{"Node":"n2","ServiceID":"web2"}"#,
                200,
                "true",
            ),
            ("GET", "/v1/catalog/node/n2", "", 200, r#"~"Services":{}"#),
            (
                "PUT",
                "/v1/catalog/deregister",
                r#"{"Node":"n2"}"#,
                200,
                "true",
            ),
            ("GET", "/v1/catalog/node/n2", "", 200, "null"),
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn silent_nodes_fail_their_sessions_end_and_leave_removes_them() {
    let mut config = Config::dev("node1");
    config.failure_timeout_ms = 5_000;
    let h = H::with(config).await;
    let beat = r#"{"Node":"w1","ID":"11111111-2222-3333-4444-555555555555","Address":"127.0.0.9","Port":8500}"#;
    h.table(None, &[
        ("PUT", "/v1/internal/berth/heartbeat", beat, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"w1","Address":"127.0.0.9","Service":{"ID":"api","Service":"api"},"Check":{"CheckID":"api","ServiceID":"api","Status":"passing"}}"#, 200, "true"),
        ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"passing","Notes":"","Output":"Agent alive and reachable""#),
        ("GET", "/v1/agent/members", "", 200, r#"~"Name":"w1","Addr":"127.0.0.9","Port":8500"#),
    ]).await;
    let created = h
        .call("PUT", "/v1/session/create", r#"{"Node":"w1"}"#, None)
        .await;
    let session = serde_json::from_str::<serde_json::Value>(&created.body).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    h.table(
        None,
        &[
            (
                "PUT",
                &format!("/v1/kv/lock?acquire={session}"),
                "x",
                200,
                "true",
            ),
            (
                "GET",
                "/v1/health/service/api?passing",
                "",
                200,
                r#"~"Node":"w1""#,
            ),
        ],
    )
    .await;
    // Heartbeats keep it alive; silence past the timeout fails it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.call("PUT", "/v1/internal/berth/heartbeat", beat, None)
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.table(
        None,
        &[(
            "GET",
            "/v1/health/service/api?passing",
            "",
            200,
            r#"~"Node":"w1""#,
        )],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.table(None, &[
        ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"critical","Notes":"","Output":"Agent not live or unreachable""#),
        ("GET", "/v1/health/service/api?passing", "", 200, "[]"),
        ("GET", "/v1/agent/members", "", 200, r#"~"Port":8500,"Tags":{"build":"1.22.0:berth-0.1.0","dc":"dc1","id":"11111111-2222-3333-4444-555555555555","port":"8500","role":"node"},"Status":4"#),
        ("GET", &format!("/v1/session/info/{session}"), "", 200, "[]"),
        ("GET", "/v1/kv/lock", "", 200, r#"~"LockIndex":1,"Key":"lock""#),
    ]).await;
    let lock = h.json("/v1/kv/lock").await;
    assert!(lock[0].get("Session").is_none(), "lock released: {lock}");
    // A heartbeat revives it; a leave removes the node.
    h.table(
        None,
        &[
            ("PUT", "/v1/internal/berth/heartbeat", beat, 200, "true"),
            (
                "GET",
                "/v1/health/service/api?passing",
                "",
                200,
                r#"~"Node":"w1""#,
            ),
            ("PUT", "/v1/internal/berth/leave", beat, 200, "true"),
            ("GET", "/v1/catalog/node/w1", "", 200, "null"),
            (
                "GET",
                "/v1/agent/members",
                "",
                200,
                r#"~"role":"node"},"Status":3"#,
            ),
        ],
    )
    .await;
}

/// A second agent with a live member's node name but another node ID is refused (409) until
/// the first fails; its leave cannot remove the live node.
#[tokio::test(start_paused = true)]
async fn a_duplicate_node_name_is_refused_while_the_first_lives() {
    let mut config = Config::dev("node1");
    config.failure_timeout_ms = 5_000;
    let h = H::with(config).await;
    let first = r#"{"Node":"w1","ID":"11111111-2222-3333-4444-555555555555","Address":"127.0.0.9","Port":8500}"#;
    let second = r#"{"Node":"w1","ID":"66666666-7777-8888-9999-000000000000","Address":"127.0.0.10","Port":8500}"#;
    h.table(None, &[
        ("PUT", "/v1/internal/berth/heartbeat", first, 200, "true"),
        ("PUT", "/v1/internal/berth/heartbeat", second, 409, r#"node name "w1" is in use by a live agent at 127.0.0.9 with another node ID; stop one of the two agents or give this one another node name (it is let in once the other leaves or fails)"#),
        ("PUT", "/v1/internal/berth/leave", second, 409, "~is in use by a live agent"),
        ("GET", "/v1/catalog/node/w1", "", 200, r#"~"Address":"127.0.0.9""#),
        ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"passing""#),
    ]).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    h.table(None, &[
        ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"critical""#),
        ("PUT", "/v1/internal/berth/heartbeat", second, 200, "true"),
        ("GET", "/v1/catalog/node/w1", "", 200, r#"~"ID":"66666666-7777-8888-9999-000000000000","Node":"w1","Address":"127.0.0.10""#),
        ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"passing""#),
    ]).await;
}

/// A durable server restart seeds only agents' nodes as members: a node registered straight
/// into the catalog (no agent, no `serfHealth`) stays passing, an agent that does not come back
/// fails.
#[tokio::test(start_paused = true)]
async fn restart_seeds_only_agent_nodes_as_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev("node1");
    config.dev = false;
    config.data_dir = Some(dir.path().to_owned());
    config.failure_timeout_ms = 3_000;
    let beat = r#"{"Node":"w1","ID":"11111111-2222-3333-4444-555555555555","Address":"127.0.0.9","Port":8500}"#;
    let external =
        r#"{"Node":"extdb","Address":"10.1.1.1","Service":{"Service":"postgres","Port":5432}}"#;
    for round in 0..2 {
        let stop = CancellationToken::new();
        let (app, writer) = build(
            &config,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8500,
            stop.clone(),
            stop.clone(),
        )
        .await
        .expect("durable server builds");
        let h = H {
            app,
            stop: stop.clone(),
        };
        if round == 0 {
            h.table(
                None,
                &[
                    ("PUT", "/v1/catalog/register", external, 200, "true"),
                    ("PUT", "/v1/internal/berth/heartbeat", beat, 200, "true"),
                    (
                        "GET",
                        "/v1/health/service/postgres?passing",
                        "",
                        200,
                        r#"~"Node":"extdb""#,
                    ),
                ],
            )
            .await;
        } else {
            tokio::time::sleep(Duration::from_secs(10)).await;
            h.table(None, &[
                ("GET", "/v1/health/service/postgres?passing", "", 200, r#"~"Node":"extdb""#),
                ("GET", "/v1/health/node/extdb", "", 200, "[]"),
                ("GET", "/v1/health/node/w1", "", 200, r#"~"Status":"critical","Notes":"","Output":"Agent not live or unreachable""#),
            ]).await;
            let members = h.json("/v1/agent/members").await;
            let names: Vec<&str> = members
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["node1", "w1"], "{members}");
        }
        drop(h);
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn acl_rules() {
    let disabled = H::new().await;
    disabled
        .table(
            None,
            &[("GET", "/v1/acl/tokens", "", 401, "ACL support disabled")],
        )
        .await;
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    let h = H::with(config).await;
    let root = Some("root");
    h.table(
        root,
        &[
            ("PUT", "/v1/kv/app/x", "1", 200, "true"),
            ("PUT", "/v1/kv/app/y", "2", 200, "true"),
            ("PUT", "/v1/kv/other", "3", 200, "true"),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }"}"#,
                200,
                r#"~"Name":"kv-read""#,
            ),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"app","Rules":"{\"key_prefix\":{\"app/\":{\"policy\":\"write\"}}}"}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"bad","Rules":"key_prefix \"\" { policy = \"root\" }"}"#,
                400,
                "~invalid policy",
            ),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"kv-read"}"#,
                400,
                "~already exists",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"ro-secret","Description":"ro","Policies":[{"Name":"kv-read"}]}"#,
                200,
                r#"~"SecretID":"ro-secret""#,
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"app-secret","Policies":[{"Name":"app"}]}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"Policies":[{"Name":"missing"}]}"#,
                400,
                "~No such ACL policy",
            ),
            ("GET", "/v1/acl/policies", "", 200, "~global-management"),
            ("GET", "/v1/acl/tokens", "", 200, r#"~"SecretID":"""#),
        ],
    )
    .await;
    h.table(
        None,
        &[
            ("GET", "/v1/kv/other", "", 403, "Permission denied"),
            ("PUT", "/v1/kv/other", "x", 403, "Permission denied"),
            ("GET", "/v1/acl/tokens", "", 403, "Permission denied"),
        ],
    )
    .await;
    h.table(
        Some("nope"),
        &[("GET", "/v1/kv/other", "", 403, "ACL not found")],
    )
    .await;
    h.table(
        Some("ro-secret"),
        &[
            ("GET", "/v1/kv/other?raw", "", 200, "3"),
            ("PUT", "/v1/kv/other", "x", 403, "Permission denied"),
            ("DELETE", "/v1/kv/app?recurse", "", 403, "Permission denied"),
            (
                "GET",
                "/v1/acl/token/self",
                "",
                200,
                r#"~"Description":"ro""#,
            ),
            ("PUT", "/v1/acl/token", "{}", 403, "Permission denied"),
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"web"}"#,
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
    h.table(
        Some("app-secret"),
        &[
            ("PUT", "/v1/kv/app/z", "3", 200, "true"),
            ("PUT", "/v1/kv/other", "x", 403, "Permission denied"),
            (
                "GET",
                "/v1/kv/?keys",
                "",
                200,
                r#"["app/x","app/y","app/z"]"#,
            ),
            (
                "PUT",
                "/v1/txn",
                r#"[{"KV":{"Verb":"set","Key":"other","Value":"eA=="}}]"#,
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
    let list = h
        .call("GET", "/v1/kv/?recurse", "", Some("app-secret"))
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.headers["x-consul-results-filtered-by-acls"], "true");
    let keys: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list.body)
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["app/x", "app/y", "app/z"]);
    let full = h.call("GET", "/v1/kv/?recurse", "", root).await;
    assert!(
        full.headers
            .get("x-consul-results-filtered-by-acls")
            .is_none()
    );
    // Token from ?token= and Authorization: Bearer; empty header is anonymous.
    h.table(
        None,
        &[("GET", "/v1/kv/other?raw&token=ro-secret", "", 200, "3")],
    )
    .await;
    let bearer = h
        .app
        .clone()
        .oneshot(
            Request::get("/v1/kv/other?raw")
                .header("Authorization", "Bearer ro-secret")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    h.table(
        Some(""),
        &[("GET", "/v1/kv/other", "", 403, "Permission denied")],
    )
    .await;
    // Bootstrap once.
    h.table(
        None,
        &[
            ("PUT", "/v1/acl/bootstrap", "", 200, "~Bootstrap Token"),
            (
                "PUT",
                "/v1/acl/bootstrap",
                "",
                403,
                "~ACL bootstrap no longer allowed",
            ),
        ],
    )
    .await;
}
