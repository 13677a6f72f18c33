//! The pure part of the registrator: the registrations one container should have, following
//! registrator's `SERVICE_*` conventions and berth's rules ([`crate::compose::service_env`]),
//! the state check that follows the watcher's verdict on its service, and the diff a resync
//! applies to the agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_worker_api::{ServiceHealth, ServiceState, ValidName};
use reqwest::Url;

use super::view::ContainerView;
use crate::compose::service_env::{Refusal, check_path, refusal, split_key};
use crate::registry::{AgentService, Check, Registration, StateCheck};

/// Meta keys berth adds to every container registration.
pub const META_BERTH_NODE: &str = "berth_node";
pub const META_BERTH_INSTANCE: &str = "berth_instance";
pub const META_BERTH_CONTAINER: &str = "berth_container";

/// Service id of one published port: `<node>:<container>:<port>` (`:udp` appended for UDP).
pub fn service_id(node: &str, container: &str, port: u16, proto: &str) -> String {
    if proto == "udp" {
        format!("{node}:{container}:{port}:udp")
    } else {
        format!("{node}:{container}:{port}")
    }
}

/// Service id of a container that publishes no port: `<node>:<container>`.
pub fn portless_service_id(node: &str, container: &str) -> String {
    format!("{node}:{container}")
}

/// How many log lines a critical state check quotes.
const CHECK_LOG_LINES: usize = 5;

/// The state check of a container of a service the watcher judged `verdict` (`None`: not
/// judged yet, or its stack is not watched). `None` when the container is not to be registered:
/// one that does not run is registered only while the watcher says its service should
/// (restarting, exited, unhealthy), so its check can say why it does not.
pub fn state_check(running: bool, verdict: Option<&ServiceHealth>) -> Option<StateCheck> {
    let check = |status: &str, output: String| {
        Some(StateCheck {
            status: status.to_owned(),
            output,
        })
    };
    let Some(v) = verdict else {
        return running.then(|| StateCheck {
            status: "passing".to_owned(),
            output: "running".to_owned(),
        });
    };
    match v.state {
        ServiceState::Running | ServiceState::Completed | ServiceState::Missing if running => {
            check("passing", "running".to_owned())
        }
        ServiceState::Starting if running => check(
            "warning",
            "starting: its healthcheck has not passed yet".to_owned(),
        ),
        ServiceState::Restarting | ServiceState::Exited | ServiceState::Unhealthy => {
            let mut why = Vec::new();
            if v.restarts > 0 {
                why.push(format!("{} restarts", v.restarts));
            }
            if let Some(code) = v.exit_code {
                why.push(format!("exit code {code}"));
            }
            let mut output = v.state.as_str().to_owned();
            if !why.is_empty() {
                output.push_str(&format!(" ({})", why.join(", ")));
            }
            if let Some(probe) = &v.probe_output {
                output.push_str(&format!("\nprobe: {probe}"));
            }
            let from = v.last_log_lines.len().saturating_sub(CHECK_LOG_LINES);
            if from < v.last_log_lines.len() {
                output.push_str("\nlast log lines:");
                for line in &v.last_log_lines[from..] {
                    output.push_str(&format!("\n{line}"));
                }
            }
            check("critical", output)
        }
        _ => None,
    }
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

/// The `SERVICE_*` settings of a container with a value (an empty value counts as unset, as
/// with registrator): its labels, and its environment, which wins where both set one.
fn service_settings<'a>(
    env: &'a [String],
    labels: &'a BTreeMap<String, String>,
) -> BTreeMap<&'a str, &'a str> {
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(env.iter().filter_map(|e| e.split_once('=')))
        .filter(|(k, v)| k.starts_with("SERVICE_") && !v.is_empty())
        .collect()
}

/// The registrations one container should have, following registrator's `SERVICE_*`
/// conventions, read from its environment and its labels (`SERVICE_<port>_<KEY>` overrides
/// `SERVICE_<KEY>` for that port; the environment wins over a label of the same name), and one line
/// for each `SERVICE_*` variable berth refused (see [`crate::compose::service_env`] for the rules).
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
    let env = service_settings(&c.env, &c.service_labels);
    let mut ports: Vec<Option<(u16, String, u16)>> = c.ports.iter().cloned().map(Some).collect();
    ports.sort();
    ports.dedup();
    let many = ports.len() > 1;
    // A container that publishes no port is registered too, without a port: its checks follow
    // its state (berth's state check, a relayed healthcheck, or its own `SERVICE_CHECK_TTL`).
    if ports.is_empty() {
        ports.push(None);
    }
    let mut out = Vec::new();
    'ports: for entry in &ports {
        let (port, proto, host_port) = match entry {
            Some((port, proto, host_port)) => (Some(*port), proto.as_str(), *host_port),
            None => (None, "", 0),
        };
        let port_label = port.map_or_else(|| "the container".to_owned(), |p| format!("port {p}"));
        // KEY -> (variable, value) for this port: `SERVICE_<port>_KEY` wins over `SERVICE_KEY`.
        let port_text = port.map(|p| p.to_string()).unwrap_or_default();
        let mut vars: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (var, value) in &env {
            match split_key(var) {
                Some((None, key)) => {
                    vars.entry(key).or_insert((var, value));
                }
                Some((Some(p), key)) if port.is_some() && p == port_text => {
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
                        "{}: {var} {reason}; {port_label} is not registered",
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
            Some((var, n))
                if port.is_some() && var.starts_with(&format!("SERVICE_{port_text}_")) =>
            {
                (*n).to_owned()
            }
            named => {
                let base = named.map_or_else(
                    || format!("{}.{}", c.service, c.instance),
                    |(_, n)| (*n).to_owned(),
                );
                if many {
                    format!("{base}-{port_text}")
                } else {
                    base
                }
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
        let needs_port = ["CHECK_HTTP", "CHECK_TCP"]
            .iter()
            .filter_map(|k| vars.get(k))
            .map(|(var, _)| *var)
            .collect::<Vec<_>>();
        if port.is_none() {
            for var in needs_port {
                ignored.push(format!(
                    "{}: {var} needs a published port to check; ignored",
                    c.name
                ));
            }
        }
        let mut check = if let (Some((var, path)), Some(_)) = (vars.get("CHECK_HTTP"), port) {
            match check_url(advertise, host_port, path) {
                Ok(url) => Some(Check {
                    http: Some(url),
                    interval: Some(interval),
                    timeout,
                    ..Check::default()
                }),
                Err(reason) => {
                    refused.insert(format!(
                        "{}: {var} {reason}; {port_label} is not registered",
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
        } else if port.is_some()
            && (get("CHECK_TCP").is_some() || (!c.has_healthcheck && proto == "tcp"))
        {
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
            id: match port {
                Some(port) => service_id(node, &c.name, port, proto),
                None => portless_service_id(node, &c.name),
            },
            name,
            tags,
            address: advertise.to_owned(),
            port: host_port,
            meta,
            check,
            state: None,
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

#[cfg(test)]
mod tests;
