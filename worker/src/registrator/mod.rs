//! The registrator role: follows Docker events for this node's berth containers and keeps one
//! agent service per published port in sync (resync at start-up, after every event, after an
//! event-stream drop and periodically), plus the worker's own `berth-worker` registration.
//!
//! The mapping from containers to registrations and the resync diff are pure functions; the loop
//! only gathers container views, applies the diff through [`Agent`] and reacts to events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_registry::dto::parse_go_duration;
use berth_worker_api::{
    ErrorDetail, META_CAPACITY, META_INSTANCES, META_VERSION, ValidName, WORKER_SERVICE,
};
use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use reqwest::Url;
use tokio_util::sync::CancellationToken;

use crate::compose::{Project, plan};
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

/// Whether `name` belongs to berth or Consul and may not be registered by a stack: `consul` and
/// every name starting with `berth-` (`berth-worker`, `berth-master`, ...), compared without case
/// and surrounding space, as DNS lookups and people do.
pub fn reserved_name(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    name == "consul" || name.starts_with("berth-")
}

/// Whether a meta key (lower case) is berth's: the ones berth sets on every registration
/// (`berth_*`), the ones the master reads for placement (`instances`, `capacity`, `version`),
/// and the prefix Consul keeps for itself (`consul-`).
pub fn reserved_meta(key: &str) -> bool {
    matches!(key, META_INSTANCES | META_CAPACITY | META_VERSION)
        || key.starts_with("berth_")
        || key.starts_with("berth-")
        || key.starts_with("consul-")
}

/// Checks a `SERVICE_CHECK_HTTP` value: a path on the container's own port, nothing that could
/// change the URL's authority (`@host`, `//host`, a scheme, `\`) or smuggle whitespace.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be a path starting with /".into());
    }
    if path.starts_with("//") {
        return Err("must not start with //".into());
    }
    if path.contains('@') {
        return Err("must not contain @".into());
    }
    if path.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// The HTTP check URL for `path` on the container's published port, built with the URL parser
/// and verified to point at `advertise:port` with no user info.
pub fn check_url(advertise: &str, port: u16, path: &str) -> Result<String, String> {
    check_path(path)?;
    let base = Url::parse(&format!("http://{}:{port}/", host(advertise)))
        .map_err(|e| format!("cannot form a URL on advertise address {advertise:?}: {e}"))?;
    let url = base
        .join(path)
        .map_err(|e| format!("is not a valid URL path: {e}"))?;
    if url.host() != base.host()
        || url.port_or_known_default() != Some(port)
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err("must stay on the container's own address and port".into());
    }
    Ok(url.into())
}

/// What berth does at run time with a `SERVICE_*` variable it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The port is not registered (a reserved name, a check berth will not run as asked).
    SkipPort,
    /// The variable is left out (reserved meta, an unsupported check kind).
    IgnoreKey,
}

/// Why berth refuses `SERVICE_<key>=<value>` (`key` without `SERVICE_` and any `<port>_`), or
/// `None` when it honours it. One rule for the compose file (at build and start) and for the
/// container's environment (at registration).
fn refusal(key: &str, value: &str) -> Option<(Refusal, String)> {
    let duration = |positive: bool| {
        let ok = parse_go_duration(value).is_some_and(|d| !positive || !d.is_zero());
        (!ok).then(|| {
            let what = if positive {
                "a positive duration"
            } else {
                "a duration"
            };
            (
                Refusal::SkipPort,
                format!("must be {what} such as 10s or 1m"),
            )
        })
    };
    match key {
        "NAME" => reserved_name(value).then(|| {
            (
                Refusal::SkipPort,
                format!(
                    "sets the reserved service name {:?} (consul and names starting with berth- belong to berth and Consul)",
                    value.trim()
                ),
            )
        }),
        "CHECK_HTTP" => check_path(value)
            .err()
            .map(|reason| (Refusal::SkipPort, reason)),
        "CHECK_TTL" | "CHECK_INTERVAL" => duration(true),
        "CHECK_TIMEOUT" | "CHECK_DEREGISTER_AFTER" => duration(false),
        // The value is not used: a TCP check always dials the container's published port.
        "CHECK_TCP" => None,
        "TAGS" | "ID" | "IGNORE" => None,
        _ if key.starts_with("CHECK_") => Some((
            Refusal::IgnoreKey,
            "is not supported: berth runs HTTP, TCP and TTL checks (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP, SERVICE_CHECK_TTL)"
                .into(),
        )),
        _ => {
            let meta = key.to_ascii_lowercase();
            reserved_meta(&meta).then(|| {
                (
                    Refusal::IgnoreKey,
                    format!("sets meta {meta:?}, which berth sets itself"),
                )
            })
        }
    }
}

