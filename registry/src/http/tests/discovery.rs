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
        ("PUT", "/v1/agent/maintenance?enable=true&reason=drain", "", 200, ""),
        ("GET", "/v1/agent/checks", "", 200, r#"~"_node_maintenance":{"Node":"node1","CheckID":"_node_maintenance","Name":"Node Maintenance Mode","Status":"critical","Notes":"drain""#),
        ("GET", "/v1/agent/health/service/id/web", "", 503, r#"~"AggregatedStatus":"maintenance""#),
        ("PUT", "/v1/agent/maintenance", "", 400, "Missing value for enable"),
        ("PUT", "/v1/agent/maintenance?enable=false", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/web", "", 200, r#"~"AggregatedStatus":"passing""#),
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
                "Failed to create boolean expression evaluator: Selector \"Service\" is not valid",
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
            // Consul's DNS policy: `query_prefix` is accepted (and not enforced).
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"dns","Rules":"node_prefix \"\" { policy = \"read\" }\nquery_prefix \"\" { policy = \"read\" }"}"#,
                200,
                r#"~query_prefix"#,
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
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"acl-read","Rules":"acl = \"read\""}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"aclro-secret","Policies":[{"Name":"acl-read"}]}"#,
                200,
                "*",
            ),
            ("GET", "/v1/acl/policies", "", 200, "~global-management"),
            // acl:write sees secrets, in lists too.
            ("GET", "/v1/acl/tokens", "", 200, r#"~"SecretID":"ro-secret""#),
        ],
    )
    .await;
    // acl:read sees tokens, never their secrets (else it could borrow any of them).
    let ro_accessor = {
        let list = h.call("GET", "/v1/acl/tokens", "", root).await;
        let tokens: Vec<serde_json::Value> = serde_json::from_str(&list.body).unwrap();
        tokens
            .iter()
            .find(|t| t["SecretID"] == "ro-secret")
            .unwrap()["AccessorID"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    h.table(
        root,
        &[(
            "GET",
            &format!("/v1/acl/token/{ro_accessor}"),
            "",
            200,
            r#"~"SecretID":"ro-secret""#,
        )],
    )
    .await;
    let as_acl_reader = h
        .call("GET", "/v1/acl/tokens", "", Some("aclro-secret"))
        .await;
    assert_eq!(as_acl_reader.status, 200);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&as_acl_reader.body).unwrap();
    assert!(listed.len() >= 4, "{listed:?}");
    assert!(
        listed.iter().all(|t| t["SecretID"] == "<hidden>"),
        "{listed:?}"
    );
    h.table(
        Some("aclro-secret"),
        &[
            (
                "GET",
                &format!("/v1/acl/token/{ro_accessor}"),
                "",
                200,
                r#"~"SecretID":"<hidden>""#,
            ),
            // Its own secret is its to see.
            (
                "GET",
                "/v1/acl/token/self",
                "",
                200,
                r#"~"SecretID":"aclro-secret""#,
            ),
            ("PUT", "/v1/acl/token", "{}", 403, "Permission denied"),
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
}

#[tokio::test]
async fn acl_master_and_anonymous_are_real_tokens_and_bootstrap_is_closed() {
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    let h = H::with(config).await;
    // The configured master token bootstrapped the system: nobody can mint another one.
    h.table(
        None,
        &[(
            "PUT",
            "/v1/acl/bootstrap",
            "",
            403,
            "Permission denied: ACL bootstrap no longer allowed (reset index: 1)",
        )],
    )
    .await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/acl/bootstrap",
                "",
                403,
                "~ACL bootstrap no longer allowed",
            ),
            (
                "GET",
                "/v1/acl/token/self",
                "",
                200,
                r#"~"Description":"Initial Management Token","Policies":[{"ID":"00000000-0000-0000-0000-000000000001","Name":"global-management"}]"#,
            ),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }"}"#,
                200,
                "*",
            ),
            ("PUT", "/v1/kv/k", "v", 200, "true"),
        ],
    )
    .await;
    // Anonymous is a token of its own, without policies until someone grants it some.
    h.table(
        None,
        &[
            (
                "GET",
                "/v1/acl/token/self",
                "",
                200,
                r#"~"AccessorID":"00000000-0000-0000-0000-000000000002","SecretID":"anonymous","Description":"Anonymous Token","Policies":[]"#,
            ),
            ("GET", "/v1/kv/k?raw", "", 403, "Permission denied"),
        ],
    )
    .await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/acl/token/00000000-0000-0000-0000-000000000002",
                r#"{"Description":"Anonymous Token","Policies":[{"Name":"kv-read"}]}"#,
                200,
                r#"~"Name":"kv-read""#,
            ),
            (
                "DELETE",
                "/v1/acl/token/00000000-0000-0000-0000-000000000002",
                "",
                400,
                "Delete operation not permitted on the anonymous token",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"AccessorID":"00000000-0000-0000-0000-000000000002"}"#,
                400,
                "Invalid Token: AccessorID is already in use",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"anonymous"}"#,
                400,
                "Invalid Token: SecretID is already in use",
            ),
        ],
    )
    .await;
    h.table(
        None,
        &[
            ("GET", "/v1/kv/k?raw", "", 200, "v"),
            ("PUT", "/v1/kv/k", "w", 403, "Permission denied"),
        ],
    )
    .await;
    let tokens: Vec<serde_json::Value> =
        serde_json::from_str(&h.call("GET", "/v1/acl/tokens", "", Some("root")).await.body)
            .unwrap();
    let master = tokens
        .iter()
        .find(|t| t["Description"] == "Initial Management Token")
        .expect("the master token is listed");
    let accessor = master["AccessorID"].as_str().unwrap();
    h.table(
        Some("root"),
        &[(
            "DELETE",
            &format!("/v1/acl/token/{accessor}"),
            "",
            400,
            "Delete operation not permitted on the configured master token",
        )],
    )
    .await;
}

