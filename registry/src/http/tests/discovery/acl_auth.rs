//! Auth methods, binding rules, login/logout and templated policies, as Consul answers them
//! (api-docs/acl/auth-methods, binding-rules, templated-policies), through the router.

use super::*;

async fn acl_server() -> H {
    let mut config = Config::dev("node1");
    config.acl_master_token = Some(AclToken::new("root"));
    H::with(config).await
}

const K8S: &str = r#"{"Name":"kube","Type":"kubernetes","Description":"cluster one",
  "MaxTokenTTL":"10m","Config":{"Host":"https://k8s.example:443","CACert":"-----BEGIN CERTIFICATE-----",
  "ServiceAccountJWT":"eyJ.x.y","ClaimMappings_are":"kept as sent"}}"#;

#[tokio::test]
async fn auth_methods_are_stored_checked_and_deleted_with_their_rules() {
    let h = acl_server().await;
    let root = Some("root");
    h.table(
        root,
        &[
            ("GET", "/v1/acl/auth-methods", "", 200, "[]"),
            (
                "PUT",
                "/v1/acl/auth-method",
                r#"{"Name":"kube","Type":"ldap"}"#,
                400,
                r#"Invalid Auth Method: Type should be one of: ["aws-iam", "jwt", "kubernetes", "oidc"]"#,
            ),
            (
                "PUT",
                "/v1/acl/auth-method",
                r#"{"Name":"kube","Type":"kubernetes","Config":{"Host":"h"}}"#,
                400,
                "Invalid Auth Method: Config.CACert is required",
            ),
            (
                "PUT",
                "/v1/acl/auth-method",
                r#"{"Name":"bad name","Type":"jwt"}"#,
                400,
                "~invalid Name",
            ),
            (
                "PUT",
                "/v1/acl/auth-method",
                r#"{"Name":"j","Type":"jwt","Config":{"JWKSURL":"u","JWTValidationPubKeys":["k"]}}"#,
                400,
                "~exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL'",
            ),
            (
                "PUT",
                "/v1/acl/auth-method",
                r#"{"Name":"j","Type":"jwt","MaxTokenTTL":"30s","Config":{"JWKSURL":"u"}}"#,
                400,
                "MaxTokenTTL 30s cannot be less than 1m0s",
            ),
        ],
    )
    .await;
    let created = put_ok(&h, "/v1/acl/auth-method", K8S).await;
    assert_eq!(created["Name"], "kube");
    assert_eq!(created["Type"], "kubernetes");
    assert_eq!(created["MaxTokenTTL"], "10m0s");
    assert_eq!(created["Config"]["Host"], "https://k8s.example:443");
    assert_eq!(
        created["Config"]["ClaimMappings_are"], "kept as sent",
        "configuration keys are the client's"
    );
    // The list leaves the configuration out; a read has it.
    let list = h.call("GET", "/v1/acl/auth-methods", "", root).await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list[0]["Name"], "kube");
    assert!(list[0].get("Config").is_none(), "{list}");
    let read = h.call("GET", "/v1/acl/auth-method/kube", "", root).await;
    assert_eq!(read.status, 200);
    assert!(read.body.contains("k8s.example"));
    // The type is immutable; the name in the URL must match the body's.
    h.table(
        root,
        &[
            (
                "PUT",
                "/v1/acl/auth-method/kube",
                r#"{"Name":"kube","Type":"jwt","Config":{"JWKSURL":"u"}}"#,
                400,
                "the Type field of an Auth Method is immutable",
            ),
            (
                "PUT",
                "/v1/acl/auth-method/kube",
                r#"{"Name":"other"}"#,
                400,
                "Auth Method Name in URL and payload do not match",
            ),
        ],
    )
    .await;
    let updated = put_ok(
        &h,
        "/v1/acl/auth-method/kube",
        r#"{"Description":"renamed","Config":{"Host":"h2","CACert":"c","ServiceAccountJWT":"j"}}"#,
    )
    .await;
    assert_eq!(updated["Type"], "kubernetes", "the type is kept");
    assert_eq!(updated["Description"], "renamed");
    assert_eq!(updated["CreateIndex"], created["CreateIndex"]);
    assert!(updated["ModifyIndex"].as_u64() > created["ModifyIndex"].as_u64());
    // Binding rules name an existing method, a known bind type and projected fields only.
    h.table(
        root,
        &[
            (
                "PUT",
                "/v1/acl/binding-rule",
                r#"{"AuthMethod":"nope","BindType":"service","BindName":"x"}"#,
                400,
                "cannot find auth method with name \"nope\"",
            ),
            (
                "PUT",
                "/v1/acl/binding-rule",
                r#"{"AuthMethod":"kube","BindType":"group","BindName":"x"}"#,
                400,
                "Invalid Binding Rule: unknown BindType \"group\"",
            ),
            (
                "PUT",
                "/v1/acl/binding-rule",
                r#"{"AuthMethod":"kube","BindType":"service","BindName":"${value.email}"}"#,
                400,
                "~unknown variable \"value.email\"",
            ),
            (
                "PUT",
                "/v1/acl/binding-rule",
                r#"{"AuthMethod":"kube","BindType":"service","BindName":"x","Selector":"serviceaccount.nope == a"}"#,
                400,
                "~invalid Binding Rule: Selector is invalid",
            ),
            (
                "PUT",
                "/v1/acl/binding-rule/not-a-uuid",
                r#"{"AuthMethod":"kube","BindType":"service","BindName":"x"}"#,
                400,
                "Binding Rule ID invalid UUID",
            ),
        ],
    )
    .await;
    let rule = put_ok(
        &h,
        "/v1/acl/binding-rule",
        r#"{"AuthMethod":"kube","BindType":"service","BindName":"${serviceaccount.name}",
            "Selector":"serviceaccount.namespace==default","Description":"apps"}"#,
    )
    .await;
    let id = rule["ID"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let changed = put_ok(
        &h,
        &format!("/v1/acl/binding-rule/{id}"),
        r#"{"BindType":"role","BindName":"readers"}"#,
    )
    .await;
    assert_eq!(changed["AuthMethod"], "kube", "the method is kept");
    assert_eq!(changed["BindType"], "role");
    let by_method = h
        .call("GET", "/v1/acl/binding-rules?authmethod=kube", "", root)
        .await;
    assert!(by_method.body.contains(&id));
    let other = h
        .call("GET", "/v1/acl/binding-rules?authmethod=other", "", root)
        .await;
    assert_eq!(other.body, "[]");
    // A login with an unknown method is Consul's ACL not found; with a known one the token
    // cannot be verified here, and nothing is made.
    h.table(
        None,
        &[
            (
                "POST",
                "/v1/acl/login",
                r#"{"AuthMethod":"nope","BearerToken":"eyJ.x.y"}"#,
                403,
                "~ACL not found",
            ),
            (
                "POST",
                "/v1/acl/login",
                r#"{"AuthMethod":"kube","BearerToken":"eyJ.x.y"}"#,
                403,
                "~Permission denied",
            ),
            (
                "POST",
                "/v1/acl/login",
                r#"{"AuthMethod":"kube"}"#,
                400,
                "Invalid Login request: Missing auth parameters",
            ),
            ("POST", "/v1/acl/logout", "", 403, "ACL not found"),
        ],
    )
    .await;
    h.table(
        root,
        &[("POST", "/v1/acl/logout", "", 403, "Permission denied")],
    )
    .await;
    // Reading needs acl:read.
    h.table(
        None,
        &[("GET", "/v1/acl/auth-methods", "", 403, "~Permission denied")],
    )
    .await;
    // Deleting the method deletes its rules; deleting again still succeeds.
    h.table(
        root,
        &[
            ("DELETE", "/v1/acl/auth-method/kube", "", 200, "true"),
            ("DELETE", "/v1/acl/auth-method/kube", "", 200, "true"),
            ("GET", "/v1/acl/binding-rules", "", 200, "[]"),
            (
                "GET",
                &format!("/v1/acl/binding-rule/{id}"),
                "",
                404,
                "ACL binding rule not found",
            ),
            (
                "GET",
                "/v1/acl/auth-method/kube",
                "",
                404,
                "ACL auth method not found",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn templated_policies_are_listed_previewed_and_grant_what_they_render() {
    let h = acl_server().await;
    let root = Some("root");
    let list = h.call("GET", "/v1/acl/templated-policies", "", root).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    for name in ["builtin/service", "builtin/node", "builtin/dns"] {
        assert_eq!(list[name]["TemplateName"], name, "{list}");
    }
    assert!(
        list["builtin/dns"]["Schema"] == "",
        "dns takes no variables"
    );
    let read = h
        .call(
            "GET",
            "/v1/acl/templated-policy/name/builtin/service",
            "",
            root,
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.body.contains("{{.Name}}-sidecar-proxy"));
    h.table(
        root,
        &[
            (
                "GET",
                "/v1/acl/templated-policy/name/builtin/nope",
                "",
                400,
                "Invalid templated policy Name: builtin/nope",
            ),
            (
                "POST",
                "/v1/acl/templated-policy/preview/builtin/service",
                "{}",
                400,
                "validation error for templated policy: builtin/service: name is required",
            ),
            (
                "POST",
                "/v1/acl/templated-policy/preview/builtin/service",
                r#"{"Name":"Bad"}"#,
                400,
                "~has an invalid name",
            ),
        ],
    )
    .await;
    let preview = h
        .call(
            "POST",
            "/v1/acl/templated-policy/preview/builtin/service",
            r#"{"name":"api"}"#,
            root,
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    let preview: serde_json::Value = serde_json::from_str(&preview.body).unwrap();
    assert!(
        preview["Rules"]
            .as_str()
            .unwrap()
            .contains("service \"api\"")
    );
    assert!(
        preview["Name"]
            .as_str()
            .unwrap()
            .starts_with("synthetic-policy-")
    );
    assert!(
        preview["Description"]
            .as_str()
            .unwrap()
            .ends_with("builtin/service")
    );
    // A token with builtin/service for web may register web, not db, and read the catalog;
    // a role with builtin/dns gives read only.
    let token = put_ok(
        &h,
        "/v1/acl/token",
        r#"{"SecretID":"svc-secret","TemplatedPolicies":[{"TemplateName":"builtin/service","TemplateVariables":{"Name":"web"}}]}"#,
    )
    .await;
    assert_eq!(
        token["TemplatedPolicies"][0]["TemplateVariables"]["name"], "web",
        "{token}"
    );
    let role = put_ok(
        &h,
        "/v1/acl/role",
        r#"{"Name":"dns","TemplatedPolicies":[{"TemplateName":"builtin/dns"}]}"#,
    )
    .await;
    assert_eq!(role["TemplatedPolicies"][0]["TemplateName"], "builtin/dns");
    put_ok(
        &h,
        "/v1/acl/token",
        r#"{"SecretID":"dns-secret","Roles":[{"Name":"dns"}]}"#,
    )
    .await;
    h.table(
        Some("svc-secret"),
        &[
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"web","Port":80}"#,
                200,
                "",
            ),
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"db","Port":5432}"#,
                403,
                "~Permission denied",
            ),
            ("GET", "/v1/catalog/services", "", 200, "*"),
            ("GET", "/v1/kv/x", "", 403, "~Permission denied"),
        ],
    )
    .await;
    h.table(
        Some("dns-secret"),
        &[
            ("GET", "/v1/catalog/nodes", "", 200, "*"),
            (
                "PUT",
                "/v1/agent/service/register",
                r#"{"Name":"web","Port":80}"#,
                403,
                "~Permission denied",
            ),
        ],
    )
    .await;
}
