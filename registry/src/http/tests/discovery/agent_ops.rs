//! Router tests for the server agent's operations (`reload`, `metrics`, `force-leave`) and the
//! Connect-only discovery reads a Consul without Connect answers empty.

use crate::server::Config;

use super::{H, acl_server};

/// An ACL-enabled server where token `agent-read` may read the server's agent and
/// `agent-write` may write it.
async fn agent_tokens() -> H {
    let h = acl_server().await;
    for (name, level) in [("agent-read", "read"), ("agent-write", "write")] {
        let policy = serde_json::json!({
            "Name": name,
            "Rules": format!("agent \"node1\" {{ policy = \"{level}\" }}"),
        });
        let token = serde_json::json!({"SecretID": name, "Policies": [{"Name": name}]});
        h.table(
            Some("root"),
            &[
                ("PUT", "/v1/acl/policy", &policy.to_string(), 200, "*"),
                ("PUT", "/v1/acl/token", &token.to_string(), 200, "*"),
            ],
        )
        .await;
    }
    h
}

#[tokio::test]
async fn reload_answers_empty_and_needs_agent_write() {
    let h = agent_tokens().await;
    let ok = h
        .call("PUT", "/v1/agent/reload", "", Some("agent-write"))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, "");
    h.table(
        Some("agent-read"),
        &[("PUT", "/v1/agent/reload", "", 403, "Permission denied")],
    )
    .await;
    h.table(
        None,
        &[
            ("PUT", "/v1/agent/reload", "", 403, "Permission denied"),
            ("GET", "/v1/agent/reload", "", 405, "method GET not allowed"),
        ],
    )
    .await;
}

