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

mod go_wire;
