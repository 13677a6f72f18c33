//! The worker against a real in-process berth registry: it leaves the master's keys alone (the
//! seed-compatible `instance/<id>/ip` is written and deleted by the master, under the instance
//! lock; see `master/tests/flow.rs` and the cluster tests), and `--join` runs the registry agent
//! in-process.

mod common;

use berth_registry::client::Client;
use berth_registry::server;
use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_registry_the_worker_leaves_the_masters_kv_keys_alone() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_registry = CancellationToken::new();
    let registry = tokio::spawn(server::run(
        server::Config::dev("registry-test"),
        listener,
        stop_registry.clone(),
    ));
    let kv = Client::new(&registry_url, None).unwrap();
    let url = registry_url.clone();
    // No master here: nothing to fence against.
    let w = worker("kv", move |c| {
        c.registry = Some(url);
        c.fence = false;
    })
    .await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n",
    )]);
    let sid = id(&format!("kv-{}", w.node));
    // What the master wrote before asking for the build (an address other than the worker's
    // 127.0.0.1), and a key of someone else under the same prefix.
    let ip_key = format!("instance/{sid}/ip");
    let other_key = format!("instance/{sid}/extra/deep");
    kv.kv_put(&ip_key, b"10.9.9.9".to_vec()).await.unwrap();
    kv.kv_put(&other_key, b"x".to_vec()).await.unwrap();

    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let ip = kv.kv_get(&ip_key).await.unwrap().expect("ip key stays");
    assert_eq!(ip.value, b"10.9.9.9", "the worker does not write the key");

    w.client.delete(&sid, false).await.unwrap();
    let mut left: Vec<String> = kv
        .kv_list(&format!("instance/{sid}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    left.sort();
    assert_eq!(left, [other_key, ip_key], "the worker deletes no key");
    w.stop().await;
    stop_registry.cancel();
    registry.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_join_runs_an_in_process_agent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap().to_string();
    let stop_registry = CancellationToken::new();
    let registry = tokio::spawn(server::run(
        server::Config::dev("join-server"),
        listener,
        stop_registry.clone(),
    ));
    let catalog = Client::new(&format!("http://{server_addr}"), None).unwrap();
    let join = server_addr.clone();
    let w = worker("join", move |c| {
        c.join = Some(join);
        c.agent_listen = "127.0.0.1:0".into();
        c.fence = false;
    })
    .await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"8080\"]\n",
    )]);
    let sid = id(&format!("join-{}", w.node));
    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    w.client.start(&sid, &Default::default()).await.unwrap();
    // The agent syncs the worker and the stack's service into the server's catalog.
    let name = format!("app.{sid}");
    let mut found = (false, false);
    for _ in 0..600 {
        let worker_nodes: Vec<String> = catalog
            .catalog_service("berth-worker", None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.node)
            .collect();
        let app_nodes: Vec<String> = catalog
            .catalog_service(&name, None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.node)
            .collect();
        found = (worker_nodes.contains(&w.node), app_nodes.contains(&w.node));
        if found == (true, true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        found,
        (true, true),
        "worker and app in the server's catalog under the node"
    );
    w.client.delete(&sid, false).await.unwrap();
    w.stop().await;
    stop_registry.cancel();
    let _ = registry.await;
}
