//! The fence against a real in-process berth registry: the worker builds and starts only what
//! the master's records (`berth/instances/<id>`, written here as a master would) place on its
//! node, and a restarted worker removes the stacks the records place elsewhere (keeping their
//! named volumes) or no longer hold (volumes too), but keeps everything when the registry holds
//! no record at all; with the worker up, a move away removes the copy at once (the fence follows
//! the records with a blocking query).

mod common;

use berth_registry::client::Client;
use berth_registry::server;
use berth_worker_api::{InstanceRecord, StartRequest, WorkerClientError, WorkerRef};
use common::*;
use tokio_util::sync::CancellationToken;

const APP: &str = "services:\n  app:\n    image: berth-base:latest\n    \
                   command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"8080\"]\n    \
                   volumes: [\"data:/data\"]\nvolumes:\n  data:\n";

/// Writes the record of `id` placing it on `node` (`None`: removes the record).
async fn place(kv: &Client, id: &str, node: Option<&str>) {
    let key = format!("berth/instances/{id}");
    let Some(node) = node else {
        kv.kv_delete(&key).await.unwrap();
        return;
    };
    let mut rec = InstanceRecord::new(id, "alice", "shop", "http://master/git".into());
    rec.worker = Some(WorkerRef {
        id: format!("{node}/berth-worker:{node}"),
        node: node.to_owned(),
        url: "http://127.0.0.1:1".into(),
        address: "127.0.0.1".into(),
    });
    kv.kv_put(&key, serde_json::to_vec(&rec).unwrap())
        .await
        .unwrap();
}

/// Waits until the worker of `node` is registered (`want`) or not: after a start, its first
/// fence pass has run once it is (the registrator registers it right after).
async fn registered(kv: &Client, node: &str, want: bool) {
    for _ in 0..600 {
        let ids: Vec<String> = kv
            .health_service("berth-worker", false)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.service.id)
            .collect();
        if ids.contains(&format!("berth-worker:{node}")) == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("worker {node} registered: never {want}");
}

/// Waits until the fence has read the record of `id` (a start answers 409 while it excludes it,
/// and goes on once it does not: `excluded` says which to wait for).
async fn eventually_fenced(w: &TestWorker, id: &berth_worker_api::ValidName, excluded: bool) {
    for _ in 0..100 {
        let refused = matches!(
            w.client.start(id, &StartRequest::default()).await,
            Err(WorkerClientError::Api { status, .. }) if status.as_u16() == 409
        );
        if refused == excluded {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the fence never read the record of {id}");
}

fn conflict(e: WorkerClientError) -> String {
    match e {
        WorkerClientError::Api { status, body } => {
            assert_eq!(status.as_u16(), 409, "{}", body.error.message);
            body.error.message
        }
        other => panic!("expected a 409, got {other:?}"),
    }
}

/// (containers, volumes) of stack `id` on this node.
fn objects(cleanup: &Cleanup, id: &str) -> (usize, usize) {
    let of = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .args([
                "--filter",
                &format!("label=org.berth.instance={id}"),
                "--filter",
                &format!("label=org.berth.node={}", cleanup.node),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    (of(&["ps", "-aq"]), of(&["volume", "ls", "-q"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_fence_keeps_only_the_stacks_the_records_place_here() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop_registry = CancellationToken::new();
    let registry = tokio::spawn(server::run(
        server::Config::dev("fence-test"),
        listener,
        stop_registry.clone(),
    ));
    let kv = Client::new(&url, None).unwrap();
    let u = url.clone();
    let w = worker("fence", move |c| c.registry = Some(u)).await;
    let node = w.node.clone();
    let (repo, commit) = git_repo(&[("compose.yaml", APP)]);
    let req = build_request(repo.path(), &commit);
    let (moved, gone, kept) = (
        id(&format!("fm-{node}")),
        id(&format!("fg-{node}")),
        id(&format!("fk-{node}")),
    );

    // No record: refused before anything happens.
    let message = conflict(w.client.build(&moved, &req).await.unwrap_err());
    assert!(message.contains("has no record"), "{message}");
    assert!(w.client.status(&moved).await.unwrap().is_none());
    for sid in [&moved, &gone, &kept] {
        place(&kv, sid.as_str(), Some(&node)).await;
        w.build_and_start(sid, repo.path(), &commit).await;
    }
    registered(&kv, &node, true).await;

    // While the worker is down, one instance moves and one is deleted.
    let TestWorker {
        data,
        shutdown,
        task,
        cleanup,
        ..
    } = w;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    registered(&kv, &node, false).await;
    place(&kv, moved.as_str(), Some("elsewhere")).await;
    place(&kv, gone.as_str(), None).await;

    let (u, dir) = (url.clone(), data.path().to_path_buf());
    let w = worker("fence", move |c| {
        c.registry = Some(u);
        c.data_dir = dir;
    })
    .await;
    registered(&kv, &node, true).await;
    assert_eq!(objects(&cleanup, moved.as_str()), (0, 1), "volume kept");
    assert_eq!(objects(&cleanup, gone.as_str()), (0, 0), "all gone");
    assert_eq!(
        objects(&cleanup, kept.as_str()),
        (2, 1),
        "placed here: its container and the forwarder of its port"
    );
    assert!(w.client.status(&moved).await.unwrap().is_none());
    let message = conflict(
        w.client
            .start(&moved, &StartRequest::default())
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains(&format!("places instance {moved} on worker elsewhere")),
        "{message}"
    );
    // The moved instance's delete (a former worker's) removes the volume left behind.
    let deleted = w.client.delete(&moved, false).await.unwrap();
    assert_eq!(deleted.removed_volumes, 1);

    // A registry without any record proves nothing: the stack stays.
    let TestWorker { shutdown, task, .. } = w;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    registered(&kv, &node, false).await;
    for sid in [&moved, &kept] {
        place(&kv, sid.as_str(), None).await;
    }
    let (u, dir) = (url.clone(), data.path().to_path_buf());
    let w = worker("fence", move |c| {
        c.registry = Some(u);
        c.data_dir = dir;
    })
    .await;
    registered(&kv, &node, true).await;
    assert_eq!(objects(&cleanup, kept.as_str()), (2, 1), "kept");

    // With the worker up, the instance moves away: the fence's watch of the records notices at
    // once (the periodic pass comes only every 30 s, so the 20 s guard below fails without it).
    place(&kv, kept.as_str(), Some(&node)).await;
    eventually_fenced(&w, &kept, false).await;
    let moved_at = tokio::time::Instant::now();
    place(&kv, kept.as_str(), Some("elsewhere")).await;
    loop {
        if objects(&cleanup, kept.as_str()) == (0, 1) {
            break;
        }
        assert!(
            moved_at.elapsed() < std::time::Duration::from_secs(20),
            "the copy of a moved instance stayed: {:?}",
            objects(&cleanup, kept.as_str())
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!(
        "moved away while the worker was up: copy removed {:?} after the record changed",
        moved_at.elapsed()
    );
    w.client.delete(&kept, false).await.unwrap();
    cleanup.assert_nothing_left();
    w.stop().await;
    drop(data);
    stop_registry.cancel();
    registry.await.unwrap().unwrap();
}
