//! Blocking-query watches on the registry (Consul's HTTP API only, so a real Consul works too):
//! the healthy `berth-master` instances and the running instance records.

use std::time::Duration;

use berth_consul::types::{KvEntry, ServiceEntry};
use berth_model::State;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::render::{AppEndpoint, AppRoute, check_app};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("registry request {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry answered {status} for {url}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("registry answer for {url} is not the expected JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A Consul blocking-query client for one registry.
#[derive(Clone)]
pub(crate) struct Registry {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    wait: Duration,
}

impl Registry {
    pub(crate) fn new(base: &str, token: Option<String>, wait: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A blocking query may hold the answer for `wait` plus Consul's jitter (wait/16).
            .timeout(wait + wait / 8 + Duration::from_secs(10))
            .build()
            .expect("reqwest client with timeouts");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            wait,
        }
    }

    /// One blocking GET: returns the new index and the body (`None` on 404, which Consul answers
    /// for a KV prefix holding no key).
    async fn get(&self, path: &str, index: u64) -> Result<(u64, Option<Vec<u8>>), WatchError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{sep}index={index}&wait={}s",
            self.base,
            self.wait.as_secs().max(1)
        );
        let mut req = self.http.get(&url);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(|source| WatchError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let new_index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok((new_index, None));
        }
        let body = resp.bytes().await.map_err(|source| WatchError::Http {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(WatchError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        Ok((new_index, Some(body.to_vec())))
    }
}

/// Consul's index rules for the next query: reset to 0 when the index went backwards (a
/// restored or replaced server), never block on 0 forever.
pub(crate) fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous { 0 } else { returned }
}

/// `host:port` of every entry of `/v1/health/service/<name>?passing` (service address, else the
/// node's, as Consul's DNS interface does).
pub(crate) fn parse_masters(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let entries: Vec<ServiceEntry> = serde_json::from_slice(body)?;
    let mut out: Vec<String> = entries
        .into_iter()
        .filter(|e| e.service.port != 0)
        .map(|e| {
            let host = if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            };
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", e.service.port)
            } else {
                format!("{host}:{}", e.service.port)
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The fields of an instance record (`berth_model::InstanceRecord`, under
/// `berth_model::keys::RECORD_PREFIX`) the front door needs: a tolerant subset, so a record a
/// newer master wrote still routes.
#[derive(Deserialize)]
struct InstanceRecord {
    id: String,
    state: State,
    #[serde(default)]
    endpoints: Vec<RecordEndpoint>,
}

#[derive(Deserialize)]
struct RecordEndpoint {
    service: String,
    #[serde(default = "tcp")]
    protocol: String,
    host: String,
    host_port: u16,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// Routes of the running instances from a recursive KV read of `berth/instances/`. Records that
/// do not parse or cannot be routed are left out and named in the second list.
pub(crate) fn parse_apps(body: &[u8]) -> Result<(Vec<AppRoute>, Vec<String>), serde_json::Error> {
    let entries: Vec<KvEntry> = serde_json::from_slice(body)?;
    let mut apps = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let Some(raw) = entry.value else { continue };
        let record: InstanceRecord = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(err) => {
                skipped.push(format!("{}: {err}", entry.key));
                continue;
            }
        };
        if !record.state.is_up() {
            continue;
        }
        let route = AppRoute {
            id: record.id,
            endpoints: record
                .endpoints
                .into_iter()
                .filter(|e| e.protocol == "tcp")
                .map(|e| AppEndpoint {
                    service: e.service,
                    host: e.host,
                    port: e.host_port,
                })
                .collect(),
        };
        match check_app(&route) {
            Ok(()) => apps.push(route),
            Err(err) => skipped.push(format!("{}: {err}", entry.key)),
        }
    }
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((apps, skipped))
}

/// Watches `path` until `shutdown`, sending each parsed answer that differs from the last one.
/// Errors back off (1 s doubling to 30 s) and keep the last good answer in place.
pub(crate) async fn run<T, F>(
    registry: Registry,
    path: String,
    parse: F,
    tx: watch::Sender<Option<T>>,
    shutdown: CancellationToken,
) where
    T: PartialEq + Send + Sync + 'static,
    F: Fn(Option<&[u8]>) -> Result<T, serde_json::Error>,
{
    let mut index = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = registry.get(&path, index) => answer,
        };
        let result = answer.and_then(|(new_index, body)| {
            let value = parse(body.as_deref()).map_err(|source| WatchError::Json {
                url: path.clone(),
                source,
            })?;
            Ok((new_index, value))
        });
        match result {
            Ok((new_index, value)) => {
                backoff = Duration::from_secs(1);
                index = next_index(index, new_index);
                tx.send_if_modified(|current| {
                    if current.as_ref() == Some(&value) {
                        false
                    } else {
                        *current = Some(value);
                        true
                    }
                });
            }
            Err(err) => {
                tracing::warn!(cause = %err, path = %path, retry_in = ?backoff, "registry watch failed");
                index = 0;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn index_resets_when_it_goes_backwards() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 3), 0);
    }

    #[test]
    fn masters_use_service_address_else_node_address() {
        let body = br#"[
            {"Node":{"Node":"a","Address":"10.0.0.1"},"Service":{"Service":"berth-master","Address":"","Port":8080},"Checks":[]},
            {"Node":{"Node":"b","Address":"10.0.0.2"},"Service":{"Service":"berth-master","Address":"172.20.0.5","Port":8081},"Checks":[]},
            {"Node":{"Node":"c","Address":"fd00::1"},"Service":{"Service":"berth-master","Address":"","Port":8080},"Checks":[]},
            {"Node":{"Node":"d","Address":"10.0.0.1"},"Service":{"Service":"berth-master","Address":"","Port":8080},"Checks":[]}
        ]"#;
        assert_eq!(
            parse_masters(body).unwrap(),
            vec!["10.0.0.1:8080", "172.20.0.5:8081", "[fd00::1]:8080"]
        );
        assert!(parse_masters(b"{}").is_err());
    }

    fn kv(key: &str, value: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "Key": key,
            "Value": base64::engine::general_purpose::STANDARD.encode(value.to_string()),
            "Flags": 0, "CreateIndex": 1, "ModifyIndex": 1, "LockIndex": 0
        })
    }

    #[test]
    fn apps_are_the_running_instances_with_tcp_endpoints() {
        let endpoint = |service: &str, proto: &str, port: u16| {
            serde_json::json!({"service": service, "container_port": 8000, "protocol": proto,
                               "host": "10.0.0.7", "host_port": port})
        };
        let body = serde_json::Value::Array(vec![
            kv(
                "berth/instances/shop",
                &serde_json::json!({"id": "shop", "state": "running", "user": "u",
                    "endpoints": [endpoint("web", "tcp", 32001), endpoint("dns", "udp", 32002)]}),
            ),
            kv(
                "berth/instances/idle",
                &serde_json::json!({"id": "idle", "state": "stopped",
                    "endpoints": [endpoint("web", "tcp", 32003)]}),
            ),
            kv(
                "berth/instances/a.b",
                &serde_json::json!({"id": "a.b", "state": "running",
                    "endpoints": [endpoint("web", "tcp", 32004)]}),
            ),
            kv("berth/instances/junk", &serde_json::json!("not a record")),
            serde_json::json!({"Key": "berth/instances/", "Value": null}),
        ]);
        let (apps, skipped) = parse_apps(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            apps,
            vec![AppRoute {
                id: "shop".into(),
                endpoints: vec![AppEndpoint {
                    service: "web".into(),
                    host: "10.0.0.7".into(),
                    port: 32001
                }]
            }]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].starts_with("berth/instances/a.b"));
        assert!(skipped[1].starts_with("berth/instances/junk"));
    }
}

