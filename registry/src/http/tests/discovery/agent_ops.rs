//! Router tests for the server agent's operations (`reload`, `metrics`, `force-leave`) and the
//! Connect-only discovery reads a Consul without Connect answers empty.

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
