//! Compatibility of the discovery API with third-party Rust clients: consulrs (agent services and
//! checks, catalog) and rs-consul (catalog, health, ACL), each against a server and against an
//! agent joined to it (both run in-process through the library's `run` functions).

use std::time::Duration;

use berth_registry::agent::{AgentConfig, run_agent};
use berth_registry::server::{self, AclToken, Config};
use tokio_util::sync::CancellationToken;

struct Cluster {
    server: String,
    agent: String,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn wait_up(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{url}/v1/agent/self"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never came up");
}

async fn cluster(config: Config, token: Option<&str>) -> Cluster {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(config, listener, stop.clone()));
    wait_up(&server).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.6:0").await.unwrap();
    let agent = format!("http://{}", listener.local_addr().unwrap());
    let mut ac = AgentConfig::new(&server, "rs-agent");
    ac.token = token.map(str::to_owned);
    ac.sync_interval = Duration::from_secs(1);
    tokio::spawn(run_agent(ac, listener, stop.clone()));
    wait_up(&agent).await;
    Cluster {
        server,
        agent,
        stop,
    }
}

/// Polls `probe` (each call is a real request) until it returns true.
async fn eventually<F, Fut>(what: &str, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn consulrs_client(url: &str) -> consulrs::client::ConsulClient {
    consulrs::client::ConsulClient::new(
        consulrs::client::ConsulClientSettingsBuilder::default()
            .address(url)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn consulrs_agent_services_checks_and_catalog() {
    use consulrs::api::check::common::AgentServiceCheckBuilder;
    use consulrs::api::service::requests::RegisterServiceRequest;
    let c = cluster(Config::dev("rs-server"), None).await;
    for (url, node) in [(&c.server, "rs-server"), (&c.agent, "rs-agent")] {
        let client = consulrs_client(url);
        let name = format!("crs-{node}");
        consulrs::service::register(
            &client,
            &name,
            Some(
                RegisterServiceRequest::builder()
                    .id(format!("{name}-1"))
                    .port(7000u64)
                    .tags(vec!["x".to_owned()])
                    .check(
                        AgentServiceCheckBuilder::default()
                            .name("ttl")
                            .ttl("30s")
                            .build()
                            .unwrap(),
                    ),
            ),
        )
        .await
        .expect("register");
        let services = consulrs::service::list(&client, None)
            .await
            .unwrap()
            .response;
        assert!(services.contains_key(&format!("{name}-1")));
        consulrs::check::pass(&client, &format!("service:{name}-1"), None)
            .await
            .expect("ttl pass");
        let checks = consulrs::check::list(&client, None).await.unwrap().response;
        assert_eq!(
            checks[&format!("service:{name}-1")].status.as_deref(),
            Some("passing")
        );
        let server = consulrs_client(&c.server);
        eventually("service in the server catalog", || async {
            consulrs::catalog::nodes_with_service(&server, &name, None)
                .await
                .is_ok_and(|r| r.response.len() == 1 && r.response[0].node.as_deref() == Some(node))
        })
        .await;
        consulrs::service::deregister(&client, &format!("{name}-1"), None)
            .await
            .expect("deregister");
        eventually("service gone from the server catalog", || async {
            consulrs::catalog::nodes_with_service(&server, &name, None)
                .await
                .is_ok_and(|r| r.response.is_empty())
        })
        .await;
    }
}

#[tokio::test]
async fn rs_consul_catalog_and_health_through_server_and_agent() {
    use rs_consul::{
        Config as RsConfig, Consul, DeregisterEntityPayload, GetServiceNodesRequest,
        RegisterEntityCheck, RegisterEntityPayload, RegisterEntityService,
    };
    let c = cluster(Config::dev("rs-server"), None).await;
    for url in [&c.server, &c.agent] {
        let consul = Consul::new(RsConfig {
            address: url.clone(),
            token: None,
            ..RsConfig::default()
        });
        let node = format!("ext-{}", url.len() + url.rfind(':').unwrap_or(0));
        let register = |status: &str| RegisterEntityPayload {
            ID: None,
            Node: node.clone(),
            Address: "10.1.1.1".to_owned(),
            Datacenter: None,
            TaggedAddresses: Default::default(),
            NodeMeta: [("rack".to_owned(), "r1".to_owned())].into(),
            Service: Some(RegisterEntityService {
                ID: Some("db-1".to_owned()),
                Service: "rsdb".to_owned(),
                Tags: vec!["primary".to_owned()],
                TaggedAddresses: Default::default(),
                Meta: Default::default(),
                Port: Some(5432),
                Namespace: None,
            }),
            Checks: vec![RegisterEntityCheck {
                Node: None,
                CheckID: Some("db-1-alive".to_owned()),
                Name: "alive".to_owned(),
                Notes: None,
                Status: Some(status.to_owned()),
                ServiceID: Some("db-1".to_owned()),
                Definition: Default::default(),
            }],
            SkipNodeUpdate: None,
        };
        consul
            .register_entity(&register("passing"))
            .await
            .expect("register");
        let names = consul.get_all_registered_service_names(None).await.unwrap();
        assert!(names.response.contains(&"rsdb".to_owned()));
        let passing = consul
            .get_service_nodes(
                GetServiceNodesRequest {
                    service: "rsdb",
                    passing: true,
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!(passing.response.len(), 1);
        assert_eq!(passing.response[0].service.port, 5432);
        assert!(passing.index > 0);
        consul.register_entity(&register("critical")).await.unwrap();
        let addrs = consul
            .get_service_addresses_and_ports("rsdb", None)
            .await
            .unwrap();
        assert!(
            addrs.is_empty(),
            "critical instance is not passing: {addrs:?}"
        );
        consul
            .deregister_entity(&DeregisterEntityPayload {
                Node: Some(node.clone()),
                Datacenter: None,
                CheckID: None,
                ServiceID: None,
                Namespace: None,
            })
            .await
            .unwrap();
        let all = consul
            .get_service_nodes(
                GetServiceNodesRequest {
                    service: "rsdb",
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        assert!(all.response.is_empty());
    }
}

#[tokio::test]
async fn rs_consul_acl_tokens_and_policies() {
    use rs_consul::{
        ACLTokenPolicyLink, Config as RsConfig, Consul, CreateACLPolicyRequest,
        CreateACLTokenPayload,
    };
    let mut config = Config::dev("rs-acl");
    config.acl_master_token = Some(AclToken::new("root"));
    let c = cluster(config, Some("root")).await;
    for url in [&c.server, &c.agent] {
        let root = Consul::new(RsConfig {
            address: url.clone(),
            token: Some("root".to_owned()),
            ..RsConfig::default()
        });
        let name = format!("rs-kv-read-{}", url.len() + url.rfind(':').unwrap_or(0));
        let policy = root
            .create_acl_policy(&CreateACLPolicyRequest {
                name: name.clone(),
                description: Some("read all keys".to_owned()),
                rules: Some(r#"key_prefix "" { policy = "read" }"#.to_owned()),
            })
            .await
            .expect("create policy");
        assert_eq!(policy.name, name);
        let token = root
            .create_acl_token(&CreateACLTokenPayload {
                description: Some("rs ro".to_owned()),
                policies: vec![ACLTokenPolicyLink {
                    id: Some(policy.id.clone()),
                    name: None,
                }],
                ..Default::default()
            })
            .await
            .expect("create token");
        let read = root
            .read_acl_token(token.accessor_id.clone())
            .await
            .unwrap();
        assert_eq!(read.description, "rs ro");
        assert!(
            root.get_acl_tokens()
                .await
                .unwrap()
                .iter()
                .any(|t| t.accessor_id == token.accessor_id)
        );
        assert!(
            root.get_acl_policies()
                .await
                .unwrap()
                .iter()
                .any(|p| p.id == policy.id)
        );
        let ro = Consul::new(RsConfig {
            address: url.clone(),
            token: Some(token.secret_id.clone()),
            ..RsConfig::default()
        });
        let denied = ro
            .create_or_update_key(
                rs_consul::CreateOrUpdateKeyRequest {
                    key: "rs/x",
                    ..Default::default()
                },
                b"v".to_vec(),
            )
            .await;
        assert!(denied.is_err(), "read-only token wrote a key");
        root.delete_acl_token(token.accessor_id.clone())
            .await
            .unwrap();
        root.delete_acl_policy(policy.id.clone()).await.unwrap();
    }
}
