//! Stacks cannot reach berth: from inside a stack container, the worker API, the registry (the
//! server and the worker's in-process agent) and another stack's published port are out of reach
//! on every address of the host, while a container on a network that is not a stack's reaches
//! all of them (so the probe itself works). The stack network's bridge is named `berth<hash>`
//! and scripts/firewall.sh refuses what comes from such bridges; the test applies it (root and
//! iptables needed, as on a worker host). The stack container has no IPv6 at all, which is why
//! the firewall needs no ip6tables rules.

mod common;

use std::process::Command;

use berth_registry::server;
use berth_worker_api::{Secret, WorkerClient};
use common::*;
use tokio_util::sync::CancellationToken;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The host's IPv4 addresses other than loopback and other stacks' and tests' bridges (which
/// come and go): its own interfaces and Docker's default bridge.
fn host_addresses() -> Vec<String> {
    run("ip", &["-4", "-o", "addr", "show"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (name, addr) = (f.get(1)?, f.get(3)?);
            let keep = !name.starts_with("br-") && !name.starts_with("berth") && *name != "lo";
            keep.then(|| addr.split('/').next().unwrap().to_owned())
        })
        .collect()
}

/// Which of `targets` (`ip port`) a container on `network` can connect to.
fn reachable_from(network: &str, targets: &[String]) -> Vec<String> {
    let script = format!(
        "for t in {}; do if echo | nc -w 2 ${{t%:*}} ${{t#*:}} >/dev/null 2>&1; then echo $t; fi; done",
        targets.join(" ")
    );
    run(
        "docker",
        &[
            "run",
            "--rm",
            "--network",
            network,
            "berth-base:latest",
            "sh",
            "-c",
            &script,
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_stack_container_cannot_reach_the_worker_api_the_registry_or_other_stacks() {
    let firewall = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/firewall.sh");
    run(firewall, &["apply"]);

    // Every berth port on all interfaces, as on a worker host whose masters are elsewhere.
    let registry_listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let registry_port = registry_listener.local_addr().unwrap().port();
    let stop_registry = CancellationToken::new();
    let registry = tokio::spawn(server::run(
        server::Config::dev("isolation-server"),
        registry_listener,
        stop_registry.clone(),
    ));
    let agent_port = free_port();
    let node = format!("t{}-iso", std::process::id());
    let data = tempfile::tempdir().unwrap();
    let config = berth_worker::Config {
        listen: "0.0.0.0:0".into(),
        advertise: Some("127.0.0.1".into()),
        publish_address: Some("0.0.0.0".into()),
        data_dir: data.path().to_path_buf(),
        node_name: Some(node.clone()),
        registry: None,
        join: Some(format!("127.0.0.1:{registry_port}")),
        agent_listen: format!("0.0.0.0:{agent_port}"),
        cluster_token: Secret::new(TOKEN),
        fence: false,
        default_memory: "256m".into(),
        ..berth_worker::Config::default()
    };
    let _cleanup = Cleanup { node: node.clone() };
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let api_port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(berth_worker::run(config, listener, shutdown.clone()));
    let client = WorkerClient::new(format!("http://127.0.0.1:{api_port}"), Secret::new(TOKEN));
    for _ in 0..100 {
        if client.health().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let (repo, commit) = git_repo(&[(
        "compose.yaml",
        "services:\n  app:\n    image: berth-base:latest\n    command: [httpd, -f, -p, \"8080\", -h, /]\n    ports: [\"8080\"]\n",
    )]);
    let (a, b) = (id(&format!("iso-a-{node}")), id(&format!("iso-b-{node}")));
    for sid in [&a, &b] {
        client
            .build(sid, &build_request(repo.path(), &commit))
            .await
            .unwrap();
        client.start(sid, &Default::default()).await.unwrap();
    }
    let b_container = run(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=org.berth.instance={b}"),
        ],
    );
    let b_port = run(
        "docker",
        &[
            "inspect",
            "-f",
            "{{(index (index .NetworkSettings.Ports \"8080/tcp\") 0).HostPort}}",
            &b_container,
        ],
    );
    let a_network = run(
        "docker",
        &[
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &format!("label=org.berth.instance={a}"),
        ],
    );
    let bridge = run(
        "docker",
        &[
            "network",
            "inspect",
            "-f",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
            &a_network,
        ],
    );
    assert!(
        bridge.starts_with("berth"),
        "bridge of {a_network}: {bridge}"
    );

    let mut targets = Vec::new();
    for ip in host_addresses() {
        for port in [
            api_port.to_string(),
            agent_port.to_string(),
            registry_port.to_string(),
            b_port.clone(),
        ] {
            targets.push(format!("{ip}:{port}"));
        }
    }
    assert!(!targets.is_empty());
    // The probe works: Docker's default bridge is no stack's network and reaches everything.
    let mut from_elsewhere = reachable_from("bridge", &targets);
    from_elsewhere.sort();
    let mut all = targets.clone();
    all.sort();
    assert_eq!(from_elsewhere, all, "from a non-stack network");
    assert_eq!(
        reachable_from(&a_network, &targets),
        Vec::<String>::new(),
        "from stack {a}'s network (worker API {api_port}, agent {agent_port}, registry \
         {registry_port}, stack {b}'s port {b_port})"
    );

    // No IPv6 either: a stack container has IPv6 switched off on every interface (Docker does
    // so on networks made without IPv6, as the worker makes them), holds no IPv6 address, and
    // cannot switch it back on, so the IPv4 rules above are the whole boundary.
    let a_container = run(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=org.berth.instance={a}"),
        ],
    );
    let v6 = run(
        "docker",
        &[
            "exec",
            &a_container,
            "sh",
            "-c",
            "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/eth0/disable_ipv6; \
             echo addresses: $(cat /proc/net/if_inet6); \
             if echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6; then echo switched on; fi 2>/dev/null",
        ],
    );
    assert_eq!(v6, "1\n1\naddresses:", "IPv6 in stack {a}'s container");

    for sid in [&a, &b] {
        client.delete(sid, false).await.unwrap();
    }
    shutdown.cancel();
    let _ = task.await;
    stop_registry.cancel();
    let _ = registry.await;
}
