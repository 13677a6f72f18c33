//! Router tests for the agent's token endpoint, user events and the log monitor, each row
//! written from Consul's documentation and handlers.

use super::{H, acl_server};

#[tokio::test]
async fn agent_token_needs_acls_and_acl_write_and_sets_the_default_token() {
    let off = H::new().await;
    off.table(
        None,
        &[(
            "PUT",
            "/v1/agent/token/default",
            r#"{"Token":"x"}"#,
            401,
            "ACL support disabled",
        )],
    )
    .await;

    let h = acl_server().await;
    let policy = r#"{"Name":"agent-read","Rules":"agent \"node1\" { policy = \"write\" }"}"#;
    let token = r#"{"SecretID":"agent-read","Policies":[{"Name":"agent-read"}]}"#;
    h.table(
        Some("root"),
        &[
            ("PUT", "/v1/acl/policy", policy, 200, "*"),
            ("PUT", "/v1/acl/token", token, 200, "*"),
        ],
    )
    .await;
    // agent:write is not acl:write
    h.table(
        Some("agent-read"),
        &[(
            "PUT",
            "/v1/agent/token/default",
            r#"{"Token":"agent-read"}"#,
            403,
            "Permission denied",
        )],
    )
    .await;
    h.table(
        None,
        &[("GET", "/v1/agent/self", "", 403, "Permission denied")],
    )
    .await;
    h.table(
        Some("root"),
        &[
            (
                "PUT",
                "/v1/agent/token/default",
                r#"{"Token":"agent-read"}"#,
                200,
                "",
            ),
            (
                "PUT",
                "/v1/agent/token/bogus",
                r#"{"Token":"x"}"#,
                404,
                r#"Token "bogus" is unknown"#,
            ),
            (
                "PUT",
                "/v1/agent/token/default",
                "",
                400,
                "Request decode failed: EOF",
            ),
            (
                "GET",
                "/v1/agent/token/default",
                "",
                405,
                "method GET not allowed",
            ),
        ],
    )
    .await;
    // a request without a token now runs with the default token
    h.table(None, &[("GET", "/v1/agent/self", "", 200, "*")])
        .await;
    for kind in [
        "agent",
        "agent_recovery",
        "agent_master",
        "replication",
        "config_file_service_registration",
        "acl_agent_token",
        "acl_replication_token",
    ] {
        h.table(
            Some("root"),
            &[(
                "PUT",
                &format!("/v1/agent/token/{kind}"),
                r#"{"Token":"t"}"#,
                200,
                "",
            )],
        )
        .await;
    }
    // the legacy name of the default token, and an empty token clears it
    h.table(
        Some("root"),
        &[(
            "PUT",
            "/v1/agent/token/acl_token",
            r#"{"token":""}"#,
            200,
            "",
        )],
    )
    .await;
    h.table(
        None,
        &[("GET", "/v1/agent/self", "", 403, "Permission denied")],
    )
    .await;
}

#[tokio::test]
async fn event_fire_answers_the_event_and_list_shows_what_this_agent_received() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/agent/service/register", r#"{"ID":"web-1","Name":"web","Tags":["v1"]}"#, 200, ""),
        ("GET", "/v1/event/list", "", 200, "[]"),
        ("PUT", "/v1/event/fire/deploy", "v2", 200, r#"~"Name":"deploy","Payload":"djI=","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":0}"#),
        ("PUT", "/v1/event/fire/empty", "", 200, r#"~"Payload":null"#),
        ("PUT", "/v1/event/fire/", "", 400, "Missing name"),
        ("PUT", "/v1/event/fire/x?tag=v1", "", 500, "Cannot provide tag filter without service filter"),
        ("PUT", "/v1/event/fire/x?node=(", "", 500, "~Invalid node filter: error parsing regexp: "),
        ("PUT", "/v1/event/fire/x?dc=elsewhere", "", 500, "No path to datacenter"),
        ("GET", "/v1/event/fire/x", "", 405, "method GET not allowed"),
        // filters decide who receives it: this server's node and its services
        ("PUT", "/v1/event/fire/mine?node=^node1$&service=^web&tag=v1", "", 200, "*"),
        ("PUT", "/v1/event/fire/other-node?node=^node2$", "", 200, "*"),
        ("PUT", "/v1/event/fire/other-tag?service=web&tag=^v2$", "", 200, "*"),
    ]).await;
    let big = "x".repeat(600);
    h.table(
        None,
        &[(
            "PUT",
            "/v1/event/fire/big",
            &big,
            500,
            "user event exceeds configured limit of 512 bytes before encoding",
        )],
    )
    .await;
    let all = h.call("GET", "/v1/event/list", "", None).await;
    let list: serde_json::Value = serde_json::from_str(&all.body).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deploy", "empty", "mine"], "{list}");
    assert_eq!(list[0]["LTime"], 1);
    assert!(all.headers.get("x-consul-knownleader").is_none());
    let last = list[2]["ID"].as_str().unwrap();
    assert_eq!(
        all.headers["x-consul-index"].to_str().unwrap(),
        crate::events::index_of(last).to_string()
    );
    let one = h.json("/v1/event/list?name=deploy").await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["Payload"], "djI=");
    let none = h.call("GET", "/v1/event/list?name=nothing", "", None).await;
    assert_eq!(
        (
            none.body.as_str(),
            none.headers["x-consul-index"].to_str().unwrap()
        ),
        ("[]", "1")
    );
}