/// `SERVICE_*` variables with a value (an empty value counts as unset, as with registrator).
fn service_env(env: &[String]) -> BTreeMap<&str, &str> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, v)| k.starts_with("SERVICE_") && !v.is_empty())
        .collect()
}

/// Splits `SERVICE_<port>_<KEY>` / `SERVICE_<KEY>` into the port (if any) and `KEY`.
fn split_key(var: &str) -> Option<(Option<&str>, &str)> {
    let rest = var.strip_prefix("SERVICE_")?;
    match rest.split_once('_') {
        Some((port, key)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some((Some(port), key))
        }
        _ if rest.starts_with(|c: char| c.is_ascii_digit()) => None,
        _ => Some((None, rest)),
    }
}

/// The `SERVICE_*` variables a service's compose environment (and `env_file`) sets that berth
/// refuses, in the policy's error shape: a reserved name, a check URL that is not a plain path,
/// reserved meta, unsupported check kinds, bad durations. Names coming from the image are
/// checked again when the container registers.
pub fn check_project(project: &Project) -> Result<(), Vec<ErrorDetail>> {
    let mut errors = Vec::new();
    for s in &project.services {
        for (var, value) in &s.environment {
            let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            let Some((_, key)) = split_key(var) else {
                continue;
            };
            if let Some((_, reason)) = refusal(key, value) {
                errors.push(ErrorDetail {
                    service: Some(s.name.clone()),
                    field: format!("services.{}.environment.{var}", s.name),
                    reason: format!("{var} {reason}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The registrations one container should have, following registrator's `SERVICE_*`
/// conventions (`SERVICE_<port>_<KEY>` overrides `SERVICE_<KEY>` for that port), and one line
/// for each `SERVICE_*` variable berth refused (see [`check_project`] for the rules).
pub fn registrations(
    c: &ContainerView,
    node: &str,
    advertise: &str,
) -> (Vec<Registration>, BTreeSet<String>) {
    let mut refused = BTreeSet::new();
    if let Err(e) = ValidName::parse("instance", &c.instance) {
        refused.insert(format!("{}: not registered: {e}", c.name));
        return (Vec::new(), refused);
    }
    let env = service_env(&c.env);
    let mut ports = c.ports.clone();
    ports.sort();
    ports.dedup();
    let many = ports.len() > 1;
    let mut out = Vec::new();
    'ports: for (port, proto, host_port) in &ports {
        // KEY -> (variable, value) for this port: `SERVICE_<port>_KEY` wins over `SERVICE_KEY`.
        let port_text = port.to_string();
        let mut vars: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (var, value) in &env {
            match split_key(var) {
                Some((None, key)) => {
                    vars.entry(key).or_insert((var, value));
                }
                Some((Some(p), key)) if p == port_text => {
                    vars.insert(key, (var, value));
                }
                _ => {}
            }
        }
        let get = |key: &str| vars.get(key).map(|(_, v)| (*v).to_owned());
        if get("IGNORE").is_some() {
            continue;
        }
        let mut meta = BTreeMap::new();
        // Said only when the port is registered: a skipped port needs one reason, not several.
        let mut ignored = Vec::new();
        for (key, (var, value)) in &vars {
            match refusal(key, value) {
                Some((Refusal::SkipPort, reason)) => {
                    refused.insert(format!(
                        "{}: {var} {reason}; port {port} is not registered",
                        c.name
                    ));
                    continue 'ports;
                }
                Some((Refusal::IgnoreKey, reason)) => {
                    ignored.push(format!("{}: {var} {reason}; ignored", c.name));
                }
                None if matches!(*key, "NAME" | "TAGS" | "ID" | "IGNORE")
                    || key.starts_with("CHECK_") => {}
                None => {
                    meta.insert(key.to_ascii_lowercase(), (*value).to_owned());
                }
            }
        }
        let name = match vars.get("NAME") {
            Some((var, n)) if var.starts_with(&format!("SERVICE_{port}_")) => (*n).to_owned(),
            named => {
                let base = named.map_or_else(
                    || format!("{}.{}", c.service, c.instance),
                    |(_, n)| (*n).to_owned(),
                );
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
        meta.insert(META_BERTH_NODE.to_owned(), node.to_owned());
        meta.insert(META_BERTH_INSTANCE.to_owned(), c.instance.clone());
        meta.insert(META_BERTH_CONTAINER.to_owned(), c.name.clone());
        let interval = get("CHECK_INTERVAL").unwrap_or_else(|| "10s".to_owned());
        let timeout = get("CHECK_TIMEOUT");
        let deregister_after = get("CHECK_DEREGISTER_AFTER");
        let mut check = if let Some((var, path)) = vars.get("CHECK_HTTP") {
            match check_url(advertise, *host_port, path) {
                Ok(url) => Some(Check {
                    http: Some(url),
                    interval: Some(interval),
                    timeout,
                    ..Check::default()
                }),
                Err(reason) => {
                    refused.insert(format!(
                        "{}: {var} {reason}; port {port} is not registered",
                        c.name
                    ));
                    continue;
                }
            }
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
                relays_docker_health: true,
                ..Check::default()
            })
        } else {
            None
        };
        if let Some(check) = &mut check {
            check.deregister_after = deregister_after;
            check.name = Some(format!("{name} check"));
        }
        refused.extend(ignored);
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
    (out, refused)
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
    reg.check.as_ref().is_some_and(|c| c.relays_docker_health)
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

/// What the registrator loop carries from one resync to the next.
#[derive(Debug, Default)]
pub struct Synced {
    /// The worker's own registration as last sent.
    me: Option<Registration>,
    /// (instance, line) of the `SERVICE_*` refusals already logged.
    reported: BTreeSet<(String, String)>,
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
    pub async fn resync(&self, synced: &mut Synced) -> anyhow::Result<usize> {
        let views = self.views().await?;
        let mut desired = Vec::new();
        let mut health: HashMap<String, Option<String>> = HashMap::new();
        let mut refused = BTreeSet::new();
        for v in &views {
            let (regs, lines) = registrations(v, &self.node, &self.advertise);
            for r in regs {
                health.insert(r.id.clone(), v.health.clone());
                desired.push(r);
            }
            refused.extend(lines.into_iter().map(|l| (v.instance.clone(), l)));
        }
        self.report(&refused, &synced.reported);
        synced.reported = refused;
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
        if synced.me.as_ref() != Some(&me) || !existing.contains_key(&me.id) {
            self.agent.register(&me).await?;
            synced.me = Some(me);
        }
        Ok(changes)
    }

    /// Logs each refusal once while it lasts: in the worker log and in the instance's log.
    fn report(&self, refused: &BTreeSet<(String, String)>, reported: &BTreeSet<(String, String)>) {
        for (instance, line) in refused.difference(reported) {
            tracing::warn!(instance, "registrator: {line}");
            if let Ok(id) = ValidName::parse("instance", instance) {
                self.stacks.log(&id).line(&format!("registrator: {line}"));
            }
        }
    }

    /// Runs until `shutdown`, then removes the worker's own registration.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut synced = Synced::default();
        let mut since = now_secs();
        let changed = self.stacks.changed.clone();
        'outer: loop {
            if let Err(e) = self.resync(&mut synced).await {
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
                if let Err(e) = self.resync(&mut synced).await {
                    tracing::warn!(cause = %e, "registrator resync failed");
                }
            }
        }
        if let Some(me) = synced.me
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
            // An empty value counts as unset, as with registrator (an empty name would be
            // refused by the agent and fail the whole resync).
            Case {
                env: &["SERVICE_NAME=", "SERVICE_TAGS="],
                ports: &[(80, "tcp", 32000)],
                hc: false,
                want: &[("n1:shop-web-1:80", "web.shop", 32000, "tcp")],
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let (regs, refused) =
                registrations(&view(case.env, case.ports, case.hc), "n1", "10.0.0.5");
            assert!(refused.is_empty(), "case {i}: {refused:?}");
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
        let r = &registrations(&v, "n1", "10.0.0.5").0[0];
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
        let sent = berth_registry::dto::AgentServiceRegistration::from(r);
        assert_eq!(sent.check.unwrap().disable_redirects, Some(true));
    }

    #[test]
    fn only_docker_healthchecks_are_relayed() {
        let relayed = |env: &[&str], hc: bool| {
            let v = view(env, &[(80, "tcp", 32000)], hc);
            relays_health(&registrations(&v, "n1", "10.0.0.5").0[0])
        };
        assert!(relayed(&[], true));
        // The application's own TTL check, even of the relay's 60s, is its to update.
        assert!(!relayed(&["SERVICE_CHECK_TTL=60s"], false));
        assert!(!relayed(&["SERVICE_CHECK_TTL=60s"], true));
        assert!(!relayed(&[], false));
    }

    #[test]
    fn diff_registers_missing_and_removes_only_own_stale() {
        let v = view(&[], &[(80, "tcp", 32000), (81, "tcp", 32001)], false);
        let (desired, _) = registrations(&v, "n1", "10.0.0.5");
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
        let reg = &registrations(&view(&[], &[(80, "tcp", 1)], false), "n", "h").0[0];
        let json =
            serde_json::to_value(berth_registry::dto::AgentServiceRegistration::from(reg)).unwrap();
        assert_eq!(json["ID"], "n:shop-web-1:80");
        assert_eq!(json["Check"]["TCP"], "h:1");
    }

    #[test]
    fn reserved_names() {
        let cases = [
            ("berth-worker", true),
            ("berth-master", true),
            ("Berth-Worker", true),
            (" berth-worker ", true),
            ("berth-anything", true),
            ("consul", true),
            ("CONSUL", true),
            ("consul-web", false),
            ("berthworker", false),
            ("berth_worker", false),
            ("web.berth-worker", false),
            ("web.shop", false),
        ];
        for (name, want) in cases {
            assert_eq!(reserved_name(name), want, "{name:?}");
        }
        for key in [
            "instances",
            "capacity",
            "version",
            "berth_instance",
            "berth_x",
            "consul-x",
        ] {
            assert!(reserved_meta(key), "{key}");
        }
        for key in ["region", "tier", "app_version", "berth"] {
            assert!(!reserved_meta(key), "{key}");
        }
    }

    #[test]
    fn check_urls_stay_on_the_container() {
        // (advertise, host port, SERVICE_CHECK_HTTP, Ok(url) or Err(reason starts with))
        let cases: &[(&str, u16, &str, Result<&str, &str>)] = &[
            (
                "10.0.0.5",
                32000,
                "/health",
                Ok("http://10.0.0.5:32000/health"),
            ),
            ("10.0.0.5", 32000, "/h?x=1&y=@", Err("must not contain @")),
            (
                "10.0.0.5",
                32000,
                "/h?x=1",
                Ok("http://10.0.0.5:32000/h?x=1"),
            ),
            ("10.0.0.5", 32000, "/", Ok("http://10.0.0.5:32000/")),
            (
                "10.0.0.5",
                32000,
                "/a/../../b",
                Ok("http://10.0.0.5:32000/b"),
            ),
            (
                "10.0.0.5",
                32000,
                "/%2F%2Fevil",
                Ok("http://10.0.0.5:32000/%2F%2Fevil"),
            ),
            ("10.0.0.5", 80, "/h", Ok("http://10.0.0.5/h")),
            ("fd00::1", 32000, "/h", Ok("http://[fd00::1]:32000/h")),
            // The audit's reproduction: user info turns the container's address into a user name.
            (
                "10.0.0.5",
                32000,
                "@127.0.0.1:8500/v1/kv/secret?raw",
                Err("must be a path starting with /"),
            ),
            (
                "10.0.0.5",
                32000,
                "/@127.0.0.1:8500/x",
                Err("must not contain @"),
            ),
            (
                "10.0.0.5",
                32000,
                ":8500/x",
                Err("must be a path starting with /"),
            ),
            (
                "10.0.0.5",
                32000,
                "//127.0.0.1:8500/x",
                Err("must not start with //"),
            ),
            (
                "10.0.0.5",
                32000,
                "/\\127.0.0.1:8500/x",
                Err("must not contain a backslash"),
            ),
            (
                "10.0.0.5",
                32000,
                "http://127.0.0.1:8500/",
                Err("must be a path starting with /"),
            ),
            ("10.0.0.5", 32000, "/a b", Err("must not contain spaces")),
            ("10.0.0.5", 32000, "/a\tb", Err("must not contain spaces")),
            ("10.0.0.5", 32000, "/a\n/b", Err("must not contain spaces")),
            ("10.0.0.5", 32000, "/a\u{0}", Err("must not contain spaces")),
            ("10.0.0.5", 32000, "", Err("must be a path starting with /")),
        ];
        for (advertise, port, path, want) in cases {
            let got = check_url(advertise, *port, path);
            match (want, &got) {
                (Ok(url), Ok(got)) => assert_eq!(got, url, "{path:?}"),
                (Err(reason), Err(got)) => assert!(got.starts_with(reason), "{path:?}: {got}"),
                _ => panic!("{path:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// `field|reason` of every refusal of a compose file whose `web` service has `env`.
    fn compose_refusals(env: &str, env_file: Option<&str>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = format!("services:\n  web:\n    image: x\n    environment:\n{env}\n");
        if let Some(text) = env_file {
            std::fs::write(dir.path().join("web.env"), text).unwrap();
            yaml.push_str("    env_file: web.env\n");
        }
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        let project = crate::compose::load(dir.path(), "p").unwrap();
        match check_project(&project) {
            Ok(()) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|e| {
                    assert_eq!(e.service.as_deref(), Some("web"));
                    format!("{}|{}", e.field, e.reason)
                })
                .collect(),
        }
    }

    #[test]
    fn compose_environment_refusals() {
        let e = "services.web.environment.";
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            ("      SERVICE_NAME: shop", None, &[]),
            ("      SERVICE_NAME: web.other", None, &[]),
            (
                "      SERVICE_NAME: berth-worker",
                None,
                &[
                    "services.web.environment.SERVICE_NAME|SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul)",
                ],
            ),
            (
                "      SERVICE_NAME: Berth-Master",
                None,
                &["SERVICE_NAME|SERVICE_NAME sets the reserved service name \"Berth-Master\""],
            ),
            (
                "      SERVICE_8080_NAME: consul",
                None,
                &["SERVICE_8080_NAME|SERVICE_8080_NAME sets the reserved"],
            ),
            ("      SERVICE_NAME: \"\"", None, &[]),
            ("      OTHER_NAME: berth-worker", None, &[]),
            ("      SERVICE_REGION: eu", None, &[]),
            (
                "      SERVICE_INSTANCES: \"0\"\n      SERVICE_CAPACITY: \"1000\"\n      SERVICE_VERSION: 0.1.0",
                None,
                &[
                    "SERVICE_CAPACITY|SERVICE_CAPACITY sets meta \"capacity\", which berth sets itself",
                    "SERVICE_INSTANCES|SERVICE_INSTANCES sets meta \"instances\"",
                    "SERVICE_VERSION|SERVICE_VERSION sets meta \"version\"",
                ],
            ),
            (
                "      SERVICE_80_BERTH_INSTANCE: other",
                None,
                &[
                    "SERVICE_80_BERTH_INSTANCE|SERVICE_80_BERTH_INSTANCE sets meta \"berth_instance\"",
                ],
            ),
            ("      SERVICE_CHECK_HTTP: /healthz", None, &[]),
            (
                "      SERVICE_CHECK_HTTP: \"@127.0.0.1:8500/v1/kv/x?raw\"",
                None,
                &["SERVICE_CHECK_HTTP|SERVICE_CHECK_HTTP must be a path starting with /"],
            ),
            (
                "      SERVICE_80_CHECK_HTTP: //evil/x",
                None,
                &["SERVICE_80_CHECK_HTTP|SERVICE_80_CHECK_HTTP must not start with //"],
            ),
            ("      SERVICE_CHECK_TCP: \"10.0.0.1:22\"", None, &[]),
            (
                "      SERVICE_CHECK_SCRIPT: cat /etc/passwd",
                None,
                &["SERVICE_CHECK_SCRIPT|SERVICE_CHECK_SCRIPT is not supported"],
            ),
            (
                "      SERVICE_CHECK_INTERVAL: 5s\n      SERVICE_CHECK_TIMEOUT: 1s\n      SERVICE_CHECK_TTL: 1m",
                None,
                &[],
            ),
            (
                "      SERVICE_CHECK_INTERVAL: soon",
                None,
                &["SERVICE_CHECK_INTERVAL|SERVICE_CHECK_INTERVAL must be a positive duration"],
            ),
            (
                "      SERVICE_CHECK_TTL: \"0\"",
                None,
                &["SERVICE_CHECK_TTL|SERVICE_CHECK_TTL must be a positive duration"],
            ),
            (
                "      SERVICE_CHECK_DEREGISTER_AFTER: -1m",
                None,
                &[
                    "SERVICE_CHECK_DEREGISTER_AFTER|SERVICE_CHECK_DEREGISTER_AFTER must be a duration",
                ],
            ),
            // env_file entries are part of the service's environment.
            (
                "      A: b",
                Some("SERVICE_NAME=berth-worker\n"),
                &["SERVICE_NAME|SERVICE_NAME sets the reserved"],
            ),
        ];
        for (env, env_file, want) in cases {
            let got = compose_refusals(env, *env_file);
            assert_eq!(got.len(), want.len(), "{env}: {got:?}");
            for (got, want) in got.iter().zip(want.iter()) {
                let want = if want.starts_with("services.") {
                    (*want).to_owned()
                } else {
                    format!("{e}{want}")
                };
                assert!(got.starts_with(&want), "{env}\nwant {want}\ngot  {got}");
            }
        }
    }

    #[test]
    fn runtime_refusals_skip_or_drop() {
        struct Case {
            env: &'static [&'static str],
            ports: &'static [(u16, &'static str, u16)],
            /// (name, meta keys besides berth's) of each registration.
            want: &'static [(&'static str, &'static [&'static str])],
            /// Each refusal line, from its variable on.
            refused: &'static [&'static str],
        }
        let cases = [
            Case {
                env: &["SERVICE_NAME=berth-worker", "SERVICE_CHECK_HTTP=/h"],
                ports: &[(8833, "tcp", 32000)],
                want: &[],
                refused: &[
                    "SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul); port 8833 is not registered",
                ],
            },
            Case {
                env: &["SERVICE_NAME=consul", "SERVICE_81_NAME=admin"],
                ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
                want: &[("admin", &[])],
                refused: &[
                    "SERVICE_NAME sets the reserved service name \"consul\" (consul and names starting with berth- belong to berth and Consul); port 80 is not registered",
                ],
            },
            Case {
                env: &["SERVICE_NAME=Berth-Master", "SERVICE_80_NAME=web"],
                ports: &[(80, "tcp", 32000)],
                want: &[("web", &[])],
                refused: &[],
            },
            Case {
                env: &["SERVICE_CHECK_HTTP=@127.0.0.1:8500/v1/kv/secret?raw"],
                ports: &[(80, "tcp", 32000)],
                want: &[],
                refused: &[
                    "SERVICE_CHECK_HTTP must be a path starting with /; port 80 is not registered",
                ],
            },
            Case {
                env: &["SERVICE_CHECK_HTTP=/\\evil", "SERVICE_81_CHECK_HTTP=/ok"],
                ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
                want: &[("web.shop-81", &[])],
                refused: &[
                    "SERVICE_CHECK_HTTP must not contain a backslash; port 80 is not registered",
                ],
            },
            Case {
                env: &[
                    "SERVICE_INSTANCES=0",
                    "SERVICE_CAPACITY=1000",
                    "SERVICE_80_VERSION=9",
                    "SERVICE_BERTH_INSTANCE=other",
                    "SERVICE_BERTH_NODE=n9",
                    "SERVICE_REGION=eu",
                ],
                ports: &[(80, "tcp", 32000)],
                want: &[("web.shop", &["region"])],
                refused: &[
                    "SERVICE_80_VERSION sets meta \"version\", which berth sets itself; ignored",
                    "SERVICE_BERTH_INSTANCE sets meta \"berth_instance\", which berth sets itself; ignored",
                    "SERVICE_BERTH_NODE sets meta \"berth_node\", which berth sets itself; ignored",
                    "SERVICE_CAPACITY sets meta \"capacity\", which berth sets itself; ignored",
                    "SERVICE_INSTANCES sets meta \"instances\", which berth sets itself; ignored",
                ],
            },
            Case {
                env: &["SERVICE_CHECK_SCRIPT=cat /etc/passwd"],
                ports: &[(80, "tcp", 32000)],
                want: &[("web.shop", &[])],
                refused: &[
                    "SERVICE_CHECK_SCRIPT is not supported: berth runs HTTP, TCP and TTL checks (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP, SERVICE_CHECK_TTL); ignored",
                ],
            },
            Case {
                env: &["SERVICE_CHECK_INTERVAL=0"],
                ports: &[(80, "tcp", 32000)],
                want: &[],
                refused: &[
                    "SERVICE_CHECK_INTERVAL must be a positive duration such as 10s or 1m; port 80 is not registered",
                ],
            },
            // A skipped port gives its reason, not also the meta it would have dropped.
            Case {
                env: &["SERVICE_NAME=berth-worker", "SERVICE_INSTANCES=0"],
                ports: &[(80, "tcp", 32000)],
                want: &[],
                refused: &[
                    "SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul); port 80 is not registered",
                ],
            },
            // A refused variable of an ignored port says nothing.
            Case {
                env: &["SERVICE_NAME=berth-worker", "SERVICE_IGNORE=1"],
                ports: &[(80, "tcp", 32000)],
                want: &[],
                refused: &[],
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let (regs, refused) =
                registrations(&view(case.env, case.ports, false), "n1", "10.0.0.5");
            let got: Vec<(String, Vec<String>)> = regs
                .iter()
                .map(|r| {
                    assert_eq!(r.meta[META_BERTH_INSTANCE], "shop", "case {i}");
                    assert_eq!(r.meta[META_BERTH_NODE], "n1", "case {i}");
                    assert_eq!(r.meta[META_BERTH_CONTAINER], "shop-web-1", "case {i}");
                    let own = r
                        .meta
                        .keys()
                        .filter(|k| !k.starts_with("berth_"))
                        .cloned()
                        .collect();
                    (r.name.clone(), own)
                })
                .collect();
            let want: Vec<(String, Vec<String>)> = case
                .want
                .iter()
                .map(|(n, m)| ((*n).to_owned(), m.iter().map(|k| (*k).to_owned()).collect()))
                .collect();
            assert_eq!(got, want, "case {i}");
            let want: Vec<String> = case
                .refused
                .iter()
                .map(|l| format!("shop-web-1: {l}"))
                .collect();
            assert_eq!(refused.into_iter().collect::<Vec<_>>(), want, "case {i}");
        }
    }

    #[test]
    fn a_container_without_a_valid_instance_registers_nothing() {
        let mut v = view(&[], &[(80, "tcp", 32000)], false);
        v.instance = String::new();
        let (regs, refused) = registrations(&v, "n1", "10.0.0.5");
        assert!(regs.is_empty());
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused
                .first()
                .unwrap()
                .starts_with("shop-web-1: not registered: invalid instance")
        );
    }
}
