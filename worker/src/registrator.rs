//! The registrator role: follows Docker events for this node's berth containers and keeps one
//! agent service per published port in sync (resync at start-up, after every event, after an
//! event-stream drop and periodically), plus the worker's own `berth-worker` registration.
//!
//! The mapping from containers to registrations and the resync diff are pure functions; the loop
//! only gathers container views, applies the diff through [`Agent`] and reacts to events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_worker_api::{META_CAPACITY, META_INSTANCES, META_VERSION, WORKER_SERVICE};
use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::compose::plan;
use crate::docker::label_filter;
use crate::registry::{Agent, AgentService, Check, Registration};
use crate::stacks::Stacks;

/// Meta keys berth adds to every container registration.
pub const META_BERTH_NODE: &str = "berth_node";
pub const META_BERTH_INSTANCE: &str = "berth_instance";
pub const META_BERTH_CONTAINER: &str = "berth_container";

/// What the registrator needs to know of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub service: String,
    pub instance: String,
    /// `KEY=VALUE` entries of the container's environment.
    pub env: Vec<String>,
    /// (container port, protocol, host port) of each published port.
    pub ports: Vec<(u16, String, u16)>,
    pub has_healthcheck: bool,
    /// Docker's health status (`healthy`, `unhealthy`, `starting`) when there is a healthcheck.
    pub health: Option<String>,
}

/// Service id of one published port: `<node>:<container>:<port>` (`:udp` appended for UDP).
pub fn service_id(node: &str, container: &str, port: u16, proto: &str) -> String {
    if proto == "udp" {
        format!("{node}:{container}:{port}:udp")
    } else {
        format!("{node}:{container}:{port}")
    }
}

/// The agent check id of a service's embedded check.
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// The registrations one container should have, following registrator's `SERVICE_*`
/// conventions (`SERVICE_<port>_<KEY>` overrides `SERVICE_<KEY>` for that port).
pub fn registrations(c: &ContainerView, node: &str, advertise: &str) -> Vec<Registration> {
    let env: HashMap<&str, &str> = c
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| k.starts_with("SERVICE_"))
        .collect();
    let mut ports = c.ports.clone();
    ports.sort();
    ports.dedup();
    let many = ports.len() > 1;
    let mut out = Vec::new();
    for (port, proto, host_port) in &ports {
        let get = |key: &str| -> Option<String> {
            env.get(format!("SERVICE_{port}_{key}").as_str())
                .or_else(|| env.get(format!("SERVICE_{key}").as_str()))
                .map(|v| (*v).to_owned())
        };
        if get("IGNORE").is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let name = match env.get(format!("SERVICE_{port}_NAME").as_str()) {
            Some(n) => (*n).to_owned(),
            None => {
                let base = get("NAME").unwrap_or_else(|| format!("{}.{}", c.service, c.instance));
                if many { format!("{base}-{port}") } else { base }
            }
        };
        let tags = get("TAGS")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut meta = BTreeMap::new();
        for (k, v) in &env {
            let key = &k["SERVICE_".len()..];
            let generic = !key.starts_with(|ch: char| ch.is_ascii_digit());
            let own_port = key.strip_prefix(&format!("{port}_")).map(str::to_owned);
            let key = match (generic, own_port) {
                (true, _) => key.to_owned(),
                (false, Some(rest)) => rest,
                (false, None) => continue,
            };
            if matches!(key.as_str(), "NAME" | "TAGS" | "ID" | "IGNORE")
                || key.starts_with("CHECK_")
            {
                continue;
            }
            meta.insert(key.to_ascii_lowercase(), (*v).to_owned());
        }
        meta.insert(META_BERTH_NODE.to_owned(), node.to_owned());
        meta.insert(META_BERTH_INSTANCE.to_owned(), c.instance.clone());
        meta.insert(META_BERTH_CONTAINER.to_owned(), c.name.clone());
        let interval = get("CHECK_INTERVAL").unwrap_or_else(|| "10s".to_owned());
        let timeout = get("CHECK_TIMEOUT");
        let deregister_after = get("CHECK_DEREGISTER_AFTER");
        let mut check = if let Some(path) = get("CHECK_HTTP") {
            Some(Check {
                http: Some(format!("http://{}:{host_port}{path}", host(advertise))),
                interval: Some(interval),
                timeout,
                ..Check::default()
            })
        } else if get("CHECK_TTL").is_some() {
            Some(Check {
                ttl: get("CHECK_TTL"),
                ..Check::default()
            })
        } else if get("CHECK_TCP").is_some() || (!c.has_healthcheck && proto == "tcp") {
            Some(Check {
                tcp: Some(format!("{}:{host_port}", host(advertise))),
                interval: Some(interval),
                timeout,
                ..Check::default()
            })
        } else if c.has_healthcheck {
            // Docker runs the healthcheck; the registrator relays its result to a TTL check.
            Some(Check {
                ttl: Some("60s".to_owned()),
                ..Check::default()
            })
        } else {
            None
        };
        if let Some(check) = &mut check {
            check.deregister_after = deregister_after;
            check.name = Some(format!("{name} check"));
        }
        out.push(Registration {
            id: service_id(node, &c.name, *port, proto),
            name,
            tags,
            address: advertise.to_owned(),
            port: *host_port,
            meta,
            check,
        });
    }
    out
}

