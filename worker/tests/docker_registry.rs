//! The worker against a real in-process berth registry: the seed-compatible
//! `instance/<id>/ip` key appears on build and the instance's KV tree goes on delete, without
//! touching a neighbour whose id shares the prefix.

mod common;

use berth_registry::client::Client;
use berth_registry::server;
use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_registry_kv_keys_follow_build_and_delete() {
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
    let w = worker("kv", move |c| c.registry = Some(url)).await;
    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n",
    )]);
    let sid = id(&format!("kv-{}", w.node));
    let neighbour = format!("instance/{sid}x/ip");
    kv.kv_put(&neighbour, b"keep".to_vec()).await.unwrap();

    w.client
        .build(&sid, &build_request(repo.path(), &commit))
        .await
        .unwrap();
    let ip = kv
        .kv_get(&format!("instance/{sid}/ip"))
        .await
        .unwrap()
        .expect("ip key written");
    assert_eq!(ip.value, b"127.0.0.1");
    kv.kv_put(&format!("instance/{sid}/extra/deep"), b"x".to_vec())
        .await
        .unwrap();

    w.client.delete(&sid, false).await.unwrap();
    assert!(
        kv.kv_list(&format!("instance/{sid}/"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        kv.kv_get(&neighbour).await.unwrap().is_some(),
        "a neighbour's key stays"
    );
    w.stop().await;
    stop_registry.cancel();
    registry.await.unwrap().unwrap();
}
