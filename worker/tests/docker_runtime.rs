//! What a running stack gets from the host, checked with `docker inspect` against the real
//! engine: published ports bound on the publish address only.

mod common;

use std::process::Command;

use common::*;

const TINY: &str = "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"0.0.0.0:9999:8080\"]\n";

/// `docker inspect -f <format> <container>`, trimmed.
fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ports_are_published_on_the_advertise_address_only() {
    // Listening on 127.0.0.1 makes that the advertise and so the publish address.
    let w = worker("publish", |_| {}).await;
    let (repo, commit) = git_repo(&[("compose.yaml", TINY)]);
    let sid = id(&format!("pub-{}", w.node));
    let started = w.build_and_start(&sid, repo.path(), &commit).await;
    let ep = &started.endpoints[0];
    assert_eq!(ep.host, "127.0.0.1");
    assert_ne!(ep.host_port, 9999, "the file's host port is never used");
    let container = started.services[0].container.clone().unwrap();
    // The file's 0.0.0.0 is the worker's choice too: one binding, on the publish address.
    assert_eq!(
        inspect(
            &container,
            "{{range $p, $b := .HostConfig.PortBindings}}{{$p}}={{range $b}}{{.HostIp}} {{end}}{{end}}"
        ),
        "8080/tcp=127.0.0.1"
    );
    assert_eq!(
        inspect(
            &container,
            r#"{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}"#
        ),
        format!("127.0.0.1:{}", ep.host_port)
    );
    w.client.delete(&sid, false).await.unwrap();
    w.cleanup.assert_nothing_left();
    w.stop().await;
}
