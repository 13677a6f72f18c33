//! Several `berth-registry agent` processes joined to one `berth-registry server` process, each
//! agent on its own loopback address: services registered through agents reach the server's
//! catalog; a killed agent's node fails, its services leave `?passing` and its locks are
//! released; the restarted agent brings everything back without duplicates.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_berth-registry");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth-registry"),
    )
}

struct Http {
    client: reqwest::Client,
}

struct Answer {
    status: u16,
    body: Value,
    /// `X-Consul-Results-Filtered-By-ACLs` was set.
    filtered: bool,
}

impl Http {
    async fn call(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value, u64) {
        let resp = self.send(None, method, url, body).await;
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let status = resp.status().as_u16();
        (status, body_of(resp).await, index)
    }

    /// A call with `token` as `X-Consul-Token` (`None`: no token).
    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Answer {
        let resp = self.send(token, method, url, body).await;
        let status = resp.status().as_u16();
        let filtered = resp
            .headers()
            .contains_key("x-consul-results-filtered-by-acls");
        Answer {
            status,
            body: body_of(resp).await,
            filtered,
        }
    }

    async fn send(
        &self,
        token: Option<&str>,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// A `--dev` server named `srv` on a free loopback port, with `extra` flags, once it
    /// answers; and its URL.
    async fn dev_server(&self, extra: &[&str]) -> (Proc, String) {
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut args = vec![
            "server",
            "--dev",
            "--http-addr",
            &addr,
            "--node-name",
            "srv",
        ];
        args.extend_from_slice(extra);
        let server = spawn(&args);
        let url = format!("http://{addr}");
        self.ready(&url).await;
        (server, url)
    }

    /// Waits until `base` answers `/v1/agent/self` (403 counts: ACLs are on).
    async fn ready(&self, base: &str) {
        for _ in 0..200 {
            if let Ok(r) = self
                .client
                .get(format!("{base}/v1/agent/self"))
                .send()
                .await
                && (r.status().is_success() || r.status() == 403)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{base} never came up");
    }

    /// Blocking queries on `url` until `done` holds (the server wakes us on every change).
    async fn until(&self, url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut index = 0;
        for _ in 0..60 {
            let sep = if url.contains('?') { '&' } else { '?' };
            let (status, value, new_index) = self
                .call("GET", &format!("{url}{sep}index={index}&wait=2s"), None)
                .await;
            assert_eq!(status, 200, "{url}: {value}");
            if done(&value) {
                return value;
            }
            index = new_index;
        }
        panic!("timed out waiting for {what} at {url}");
    }
}

async fn body_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// (token, method, path, body, status, text the answer contains)
type Row<'a> = (
    Option<&'a str>,
    &'a str,
    &'a str,
    Option<Value>,
    u16,
    &'a str,
);

fn count(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

fn start_agent(n: u8, port: u16, server: &str, dir: &std::path::Path) -> Proc {
    let ip = format!("127.0.0.{}", n + 1);
    spawn(&[
        "agent",
        "--join",
        server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        &format!("host{n}"),
        "--data-dir",
        dir.join(format!("host{n}")).to_str().unwrap(),
        "--heartbeat-interval",
        "200ms",
        "--sync-interval",
        "2s",
    ])
}

#[tokio::test]
async fn agents_join_fail_and_return() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (_srv, server) = http.dev_server(&["--failure-timeout", "2s"]).await;
    let app_port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app_port.local_addr().unwrap().to_string();
    let mut agents = Vec::new();
    let mut urls = Vec::new();
    for n in 1..=3u8 {
        let ip = format!("127.0.0.{}", n + 1);
        let port = free_port(&ip);
        agents.push(Some(start_agent(n, port, &server, dir.path())));
        urls.push((format!("http://{ip}:{port}"), port));
    }
    for (n, (url, _)) in urls.iter().enumerate() {
        http.ready(url).await;
        let reg = json!({
            "Name": "api", "ID": format!("api-{}", n + 1), "Port": 9000 + n,
            "Tags": ["v1"],
            "Checks": [
                {"TCP": app_addr, "Interval": "1s"},
                {"TTL": "1h", "Status": "passing"}
            ]
        });
        let (status, body, _) = http
            .call(
                "PUT",
                &format!("{url}/v1/agent/service/register"),
                Some(reg),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let entries = http
        .until(
            &format!("{server}/v1/health/service/api?passing"),
            "3 passing",
            |v| count(v) == 3,
        )
        .await;
    for e in entries.as_array().unwrap() {
        let ids: Vec<&str> = e["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["CheckID"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "serfHealth + two service checks: {ids:?}");
    }
    // Every other request is forwarded: the same catalog answers through any agent.
    let (_, via_agent, _) = http
        .call(
            "GET",
            &format!("{}/v1/catalog/service/api", urls[0].0),
            None,
        )
        .await;
    assert_eq!(count(&via_agent), 3);
    // host2 takes a lock through its own agent; the session is on host2 by default.
    let a2 = &urls[1].0;
    let (_, created, _) = http
        .call(
            "PUT",
            &format!("{a2}/v1/session/create"),
            Some(json!({"Name": "h2"})),
        )
        .await;
    let session = created["ID"].as_str().unwrap().to_owned();
    let (_, info, _) = http
        .call("GET", &format!("{server}/v1/session/info/{session}"), None)
        .await;
    assert_eq!(info[0]["Node"], "host2");
    let (_, took, _) = http
        .call(
            "PUT",
            &format!("{a2}/v1/kv/locks/leader?acquire={session}"),
            Some(json!("h2")),
        )
        .await;
    assert_eq!(took, json!(true));

    // Kill host2 without a goodbye.
    agents[1] = None;
    http.until(
        &format!("{server}/v1/health/node/host2"),
        "serfHealth critical",
        |v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
        },
    )
    .await;
    let passing = http
        .until(
            &format!("{server}/v1/health/service/api?passing"),
            "2 passing",
            |v| count(v) == 2,
        )
        .await;
    assert!(
        passing
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["Node"]["Node"] != "host2")
    );
    let (_, members, _) = http
        .call("GET", &format!("{server}/v1/agent/members"), None)
        .await;
    let host2 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "host2")
        .unwrap();
    assert_eq!(host2["Status"], 4, "failed");
    let (_, info, _) = http
        .call("GET", &format!("{server}/v1/session/info/{session}"), None)
        .await;
    assert_eq!(info, json!([]), "the session ended with its node");
    let (_, lock, _) = http
        .call("GET", &format!("{server}/v1/kv/locks/leader"), None)
        .await;
    assert!(lock[0].get("Session").is_none(), "lock released: {lock}");

    // Restart host2 on the same address and data dir: everything returns, once, under the
    // node ID kept in its data dir.
    let (_, before, _) = http
        .call("GET", &format!("{server}/v1/catalog/node/host2"), None)
        .await;
    agents[1] = Some(start_agent(2, urls[1].1, &server, dir.path()));
    http.until(
        &format!("{server}/v1/health/service/api?passing"),
        "3 passing again",
        |v| count(v) == 3,
    )
    .await;
    let (_, services, _) = http
        .call("GET", &format!("{server}/v1/catalog/service/api"), None)
        .await;
    let mut ids: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ServiceID"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["api-1", "api-2", "api-3"]);
    let (_, after, _) = http
        .call("GET", &format!("{server}/v1/catalog/node/host2"), None)
        .await;
    assert_eq!(after["Node"]["ID"], before["Node"]["ID"]);
    let (_, nodes, _) = http
        .call("GET", &format!("{server}/v1/catalog/nodes"), None)
        .await;
    assert_eq!(
        count(&nodes),
        4,
        "server and three hosts, no duplicates: {nodes}"
    );
    let (_, members, _) = http
        .call("GET", &format!("{server}/v1/agent/members"), None)
        .await;
    assert!(
        members.as_array().unwrap().iter().all(|m| m["Status"] == 1),
        "{members}"
    );

    // Drift repair: a service removed behind the agent's back comes back.
    let (_, _, _) = http
        .call(
            "PUT",
            &format!("{server}/v1/catalog/deregister"),
            Some(json!({"Node": "host3", "ServiceID": "api-3"})),
        )
        .await;
    http.until(
        &format!("{server}/v1/catalog/service/api"),
        "api-3 restored",
        |v| count(v) == 3,
    )
    .await;

    // A graceful leave removes the node and shows `left`.
    let (status, _, _) = http
        .call("PUT", &format!("{}/v1/agent/leave", urls[2].0), None)
        .await;
    assert_eq!(status, 200);
    http.until(
        &format!("{server}/v1/catalog/service/api"),
        "host3 gone",
        |v| count(v) == 2,
    )
    .await;
    let (_, members, _) = http
        .call("GET", &format!("{server}/v1/agent/members"), None)
        .await;
    let host3 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "host3")
        .unwrap();
    assert_eq!(host3["Status"], 3, "left");
    drop(app_port);
}

