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
        // Go's api.AgentServiceCheck names script arguments ScriptArgs
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"ScriptArgs":["/bin/true"],"Interval":"10s"}}"#, 400, "~Scripts are disabled"),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad","Check":{"scriptargs":["/bin/true"],"Interval":"10s"}}"#, 400, "~Scripts are disabled"),
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
        ("PUT", "/v1/catalog/register", r#"{"Node":"n2","Address":"10.0.0.2","Check":{"CheckID":"c2","Definition":{"tcp":"10.0.0.2:80","interval":"10s","tls_skip_verify":true,"Timeout":5000000000}}}"#, 200, "true"),
        ("GET", "/v1/health/node/n2", "", 200, r#"~"Definition":{"Interval":"10s","TCP":"10.0.0.2:80","TLSSkipVerify":true,"Timeout":"5s"}"#),
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

/// Ops as HashiCorp's Go client encodes `api.TxnOp`: every kind present, the unused ones `null`,
/// zero values written out.
fn go_op(kind: &str, op: &str) -> String {
    let mut fields = vec![];
    for k in ["KV", "Node", "Service", "Check"] {
        if k == kind {
            fields.push(format!(r#""{k}":{op}"#));
        } else {
            fields.push(format!(r#""{k}":null"#));
        }
    }
    format!("{{{}}}", fields.join(","))
}

fn go_node(verb: &str, index: u64) -> String {
    go_op(
        "Node",
        &format!(
            r#"{{"Verb":"{verb}","Node":{{"ID":"","Node":"n1","Address":"10.0.0.1","Datacenter":"","TaggedAddresses":null,"Meta":null,"CreateIndex":0,"ModifyIndex":{index}}}}}"#
        ),
    )
}

fn go_service(verb: &str, id: &str, index: u64) -> String {
    go_op(
        "Service",
        &format!(
            r#"{{"Verb":"{verb}","Node":"n1","Service":{{"ID":"{id}","Service":"web","Tags":null,"Meta":null,"Port":80,"Address":"","Weights":{{"Passing":1,"Warning":1}},"EnableTagOverride":false,"CreateIndex":0,"ModifyIndex":{index},"Datacenter":""}}}}"#
        ),
    )
}

fn go_check(verb: &str, index: u64) -> String {
    go_op(
        "Check",
        &format!(
            r#"{{"Verb":"{verb}","Check":{{"Node":"n1","CheckID":"c1","Name":"web alive","Status":"passing","Notes":"","Output":"ok","ServiceID":"s1","ServiceName":"web","ServiceTags":null,"Type":"","ExposedPort":0,"Definition":{{"Interval":"0s","Timeout":"0s","DeregisterCriticalServiceAfter":"0s","HTTP":"","Header":null,"Method":"","Body":"","TLSServerName":"","TLSSkipVerify":false,"TCP":"","TCPUseTLS":false,"UDP":"","GRPC":"","OSService":"","GRPCUseTLS":false}},"CreateIndex":0,"ModifyIndex":{index}}}}}"#
        ),
    )
}

fn txn(ops: &[String]) -> String {
    format!("[{}]", ops.join(","))
}

#[tokio::test]
async fn txn_takes_go_ops_and_has_consuls_catalog_verbs() {
    let h = H::new().await;
    let kv = go_op(
        "KV",
        r#"{"Verb":"set","Key":"k","Value":"YQ==","Flags":0,"Index":0,"Session":""}"#,
    );
    let ok_empty = r#"{"Results":[],"Errors":null}"#;
    let rows: Vec<(String, u16, String)> = vec![
        (txn(&[kv]), 200, r#"~{"Results":[{"KV":{"LockIndex":0,"Key":"k""#.into()),
        // an op naming no kind is skipped, as Consul's convertOps does
        (txn(&[go_op("", "")]), 200, ok_empty.into()),
        // a service or check needs its node first
        (txn(&[go_service("set", "s1", 0)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"Missing node registration"}]}"#.into()),
        (txn(&[go_node("set", 0), go_service("set", "s1", 0), go_check("set", 0)]), 200,
            r#"~{"Results":[{"Node":{"ID":"","Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","TaggedAddresses":{},"Meta":{},"#.into()),
        (txn(&[go_node("get", 0)]), 200, r#"~{"Results":[{"Node":{"ID":"","Node":"n1""#.into()),
        (txn(&[go_service("get", "s1", 0)]), 200, r#"~{"Results":[{"Service":{"ID":"s1","Service":"web","Tags":[],"Meta":{},"Port":80"#.into()),
        (txn(&[go_check("get", 0)]), 200, r#"~"Check":{"Node":"n1","CheckID":"c1","Name":"web alive","Status":"passing","Notes":"","Output":"ok","ServiceID":"s1","ServiceName":"web","ServiceTags":[],"Type":"","Definition":{},"#.into()),
        // cas: 0 only creates; a stale index is refused with Consul's text
        (txn(&[go_node("cas", 0)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to set node \"n1\", index is stale"}]}"#.into()),
        (txn(&[go_service("cas", "s1", 1)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to set service \"s1\" on node \"n1\", index is stale"}]}"#.into()),
        (txn(&[go_check("delete-cas", 1)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to delete check \"c1\" on node \"n1\", index is stale"}]}"#.into()),
        (txn(&[go_service("get", "nope", 0)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"service \"nope\" on node \"n1\" doesn't exist"}]}"#.into()),
        (txn(&[go_node("bogus", 0)]), 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"unknown Node verb \"bogus\""}]}"#.into()),
        (txn(&[go_service("set", "s2", 0), go_check("bogus", 0)]), 409, r#"~"What":"unknown Check verb \"bogus\"""#.into()),
    ];
    for (body, status, expected) in &rows {
        h.table(None, &[("PUT", "/v1/txn", body, *status, expected)])
            .await;
    }
    // the rolled-back s2 left nothing; the applied ops are in the catalog and health
    h.table(
        None,
        &[
            (
                "GET",
                "/v1/catalog/service/web",
                "",
                200,
                r#"~"ServiceID":"s1""#,
            ),
            (
                "GET",
                "/v1/health/service/web?passing",
                "",
                200,
                r#"~"CheckID":"c1""#,
            ),
        ],
    )
    .await;
    let web = h
        .call("GET", "/v1/catalog/service/web", "", None)
        .await
        .body;
    assert!(!web.contains("s2"), "{web}");
    // cas with the stored index, then delete-cas with it
    let v: serde_json::Value = serde_json::from_str(
        &h.call("PUT", "/v1/txn", &txn(&[go_service("get", "s1", 0)]), None)
            .await
            .body,
    )
    .unwrap();
    let index = v["Results"][0]["Service"]["ModifyIndex"].as_u64().unwrap();
    h.table(
        None,
        &[
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_service("cas", "s1", index)]),
                200,
                r#"~"Service":{"ID":"s1""#,
            ),
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_service("delete-cas", "s1", index + 1)]),
                409,
                "~index is stale",
            ),
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(
        &h.call("PUT", "/v1/txn", &txn(&[go_service("get", "s1", 0)]), None)
            .await
            .body,
    )
    .unwrap();
    let index = v["Results"][0]["Service"]["ModifyIndex"].as_u64().unwrap();
    h.table(
        None,
        &[
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_service("delete-cas", "s1", index)]),
                200,
                ok_empty,
            ),
            ("GET", "/v1/catalog/service/web", "", 200, "[]"),
            // deleting the service took its check with it
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_check("get", 0)]),
                409,
                r#"~check \"c1\" on node \"n1\" doesn't exist"#,
            ),
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_node("delete", 0)]),
                200,
                ok_empty,
            ),
            ("GET", "/v1/catalog/node/n1", "", 200, "null"),
        ],
    )
    .await;
}