#[tokio::test]
async fn event_list_blocks_until_a_new_event() {
    let h = H::new().await;
    let first = h.call("PUT", "/v1/event/fire/a", "", None).await;
    assert_eq!(first.status, 200);
    let list = h.call("GET", "/v1/event/list", "", None).await;
    let index = list.headers["x-consul-index"].to_str().unwrap().to_owned();
    // the same index and a short wait: the same answer once the wait is over
    let same = h
        .call(
            "GET",
            &format!("/v1/event/list?index={index}&wait=50ms"),
            "",
            None,
        )
        .await;
    assert_eq!(same.headers["x-consul-index"].to_str().unwrap(), index);
    let app = h.app.clone();
    let fire = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri("/v1/event/fire/b")
            .body(axum::body::Body::empty())
            .unwrap();
        tower::ServiceExt::oneshot(app, req).await.unwrap().status()
    });
    let woken = h
        .call(
            "GET",
            &format!("/v1/event/list?index={index}&wait=30s"),
            "",
            None,
        )
        .await;
    assert_eq!(fire.await.unwrap(), 200);
    assert_ne!(woken.headers["x-consul-index"].to_str().unwrap(), index);
    assert!(woken.body.contains(r#""Name":"b""#), "{}", woken.body);
}

#[tokio::test]
async fn event_acls_are_write_to_fire_and_read_to_list() {
    let h = acl_server().await;
    let policy = r#"{"Name":"ev","Rules":"event \"deploy\" { policy = \"write\" }\nevent_prefix \"pub-\" { policy = \"read\" }"}"#;
    let token = r#"{"SecretID":"ev","Policies":[{"Name":"ev"}]}"#;
    h.table(
        Some("root"),
        &[
            ("PUT", "/v1/acl/policy", policy, 200, "*"),
            ("PUT", "/v1/acl/token", token, 200, "*"),
            ("PUT", "/v1/event/fire/pub-news", "", 200, "*"),
            ("PUT", "/v1/event/fire/secret", "", 200, "*"),
        ],
    )
    .await;
    h.table(
        Some("ev"),
        &[
            (
                "PUT",
                "/v1/event/fire/deploy",
                "",
                200,
                r#"~"Name":"deploy""#,
            ),
            (
                "PUT",
                "/v1/event/fire/pub-news",
                "",
                403,
                "Permission denied",
            ),
            ("PUT", "/v1/event/fire/other", "", 403, "Permission denied"),
        ],
    )
    .await;
    let seen = h.call("GET", "/v1/event/list", "", Some("ev")).await;
    let list: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pub-news", "deploy"], "{list}");
    assert_eq!(seen.headers["x-consul-results-filtered-by-acls"], "true");
    let anonymous = h.call("GET", "/v1/event/list", "", None).await;
    assert_eq!(anonymous.body, "[]");
    assert!(
        anonymous
            .headers
            .get("x-consul-results-filtered-by-acls")
            .is_none()
    );
}

/// Reads the next chunk of a streaming body, or `None` when it ended.
async fn next_chunk(body: &mut axum::body::Body) -> Option<String> {
    use http_body_util::BodyExt as _;
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk within 10 s")?
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

#[tokio::test]
async fn monitor_streams_the_log_at_the_asked_level_and_ends_with_its_caller() {
    use tracing_subscriber::prelude::*;
    let _ = tracing_subscriber::registry()
        .with(crate::logs::layer())
        .try_init();
    let h = H::new().await;
    h.table(
        None,
        &[
            (
                "GET",
                "/v1/agent/monitor?loglevel=shouting",
                "",
                400,
                "Unknown log level: shouting",
            ),
            (
                "PUT",
                "/v1/agent/monitor",
                "",
                405,
                "method PUT not allowed",
            ),
        ],
    )
    .await;
    let open = |uri: &'static str| {
        let app = h.app.clone();
        async move {
            let req = axum::http::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(app, req).await.unwrap()
        }
    };
    let text = open("/v1/agent/monitor?loglevel=debug").await;
    assert_eq!(text.status(), 200);
    assert_eq!(text.headers()["content-type"], "text/plain; charset=utf-8");
    let json = open("/v1/agent/monitor?loglevel=WARN&logjson").await;
    let mut text = text.into_body();
    let mut json = json.into_body();
    tracing::debug!(target: "monitor_test", "a debug line");
    tracing::warn!(target: "monitor_test", key = 7, "a warning");
    let first = next_chunk(&mut text).await.unwrap();
    assert!(
        first.contains("[DEBUG] monitor_test: a debug line"),
        "{first}"
    );
    let mut second = next_chunk(&mut text).await.unwrap();
    while !second.contains("monitor_test") {
        second = next_chunk(&mut text).await.unwrap();
    }
    assert!(
        second.contains("[WARN]  monitor_test: a warning: key=7"),
        "{second}"
    );
    // the warn-level JSON stream skipped the debug line
    let line: serde_json::Value =
        serde_json::from_str(&next_chunk(&mut json).await.unwrap()).unwrap();
    assert_eq!(
        (line["@level"].as_str(), line["@message"].as_str()),
        (Some("warn"), Some("a warning"))
    );
    assert_eq!(line["key"], "7");
    // a caller that leaves stops being fed; with none left, nothing is formatted
    drop(text);
    drop(json);
    assert!(!crate::logs::wanted(tracing::Level::ERROR));
    // agent:read is needed
    let acl = acl_server().await;
    acl.table(
        None,
        &[("GET", "/v1/agent/monitor", "", 403, "Permission denied")],
    )
    .await;
}

#[tokio::test]
async fn monitor_ends_at_shutdown() {
    let h = H::new().await;
    let req = axum::http::Request::builder()
        .uri("/v1/agent/monitor")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(h.app.clone(), req)
        .await
        .unwrap();
    let mut body = response.into_body();
    h.stop.cancel();
    assert_eq!(next_chunk(&mut body).await, None);
}
