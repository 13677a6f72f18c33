//! The container spec: what `create_container` gets for one service (environment with the
//! stack's public addresses, ports, mounts, restart policy, healthcheck, limits, networks) and
//! the config hash that tells start whether an existing container still matches.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use serde::Serialize;

use super::Stacks;
use super::ports::port_key;
use crate::compose::plan::{self, Owner};
use crate::compose::{MountSource, Project, Restart, Service};
use crate::policy::Limits;

/// The variables every container of the stack gets: `BERTH_ADVERTISE_HOST` and one
/// `BERTH_PUBLIC_ADDR_<SERVICE>_<port>` per published port of every service.
pub(super) fn public_env(
    project: &Project,
    ports: &BTreeMap<String, u16>,
    advertise: &str,
) -> Vec<String> {
    let mut public_env = Vec::new();
    public_env.push(format!("BERTH_ADVERTISE_HOST={advertise}"));
    for s in &project.services {
        for p in &s.ports {
            let port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
            public_env.push(format!(
                "BERTH_PUBLIC_ADDR_{}_{}={advertise}:{port}",
                env_name(&s.name),
                p.container_port,
            ));
        }
    }
    public_env
}

impl Stacks {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn container_spec(
        &self,
        project: &Project,
        s: &Service,
        image: &str,
        image_id: &str,
        ports: &BTreeMap<String, u16>,
        public_env: &[String],
        commit: &str,
        owner: &Owner,
    ) -> (ContainerCreateBody, String) {
        let name = plan::container_name(&project.name, &s.name);
        let policy = &self.settings.policy;
        let mut env: Vec<String> = s
            .environment
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        env.extend(public_env.iter().cloned());
        let mut exposed: Vec<String> = s.expose.clone();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        // TCP ports a forwarder holds are not bound here (see forward.rs); the label says which
        // host port each one has.
        let forwarded = self.forwarded_ports(s);
        let mut held = Vec::new();
        for p in &s.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            let host_port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
            env.push(format!(
                "BERTH_PUBLIC_ADDR_{}={}:{host_port}",
                p.container_port, self.settings.advertise
            ));
            exposed.push(key.clone());
            if p.protocol == "tcp" && forwarded.contains(&p.container_port) {
                held.push(format!("{key}={host_port}"));
                continue;
            }
            bindings
                .entry(key)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    // The worker's choice, like the host port: never the file's.
                    host_ip: Some(self.settings.publish_address.clone()),
                    host_port: Some(host_port.to_string()),
                });
        }
        exposed.sort();
        exposed.dedup();
        held.sort();
        held.dedup();
        let mut binds = Vec::new();
        let mut anonymous = Vec::new();
        for m in &s.volumes {
            let mode = if m.read_only { ":ro" } else { "" };
            match &m.source {
                // The path the policy resolved and admitted, rechecked right before create.
                MountSource::Bind(src) => {
                    binds.push(format!("{}:{}{mode}", src.display(), m.target))
                }
                MountSource::Named(v) => binds.push(format!(
                    "{}:{}{mode}",
                    plan::volume_name(&project.name, v),
                    m.target
                )),
                MountSource::Anonymous => anonymous.push(m.target.clone()),
            }
        }
        let restart = match &s.restart {
            Restart::No => RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            Restart::Always => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            },
            Restart::UnlessStopped => RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            },
            Restart::OnFailure(n) => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: *n,
            },
        };
        let healthcheck = s.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: h.interval.map(|d| d.as_nanos() as i64),
            timeout: h.timeout.map(|d| d.as_nanos() as i64),
            retries: h.retries,
            start_period: h.start_period.map(|d| d.as_nanos() as i64),
            start_interval: None,
        });
        let user = policy.user_for(s.user.as_deref());
        let network_mode = match s.network_mode.as_deref() {
            Some("none") => Some("none".to_owned()),
            _ => s
                .networks
                .keys()
                .next()
                .map(|n| plan::network_name(&project.name, n)),
        };
        let networking_config = s
            .networks
            .iter()
            .next()
            .map(|(net, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    plan::network_name(&project.name, net),
                    endpoint(s, &name, aliases),
                )])),
            });
        let r = &s.resources;
        let limits = policy.limits(r);
        let host_config = HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            restart_policy: Some(restart),
            ipc_mode: s.ipc.clone(),
            network_mode,
            extra_hosts: (!s.extra_hosts.is_empty()).then(|| s.extra_hosts.clone()),
            cap_add: (!s.cap_add.is_empty()).then(|| s.cap_add.clone()),
            cap_drop: (!s.cap_drop.is_empty()).then(|| s.cap_drop.clone()),
            memory: limits.memory,
            memory_swap: r.memswap,
            memory_reservation: r.memory_reservation,
            nano_cpus: limits.nano_cpus,
            cpu_shares: r.cpu_shares,
            cpuset_cpus: r.cpuset.clone(),
            pids_limit: limits.pids,
            shm_size: r.shm_size,
            ulimits: (!r.ulimits.is_empty()).then(|| {
                r.ulimits
                    .iter()
                    .map(|(name, (soft, hard))| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*soft),
                        hard: Some(*hard),
                    })
                    .collect()
            }),
            init: s.init,
            tmpfs: (!r.tmpfs.is_empty()).then(|| {
                r.tmpfs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..Default::default()
        };
        #[derive(Serialize)]
        struct Extra<'a> {
            image_id: &'a str,
            env: &'a [String],
            user: &'a Option<String>,
            limits: Limits,
            /// Ports a forwarder holds (so turning forwarders on or off recreates).
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            forwarded: &'a [String],
        }
        let hash = plan::config_hash(
            s,
            &Extra {
                image_id,
                env: &env,
                user: &user,
                limits,
                forwarded: &held,
            },
        );
        let mut labels = plan::container_labels(project, s, &hash, owner, commit);
        if !held.is_empty() {
            labels.insert(super::forward::LABEL_HOST_PORTS.to_owned(), held.join(","));
        }
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            env: Some(env),
            cmd: s.command.clone(),
            entrypoint: s.entrypoint.clone(),
            working_dir: s.working_dir.clone(),
            user,
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            volumes: (!anonymous.is_empty()).then_some(anonymous),
            stop_signal: s.stop_signal.clone(),
            stop_timeout: s.stop_grace_period.map(|d| grace_seconds(d) as i64),
            hostname: None,
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        (body, hash)
    }
}

/// Docker's stop timeout for a grace period: whole seconds, cut down as Compose does.
pub(super) fn grace_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The container's endpoint on one network: reachable there by its service name, its container
/// name, its `container_name` and the network's aliases.
pub(super) fn endpoint(s: &Service, container: &str, aliases: &[String]) -> EndpointSettings {
    let mut all = vec![s.name.clone(), container.to_owned()];
    if let Some(cn) = &s.container_name {
        all.push(cn.clone());
    }
    all.extend(aliases.iter().cloned());
    all.dedup();
    EndpointSettings {
        aliases: Some(all),
        ..Default::default()
    }
}

/// `web-api.v2` -> `WEB_API_V2`.
fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
