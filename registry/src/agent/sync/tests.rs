//! Tests of anti-entropy (`sync.rs`): a refused service against a real server with ACLs on,
//! the check update interval, and the backoff of failed rounds.

use super::*;
use crate::dto::AgentServiceRegistration;
use crate::server::{self, AclToken, Config};

const MASTER: &str = "root-secret";

/// A server with ACLs on, and a token that may write service `web` and every node.
async fn server_and_web_token(stop: &CancellationToken) -> (String, String) {
    let mut config = Config::dev("srv");
    config.acl_master_token = Some(AclToken::new(MASTER));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(config, listener, stop.clone()));
    let http = reqwest::Client::new();
    let rules = "service \"web\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }";
    let put = |path: &str, body: serde_json::Value| {
        http.put(format!("{url}{path}"))
            .header("X-Consul-Token", MASTER)
            .json(&body)
            .send()
    };
    let mut policy = None;
    for _ in 0..200 {
        if let Ok(r) = put(
            "/v1/acl/policy",
            serde_json::json!({"Name": "webw", "Rules": rules}),
        )
        .await
        {
            policy = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(policy.expect("server up").status().is_success());
    let token: serde_json::Value = put(
        "/v1/acl/token",
        serde_json::json!({"Policies": [{"Name": "webw"}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    (url, token["SecretID"].as_str().unwrap().to_owned())
}

fn service(name: &str) -> AgentServiceRegistration {
    serde_json::from_value(serde_json::json!({"Name": name, "Port": 80})).unwrap()
}

#[tokio::test]
async fn a_refused_service_does_not_stop_the_others() {
    let stop = CancellationToken::new();
    let (url, token) = server_and_web_token(&stop).await;
    let target = Target::Remote(Client::new(&url, Some(token)).unwrap());
    let local = LocalAgent::new("ag3", false, stop.clone());
    local.register_service(service("aaa"), false).unwrap();
    local.register_service(service("web"), false).unwrap();
    let spec = NodeSpec {
        node: agent_node("ag3", &uuid::Uuid::new_v4().to_string(), "127.0.0.4", "dc1"),
        protected_services: vec![],
        skip_node_update: false,
    };
    let mut refused = Refused::default();
    let round = sync_once(&local, &target, &spec, &mut refused, true)
        .await
        .unwrap();
    assert_eq!(
        round,
        Round {
            writes: 1,
            refused: 1,
            held: 0
        }
    );
    let Target::Remote(client) = &target else {
        unreachable!()
    };
    let node = client.catalog_node("ag3").await.unwrap().unwrap();
    assert_eq!(node.services.keys().collect::<Vec<_>>(), ["web"]);
    // Change-driven rounds leave the refused write alone; a full round retries it.
    let quiet = sync_once(&local, &target, &spec, &mut refused, false)
        .await
        .unwrap();
    assert_eq!(
        quiet,
        Round {
            writes: 0,
            refused: 0,
            held: 1
        }
    );
    let full = sync_once(&local, &target, &spec, &mut refused, true)
        .await
        .unwrap();
    assert_eq!(
        full,
        Round {
            writes: 0,
            refused: 1,
            held: 0
        }
    );
    // Once the service is gone locally, nothing is left to refuse.
    local.deregister_service("aaa").unwrap();
    let done = sync_once(&local, &target, &spec, &mut refused, false)
        .await
        .unwrap();
    assert_eq!(done, Round::default());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn output_only_changes_wait_for_the_check_update_interval() {
    use crate::agent::LocalOptions;
    use crate::checks::Health;
    let stop = CancellationToken::new();
    let (store, _writer) = Store::open(None, stop.clone()).unwrap();
    let target = Target::Store(store.clone());
    let options = LocalOptions {
        check_update_interval: Duration::from_secs(60),
        ..LocalOptions::default()
    };
    let local = LocalAgent::with_options("n1", options, stop.clone());
    let reg = serde_json::json!({"Name": "web", "Check": {"TTL": "1h"}});
    local
        .register_service(serde_json::from_value(reg).unwrap(), false)
        .unwrap();
    let spec = NodeSpec {
        node: agent_node("n1", &uuid::Uuid::new_v4().to_string(), "127.0.0.1", "dc1"),
        protected_services: vec![],
        skip_node_update: false,
    };
    let mut refused = Refused::default();
    let mut sync = async || {
        sync_once(&local, &target, &spec, &mut refused, true)
            .await
            .unwrap()
            .writes
    };
    let catalog = || {
        store.read(|s| {
            let c = &s.checks[&("n1".to_owned(), "service:web".to_owned())];
            (c.status.as_str(), c.output.clone())
        })
    };
    let id = "service:web";
    let mut changes = local.subscribe();
    assert_eq!(sync().await, 1);
    changes.borrow_and_update();
    // A status change syncs at once.
    local.update_ttl(id, Health::Passing, "a".into()).unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(sync().await, 1);
    assert_eq!(catalog(), ("passing", "a".to_owned()));
    changes.borrow_and_update();
    // Output alone: no trigger, and even a full round leaves the catalog's output alone.
    local.update_ttl(id, Health::Passing, "b".into()).unwrap();
    assert!(!changes.has_changed().unwrap());
    assert_eq!(sync().await, 0);
    assert_eq!(catalog(), ("passing", "a".to_owned()));
    // A status change in the meantime goes out at once, with the current output.
    local.update_ttl(id, Health::Warning, "c".into()).unwrap();
    assert_eq!(sync().await, 1);
    assert_eq!(catalog(), ("warning", "c".to_owned()));
    changes.borrow_and_update();
    local.update_ttl(id, Health::Warning, "d".into()).unwrap();
    assert!(!changes.has_changed().unwrap());
    // The interval (counted from the first deferred change) ends: the output goes out.
    let start = tokio::time::Instant::now();
    changes.changed().await.unwrap();
    assert!(start.elapsed() <= Duration::from_secs(60));
    assert_eq!(sync().await, 1);
    assert_eq!(catalog(), ("warning", "d".to_owned()));
    stop.cancel();
}

#[test]
fn failed_rounds_back_off_to_the_sync_interval() {
    let cap = Duration::from_secs(30);
    let waits: Vec<u64> = (1..=7).map(|n| backoff(n, cap).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(backoff(u32::MAX, cap), cap);
}
