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
mod tests {
    use super::super::view::sample as view;
    use super::*;

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
            // No published port: registered without one, no check to dial (the state check
            // the registrator adds follows the container).
            Case {
                env: &[],
                ports: &[],
                hc: false,
                want: &[("n1:shop-web-1", "web.shop", 0, "none")],
            },
            Case {
                env: &[],
                ports: &[],
                hc: true,
                want: &[("n1:shop-web-1", "web.shop", 0, "ttl")],
            },
            Case {
                env: &["SERVICE_NAME=jobs", "SERVICE_CHECK_TTL=30s"],
                ports: &[],
                hc: false,
                want: &[("n1:shop-web-1", "jobs", 0, "ttl")],
            },
            Case {
                env: &["SERVICE_IGNORE=1"],
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
        let sent = berth_consul::types::AgentServiceRegistration::from(r);
        assert_eq!(sent.check.unwrap().disable_redirects, Some(true));
    }

    #[test]
    fn labels_count_and_the_environment_wins() {
        let mut v = view(
            &[
                "SERVICE_NAME=from-env",
                "SERVICE_REGION=",
                "SERVICE_TIER=env",
            ],
            &[(80, "tcp", 32000)],
            false,
        );
        v.service_labels = [
            ("SERVICE_NAME", "from-label"),
            ("SERVICE_TAGS", "l1,l2"),
            ("SERVICE_REGION", "label"),
            ("SERVICE_TIER", "label"),
            ("SERVICE_80_CHECK_HTTP", "/ready"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = &registrations(&v, "n1", "10.0.0.5").0[0];
        assert_eq!(r.name, "from-env");
        assert_eq!(r.tags, ["l1", "l2"]);
        // An empty environment value is unset, so the label applies.
        assert_eq!(r.meta["region"], "label");
        assert_eq!(r.meta["tier"], "env");
        assert_eq!(
            r.check.as_ref().unwrap().http.as_deref(),
            Some("http://10.0.0.5:32000/ready")
        );
        v.service_labels
            .insert("SERVICE_IGNORE".to_owned(), "true".to_owned());
        assert!(registrations(&v, "n1", "10.0.0.5").0.is_empty());
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
    fn a_portless_container_says_why_a_port_check_is_ignored() {
        let v = view(
            &["SERVICE_CHECK_HTTP=/h", "SERVICE_CHECK_TCP=1"],
            &[],
            false,
        );
        let (regs, refused) = registrations(&v, "n1", "10.0.0.5");
        assert_eq!(regs.len(), 1);
        assert_eq!((regs[0].port, regs[0].check.is_none()), (0, true));
        assert_eq!(
            refused.into_iter().collect::<Vec<_>>(),
            [
                "shop-web-1: SERVICE_CHECK_HTTP needs a published port to check; ignored",
                "shop-web-1: SERVICE_CHECK_TCP needs a published port to check; ignored",
            ]
        );
    }

    #[test]
    fn the_state_check_follows_the_verdict() {
        let health = |state: ServiceState| ServiceHealth {
            name: "web".into(),
            state,
            restarts: 4,
            exit_code: Some(1),
            probe_output: Some("probe: down".into()),
            last_log_lines: (1..=7)
                .map(|n| format!("line {n}"))
                .chain(["FATAL: no db".into()])
                .collect(),
        };
        let got = |running: bool, state: Option<ServiceState>| {
            let h = state.map(health);
            state_check(running, h.as_ref()).map(|c| (c.status, c.output))
        };
        let passing = Some(("passing".to_owned(), "running".to_owned()));
        assert_eq!(got(true, None), passing);
        assert_eq!(got(true, Some(ServiceState::Running)), passing);
        assert_eq!(got(false, None), None);
        assert_eq!(got(false, Some(ServiceState::Running)), None);
        assert_eq!(got(false, Some(ServiceState::Completed)), None);
        assert_eq!(
            got(true, Some(ServiceState::Starting)).map(|c| c.0),
            Some("warning".to_owned())
        );
        for (running, state) in [
            (false, ServiceState::Restarting),
            (true, ServiceState::Restarting),
            (false, ServiceState::Exited),
            (true, ServiceState::Unhealthy),
        ] {
            let (status, output) = got(running, Some(state)).expect("registered");
            assert_eq!(status, "critical", "{state:?}");
            assert_eq!(
                output,
                format!(
                    "{} (4 restarts, exit code 1)\nprobe: probe: down\nlast log lines:\nline 4\nline 5\nline 6\nline 7\nFATAL: no db",
                    state.as_str()
                )
            );
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
