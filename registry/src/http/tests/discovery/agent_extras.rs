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