#[cfg(test)]
mod registry_tests {
    //! The watches against the real registry server, in process.

    use super::*;

    async fn registry() -> (String, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let config = berth_registry::server::Config::dev("frontdoor-test");
        tokio::spawn(berth_registry::server::run(config, listener, stop.clone()));
        (url, stop)
    }

    async fn next<T: Clone>(rx: &mut watch::Receiver<Option<T>>) -> T {
        tokio::time::timeout(Duration::from_secs(30), rx.changed())
            .await
            .expect("the watch reports the change")
            .unwrap();
        rx.borrow_and_update().clone().unwrap()
    }

    #[tokio::test]
    async fn master_watch_follows_catalog_registrations() {
        let (url, stop) = registry().await;
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(run(
            Registry::new(&url, None, Duration::from_secs(30)),
            "/v1/health/service/berth-master?passing=1".to_owned(),
            |b: Option<&[u8]>| b.map_or(Ok(Vec::new()), parse_masters),
            tx,
            stop.clone(),
        ));
        assert_eq!(next(&mut rx).await, Vec::<String>::new());
        let http = reqwest::Client::new();
        let register = |node: &str, addr: &str| {
            serde_json::json!({"Node": node, "Address": addr,
                "Service": {"ID": "berth-master", "Service": "berth-master", "Port": 8080}})
        };
        http.put(format!("{url}/v1/catalog/register"))
            .json(&register("m1", "10.0.0.1"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        assert_eq!(next(&mut rx).await, vec!["10.0.0.1:8080"]);
        http.put(format!("{url}/v1/catalog/register"))
            .json(&register("m2", "10.0.0.2"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        assert_eq!(next(&mut rx).await, vec!["10.0.0.1:8080", "10.0.0.2:8080"]);
        http.put(format!("{url}/v1/catalog/deregister"))
            .json(&serde_json::json!({"Node": "m1"}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        assert_eq!(next(&mut rx).await, vec!["10.0.0.2:8080"]);
        stop.cancel();
    }

    #[tokio::test]
    async fn app_watch_follows_instance_records() {
        let (url, stop) = registry().await;
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(run(
            Registry::new(&url, None, Duration::from_secs(30)),
            "/v1/kv/berth/instances/?recurse=1".to_owned(),
            |b: Option<&[u8]>| b.map_or(Ok(Vec::new()), |b| parse_apps(b).map(|(a, _)| a)),
            tx,
            stop.clone(),
        ));
        assert_eq!(next(&mut rx).await, Vec::new());
        let http = reqwest::Client::new();
        let record = |state: &str| {
            serde_json::json!({"id": "shop", "state": state, "endpoints": [{"service": "web",
                "container_port": 8000, "protocol": "tcp", "host": "10.0.0.7", "host_port": 32001}]})
        };
        let put = |state: &str| {
            http.put(format!("{url}/v1/kv/berth/instances/shop"))
                .body(record(state).to_string())
                .send()
        };
        put("running").await.unwrap().error_for_status().unwrap();
        let apps = next(&mut rx).await;
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].endpoints[0].port, 32001);
        put("stopped").await.unwrap().error_for_status().unwrap();
        assert_eq!(next(&mut rx).await, Vec::new());
        stop.cancel();
    }
}
