//! What a run of HashiCorp's Go client (`registry/tests/go`) found the registry answering
//! differently from Consul, each as the request that client sends and Consul's answer.

use super::H;

#[tokio::test]
async fn catalog_deregister_takes_empty_ids_as_absent() {
    let h = H::new().await;
    // api.CatalogDeregistration has no omitempty on ServiceID and CheckID: both always travel.
    h.table(None, &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext","Address":"10.0.0.9","Service":{"ID":"a","Service":"a"},"Check":{"CheckID":"c","Status":"passing"}}"#, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext","Address":"10.0.0.9","Service":{"ID":"b","Service":"b"}}"#, 200, "true"),
        ("PUT", "/v1/catalog/deregister", r#"{"Node":"ext","Datacenter":"","ServiceID":"a","CheckID":""}"#, 200, "true"),
        ("GET", "/v1/catalog/service/a", "", 200, "[]"),
        ("GET", "/v1/catalog/service/b", "", 200, r#"~"ServiceID":"b""#),
        // a service ID wins over a check ID, as in Consul's FSM
        ("PUT", "/v1/catalog/deregister", r#"{"Node":"ext","ServiceID":"b","CheckID":"c"}"#, 200, "true"),
        ("GET", "/v1/catalog/service/b", "", 200, "[]"),
        ("GET", "/v1/health/node/ext", "", 200, r#"~"CheckID":"c""#),
        ("PUT", "/v1/catalog/deregister", r#"{"Node":"ext","Datacenter":"","ServiceID":"","CheckID":""}"#, 200, "true"),
        ("GET", "/v1/catalog/node/ext", "", 200, "null"),
    ]).await;
}

#[tokio::test]
async fn check_for_an_unknown_service_is_404() {
    let h = H::new().await;
    h.table(
        None,
        &[(
            "PUT",
            "/v1/agent/check/register",
            r#"{"Name":"x","ServiceID":"nope","TTL":"10s"}"#,
            404,
            r#"ServiceID "nope" does not exist"#,
        )],
    )
    .await;
}

#[tokio::test]
async fn members_wan_lists_the_server_by_node_and_datacenter() {
    let h = H::new().await;
    let wan = h.json("/v1/agent/members?wan=1").await;
    let wan = wan.as_array().unwrap();
    assert_eq!(wan.len(), 1, "{wan:?}");
    assert_eq!(wan[0]["Name"], "node1.dc1");
    assert_eq!(wan[0]["Tags"]["role"], "consul");
    // `?wan` without a value is the LAN pool, as Consul reads it
    let lan = h.json("/v1/agent/members?wan").await;
    assert_eq!(lan[0]["Name"], "node1");
}

#[tokio::test]
async fn peer_queries_find_nothing_imported() {
    let h = H::new().await;
    h.table(
        None,
        &[(
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"web","Port":80}"#,
            200,
            "",
        )],
    )
    .await;
    h.until("/v1/catalog/service/web", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    h.table(
        None,
        &[
            ("GET", "/v1/health/service/web?peer=other", "", 200, "[]"),
            ("GET", "/v1/catalog/service/web?peer=other", "", 200, "[]"),
            // an empty peer is the local cluster; the cached local answer is not a peer's
            (
                "GET",
                "/v1/health/service/web?peer=",
                "",
                200,
                r#"~"Service":"web""#,
            ),
            (
                "GET",
                "/v1/health/service/web",
                "",
                200,
                r#"~"Service":"web""#,
            ),
            ("GET", "/v1/health/service/web?peer=other", "", 200, "[]"),
        ],
    )
    .await;
}

#[tokio::test]
async fn agent_self_has_debug_config_and_no_xds() {
    let h = H::new().await;
    let me = h.json("/v1/agent/self").await;
    let debug = &me["DebugConfig"];
    assert_eq!(debug["NodeName"], "node1");
    assert_eq!(debug["Datacenter"], "dc1");
    assert_eq!(debug["ServerMode"], true);
    assert_eq!(debug["ACLsEnabled"], false);
    assert_eq!(debug["GRPCPort"], -1);
    assert_eq!(debug["SessionTTLMin"], "10s");
    assert!(me.get("xDS").is_none(), "no xDS server, no xDS block: {me}");
}

#[tokio::test]
async fn node_services_lists_the_node_and_its_services() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext","Address":"10.0.0.9","Service":{"ID":"b","Service":"db","Port":5432}}"#, 200, "true"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext","Address":"10.0.0.9","Service":{"ID":"a","Service":"web","Tags":["x"]}}"#, 200, "true"),
        ("GET", "/v1/catalog/node-services/ext", "", 200, r#"~"Node":{"ID":"","Node":"ext","Address":"10.0.0.9""#),
        ("GET", "/v1/catalog/node-services/ext?filter=Service%20%3D%3D%20db", "", 200, r#"~"Services":[{"ID":"b","Service":"db","Tags":[],"#),
        // unknown node, or a peer (none is imported): Consul's empty list, not null
        ("GET", "/v1/catalog/node-services/nowhere", "", 200, r#"{"Node":null,"Services":[]}"#),
        ("GET", "/v1/catalog/node-services/ext?peer=other", "", 200, r#"{"Node":null,"Services":[]}"#),
        ("GET", "/v1/catalog/node-services/ext?filter=Nope%20%3D%3D%201", "", 400, r#"~Selector "Nope" is not valid"#),
    ]).await;
    let list = h.json("/v1/catalog/node-services/ext").await;
    let ids: Vec<&str> = list["Services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "ordered by ID: {list}");
    assert_eq!(list["Services"][0]["Tags"], serde_json::json!(["x"]));
}

#[tokio::test]
async fn peer_on_the_other_reads_finds_nothing() {
    let h = H::new().await;
    h.table(None, &[
        ("PUT", "/v1/catalog/register", r#"{"Node":"ext","Address":"10.0.0.9","Service":{"ID":"a","Service":"web"},"Check":{"CheckID":"c","ServiceID":"a","Status":"passing"}}"#, 200, "true"),
        ("GET", "/v1/catalog/nodes?peer=other", "", 200, "[]"),
        ("GET", "/v1/catalog/services?peer=other", "", 200, "{}"),
        ("GET", "/v1/catalog/node/ext?peer=other", "", 200, "null"),
        ("GET", "/v1/health/checks/web?peer=other", "", 200, "[]"),
        ("GET", "/v1/health/node/ext?peer=other", "", 200, "[]"),
        ("GET", "/v1/health/state/any?peer=other", "", 200, "[]"),
        // without a peer, or an empty one, the local cluster answers
        ("GET", "/v1/catalog/nodes?peer=", "", 200, r#"~"Node":"ext""#),
        ("GET", "/v1/catalog/services", "", 200, r#"~"web":[]"#),
        ("GET", "/v1/catalog/node/ext", "", 200, r#"~"Node":"ext""#),
        ("GET", "/v1/health/checks/web", "", 200, r#"~"CheckID":"c""#),
        ("GET", "/v1/health/node/ext", "", 200, r#"~"CheckID":"c""#),
        ("GET", "/v1/health/state/passing", "", 200, r#"~"CheckID":"c""#),
    ]).await;
}