/// An agent checks its own endpoints with tokens the server resolves (cached, refused when
/// neither the server nor the cache knows them), never lends its own token, and uses its
/// default token for requests without one.
#[tokio::test]
async fn agents_enforce_acls_with_tokens_the_server_resolves() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let (srv, server) = http.dev_server(&["--acl-master-token", "root"]).await;
    let root = Some("root");
    let policies = [
        (
            "agent",
            r#"node "ag1" { policy = "write" }
               service_prefix "" { policy = "write" }"#,
        ),
        ("web", r#"service "web" { policy = "write" }"#),
        (
            "reader",
            r#"service_prefix "" { policy = "read" }
               node_prefix "" { policy = "read" }
               agent_prefix "" { policy = "read" }"#,
        ),
        (
            "default",
            r#"key_prefix "pub/" { policy = "read" }
               service "anon" { policy = "write" }"#,
        ),
    ];
    for (name, rules) in policies {
        let a = http
            .call_as(
                root,
                "PUT",
                &format!("{server}/v1/acl/policy"),
                Some(json!({"Name": name, "Rules": rules})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = http
            .call_as(
                root,
                "PUT",
                &format!("{server}/v1/acl/token"),
                Some(json!({"SecretID": format!("{name}-secret"), "Policies": [{"Name": name}]})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = http
        .call_as(
            root,
            "PUT",
            &format!("{server}/v1/kv/pub/a"),
            Some(json!("x")),
        )
        .await;
    assert_eq!(a.status, 200);

    let ip = "127.0.0.9";
    let port = free_port(ip);
    let agent = format!("http://{ip}:{port}");
    let _ag = spawn(&[
        "agent",
        "--join",
        &server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        "ag1",
        "--token",
        "agent-secret",
        "--default-token",
        "default-secret",
        "--heartbeat-interval",
        "200ms",
        "--sync-interval",
        "2s",
    ]);
    http.ready(&agent).await;
    let web = Some("web-secret");
    let reader = Some("reader-secret");
    let rows: &[Row<'_>] = &[
        (
            None,
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "evil"})),
            403,
            "Permission denied",
        ),
        (
            Some("bogus"),
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "evil"})),
            403,
            "ACL not found",
        ),
        (
            Some("bogus"),
            "GET",
            "/v1/agent/services",
            None,
            403,
            "ACL not found",
        ),
        // The default token may write service "anon".
        (
            None,
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "anon"})),
            200,
            "",
        ),
        (
            web,
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "Check": {"TTL": "1h"}})),
            200,
            "",
        ),
        (
            None,
            "PUT",
            "/v1/agent/check/fail/service:web?note=anon",
            None,
            403,
            "Permission denied",
        ),
        (
            web,
            "PUT",
            "/v1/agent/check/pass/service:web",
            None,
            200,
            "",
        ),
        (
            None,
            "PUT",
            "/v1/agent/service/deregister/web",
            None,
            403,
            "Permission denied",
        ),
        (
            None,
            "GET",
            "/v1/agent/self",
            None,
            403,
            "Permission denied",
        ),
        (reader, "GET", "/v1/agent/self", None, 200, "ag1"),
        (
            reader,
            "PUT",
            "/v1/agent/leave",
            None,
            403,
            "Permission denied",
        ),
        (
            None,
            "PUT",
            "/v1/agent/leave",
            None,
            403,
            "Permission denied",
        ),
        (
            None,
            "PUT",
            &format!("/v1/agent/join/{}", server.trim_start_matches("http://")),
            None,
            403,
            "Permission denied",
        ),
        // Forwarded: the default token applies, the agent's own token is not lent.
        (None, "GET", "/v1/kv/pub/a?raw", None, 200, "x"),
        (
            None,
            "PUT",
            "/v1/catalog/register",
            Some(json!({"Node": "ag1", "Address": "10.9.9.9"})),
            403,
            "Permission denied",
        ),
        (
            Some("bogus"),
            "GET",
            "/v1/kv/pub/a",
            None,
            403,
            "ACL not found",
        ),
    ];
    for (token, method, path, body, status, text) in rows {
        let a = http
            .call_as(*token, method, &format!("{agent}{path}"), body.clone())
            .await;
        assert_eq!(a.status, *status, "{token:?} {method} {path}: {}", a.body);
        assert!(
            a.body.to_string().contains(text),
            "{token:?} {method} {path}: {}",
            a.body
        );
    }
    let direct = http
        .call_as(None, "GET", &format!("{server}/v1/kv/pub/a"), None)
        .await;
    assert_eq!(direct.status, 403, "anonymous on the server has no rights");
    let anon = http
        .call_as(None, "GET", &format!("{agent}/v1/agent/services"), None)
        .await;
    assert_eq!(anon.status, 200);
    assert!(anon.filtered, "web is hidden: {}", anon.body);
    assert_eq!(
        anon.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["anon"]
    );
    let all = http
        .call_as(reader, "GET", &format!("{agent}/v1/agent/services"), None)
        .await;
    assert!(!all.filtered);
    assert_eq!(all.body.as_object().unwrap().len(), 2, "{}", all.body);
    // Anti-entropy, with the agent's own token, put both in the catalog.
    http.until(
        &format!("{server}/v1/catalog/node/ag1?token=root"),
        "web and anon synced",
        |v| v["Services"].as_object().is_some_and(|s| s.len() == 2),
    )
    .await;

    // Server gone: tokens already resolved keep working, unknown ones are refused.
    drop(srv);
    let a = http
        .call_as(
            web,
            "PUT",
            &format!("{agent}/v1/agent/check/warn/service:web"),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = http
        .call_as(
            Some("never-seen"),
            "PUT",
            &format!("{agent}/v1/agent/service/register"),
            Some(json!({"Name": "web"})),
        )
        .await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.body.to_string().contains("registry server unreachable"),
        "{}",
        a.body
    );
}