fn host(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// Whether a registration relays Docker's health through a TTL check.
pub fn relays_health(reg: &Registration) -> bool {
    reg.check
        .as_ref()
        .is_some_and(|c| c.ttl.as_deref() == Some("60s") && c.http.is_none() && c.tcp.is_none())
}

/// What a resync does: register what is missing or changed, deregister this node's container
/// registrations that nothing wants any more. Other nodes' services and the worker's own
/// registration are never touched.
pub fn diff<'a>(
    desired: &'a [Registration],
    existing: &HashMap<String, AgentService>,
    node: &str,
) -> (Vec<&'a Registration>, Vec<String>) {
    let prefix = format!("{node}:");
    let register = desired
        .iter()
        .filter(|d| match existing.get(&d.id) {
            None => true,
            Some(e) => e.service != d.name || e.port != d.port || e.meta != d.meta,
        })
        .collect();
    let mut deregister: Vec<String> = existing
        .keys()
        .filter(|id| id.starts_with(&prefix) && !desired.iter().any(|d| &d.id == *id))
        .cloned()
        .collect();
    deregister.sort();
    (register, deregister)
}

/// The worker's own registration.
pub fn self_registration(
    node: &str,
    advertise: &str,
    port: u16,
    check_url: &str,
    instances: usize,
    capacity: u32,
) -> Registration {
    Registration {
        id: format!("{WORKER_SERVICE}:{node}"),
        name: WORKER_SERVICE.to_owned(),
        tags: Vec::new(),
        address: advertise.to_owned(),
        port,
        meta: BTreeMap::from([
            (
                META_VERSION.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            (META_INSTANCES.to_owned(), instances.to_string()),
            (META_CAPACITY.to_owned(), capacity.to_string()),
        ]),
        check: Some(Check {
            name: Some("berth-worker health".to_owned()),
            http: Some(check_url.to_owned()),
            interval: Some("10s".to_owned()),
            timeout: Some("5s".to_owned()),
            ..Check::default()
        }),
    }
}

/// The registrator loop's inputs.
pub struct Registrator {
    pub docker: Docker,
    pub agent: Agent,
    pub stacks: Arc<Stacks>,
    pub node: String,
    pub advertise: String,
    /// Port and health URL of the worker API, for self-registration.
    pub api_port: u16,
    pub check_url: String,
    pub capacity: u32,
}

impl Registrator {
    async fn views(&self) -> Result<Vec<ContainerView>, bollard::errors::Error> {
        let summaries = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(false)
                    .filters(&label_filter(&[
                        (plan::LABEL_BERTH_MANAGED, "true"),
                        (plan::LABEL_BERTH_NODE, &self.node),
                    ]))
                    .build(),
            ))
            .await?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            let Ok(c) = self.docker.inspect_container(&id, None).await else {
                continue;
            };
            if c.state.as_ref().and_then(|st| st.running) != Some(true) {
                continue;
            }
            let config = c.config.clone().unwrap_or_default();
            let labels = config.labels.clone().unwrap_or_default();
            let mut ports = Vec::new();
            for (key, bindings) in c
                .network_settings
                .as_ref()
                .and_then(|n| n.ports.clone())
                .unwrap_or_default()
            {
                let Some((port, proto)) = key.split_once('/') else {
                    continue;
                };
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                if let Some(host_port) = bindings
                    .unwrap_or_default()
                    .iter()
                    .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                {
                    ports.push((port, proto.to_owned(), host_port));
                }
            }
            let health = c
                .state
                .as_ref()
                .and_then(|st| st.health.as_ref())
                .and_then(|h| h.status)
                .map(|h| h.to_string());
            out.push(ContainerView {
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                service: labels.get(plan::LABEL_SERVICE).cloned().unwrap_or_default(),
                instance: labels
                    .get(plan::LABEL_BERTH_INSTANCE)
                    .cloned()
                    .unwrap_or_default(),
                env: config.env.unwrap_or_default(),
                ports,
                has_healthcheck: config
                    .healthcheck
                    .as_ref()
                    .and_then(|h| h.test.as_ref())
                    .is_some_and(|t| t.first().map(String::as_str) != Some("NONE")),
                health,
            });
        }
        Ok(out)
    }

    /// One full resync. Returns how many registrations changed.
    pub async fn resync(&self, self_reg: &mut Option<Registration>) -> anyhow::Result<usize> {
        let views = self.views().await?;
        let mut desired = Vec::new();
        let mut health: HashMap<String, Option<String>> = HashMap::new();
        for v in &views {
            for r in registrations(v, &self.node, &self.advertise) {
                health.insert(r.id.clone(), v.health.clone());
                desired.push(r);
            }
        }
        let existing = self.agent.services().await?;
        let (register, deregister) = diff(&desired, &existing, &self.node);
        let changes = register.len() + deregister.len();
        for id in &deregister {
            self.agent.deregister(id).await?;
        }
        for r in &register {
            self.agent.register(r).await?;
        }
        for r in desired.iter().filter(|r| relays_health(r)) {
            let status = match health.get(&r.id).cloned().flatten().as_deref() {
                Some("healthy") => "passing",
                Some("starting") => "warning",
                _ => "critical",
            };
            if let Err(e) = self.agent.update_check(&check_id(&r.id), status).await {
                tracing::debug!(cause = %e, "cannot relay container health");
            }
        }
        let me = self_registration(
            &self.node,
            &self.advertise,
            self.api_port,
            &self.check_url,
            self.stacks.count(),
            self.capacity,
        );
        if self_reg.as_ref() != Some(&me) || !existing.contains_key(&me.id) {
            self.agent.register(&me).await?;
            *self_reg = Some(me);
        }
        Ok(changes)
    }

    /// Runs until `shutdown`, then removes the worker's own registration.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut self_reg = None;
        let mut since = now_secs();
        let changed = self.stacks.changed.clone();
        'outer: loop {
            if let Err(e) = self.resync(&mut self_reg).await {
                tracing::warn!(cause = %e, "registrator resync failed");
            }
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "label".to_owned(),
                    vec![
                        format!("{}=true", plan::LABEL_BERTH_MANAGED),
                        format!("{}={}", plan::LABEL_BERTH_NODE, self.node),
                    ],
                ),
            ]);
            let mut events = self.docker.events(Some(
                EventsOptionsBuilder::default()
                    .since(&since.to_string())
                    .filters(&filters)
                    .build(),
            ));
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    _ = changed.notified() => {}
                    _ = tick.tick() => {}
                    event = events.next() => match event {
                        Some(Ok(ev)) => {
                            if let Some(t) = ev.time {
                                since = since.max(t);
                            }
                            let action = ev.action.unwrap_or_default();
                            let relevant = matches!(action.as_str(), "start" | "die" | "stop" | "kill" | "destroy" | "pause" | "unpause")
                                || action.starts_with("health_status");
                            if !relevant {
                                continue;
                            }
                            tracing::debug!(action, container = ev.actor.and_then(|a| a.id).unwrap_or_default(), "docker event");
                        }
                        Some(Err(e)) => {
                            tracing::warn!(cause = %e, "docker event stream failed; resyncing");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'outer;
                        }
                        None => {
                            tracing::warn!("docker event stream ended; resyncing");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'outer;
                        }
                    }
                }
                if let Err(e) = self.resync(&mut self_reg).await {
                    tracing::warn!(cause = %e, "registrator resync failed");
                }
            }
        }
        if let Some(me) = self_reg
            && let Err(e) = self.agent.deregister(&me.id).await
        {
            tracing::warn!(cause = %e, "cannot deregister the worker");
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(env: &[&str], ports: &[(u16, &str, u16)], hc: bool) -> ContainerView {
        ContainerView {
            name: "shop-web-1".into(),
            service: "web".into(),
            instance: "shop".into(),
            env: env.iter().map(|s| (*s).to_owned()).collect(),
            ports: ports
                .iter()
                .map(|(p, pr, h)| (*p, (*pr).to_owned(), *h))
                .collect(),
            has_healthcheck: hc,
            health: None,
        }
    }

    #[test]
    fn registration_table() {
        struct Case {
            env: &'static [&'static str],
            ports: &'static [(u16, &'static str, u16)],
            hc: bool,
            want: &'static [(&'static str, &'static str, u16, &'static str)],
        }
        // (id, name, host port, check kind)
        let cases = [
            Case {
                env: &[],
                ports: &[],
                hc: false,
                want: &[],
            },
            Case {
                env: &[],
                ports: &[(80, "tcp", 32000)],
                hc: false,
                want: &[("n1:shop-web-1:80", "web.shop", 32000, "tcp")],
            },
            Case {
                env: &[],
                ports: &[(80, "tcp", 32000)],
                hc: true,
                want: &[("n1:shop-web-1:80", "web.shop", 32000, "ttl")],
            },
            Case {
                env: &["SERVICE_NAME=shop", "SERVICE_CHECK_HTTP=/health"],
                ports: &[(80, "tcp", 32000)],
                hc: true,
                want: &[("n1:shop-web-1:80", "shop", 32000, "http")],
            },
            Case {
                env: &["SERVICE_CHECK_TTL=15s"],
                ports: &[(80, "tcp", 32000)],
                hc: false,
                want: &[("n1:shop-web-1:80", "web.shop", 32000, "ttl")],
            },
            Case {
                env: &["SERVICE_IGNORE=1"],
                ports: &[(80, "tcp", 32000)],
                hc: false,
                want: &[],
            },
            Case {
                env: &["SERVICE_81_IGNORE=yes"],
                ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
                hc: false,
                want: &[("n1:shop-web-1:80", "web.shop-80", 32000, "tcp")],
            },
            Case {
                env: &["SERVICE_81_NAME=admin"],
                ports: &[(81, "tcp", 32001), (80, "tcp", 32000), (80, "tcp", 32000)],
                hc: false,
                want: &[
                    ("n1:shop-web-1:80", "web.shop-80", 32000, "tcp"),
                    ("n1:shop-web-1:81", "admin", 32001, "tcp"),
                ],
            },
            Case {
                env: &[],
                ports: &[(53, "udp", 32053)],
                hc: false,
                want: &[("n1:shop-web-1:53:udp", "web.shop", 32053, "none")],
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let regs = registrations(&view(case.env, case.ports, case.hc), "n1", "10.0.0.5");
            let got: Vec<(String, String, u16, &str)> = regs
                .iter()
                .map(|r| {
                    let kind = match &r.check {
                        None => "none",
                        Some(c) if c.http.is_some() => "http",
                        Some(c) if c.tcp.is_some() => "tcp",
                        Some(c) if c.ttl.is_some() => "ttl",
                        Some(_) => "?",
                    };
                    (r.id.clone(), r.name.clone(), r.port, kind)
                })
                .collect();
            let want: Vec<(String, String, u16, &str)> = case
                .want
                .iter()
                .map(|(id, n, p, k)| ((*id).to_owned(), (*n).to_owned(), *p, *k))
                .collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn tags_meta_and_check_details() {
        let v = view(
            &[
                "SERVICE_TAGS=a, b,,c",
                "SERVICE_REGION=eu",
                "SERVICE_80_TIER=front",
                "SERVICE_81_TIER=other",
                "SERVICE_CHECK_HTTP=/h",
                "SERVICE_CHECK_INTERVAL=3s",
                "SERVICE_CHECK_TIMEOUT=1s",
                "SERVICE_CHECK_DEREGISTER_AFTER=1m",
                "OTHER=x",
            ],
            &[(80, "tcp", 32000)],
            false,
        );
        let r = &registrations(&v, "n1", "10.0.0.5")[0];
        assert_eq!(r.tags, ["a", "b", "c"]);
        assert_eq!(r.meta["region"], "eu");
        assert_eq!(r.meta["tier"], "front");
        assert_eq!(r.meta[META_BERTH_INSTANCE], "shop");
        assert_eq!(r.meta[META_BERTH_NODE], "n1");
        assert!(!r.meta.contains_key("check_http"));
        let c = r.check.as_ref().unwrap();
        assert_eq!(c.http.as_deref(), Some("http://10.0.0.5:32000/h"));
        assert_eq!(c.interval.as_deref(), Some("3s"));
        assert_eq!(c.timeout.as_deref(), Some("1s"));
        assert_eq!(c.deregister_after.as_deref(), Some("1m"));
        assert_eq!(r.address, "10.0.0.5");
    }

    #[test]
    fn diff_registers_missing_and_removes_only_own_stale() {
        let v = view(&[], &[(80, "tcp", 32000), (81, "tcp", 32001)], false);
        let desired = registrations(&v, "n1", "10.0.0.5");
        let svc = |id: &str, name: &str, port: u16, meta: &BTreeMap<String, String>| {
            (
                id.to_owned(),
                AgentService {
                    id: id.to_owned(),
                    service: name.to_owned(),
                    port,
                    meta: meta.clone(),
                },
            )
        };
        let existing: HashMap<String, AgentService> = [
            // Up to date: left alone.
            svc(&desired[0].id, &desired[0].name, 32000, &desired[0].meta),
            // Same id, old port: re-registered.
            svc(&desired[1].id, &desired[1].name, 31999, &desired[1].meta),
            // A container of this node that is gone: removed.
            svc("n1:gone-web-1:80", "web.gone", 32100, &BTreeMap::new()),
            // Another node's and the worker's own: untouched.
            svc("n2:shop-web-1:80", "web.shop", 32000, &BTreeMap::new()),
            svc("berth-worker:n1", "berth-worker", 8833, &BTreeMap::new()),
        ]
        .into_iter()
        .collect();
        let (register, deregister) = diff(&desired, &existing, "n1");
        assert_eq!(
            register.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [desired[1].id.as_str()]
        );
        assert_eq!(deregister, ["n1:gone-web-1:80"]);
        let (register, deregister) = diff(&[], &existing, "n1");
        assert!(register.is_empty());
        assert_eq!(deregister.len(), 3, "{deregister:?}");
    }

    #[test]
    fn self_registration_shape() {
        let r = self_registration(
            "n1",
            "10.0.0.5",
            8833,
            "http://127.0.0.1:8833/healthz",
            3,
            20,
        );
        assert_eq!(r.id, "berth-worker:n1");
        assert_eq!(r.name, WORKER_SERVICE);
        assert_eq!(r.meta[META_INSTANCES], "3");
        assert_eq!(r.meta[META_CAPACITY], "20");
        assert_eq!(
            r.check.unwrap().http.as_deref(),
            Some("http://127.0.0.1:8833/healthz")
        );
        let reg = &registrations(&view(&[], &[(80, "tcp", 1)], false), "n", "h")[0];
        let json =
            serde_json::to_value(berth_registry::dto::AgentServiceRegistration::from(reg)).unwrap();
        assert_eq!(json["ID"], "n:shop-web-1:80");
        assert_eq!(json["Check"]["TCP"], "h:1");
    }
}