#[tokio::test]
async fn metrics_in_consul_json_and_prometheus_text_need_agent_read() {
    let h = agent_tokens().await;
    h.table(
        Some("root"),
        &[
            ("PUT", "/v1/kv/m/a", "1", 200, "true"),
            ("PUT", "/v1/kv/m/b", "2", 200, "true"),
        ],
    )
    .await;
    let a = h
        .call("GET", "/v1/agent/metrics", "", Some("agent-read"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["Counters", "Gauges", "Points", "Samples", "Timestamp"]
    );
    assert!(
        v["Timestamp"].as_str().unwrap().ends_with("0 +0000 UTC"),
        "{}",
        v["Timestamp"]
    );
    let gauge = |name: &str| {
        v["Gauges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["Name"] == name)
            .unwrap_or_else(|| panic!("no gauge {name}: {}", v["Gauges"]))
            .clone()
    };
    assert_eq!(
        gauge("consul.state.kv_entries"),
        serde_json::json!({"Name": "consul.state.kv_entries", "Value": 2.0, "Labels": {}})
    );
    // The server's own node and its `consul` service.
    assert_eq!(gauge("consul.state.nodes")["Value"], 1.0);
    assert_eq!(gauge("consul.state.services")["Value"], 1.0);
    assert!(gauge("berth.state.index")["Value"].as_f64().unwrap() >= 2.0);

    let p = h
        .call(
            "GET",
            "/v1/agent/metrics?format=prometheus",
            "",
            Some("agent-read"),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(
        p.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        p.headers["content-type"]
    );
    assert!(
        p.body
            .contains("# TYPE consul_state_kv_entries gauge\nconsul_state_kv_entries 2\n"),
        "{}",
        p.body
    );
    h.table(
        None,
        &[
            ("GET", "/v1/agent/metrics", "", 403, "Permission denied"),
            (
                "GET",
                "/v1/agent/metrics?format=prometheus",
                "",
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn force_leave_removes_failed_members_keeps_live_ones_and_refuses_the_server() {
    let mut config = Config::dev("node1");
    config.failure_timeout_ms = 400;
    let h = H::with(config).await;
    let beat = r#"{"Node":"w1","ID":"11111111-2222-3333-4444-555555555555","Address":"127.0.0.9","Port":8500}"#;
    h.table(None, &[
        ("PUT", "/v1/internal/berth/heartbeat", beat, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"w1","Address":"127.0.0.9","Service":{"ID":"api","Service":"api"}}"#, 200, "true"),
        // A live member refutes the leave: it stays, in the catalog too.
        ("PUT", "/v1/agent/force-leave/w1", "", 200, ""),
        ("GET", "/v1/catalog/node/w1", "", 200, r#"~"Address":"127.0.0.9""#),
        ("GET", "/v1/agent/members", "", 200, r#"~"Name":"w1","Addr":"127.0.0.9","Port":8500,"Tags""#),
        ("PUT", "/v1/agent/force-leave/nope", "", 500, "agent: No node found with name 'nope'"),
        ("PUT", "/v1/agent/force-leave/node1", "", 403, r#"Permission denied: "node1" is the registry server's own node; it cannot be force-left"#),
        ("GET", "/v1/catalog/node/node1", "", 200, r#"~"Node":"node1""#),
    ]).await;
    // Silent past the failure timeout: failed, then force-left out of the catalog.
    h.until("/v1/health/node/w1", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
        })
    })
    .await;
    h.table(
        None,
        &[
            ("PUT", "/v1/agent/force-leave/w1", "", 200, ""),
            ("GET", "/v1/catalog/node/w1", "", 200, "null"),
            ("GET", "/v1/health/service/api", "", 200, "[]"),
        ],
    )
    .await;
    let members = h.json("/v1/agent/members").await;
    let w1 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "w1")
        .expect("a left member is still listed");
    assert_eq!(w1["Status"], 3, "{w1}");
    h.table(
        None,
        &[("PUT", "/v1/agent/force-leave/w1?prune", "", 200, "")],
    )
    .await;
    let members = h.json("/v1/agent/members").await;
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["Name"] != "w1"),
        "{members}"
    );
}

#[tokio::test]
async fn force_leave_needs_operator_write() {
    let h = agent_tokens().await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/acl/policy",
                r#"{"Name":"op","Rules":"operator = \"write\""}"#,
                200,
                "*",
            ),
            (
                "PUT",
                "/v1/acl/token",
                r#"{"SecretID":"op","Policies":[{"Name":"op"}]}"#,
                200,
                "*",
            ),
        ],
    )
    .await;
    for token in [None, Some("agent-write"), Some("nodew")] {
        h.table(
            token,
            &[(
                "PUT",
                "/v1/agent/force-leave/nope",
                "",
                403,
                "Permission denied",
            )],
        )
        .await;
    }
    h.table(
        Some("op"),
        &[(
            "PUT",
            "/v1/agent/force-leave/nope",
            "",
            500,
            "agent: No node found with name 'nope'",
        )],
    )
    .await;
}

/// The index of an answer, which must carry one.
fn index(a: &super::Answer) -> u64 {
    a.headers["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn connect_and_gateway_reads_answer_empty_lists_with_an_index() {
    let h = acl_server().await;
    let uris = [
        "/v1/health/connect/api",
        "/v1/health/ingress/api",
        "/v1/catalog/gateway-services/gw",
    ];
    let mut before = Vec::new();
    for uri in uris {
        let a = h.call("GET", uri, "", Some("root")).await;
        assert_eq!((a.status, a.body.as_str()), (200, "[]"), "{uri}");
        assert_eq!(a.headers["content-type"], "application/json", "{uri}");
        assert_eq!(a.headers["x-consul-knownleader"], "true", "{uri}");
        before.push(index(&a));
    }
    h.table(
        Some("root"),
        &[(
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n2","Address":"10.0.0.2","Service":{"Service":"api"}}"#,
            200,
            "true",
        )],
    )
    .await;
    for (uri, before) in uris.iter().zip(before) {
        let a = h.call("GET", uri, "", Some("root")).await;
        assert!(index(&a) > before, "{uri}: the catalog's index moves on");
    }
    h.table(
        None,
        &[
            (
                "GET",
                "/v1/health/connect/api",
                "",
                403,
                "Permission denied",
            ),
            (
                "GET",
                "/v1/health/ingress/api",
                "",
                403,
                "Permission denied",
            ),
            (
                "GET",
                "/v1/catalog/gateway-services/gw",
                "",
                403,
                "Permission denied",
            ),
            // The token is checked before the filter.
            (
                "GET",
                "/v1/health/connect/api?filter=Nope%20%3D%3D%201",
                "",
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
    h.table(
        Some("svcro"),
        &[
            ("GET", "/v1/catalog/gateway-services/gw", "", 200, "[]"),
            ("GET", "/v1/health/connect/api", "", 200, "[]"),
            ("GET", "/v1/health/ingress/api", "", 200, "[]"),
            (
                "GET",
                "/v1/health/connect/api?filter=Nope%20%3D%3D%201",
                "",
                400,
                r#"~Selector "Nope" is not valid"#,
            ),
        ],
    )
    .await;
}
