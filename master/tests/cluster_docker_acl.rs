//! The many-machine setup as shipped, with real containers: the registry with ACLs on and
//! default deny (the management token from the environment, as `docker-compose.master.yml`
//! gives it), the roles made by `scripts/registry-roles.sh` and `scripts/worker-token.sh` (what
//! `init-master.sh` and its unit run), a master and the front door each with its own token, and
//! a worker host with its node's token (the environment `docker-compose.worker.yml` and
//! `join-worker.sh` give it). The sample app deploys and answers, directly and through the front
//! door, while anonymous KV writes and catalog registrations are refused.

mod cluster;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::{
    API_TOKEN, APPS_DOMAIN, build_images, docker, docker_quiet, eventually, image_tag, repo_root,
};
use reqwest::StatusCode;

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs one of the repository's scripts with `env`; panics with its output on failure.
fn script(name: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/{name} {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn env_value(file: &Path, var: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{var} missing in {}", file.display()))
}

/// Removes what the test made: containers and networks by label, stacks by node label.
struct Cleanup {
    label: String,
    node: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for filter in [&self.label, &format!("org.berth.node={}", self.node)] {
            let f = format!("label={filter}");
            for id in docker_quiet(&["ps", "-aq", "--filter", &f]).lines() {
                docker_quiet(&["rm", "-f", "-v", id]);
            }
            for id in docker_quiet(&["network", "ls", "-q", "--filter", &f]).lines() {
                docker_quiet(&["network", "rm", id]);
            }
            for id in docker_quiet(&["volume", "ls", "-q", "--filter", &f]).lines() {
                docker_quiet(&["volume", "rm", "-f", id]);
            }
        }
        for id in docker_quiet(&[
            "image",
            "ls",
            "-q",
            "--filter",
            &format!("label=org.berth.node={}", self.node),
        ])
        .lines()
        {
            docker_quiet(&["rmi", "-f", id]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_docker_acl_the_shipped_roles_run_the_sample_app_and_refuse_anonymous_writes() {
    build_images();
    let tag = image_tag();
    let id = format!("sacl{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let label = format!("org.berth.test={id}");
    let node = format!("{id}-w0");
    let _cleanup = Cleanup {
        label: label.clone(),
        node: node.clone(),
    };
    docker(&["network", "create", "--label", &label, &id]);
    let gateway = docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &id,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("master.env");
    std::fs::write(&env_file, format!("BERTH_CLUSTER_TOKEN={id}-cluster\n")).unwrap();
    let env_s = env_file.display().to_string();
    script("registry-roles.sh", &["secrets", &env_s], &[]);
    let get = |var: &str| env_value(&env_file, var);

    let registry_port = free_port();
    let registry_url = format!("http://127.0.0.1:{registry_port}");
    let publish = format!("127.0.0.1:{registry_port}:8500");
    let mgmt_env = format!(
        "BERTH_REGISTRY_ACL_MASTER_TOKEN={}",
        get("BERTH_REGISTRY_MANAGEMENT_TOKEN")
    );
    let registry_name = format!("{id}-registry");
    docker(&[
        "run",
        "-d",
        "--name",
        &registry_name,
        "--label",
        &label,
        "--network",
        &id,
        "--network-alias",
        "registry",
        "-p",
        &publish,
        "-e",
        &mgmt_env,
        &format!("berth-registry:{tag}"),
        "server",
        "--node-name",
        "registry",
        "--data-dir",
        "/data",
    ]);
    let roles_env = [("BERTH_REGISTRY_URL", registry_url.clone())];
    script("registry-roles.sh", &["apply", &env_s], &roles_env);
    let join = script(
        "worker-token.sh",
        &[&node],
        &[
            ("BERTH_REGISTRY_URL", registry_url.clone()),
            ("BERTH_ENV_FILE", env_s.clone()),
        ],
    );
    let worker_token =
        std::fs::read_to_string(dir.path().join("workers").join(format!("{node}.token"))).unwrap();
    assert!(join.contains(&worker_token), "{join}");

    // The master, with the environment docker-compose.master.yml gives it.
    let master_port = free_port();
    let master_publish = format!("{master_port}:8080");
    let master_env = [
        "BERTH_MASTER_REGISTRY=http://registry:8500".to_owned(),
        format!("BERTH_MASTER_PUBLIC_URL=http://{gateway}:{master_port}"),
        format!("BERTH_API_TOKEN={API_TOKEN}"),
        format!("BERTH_CLUSTER_TOKEN={}", get("BERTH_CLUSTER_TOKEN")),
        format!(
            "BERTH_REGISTRY_TOKEN={}",
            get("BERTH_MASTER_REGISTRY_TOKEN")
        ),
    ];
    let master_name = format!("{id}-master");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &master_name,
        "--label",
        &label,
        "--network",
        &id,
        "-p",
        &master_publish,
    ];
    for e in &master_env {
        args.extend(["-e", e.as_str()]);
    }
    let master_image = format!("berth-master:{tag}");
    args.push(&master_image);
    docker(&args);

    // The front door with its own token: it routes apps from the instance records it reads.
    let frontdoor_env = format!(
        "BERTH_REGISTRY_TOKEN={}",
        get("BERTH_FRONTDOOR_REGISTRY_TOKEN")
    );
    let nginx_name = format!("{id}-nginx");
    let nginx_image = format!("berth-nginx:{tag}");
    docker(&[
        "run",
        "-d",
        "--name",
        &nginx_name,
        "--label",
        &label,
        "--network",
        &id,
        "-p",
        "127.0.0.1::80",
        "-e",
        &frontdoor_env,
        &nginx_image,
        "--registry=http://registry:8500",
        "--master=master:8080",
        "--no-ui",
        "--apps-domain",
        APPS_DOMAIN,
    ]);
    let nginx_port = docker(&["port", &nginx_name, "80/tcp"]);
    let front_door = format!(
        "http://127.0.0.1:{}",
        nginx_port.rsplit(':').next().expect("host port")
    );

    // A worker host, with what docker-compose.worker.yml and join-worker.sh give it.
    let worker_port = free_port();
    let agent_port = free_port();
    let data = dir.path().join("w0");
    std::fs::create_dir_all(&data).unwrap();
    let data_s = data.display().to_string();
    let worker_env = [
        format!("BERTH_WORKER_JOIN={registry_url}"),
        format!("BERTH_WORKER_ADVERTISE={gateway}"),
        format!("BERTH_CLUSTER_TOKEN={}", get("BERTH_CLUSTER_TOKEN")),
        format!("BERTH_WORKER_NODE_NAME={node}"),
        format!("BERTH_WORKER_REGISTRY_TOKEN={worker_token}"),
        format!("BERTH_WORKER_LISTEN={gateway}:{worker_port}"),
        format!("BERTH_WORKER_AGENT_LISTEN=127.0.0.1:{agent_port}"),
        format!("BERTH_WORKER_DATA_DIR={data_s}"),
    ];
    let mount = format!("{data_s}:{data_s}");
    let worker_name = format!("{id}-w0");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &worker_name,
        "--label",
        &label,
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &mount,
    ];
    for e in &worker_env {
        args.extend(["-e", e.as_str()]);
    }
    let worker_image = format!("berth-worker:{tag}");
    args.push(&worker_image);
    docker(&args);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // The worker passes, seen with the UI's read-only token (anonymous reads see nothing).
    let ui = get("BERTH_UI_REGISTRY_TOKEN");
    let health = format!("{registry_url}/v1/health/service/berth-worker?passing=1");
    eventually("the worker passes", Duration::from_secs(90), || async {
        let resp = http
            .get(&health)
            .header("X-Consul-Token", &ui)
            .send()
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        text.contains(&node).then_some(())
    })
    .await;

    // The sample app deploys through the master and answers.
    let api = format!("http://127.0.0.1:{master_port}");
    let upload = http
        .put(format!(
            "{api}/v1/instances/sample/code?user=tester&project=sample&build=true&wait=10m"
        ))
        .bearer_auth(API_TOKEN)
        .header("Content-Type", "application/gzip")
        .body(cluster::sample_app())
        .send()
        .await
        .unwrap();
    assert!(
        upload.status().is_success(),
        "{}",
        upload.text().await.unwrap()
    );
    let started = http
        .post(format!("{api}/v1/instances/sample/start"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = started.status();
    let rec: serde_json::Value = started.json().await.unwrap();
    assert!(status.is_success(), "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    let endpoint = &rec["endpoints"][0];
    let url = format!(
        "http://{}:{}/cgi-bin/index.cgi",
        endpoint["host"]
            .as_str()
            .unwrap_or_else(|| panic!("no endpoint: {rec}")),
        endpoint["host_port"]
    );
    let page = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("api says: hello from berth"), "{url}: {page}");
    let routed = eventually(
        "the app through the front door",
        Duration::from_secs(60),
        || async {
            let resp = http
                .get(format!("{front_door}/cgi-bin/index.cgi"))
                .header("Host", format!("sample.{APPS_DOMAIN}"))
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.text().await.ok()
        },
    )
    .await;
    assert!(routed.contains("api says: hello from berth"), "{routed}");

    // Default deny: nothing anonymous changes the registry.
    let kv = http
        .put(format!("{registry_url}/v1/kv/berth/instances/sample"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(kv.status(), StatusCode::FORBIDDEN);
    let fake = http
        .put(format!("{registry_url}/v1/catalog/register"))
        .body(r#"{"Node":"fake","Address":"127.0.0.1","Service":{"ID":"berth-worker:fake","Service":"berth-worker","Port":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(fake.status(), StatusCode::FORBIDDEN);

    let deleted = http
        .delete(format!("{api}/v1/instances/sample"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
}
