//! The wire as HashiCorp's Go client reads and writes it: field presence per Consul's
//! `json:",omitempty"` tags, durations as text or nanoseconds, keys in any case at any depth,
//! `null` as absent (Consul's `api` and `agent/structs` packages).

use super::H;

#[tokio::test]
async fn check_definitions_omit_zero_fields() {
    let h = H::new().await;
    h.table(None, &[
        // Go's api.AgentServiceCheck sends durations as text; Consul's agent also takes numbers
        ("PUT", "/v1/agent/service/register", r#"{"Name":"web","Port":80,"Check":{"TTL":"10s"}}"#, 200, ""),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"db","Port":5432,"Check":{"TCP":"127.0.0.1:9","Interval":5000000000,"timeout":1000000000,"DeregisterCriticalServiceAfter":60000000000}}"#, 200, ""),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"TTL":true}}"#, 400, "~time.Duration"),
    ]).await;
    h.until("/v1/health/service/db", |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    h.until("/v1/health/service/web", |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    h.table(None, &[
        // TTL check: only TTL (a plain time.Duration: nanoseconds); no "" durations
        ("GET", "/v1/health/service/web", "", 200, r#"~"Type":"ttl","Definition":{"TTL":10000000000},"#),
        ("GET", "/v1/agent/checks", "", 200, r#"~"Definition":{"TTL":10000000000}"#),
        // TCP check: durations as Go text, nothing zero
        ("GET", "/v1/health/service/db", "", 200, r#"~"Definition":{"DeregisterCriticalServiceAfter":"1m0s","Interval":"5s","TCP":"127.0.0.1:9","Timeout":"1s"}"#),
        // catalog-registered checks: empty definitions stay empty
        ("PUT", "/v1/catalog/register", r#"{"Node":"n2","Address":"10.0.0.2","Service":{"Service":"api"},"Check":{"CheckID":"c1","ServiceID":"api","Definition":{"HTTP":"","Interval":"","TLSSkipVerify":false}}}"#, 200, "true"),
        ("GET", "/v1/health/checks/api", "", 200, r#"~"Definition":{}"#),
    ]).await;
    for uri in [
        "/v1/health/service/web",
        "/v1/health/service/db",
        "/v1/health/checks/api",
        "/v1/agent/checks",
        "/v1/health/state/any",
    ] {
        let a = h.call("GET", uri, "", None).await;
        for zero in [
            r#""Interval":"""#,
            r#""Timeout":"""#,
            r#""DeregisterCriticalServiceAfter":"""#,
            r#""HTTP":"""#,
            r#""TCP":"""#,
        ] {
            assert!(!a.body.contains(zero), "{uri}: {zero} in {}", a.body);
        }
    }
}

#[tokio::test]
async fn services_omit_empty_kind_and_tagged_addresses() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/agent/service/register", r#"{"Name":"web","Port":80}"#, 200, ""),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"gw","Port":81,"Kind":"mesh-gateway","TaggedAddresses":{"lan":{"Address":"10.0.0.1","Port":81}}}"#, 200, ""),
    ]).await;
    h.until("/v1/health/service/web", |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let web = h.call("GET", "/v1/health/service/web", "", None).await.body;
    assert!(!web.contains(r#""Kind":"#), "{web}");
    assert!(
        web.contains(r#""Service":{"ID":"web","Service":"web""#),
        "{web}"
    );
    let services = h.call("GET", "/v1/agent/services", "", None).await.body;
    let v: serde_json::Value = serde_json::from_str(&services).unwrap();
    assert!(v["web"].get("Kind").is_none(), "{services}");
    assert!(v["web"].get("TaggedAddresses").is_none(), "{services}");
    assert_eq!(v["gw"]["Kind"], "mesh-gateway");
    assert_eq!(v["gw"]["TaggedAddresses"]["lan"]["Port"], 81);
    // the catalog's ServiceNode keeps ServiceKind (no omitempty there) but omits empty
    // ServiceTaggedAddresses
    let catalog = h
        .call("GET", "/v1/catalog/service/web", "", None)
        .await
        .body;
    assert!(catalog.contains(r#""ServiceKind":"""#), "{catalog}");
}

#[tokio::test]
async fn keys_match_in_any_case_at_any_depth_and_null_is_absent() {
    let h = H::new().await;
    h.table(None, &[
        // nested check keys in lower and mixed case, fields the fixed list lacks included
        ("PUT", "/v1/agent/service/register", r#"{"name":"web","PORT":80,"check":{"http":"http://127.0.0.1:9/","interval":"1h","tlsservername":"x","Disable_Redirects":true}}"#, 200, ""),
        ("GET", "/v1/agent/checks", "", 200, r#"~"Definition":{"DisableRedirects":true,"HTTP":"http://127.0.0.1:9/","Interval":"1h0m0s","TLSServerName":"x"}"#),
        // null for any field is the field left out (Go's decoder leaves it as it is)
        ("PUT", "/v1/agent/service/register", r#"{"Name":"db","ID":null,"Tags":null,"Meta":null,"Address":null,"Check":null,"Checks":null,"Weights":null}"#, 200, ""),
        ("GET", "/v1/agent/service/db", "", 200, r#"~"ID":"db","Service":"db","Tags":[]"#),
        ("PUT", "/v1/catalog/register", r#"{"node":"n2","address":"10.0.0.2","TaggedAddresses":null,"service":{"service":"api","id":null,"port":8080,"weights":null},"check":{"checkid":"c1","serviceid":"api","status":"passing"},"SkipNodeUpdate":null}"#, 200, "true"),
        ("GET", "/v1/health/service/api?passing", "", 200, r#"~"CheckID":"c1""#),
        ("PUT", "/v1/session/create", r#"{"Name":"s","NodeChecks":null,"ServiceChecks":null,"LockDelay":null,"Behavior":null}"#, 200, "*"),
    ]).await;
}