/// An ACL-enabled server with tokens `evil` (service "evil" write, every node write), `nodew`
/// (every node write) and `svcro` (every service read, no node rights).
async fn acl_server() -> H {
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    let h = H::with(config).await;
    let policy =
        |name: &str, rules: &str| serde_json::json!({"Name": name, "Rules": rules}).to_string();
    let token = |secret: &str, policy: &str| {
        serde_json::json!({"SecretID": secret, "Policies": [{"Name": policy}]}).to_string()
    };
    let rows = [
        policy(
            "evil",
            r#"service "evil" { policy = "write" }
               node_prefix "" { policy = "write" }"#,
        ),
        policy("nodew", r#"node_prefix "" { policy = "write" }"#),
        policy("svcro", r#"service_prefix "" { policy = "read" }"#),
    ];
    for body in &rows {
        h.table(Some("root"), &[("PUT", "/v1/acl/policy", body, 200, "*")])
            .await;
    }
    for (secret, policy) in [("evil", "evil"), ("nodew", "nodew"), ("svcro", "svcro")] {
        h.table(
            Some("root"),
            &[("PUT", "/v1/acl/token", &token(secret, policy), 200, "*")],
        )
        .await;
    }
    h
}

#[tokio::test]
async fn registrations_cannot_take_over_services_the_token_may_not_write() {
    let h = acl_server().await;
    h.table(Some("root"), &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Service":{"ID":"db1","Service":"db","Port":5432}}"#, 200, "true"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"web","Port":80}"#, 200, ""),
        ("PUT", "/v1/agent/check/register", r#"{"Name":"webcheck","ServiceID":"web","TTL":"1m"}"#, 200, ""),
    ]).await;
    h.table(Some("evil"), &[
        // Catalog: replacing db1 by ID, or attaching a check to it, needs write on "db".
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Service":{"ID":"db1","Service":"evil","Port":6666}}"#, 403, "Permission denied"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Service":{"ID":"evil1","Service":"evil"}}"#, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Check":{"CheckID":"c1","ServiceID":"evil1","Status":"critical"}}"#, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Service":{"ID":"evil1","Service":"evil"},"Check":{"CheckID":"c2","ServiceID":"db1","Status":"critical"}}"#, 403, "Permission denied"),
        // Agent: the same for a service ID, and for a check that would replace another
        // service's check.
        ("PUT", "/v1/agent/service/register", r#"{"ID":"web","Name":"evil","Port":6666}"#, 403, "Permission denied"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"evil","Check":{"CheckID":"webcheck","TTL":"1m"}}"#, 403, "Permission denied"),
        ("PUT", "/v1/agent/check/register", r#"{"Name":"webcheck","TTL":"1m"}"#, 403, "Permission denied"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"evil","Port":6666}"#, 200, ""),
        ("PUT", "/v1/agent/check/register", r#"{"Name":"evil-node-check","TTL":"1m"}"#, 200, ""),
    ]).await;
    h.table(Some("nodew"), &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Check":{"CheckID":"x","ServiceID":"db1","Status":"critical"}}"#, 403, "Permission denied"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext1","Address":"10.0.0.9","Check":{"CheckID":"x","Status":"passing"}}"#, 200, "true"),
    ]).await;
    h.table(Some("root"), &[
        ("GET", "/v1/catalog/node/ext1", "", 200, r#"~"db1":{"ID":"db1","Service":"db","Tags":[],"Meta":{},"Port":5432"#),
        ("GET", "/v1/agent/services", "", 200, r#"~"web":{"ID":"web","Service":"web""#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"webcheck":{"Node":"node1","CheckID":"webcheck","Name":"webcheck","Status":"critical","Notes":"","Output":"","ServiceID":"web""#),
    ]).await;
}

#[tokio::test]
async fn acl_listings_need_read_on_both_the_node_and_the_service() {
    let h = acl_server().await;
    let n1 = r#"{"Node":"n1","Address":"10.0.0.1","Service":{"ID":"web1","Service":"web"},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web1-http","ServiceID":"web1","Status":"passing"}]}"#;
    let n2 = r#"{"Node":"n2","Address":"10.0.0.2","Service":{"ID":"web2","Service":"web"},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web2-http","ServiceID":"web2","Status":"passing"}]}"#;
    h.table(
        Some("root"),
        &[
            ("PUT", "/v1/catalog/register", n1, 200, "true"),
            ("PUT", "/v1/catalog/register", n2, 200, "true"),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"noder","Rules":"node_prefix \"\" { policy = \"read\" }"}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"web-n1","Rules":"service \"web\" { policy = \"read\" }\nnode \"n1\" { policy = \"read\" }"}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"noder","Policies":[{"Name":"noder"}]}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"web-n1","Policies":[{"Name":"web-n1"}]}"#,
                200,
                "*",
            ),
        ],
    )
    .await;
    // (token, uri, expected body, filtered header expected)
    let cases: &[(&str, &str, &str, bool)] = &[
        // Service read without node read sees no node, and is told so.
        ("svcro", "/v1/health/service/web", "[]", true),
        ("svcro", "/v1/catalog/service/web", "[]", true),
        ("svcro", "/v1/health/checks/web", "[]", true),
        ("svcro", "/v1/health/state/passing", "[]", true),
        ("svcro", "/v1/health/node/n1", "[]", true),
        ("svcro", "/v1/catalog/node/n1", "null", true),
        ("svcro", "/v1/catalog/node/nope", "null", false),
        ("svcro", "/v1/catalog/services", r#"~"web":[]"#, false),
        // Node read without service read sees the node, not its services.
        ("noder", "/v1/catalog/node/n1", r#"~"Services":{}"#, true),
        (
            "noder",
            "/v1/health/node/n1",
            r#"~[{"Node":"n1","CheckID":"serfHealth""#,
            true,
        ),
        ("noder", "/v1/health/service/web", "[]", true),
        // Both on n1 only: the n1 entries.
        ("web-n1", "/v1/health/service/web", r#"~"ID":"web1""#, true),
        (
            "web-n1",
            "/v1/catalog/service/web",
            r#"~"ServiceID":"web1""#,
            true,
        ),
        (
            "web-n1",
            "/v1/health/checks/web",
            r#"~"CheckID":"web1-http""#,
            true,
        ),
        ("web-n1", "/v1/catalog/node/n1", r#"~"web1":{"#, false),
        ("root", "/v1/health/service/web", r#"~"ID":"web2""#, false),
        ("root", "/v1/catalog/node/n1", r#"~"web1":{"#, false),
    ];
    for (token, uri, expected, header) in cases {
        let a = h.call("GET", uri, "", Some(token)).await;
        assert_eq!(a.status, 200, "{token} {uri}: {}", a.body);
        match expected.strip_prefix('~') {
            Some(part) => assert!(a.body.contains(part), "{token} {uri}: {}", a.body),
            None => assert_eq!(a.body, *expected, "{token} {uri}"),
        }
        assert_eq!(
            a.headers.get("x-consul-results-filtered-by-acls").is_some(),
            *header,
            "{token} {uri}: {}",
            a.body
        );
        if *token == "web-n1" {
            assert!(!a.body.contains("n2"), "{uri}: {}", a.body);
        }
    }
}

#[tokio::test]
async fn server_agent_self_members_and_join_are_acl_checked() {
    let h = acl_server().await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"agent-read","Rules":"agent \"node1\" { policy = \"read\" }"}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"agent-read","Policies":[{"Name":"agent-read"}]}"#,
                200,
                "*",
            ),
            ("GET", "/v1/agent/self", "", 200, r#"~"NodeName":"node1""#),
            ("PUT", "/v1/agent/join/127.0.0.1:8500", "", 200, ""),
            ("GET", "/v1/agent/members", "", 200, r#"~"Name":"node1""#),
        ],
    )
    .await;
    h.table(
        None,
        &[
            ("GET", "/v1/agent/self", "", 403, "Permission denied"),
            (
                "PUT",
                "/v1/agent/join/127.0.0.1:8500",
                "",
                403,
                "Permission denied",
            ),
            ("GET", "/v1/agent/members", "", 200, "[]"),
            // Agents learn the datacenter here at join, whatever their token.
            ("GET", "/v1/catalog/datacenters", "", 200, r#"["dc1"]"#),
        ],
    )
    .await;
    h.table(
        Some("agent-read"),
        &[
            ("GET", "/v1/agent/self", "", 200, r#"~"NodeName":"node1""#),
            (
                "PUT",
                "/v1/agent/join/127.0.0.1:8500",
                "",
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
    let anon = h.call("GET", "/v1/agent/members", "", None).await;
    assert_eq!(anon.headers["x-consul-results-filtered-by-acls"], "true");
    let evil = h.call("GET", "/v1/agent/members", "", Some("evil")).await;
    assert!(evil.body.contains(r#""Name":"node1""#), "{}", evil.body);
    assert!(
        evil.headers
            .get("x-consul-results-filtered-by-acls")
            .is_none()
    );
}

#[tokio::test]
async fn routes_without_acl_resolution_fail_closed() {
    use crate::http::authz::Authz;
    // A handler taking `Authz` on a router without the resolving middleware must not run.
    let app = Router::new().route(
        "/v1/agent/services",
        axum::routing::get(|_: Authz| async { "ran without ACLs" }),
    );
    let response = app
        .oneshot(
            Request::get("/v1/agent/services")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], b"ACL resolution missing for this route");
}

#[tokio::test]
async fn agents_resolve_tokens_through_the_server_with_their_own_token() {
    let uri = "/v1/internal/berth/acl/resolve";
    let ask = |secret: &str| serde_json::json!({"Node": "ag1", "SecretID": secret}).to_string();
    let h = acl_server().await;
    // `evil` can write every node, as an agent token must for its own node.
    h.table(Some("evil"), &[
        ("PUT", uri, &ask("svcro"), 200, r#"{"Enabled":true,"Found":true,"Management":false,"Rules":["service_prefix \"\" { policy = \"read\" }"]}"#),
        ("PUT", uri, &ask("root"), 200, r#"{"Enabled":true,"Found":true,"Management":true,"Rules":[]}"#),
        ("PUT", uri, &ask(""), 200, r#"{"Enabled":true,"Found":true,"Management":false,"Rules":[]}"#),
        ("PUT", uri, &ask("nope"), 200, r#"{"Enabled":true,"Found":false,"Management":false,"Rules":[]}"#),
        ("PUT", uri, r#"{"SecretID":"svcro"}"#, 400, "Must provide node"),
    ]).await;
    // Without node:write on the asking node, nobody learns how a secret resolves.
    h.table(
        Some("svcro"),
        &[("PUT", uri, &ask("root"), 403, "Permission denied")],
    )
    .await;
    h.table(
        None,
        &[("PUT", uri, &ask("root"), 403, "Permission denied")],
    )
    .await;
    h.table(
        Some("nope"),
        &[("PUT", uri, &ask("root"), 403, "ACL not found")],
    )
    .await;
    let open = H::new().await;
    open.table(
        None,
        &[(
            "PUT",
            uri,
            &ask("anything"),
            200,
            r#"{"Enabled":false,"Found":true,"Management":true,"Rules":[]}"#,
        )],
    )
    .await;
}

/// `?filter=` on every listing Consul filters: one row per endpoint (what it keeps), and the
/// 400 with go-bexpr's text for a selector the element type lacks.
#[tokio::test]
async fn filter_expressions_per_endpoint() {
    let h = H::new().await;
    let n1 = r#"{"Node":"n1","Address":"10.0.0.1","NodeMeta":{"env":"prod"},"Service":{"ID":"web1","Service":"web","Tags":["a","b"],"Port":80,"Meta":{"v":"1"}},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web1-http","ServiceID":"web1","Status":"passing"}]}"#;
    let n2 = r#"{"Node":"n2","Address":"10.0.0.2","NodeMeta":{"env":"dev"},"Service":{"ID":"db2","Service":"db","Tags":["x"],"Port":5432},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"db2-tcp","ServiceID":"db2","Status":"critical"}]}"#;
    let n3 = r#"{"Node":"n3","Address":"10.0.0.3","Service":{"ID":"web3","Service":"web","Tags":["a"],"Port":81},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"web3-http","ServiceID":"web3","Status":"warning"}]}"#;
    for body in [n1, n2, n3] {
        h.table(None, &[("PUT", "/v1/catalog/register", body, 200, "true")])
            .await;
    }
    h.table(
        None,
        &[
            ("PUT", "/v1/agent/service/register", r#"{"ID":"api1","Name":"api","Tags":["blue"],"Port":9000,"Check":{"TTL":"1h","Status":"passing"}}"#, 200, ""),
            ("PUT", "/v1/agent/service/register", r#"{"ID":"api2","Name":"api","Tags":["green"],"Port":9001}"#, 200, ""),
        ],
    )
    .await;
    let q = |path: &str, expr: &str| {
        format!(
            "{path}?filter={}",
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    let ids = |v: &serde_json::Value, key: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
        let mut out: Vec<String> = match v {
            serde_json::Value::Array(a) => a.iter().map(key).collect(),
            serde_json::Value::Object(o) => o.values().map(key).collect(),
            _ => vec![],
        };
        out.sort();
        out
    };
    let field =
        |name: &'static str| move |e: &serde_json::Value| e[name].as_str().unwrap_or("").to_owned();
    let svc_id = |e: &serde_json::Value| e["Service"]["ID"].as_str().unwrap().to_owned();
    // (uri, how to name an element, names expected)
    type Name = Box<dyn Fn(&serde_json::Value) -> String>;
    let rows: Vec<(String, Name, Vec<&str>)> = vec![
        (
            q("/v1/catalog/nodes", "Meta.env == prod"),
            Box::new(field("Node")),
            vec!["n1"],
        ),
        (
            q(
                "/v1/catalog/nodes",
                "Address matches \"^10[.]0[.]0[.][23]$\"",
            ),
            Box::new(field("Node")),
            vec!["n2", "n3"],
        ),
        (
            q("/v1/catalog/service/web", "ServiceTags contains b"),
            Box::new(field("ServiceID")),
            vec!["web1"],
        ),
        (
            q(
                "/v1/catalog/service/web",
                "ServiceMeta.v == \"1\" or NodeMeta is empty",
            ),
            Box::new(field("ServiceID")),
            vec!["web1", "web3"],
        ),
        (
            q("/v1/health/service/web", "Checks.Status == warning"),
            Box::new(svc_id),
            vec!["web3"],
        ),
        (
            q(
                "/v1/health/service/web",
                "Service.Tags contains b and Node.Meta.env == prod",
            ),
            Box::new(svc_id),
            vec!["web1"],
        ),
        (
            q("/v1/health/service/web", "not Node.Node == n1"),
            Box::new(svc_id),
            vec!["web3"],
        ),
        (
            q("/v1/health/checks/web", "Status != passing"),
            Box::new(field("CheckID")),
            vec!["web3-http"],
        ),
        (
            q("/v1/health/node/n2", "ServiceName == db"),
            Box::new(field("CheckID")),
            vec!["db2-tcp"],
        ),
        (
            q(
                "/v1/health/state/any",
                "CheckID == serfHealth and n2 in Node",
            ),
            Box::new(field("Node")),
            vec!["n2"],
        ),
        (
            q(
                "/v1/health/state/passing",
                "ServiceID == \"\" and Node != node1",
            ),
            Box::new(field("Node")),
            vec!["n1", "n2", "n3"],
        ),
        (
            q("/v1/agent/services", "green in Tags"),
            Box::new(field("ID")),
            vec!["api2"],
        ),
        (
            q("/v1/agent/services", "Service == api and Port != 9000"),
            Box::new(field("ID")),
            vec!["api2"],
        ),
        (
            q("/v1/agent/checks", "ServiceID == api1"),
            Box::new(field("ServiceID")),
            vec!["api1"],
        ),
    ];
    for (uri, key, want) in &rows {
        let v = h.json(uri).await;
        assert_eq!(ids(&v, key.as_ref()), *want, "{uri}: {v}");
    }
    // `/v1/catalog/node/<n>` filters the node's services; `/v1/catalog/services` the instances.
    let node = h.json(&q("/v1/catalog/node/n1", "Service == web")).await;
    assert_eq!(node["Services"].as_object().unwrap().len(), 1);
    assert_eq!(
        h.json(&q("/v1/catalog/services", "ServicePort == 5432"))
            .await,
        serde_json::json!({"db": ["x"]})
    );
    assert_eq!(
        h.json(&q("/v1/catalog/services", "NodeMeta.env == prod"))
            .await,
        serde_json::json!({"web": ["a", "b"]})
    );
    // an empty expression filters nothing
    assert_eq!(
        h.json("/v1/catalog/nodes?filter=")
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let prefix = "Failed to create boolean expression evaluator: ";
    for (uri, text) in [
        (
            q("/v1/catalog/nodes", "ServiceName == web"),
            "Selector \"ServiceName\" is not valid",
        ),
        (
            q("/v1/catalog/services", "Service == web"),
            "Selector \"Service\" is not valid",
        ),
        (
            q("/v1/catalog/service/web", "Tags contains a"),
            "Selector \"Tags\" is not valid",
        ),
        (
            q("/v1/catalog/node/n1", "ServiceName == web"),
            "Selector \"ServiceName\" is not valid",
        ),
        (
            q("/v1/health/service/web", "Service.Nope == x"),
            "Selector \"Service.Nope\" is not valid",
        ),
        (
            q("/v1/health/checks/web", "Checks.Status == x"),
            "Selector \"Checks\" is not valid",
        ),
        (
            q("/v1/health/node/n1", "Status is empty"),
            "Invalid match operator \"Is Empty\" for selector \"Status\"",
        ),
        (
            q("/v1/health/state/any", "Nope == 1"),
            "Selector \"Nope\" is not valid",
        ),
        (
            q("/v1/agent/services", "ServiceName == api"),
            "Selector \"ServiceName\" is not valid",
        ),
        (
            q("/v1/agent/checks", "Port == 1"),
            "Selector \"Port\" is not valid",
        ),
    ] {
        let a = h.call("GET", &uri, "", None).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (400, format!("{prefix}{text}").as_str()),
            "{uri}"
        );
    }
    let a = h
        .call(
            "GET",
            &q("/v1/health/service/web", "Service.Service =="),
            "",
            None,
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.body.starts_with(prefix) && a.body.contains("no match found"),
        "{}",
        a.body
    );
}

/// Roles, identities, expiry, clone, list filters, 404s and the auth-method family, as
/// Consul's ACL API documents them.
#[tokio::test]
async fn acl_roles_identities_expiry_and_clone() {
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    let h = H::with(config).await;
    let root = Some("root");
    let body = |a: &Answer| -> serde_json::Value { serde_json::from_str(&a.body).unwrap() };
    let policy = put_ok(
        &h,
        "/v1/acl/policy",
        r#"{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }"}"#,
    )
    .await;
    let policy_id = policy["ID"].as_str().unwrap().to_owned();
    // A role links policies by name or ID and carries identities.
    let role = put_ok(&h,
        "/v1/acl/role",
        r#"{"Name":"reader","Description":"r","Policies":[{"Name":"kv-read"}],"ServiceIdentities":[{"ServiceName":"web"}]}"#,
    )
    .await;
    let role_id = role["ID"].as_str().unwrap().to_owned();
    assert_eq!(role["Policies"][0]["ID"], policy_id.as_str());
    assert_eq!(role["ServiceIdentities"][0]["ServiceName"], "web");
    assert!(
        role.get("NodeIdentities").is_none(),
        "omitted when empty: {role}"
    );
    h.table(
        root,
        &[
            (
                "GET",
                &format!("/v1/acl/role/{role_id}"),
                "",
                200,
                r#"~"Name":"reader""#,
            ),
            (
                "GET",
                "/v1/acl/role/name/reader",
                "",
                200,
                &format!("~\"ID\":\"{role_id}\""),
            ),
            ("GET", "/v1/acl/roles", "", 200, "~\"reader\""),
            (
                "GET",
                &format!("/v1/acl/roles?policy={policy_id}"),
                "",
                200,
                "~\"reader\"",
            ),
            ("GET", "/v1/acl/roles?policy=nope", "", 200, "[]"),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"reader"}"#,
                400,
                "Invalid Role: A Role with Name \"reader\" already exists",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{}"#,
                400,
                "Invalid Role: no Name is set",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"bad name"}"#,
                400,
                "~Invalid Role: invalid Name",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"x","Policies":[{"ID":"nope"}]}"#,
                400,
                "No such ACL policy with ID \"nope\"",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"x","ServiceIdentities":[{"ServiceName":"Web!"}]}"#,
                400,
                "~has an invalid name",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"x","NodeIdentities":[{"NodeName":"n1"}]}"#,
                400,
                "Node identity is missing the datacenter field on this role",
            ),
            (
                "PUT",
                "/v1/acl/role",
                r#"{"Name":"x","TemplatedPolicies":[{"TemplateName":"builtin/service"}]}"#,
                400,
                "validation error for templated policy: builtin/service: name is required",
            ),
            // Unknown objects read by a privileged token: 404.
            (
                "GET",
                "/v1/acl/role/00000000-0000-0000-0000-00000000dead",
                "",
                404,
                "ACL not found",
            ),
            ("GET", "/v1/acl/role/name/nope", "", 404, "ACL not found"),
            (
                "GET",
                "/v1/acl/token/00000000-0000-0000-0000-00000000dead",
                "",
                404,
                "ACL not found",
            ),
            (
                "GET",
                "/v1/acl/policy/00000000-0000-0000-0000-00000000dead",
                "",
                404,
                "ACL not found",
            ),
            ("GET", "/v1/acl/policy/name/nope", "", 404, "ACL not found"),
        ],
    )
    .await;
    // Tokens link roles by name; the role's policy and identity grant access.
    let by_role = put_ok(
        &h,
        "/v1/acl/token",
        r#"{"SecretID":"role-secret","Roles":[{"Name":"reader"}]}"#,
    )
    .await;
    assert_eq!(by_role["Roles"][0]["ID"], role_id.as_str());
    let svc = put_ok(&h,
        "/v1/acl/token",
        r#"{"SecretID":"svc-secret","ServiceIdentities":[{"ServiceName":"api","Datacenters":["dc1"]}]}"#,
    )
    .await;
    put_ok(&h,
        "/v1/acl/token",
        r#"{"SecretID":"other-dc","ServiceIdentities":[{"ServiceName":"api","Datacenters":["dc2"]}]}"#,
    )
    .await;
    put_ok(
        &h,
        "/v1/acl/token",
        r#"{"SecretID":"node-secret","NodeIdentities":[{"NodeName":"n9","Datacenter":"dc1"}]}"#,
    )
    .await;
    let reg_api = r#"{"Name":"api"}"#;
    let node_reg = r#"{"Node":"n9","Address":"10.0.0.9"}"#;
    h.table(root, &[("PUT", "/v1/kv/k", "v", 200, "true")])
        .await;
    h.table(
        Some("role-secret"),
        &[
            ("GET", "/v1/kv/k?raw", "", 200, "v"),
            ("PUT", "/v1/kv/k", "w", 403, "~Permission denied"),
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"web"}"#,
                200,
                "",
            ),
        ],
    )
    .await;
    h.table(
        Some("svc-secret"),
        &[
            ("PUT", "/v1/agent/service/register", reg_api, 200, ""),
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"db"}"#,
                403,
                "~Permission denied",
            ),
            ("GET", "/v1/agent/services", "", 200, "~\"web\""),
            ("GET", "/v1/kv/k", "", 403, "~Permission denied"),
        ],
    )
    .await;
    h.table(
        Some("other-dc"),
        &[(
            "PUT",
            "/v1/agent/service/register",
            reg_api,
            403,
            "~Permission denied",
        )],
    )
    .await;
    h.table(
        Some("node-secret"),
        &[
            ("PUT", "/v1/catalog/register", node_reg, 200, "true"),
            (
                "PUT",
                "/v1/catalog/register",
                r#"{"Node":"n8","Address":"10.0.0.8"}"#,
                403,
                "~Permission denied",
            ),
        ],
    )
    .await;
    // List filters.
    assert_eq!(
        secrets(&h, format!("/v1/acl/tokens?role={role_id}")).await,
        ["role-secret"]
    );
    assert_eq!(
        secrets(&h, "/v1/acl/tokens?servicename=api".into()).await,
        ["other-dc", "svc-secret"]
    );
    assert!(
        secrets(&h, "/v1/acl/tokens?authmethod=kube".into())
            .await
            .is_empty()
    );
    assert!(
        secrets(&h, format!("/v1/acl/tokens?policy={policy_id}"))
            .await
            .is_empty()
    );
    // Clone: new accessor and secret, same grants; Description from the body.
    let svc_accessor = svc["AccessorID"].as_str().unwrap();
    let a = h
        .call(
            "PUT",
            &format!("/v1/acl/token/{svc_accessor}/clone"),
            r#"{"Description":"copy"}"#,
            root,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let clone = body(&a);
    assert_ne!(clone["AccessorID"], svc["AccessorID"]);
    assert_ne!(clone["SecretID"], svc["SecretID"]);
    assert_eq!(clone["Description"], "copy");
    assert_eq!(clone["ServiceIdentities"], svc["ServiceIdentities"]);
    let clone_secret = clone["SecretID"].as_str().unwrap().to_owned();
    h.table(
        Some(&clone_secret),
        &[("PUT", "/v1/agent/service/register", reg_api, 200, "")],
    )
    .await;
    h.table(
        root,
        &[(
            "PUT",
            "/v1/acl/token/00000000-0000-0000-0000-00000000dead/clone",
            "",
            404,
            "ACL not found",
        )],
    )
    .await;
    h.table(
        Some("svc-secret"),
        &[(
            "PUT",
            &format!("/v1/acl/token/{svc_accessor}/clone"),
            "",
            403,
            "~Permission denied",
        )],
    )
    .await;
    // Expiry: set by TTL or time within Consul's bounds (1m..24h), shown as ExpirationTime,
    // never changed by an update; both at once, or out of bounds, are refused.
    let expiring = put_ok(
        &h,
        "/v1/acl/token",
        r#"{"SecretID":"exp","ExpirationTTL":"1h"}"#,
    )
    .await;
    let at = humantime::parse_rfc3339_weak(expiring["ExpirationTime"].as_str().unwrap()).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        ahead > Duration::from_secs(3500) && ahead <= Duration::from_secs(3600),
        "{ahead:?}"
    );
    assert!(expiring.get("ExpirationTTL").is_none());
    let exp_accessor = expiring["AccessorID"].as_str().unwrap().to_owned();
    h.table(
        root,
        &[
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTTL":"1s"}"#,
                400,
                "ExpirationTime cannot be less than 1m0s in the future (was 1s)",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTTL":"48h"}"#,
                400,
                "ExpirationTime cannot be more than 24h0m0s in the future (was 48h0m0s)",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTTL":"-5m"}"#,
                400,
                "Token Expiration TTL '-5m' should be > 0",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTTL":3600000000000,"ExpirationTime":"2099-01-01T00:00:00Z"}"#,
                400,
                "Token Expiration TTL and Expiration Time cannot both be set",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTime":"2000-01-01T00:00:00Z"}"#,
                400,
                "ExpirationTime cannot be before CreateTime",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"ExpirationTTL":600000000000}"#,
                200,
                "~\"ExpirationTime\"",
            ),
            (
                "PUT",
                &format!("/v1/acl/token/{exp_accessor}"),
                r#"{"ExpirationTTL":"2h"}"#,
                400,
                "Cannot change expiration time",
            ),
            (
                "PUT",
                &format!("/v1/acl/token/{exp_accessor}"),
                r#"{"Description":"still"}"#,
                200,
                "~\"ExpirationTime\"",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"AuthMethod":"kube"}"#,
                400,
                "AuthMethod field is disallowed outside of Login",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"TemplatedPolicies":[{"TemplateName":"builtin/nope"}]}"#,
                400,
                "Invalid templated policy Name: builtin/nope",
            ),
        ],
    )
    .await;
    // Deleting a role unlinks it: the token loses what the role granted.
    h.table(
        root,
        &[(
            "DELETE",
            &format!("/v1/acl/role/{role_id}"),
            "",
            200,
            "true",
        )],
    )
    .await;
    h.table(
        Some("role-secret"),
        &[("GET", "/v1/kv/k", "", 403, "~Permission denied")],
    )
    .await;
    assert!(
        secrets(&h, format!("/v1/acl/tokens?role={role_id}"))
            .await
            .is_empty()
    );
}

/// `PUT uri` with the root token; the answer's JSON (200 required).
async fn put_ok(h: &H, uri: &str, body: &str) -> serde_json::Value {
    let a = h.call("PUT", uri, body, Some("root")).await;
    assert_eq!(a.status, 200, "{uri} {body}: {}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// The secrets of the tokens a token list answers, sorted.
async fn secrets(h: &H, uri: String) -> Vec<String> {
    let a = h.call("GET", &uri, "", Some("root")).await;
    assert_eq!(a.status, 200, "{uri}: {}", a.body);
    let list: Vec<serde_json::Value> = serde_json::from_str(&a.body).unwrap();
    let mut out: Vec<String> = list
        .iter()
        .map(|t| t["SecretID"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Issue 14, finding 5 with ACLs on: the internal liveness endpoints need write on the node
/// they name, and even a token that may write every node cannot remove the server's own.
#[tokio::test]
async fn server_node_deregistration_refused_with_acls() {
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    let h = H::with(config).await;
    let beat = r#"{"Node":"w1","ID":"11111111-2222-3333-4444-555555555555","Address":"127.0.0.9","Port":8500}"#;
    let server_beat = r#"{"Node":"node1","ID":"x","Address":"127.0.0.1","Port":8500}"#;
    h.table(
        None,
        &[
            (
                "PUT",
                "/v1/internal/berth/heartbeat",
                beat,
                403,
                "~Permission denied",
            ),
            (
                "PUT",
                "/v1/internal/berth/leave",
                server_beat,
                403,
                "~Permission denied",
            ),
            (
                "PUT",
                "/v1/catalog/deregister",
                r#"{"Node":"node1"}"#,
                403,
                "~Permission denied",
            ),
        ],
    )
    .await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"nodes","Rules":"node_prefix \"\" { policy = \"write\" }"}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"a1b2c3d4-0000-4000-8000-000000000001","Policies":[{"Name":"nodes"}]}"#,
                200,
                "*",
            ),
        ],
    )
    .await;
    h.table(
        Some("a1b2c3d4-0000-4000-8000-000000000001"),
        &[
            ("PUT", "/v1/internal/berth/heartbeat", beat, 200, "true"),
            (
                "PUT",
                "/v1/internal/berth/leave",
                server_beat,
                400,
                "node name is the server's own",
            ),
            (
                "PUT",
                "/v1/catalog/deregister",
                r#"{"Node":"node1"}"#,
                403,
                "~is the registry server's own node",
            ),
            (
                "GET",
                "/v1/health/node/node1",
                "",
                200,
                r#"~"Status":"passing""#,
            ),
        ],
    )
    .await;
}

mod acl_auth;
mod agent_extras;
mod agent_ops;
mod go_client;
mod go_wire;