#[tokio::test]
async fn txn_catalog_ops_are_acl_checked() {
    let h = super::acl_server().await;
    h.table(
        Some("root"),
        &[(
            "PUT",
            "/v1/txn",
            &txn(&[go_node("set", 0), go_service("set", "s1", 0)]),
            200,
            "*",
        )],
    )
    .await;
    // "evil" writes nodes and the service "evil" only; "svcro" reads services only
    let evil_takeover = go_op(
        "Service",
        r#"{"Verb":"set","Node":"n1","Service":{"ID":"s1","Service":"evil","Port":1}}"#,
    );
    let evil_check = go_op(
        "Check",
        r#"{"Verb":"set","Check":{"Node":"n1","CheckID":"c9","ServiceID":"s1","ServiceName":"evil","Status":"passing"}}"#,
    );
    h.table(
        Some("evil"),
        &[
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_service("set", "s1", 0)]),
                403,
                "Permission denied",
            ),
            (
                "PUT",
                "/v1/txn",
                &txn(&[evil_takeover]),
                403,
                "Permission denied",
            ),
            (
                "PUT",
                "/v1/txn",
                &txn(&[evil_check]),
                403,
                "Permission denied",
            ),
            ("PUT", "/v1/txn", &txn(&[go_node("set", 0)]), 200, "*"),
        ],
    )
    .await;
    h.table(
        Some("svcro"),
        &[
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_node("get", 0)]),
                403,
                "Permission denied",
            ),
            (
                "PUT",
                "/v1/txn",
                &txn(&[go_service("get", "s1", 0)]),
                403,
                "Permission denied",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn agent_ids_take_the_rest_of_the_path() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/agent/service/register", r#"{"ID":"pg/1","Name":"pg","Port":5432,"Check":{"CheckID":"pg/1/alive","TTL":"1h"}}"#, 200, ""),
        ("GET", "/v1/agent/service/pg/1", "", 200, r#"~"ID":"pg/1","Service":"pg""#),
        ("GET", "/v1/agent/service/pg%2F1", "", 200, r#"~"ID":"pg/1""#),
        ("PUT", "/v1/agent/check/pass/pg/1/alive?note=up", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/pg/1", "", 200, r#"~"AggregatedStatus":"passing""#),
        ("GET", "/v1/agent/health/service/name/pg", "", 200, r#"~"AggregatedStatus":"passing""#),
        ("PUT", "/v1/agent/check/warn/pg/1/alive", "", 200, ""),
        ("PUT", "/v1/agent/check/fail/pg/1/alive", "", 200, ""),
        ("PUT", "/v1/agent/check/update/pg/1/alive", r#"{"Status":"passing","Output":"ok"}"#, 200, ""),
        ("PUT", "/v1/agent/service/maintenance/pg/1?enable=true&reason=r", "", 200, ""),
        ("GET", "/v1/agent/health/service/id/pg/1", "", 503, r#"~"AggregatedStatus":"maintenance""#),
        ("PUT", "/v1/agent/service/maintenance/pg/1?enable=false", "", 200, ""),
        ("PUT", "/v1/agent/check/deregister/pg/1/alive", "", 200, ""),
        ("PUT", "/v1/agent/check/pass/pg/1/alive", "", 404, r#"Unknown check ID "pg/1/alive""#),
        ("PUT", "/v1/agent/service/deregister/pg/1", "", 200, ""),
        ("GET", "/v1/agent/service/pg/1", "", 404, "*"),
        ("PUT", "/v1/agent/service/deregister/pg/1", "", 404, "~Unknown service ID"),
        // the fixed routes beside the catch-alls still answer as before
        ("GET", "/v1/agent/service/register", "", 405, "method GET not allowed"),
        ("PUT", "/v1/agent/service/x", "", 405, "method PUT not allowed"),
    ]).await;
}

fn entries(body: &str) -> usize {
    serde_json::from_str::<Vec<serde_json::Value>>(body)
        .unwrap()
        .len()
}

#[tokio::test]
async fn kept_discovery_answers_follow_the_index_and_the_token() {
    let h = super::acl_server().await;
    let reg = |node: &str| {
        format!(
            r#"{{"Node":"{node}","Address":"10.0.0.1","Service":{{"ID":"api1","Service":"api","Port":80}},"Check":{{"CheckID":"c","ServiceID":"api1","Status":"passing"}}}}"#
        )
    };
    h.table(
        Some("root"),
        &[("PUT", "/v1/catalog/register", &reg("n1"), 200, "true")],
    )
    .await;
    for _ in 0..2 {
        for uri in ["/v1/health/service/api?passing", "/v1/catalog/service/api"] {
            let a = h.call("GET", uri, "", Some("root")).await;
            assert_eq!(a.status, 200);
            assert_eq!(entries(&a.body), 1, "{uri}: {}", a.body);
            assert_eq!(a.headers["content-type"], "application/json");
            // a token that may read the service but no node gets nothing, never the kept answer
            let a = h.call("GET", uri, "", Some("svcro")).await;
            assert_eq!((a.status, a.body.as_str()), (200, "[]"), "{uri}");
            assert_eq!(a.headers["x-consul-results-filtered-by-acls"], "true");
        }
    }
    // a change moves the index: the next answer is built anew
    h.table(
        Some("root"),
        &[("PUT", "/v1/catalog/register", &reg("n2"), 200, "true")],
    )
    .await;
    for uri in ["/v1/health/service/api?passing", "/v1/catalog/service/api"] {
        let a = h.call("GET", uri, "", Some("root")).await;
        assert_eq!(entries(&a.body), 2, "{uri}: {}", a.body);
    }
    h.table(Some("root"), &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"n2","Address":"10.0.0.1","Check":{"CheckID":"c","ServiceID":"api1","Status":"critical"}}"#, 200, "true"),
    ]).await;
    let a = h
        .call("GET", "/v1/health/service/api?passing", "", Some("root"))
        .await;
    assert_eq!(entries(&a.body), 1, "{}", a.body);
    let a = h
        .call("GET", "/v1/health/service/api", "", Some("root"))
        .await;
    assert_eq!(entries(&a.body), 2, "{}", a.body);
}

#[tokio::test]
async fn catalog_register_takes_what_gos_client_sends() {
    let h = H::new().await;
    // api.CatalogRegistration: the service is an api.AgentService, the check an
    // api.AgentCheck, zero values written out
    let body = r#"{"ID":"","Node":"ext1","Address":"10.0.0.9","Datacenter":"","TaggedAddresses":null,"NodeMeta":null,"Service":{"ID":"db1","Service":"db","Tags":null,"Meta":null,"Port":5432,"Address":"","Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"Datacenter":"","ContentHash":"","Proxy":null,"Connect":null,"Namespace":""},"Check":{"Node":"ext1","CheckID":"db-alive","Name":"db","Status":"passing","Notes":"","Output":"","ServiceID":"db1","ServiceName":"db","ServiceTags":null,"Type":"","Definition":{"Interval":"0s","Timeout":"0s","DeregisterCriticalServiceAfter":"0s","HTTP":"","Header":null,"Method":"","TLSSkipVerify":false,"TCP":""},"CreateIndex":0,"ModifyIndex":0},"Checks":null,"SkipNodeUpdate":false}"#;
    h.table(
        None,
        &[
            ("PUT", "/v1/catalog/register", body, 200, "true"),
            (
                "GET",
                "/v1/health/service/db?passing",
                "",
                200,
                r#"~"CheckID":"db-alive","Name":"db","Status":"passing""#,
            ),
            (
                "GET",
                "/v1/health/checks/db",
                "",
                200,
                r#"~"Definition":{}"#,
            ),
            (
                "PUT",
                "/v1/catalog/register",
                r#"{"Node":"ext1","Address":"10.0.0.9","Service":{"Service":"x","Bogus":1}}"#,
                400,
                r#"Request decode failed: json: unknown field "Bogus""#,
            ),
        ],
    )
    .await;
}