/// Without ACLs on the server, an agent's own endpoints keep working while the server is down,
/// whatever token a caller sends (the server said ACLs are off; nothing to fail closed on).
#[tokio::test]
async fn agents_of_a_server_without_acls_serve_while_it_is_down() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let (srv, server) = http.dev_server(&[]).await;
    let ip = "127.0.0.10";
    let port = free_port(ip);
    let agent = format!("http://{ip}:{port}");
    let _ag = spawn(&[
        "agent",
        "--join",
        &server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        "ag-open",
    ]);
    http.ready(&agent).await;
    drop(srv);
    let a = http
        .call_as(
            Some("never-seen"),
            "PUT",
            &format!("{agent}/v1/agent/service/register"),
            Some(json!({"Name": "web"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = http
        .call_as(None, "GET", &format!("{agent}/v1/agent/services"), None)
        .await;
    assert!(a.body.get("web").is_some(), "{}", a.body);
}

/// A request forwarded by an agent whose server is gone answers 502, and the agent's log line
/// about it names the path but never the `?token=` it carried.
#[tokio::test]
async fn forwarding_failures_do_not_log_query_tokens() {
    const SECRET: &str = "SUPERSECRET-QUERY-TOKEN";
    let http = Http {
        client: reqwest::Client::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (srv, server) = http.dev_server(&[]).await;
    let ip = "127.0.0.7";
    let port = free_port(ip);
    let agent_url = format!("http://{ip}:{port}");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _agent = Proc(
        Command::new(BIN)
            .args([
                "agent",
                "--join",
                &server,
                "--http-addr",
                &format!("{ip}:{port}"),
                "--node-name",
                "tokhost",
            ])
            .env("RUST_LOG", "debug")
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth-registry agent"),
    );
    http.ready(&agent_url).await;
    drop(srv);
    let (status, body, _) = http
        .call(
            "GET",
            &format!("{agent_url}/v1/kv/foo?token={SECRET}"),
            None,
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log_path).unwrap();
        if text.contains("forwarding to the server failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("forwarding to the server failed") && text.contains("/v1/kv/foo"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "the token reached the log:\n{text}");
}

/// A second agent started with a node name a live agent already uses is refused: it logs the
/// conflict and does not sync, the first agent's address and services stay, and the
/// duplicate's graceful leave does not remove the node.
#[tokio::test]
async fn a_second_agent_with_a_live_node_name_is_refused() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (_srv, server) = http.dev_server(&[]).await;
    let agent = |ip: &str, port: u16, data: &str, log: Stdio| {
        Proc(
            Command::new(BIN)
                .args([
                    "agent",
                    "--join",
                    &server,
                    "--http-addr",
                    &format!("{ip}:{port}"),
                    "--node-name",
                    "dup",
                    "--data-dir",
                    dir.path().join(data).to_str().unwrap(),
                    "--heartbeat-interval",
                    "200ms",
                    "--sync-interval",
                    "1s",
                ])
                .env("RUST_LOG", "info")
                .stdout(log)
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn berth-registry agent"),
        )
    };
    let a_port = free_port("127.0.0.8");
    let a_url = format!("http://127.0.0.8:{a_port}");
    let _a = agent("127.0.0.8", a_port, "a", Stdio::null());
    http.ready(&a_url).await;
    let (status, body, _) = http
        .call(
            "PUT",
            &format!("{a_url}/v1/agent/service/register"),
            Some(json!({"Name": "svc-a", "Port": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let node_url = format!("{server}/v1/catalog/node/dup");
    http.until(&node_url, "svc-a synced", |v| {
        v["Services"].get("svc-a").is_some()
    })
    .await;

    let b_port = free_port("127.0.0.9");
    let b_url = format!("http://127.0.0.9:{b_port}");
    let log_path = dir.path().join("b.log");
    let mut b = agent(
        "127.0.0.9",
        b_port,
        "b",
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    http.ready(&b_url).await;
    let mut log = String::new();
    for _ in 0..400 {
        log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("node name conflict") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.contains("node name conflict"), "{log}");
    assert!(log.contains("127.0.0.8"), "names the live agent: {log}");
    let (_, node, _) = http.call("GET", &node_url, None).await;
    assert_eq!(node["Node"]["Address"], "127.0.0.8", "{node}");
    assert!(node["Services"].get("svc-a").is_some(), "{node}");

    // The duplicate's graceful leave does not take the live node out.
    let (status, _, _) = http
        .call("PUT", &format!("{b_url}/v1/agent/leave"), None)
        .await;
    assert_eq!(status, 200);
    for _ in 0..400 {
        if b.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.0.try_wait().unwrap().is_some(), "the duplicate exited");
    let (_, node, _) = http.call("GET", &node_url, None).await;
    assert_eq!(node["Node"]["Address"], "127.0.0.8", "{node}");
    assert!(node["Services"].get("svc-a").is_some(), "{node}");
    let (_, members, _) = http
        .call("GET", &format!("{server}/v1/agent/members"), None)
        .await;
    let dup = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "dup")
        .unwrap();
    assert_eq!(
        (&dup["Addr"], &dup["Status"]),
        (&json!("127.0.0.8"), &json!(1))
    );
}

/// Issue 14, finding 11 (agent side): a server that comes back without this agent's
/// registrations (a fresh store) got the node back at the next heartbeat but the services only
/// at the next full anti-entropy round (30 s by default). The agent re-syncs at once.
#[tokio::test]
async fn agent_resyncs_at_once_when_the_server_comes_back() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let dev = [
        "server",
        "--dev",
        "--http-addr",
        &addr,
        "--node-name",
        "srv",
    ];
    let url = format!("http://{addr}");
    let server = spawn(&dev);
    http.ready(&url).await;
    let port = free_port("127.0.0.2");
    let agent = spawn(&[
        "agent",
        "--join",
        &url,
        "--retry-join",
        "--http-addr",
        &format!("127.0.0.2:{port}"),
        "--node-name",
        "host1",
        "--heartbeat-interval",
        "200ms",
        // Default sync interval: 30 s.
    ]);
    let agent_url = format!("http://127.0.0.2:{port}");
    http.ready(&agent_url).await;
    let (status, _, _) = http
        .call(
            "PUT",
            &format!("{agent_url}/v1/agent/service/register"),
            Some(json!({"Name": "web", "ID": "web1", "Port": 80})),
        )
        .await;
    assert_eq!(status, 200);
    http.until(&format!("{url}/v1/catalog/service/web"), "web", |v| {
        count(v) == 1
    })
    .await;
    drop(server);
    // Long enough for heartbeats to fail, short of the sync interval.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _server = spawn(&dev);
    http.ready(&url).await;
    let started = std::time::Instant::now();
    loop {
        let (_, list, _) = http
            .call("GET", &format!("{url}/v1/catalog/service/web"), None)
            .await;
        if count(&list) == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "web not back 10 s after the server returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
}

/// An agent answers `reload` itself, checking `agent:write` on its own node (not the server's).
#[tokio::test]
async fn agents_reload_checks_their_own_node() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let (_srv, server) = http.dev_server(&["--acl-master-token", "root"]).await;
    let root = Some("root");
    let policies = [
        ("agent", r#"node "ag-reload" { policy = "write" }"#),
        ("own", r#"agent "ag-reload" { policy = "write" }"#),
        ("server", r#"agent_prefix "" { policy = "read" }"#),
    ];
    for (name, rules) in policies {
        for (uri, body) in [
            ("policy", json!({"Name": name, "Rules": rules})),
            (
                "token",
                json!({"SecretID": format!("{name}-secret"), "Policies": [{"Name": name}]}),
            ),
        ] {
            let a = http
                .call_as(root, "PUT", &format!("{server}/v1/acl/{uri}"), Some(body))
                .await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    let ip = "127.0.0.11";
    let port = free_port(ip);
    let agent = format!("http://{ip}:{port}");
    let _ag = spawn(&[
        "agent",
        "--join",
        &server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        "ag-reload",
        "--token",
        "agent-secret",
    ]);
    http.ready(&agent).await;
    for (token, status) in [
        (Some("own-secret"), 200),
        (Some("server-secret"), 403),
        (None, 403),
    ] {
        let a = http
            .call_as(token, "PUT", &format!("{agent}/v1/agent/reload"), None)
            .await;
        assert_eq!(a.status, status, "{token:?}: {}", a.body);
    }
}

/// `PUT /v1/agent/token/agent` on an agent: its anti-entropy uses the new token at once (a
/// full sync round, as Consul's `SyncFull.Trigger`); `default` serves requests without one.
#[tokio::test]
async fn agent_token_update_reaches_the_anti_entropy_sync() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let (_srv, server) = http.dev_server(&["--acl-master-token", "root"]).await;
    let root = Some("root");
    let policies = [
        ("weak", r#"node "ag-token" { policy = "write" }"#),
        (
            "strong",
            r#"node "ag-token" { policy = "write" }
               service "tok-web" { policy = "write" }"#,
        ),
        ("self", r#"agent "ag-token" { policy = "read" }"#),
    ];
    for (name, rules) in policies {
        for (uri, body) in [
            ("policy", json!({"Name": name, "Rules": rules})),
            (
                "token",
                json!({"SecretID": format!("{name}-secret"), "Policies": [{"Name": name}]}),
            ),
        ] {
            let a = http
                .call_as(root, "PUT", &format!("{server}/v1/acl/{uri}"), Some(body))
                .await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    let ip = "127.0.0.12";
    let port = free_port(ip);
    let agent = format!("http://{ip}:{port}");
    let _ag = spawn(&[
        "agent",
        "--join",
        &server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        "ag-token",
        "--token",
        "weak-secret",
        "--heartbeat-interval",
        "200ms",
        // long: only the token change may bring the service in within the test
        "--sync-interval",
        "10m",
    ]);
    http.ready(&agent).await;
    let a = http
        .call_as(
            root,
            "PUT",
            &format!("{agent}/v1/agent/service/register"),
            Some(json!({"Name": "tok-web", "Port": 80})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // the weak token may not write the service: the agent has it, the catalog not
    let services = http
        .call_as(root, "GET", &format!("{agent}/v1/agent/services"), None)
        .await;
    assert!(services.body.get("tok-web").is_some(), "{}", services.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let catalog = http
        .call_as(
            root,
            "GET",
            &format!("{server}/v1/catalog/service/tok-web"),
            None,
        )
        .await;
    assert_eq!(count(&catalog.body), 0, "{}", catalog.body);

    let rows: &[Row<'_>] = &[
        (
            Some("weak-secret"),
            "PUT",
            "/v1/agent/token/agent",
            Some(json!({"Token": "strong-secret"})),
            403,
            "Permission denied",
        ),
        (
            root,
            "PUT",
            "/v1/agent/token/nope",
            Some(json!({"Token": "x"})),
            404,
            r#"Token \"nope\" is unknown"#,
        ),
        (
            None,
            "GET",
            "/v1/agent/self",
            None,
            403,
            "Permission denied",
        ),
        (
            root,
            "PUT",
            "/v1/agent/token/agent",
            Some(json!({"Token": "strong-secret"})),
            200,
            "",
        ),
        (
            root,
            "PUT",
            "/v1/agent/token/default",
            Some(json!({"Token": "self-secret"})),
            200,
            "",
        ),
        (None, "GET", "/v1/agent/self", None, 200, "ag-token"),
    ];
    for (token, method, path, body, status, text) in rows {
        let a = http
            .call_as(*token, method, &format!("{agent}{path}"), body.clone())
            .await;
        assert_eq!(a.status, *status, "{method} {path}: {}", a.body);
        assert!(
            a.body.to_string().contains(text),
            "{method} {path}: {}",
            a.body
        );
    }
    let mut found = false;
    for _ in 0..50 {
        let catalog = http
            .call_as(
                root,
                "GET",
                &format!("{server}/v1/catalog/service/tok-web"),
                None,
            )
            .await;
        if count(&catalog.body) == 1 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the new agent token never synced tok-web");
}

/// An agent lists the events whose filters matched it, answers `members?wan=1` as a client
/// agent (`null`: only servers are in the WAN pool) and streams its own log.
#[tokio::test]
async fn agents_list_their_events_leave_the_wan_pool_to_servers_and_stream_their_log() {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let (_srv, server) = http.dev_server(&[]).await;
    let ip = "127.0.0.13";
    let port = free_port(ip);
    let agent = format!("http://{ip}:{port}");
    let _ag = spawn(&[
        "agent",
        "--join",
        &server,
        "--http-addr",
        &format!("{ip}:{port}"),
        "--node-name",
        "ag-ev",
        "--heartbeat-interval",
        "200ms",
    ]);
    http.ready(&agent).await;
    let (status, _, _) = http
        .call(
            "PUT",
            &format!("{agent}/v1/agent/service/register"),
            Some(json!({"ID": "ev-web-1", "Name": "ev-web", "Tags": ["blue"]})),
        )
        .await;
    assert_eq!(status, 200);
    http.until(
        &format!("{server}/v1/catalog/service/ev-web"),
        "ev-web synced",
        |v| count(v) == 1,
    )
    .await;
    for (via, path) in [
        (&agent, "/v1/event/fire/to-agent?node=^ag-ev$"),
        (&server, "/v1/event/fire/to-server?node=^srv$"),
        (&agent, "/v1/event/fire/to-blue?service=^ev-web&tag=blue"),
        (&server, "/v1/event/fire/to-all"),
    ] {
        let (status, body, _) = http.call("PUT", &format!("{via}{path}"), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["Name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, on_agent, _) = http
        .call("GET", &format!("{agent}/v1/event/list"), None)
        .await;
    assert_eq!(
        names(&on_agent),
        ["to-agent", "to-blue", "to-all"],
        "{on_agent}"
    );
    let (_, on_server, _) = http
        .call("GET", &format!("{server}/v1/event/list"), None)
        .await;
    assert_eq!(names(&on_server), ["to-server", "to-all"], "{on_server}");
    let (_, named, _) = http
        .call("GET", &format!("{agent}/v1/event/list?name=to-blue"), None)
        .await;
    assert_eq!(names(&named), ["to-blue"]);

    let (status, wan, _) = http
        .call("GET", &format!("{agent}/v1/agent/members?wan=1"), None)
        .await;
    assert_eq!((status, wan), (200, Value::Null));
    let (_, wan, _) = http
        .call("GET", &format!("{server}/v1/agent/members?wan=1"), None)
        .await;
    assert_eq!(wan[0]["Name"], "srv.dc1", "{wan}");
    let (_, lan, _) = http
        .call("GET", &format!("{agent}/v1/agent/members"), None)
        .await;
    assert!(
        lan.as_array().unwrap().iter().any(|m| m["Name"] == "ag-ev"),
        "{lan}"
    );

    let mut log = http
        .client
        .get(format!("{agent}/v1/agent/monitor?loglevel=debug"))
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    let (status, _, _) = http
        .call("GET", &format!("{agent}/v1/agent/services"), None)
        .await;
    assert_eq!(status, 200);
    let chunk = tokio::time::timeout(Duration::from_secs(10), log.chunk())
        .await
        .expect("a log line within 10 s")
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&chunk);
    assert!(line.contains("[DEBUG]"), "{line}");
}
