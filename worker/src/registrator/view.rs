//! The registrator's view of a container: what it needs of each berth container of this node,
//! read from Docker (name, service, instance, environment, `SERVICE_*` labels, published ports,
//! or those a forwarder holds for it, healthcheck and health, whether it runs). berth's port
//! forwarders (`*-fwd`) are not the app's and are left out.

use std::collections::BTreeMap;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;

use crate::compose::plan;
use crate::docker::label_filter;

/// What the registrator needs to know of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub service: String,
    pub instance: String,
    /// `KEY=VALUE` entries of the container's environment.
    pub env: Vec<String>,
    /// The container's `SERVICE_*` labels (from the compose file's `labels`).
    pub service_labels: BTreeMap<String, String>,
    /// (container port, protocol, host port) of each published port.
    pub ports: Vec<(u16, String, u16)>,
    pub has_healthcheck: bool,
    /// Docker's health status (`healthy`, `unhealthy`, `starting`) when there is a healthcheck.
    pub health: Option<String>,
    /// Whether the container runs (one that does not is registered only while the watcher says
    /// its service should run, see [`super::registrations::state_check`]).
    pub running: bool,
    /// When it was created (Unix seconds): the newest container of a service speaks for it.
    pub created: i64,
}

/// Whether a container of this node is one of berth's port forwarders
/// (`<project>-<service>-<n>-fwd`, labelled as such), which front a service and are not
/// registered or judged.
pub fn is_forwarder(labels: Option<&std::collections::HashMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(crate::stacks::LABEL_FORWARD))
}

/// The views of this node's berth containers, running or not.
pub async fn views(
    docker: &Docker,
    node: &str,
) -> Result<Vec<ContainerView>, bollard::errors::Error> {
    let summaries = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&label_filter(&[
                    (plan::LABEL_BERTH_MANAGED, "true"),
                    (plan::LABEL_BERTH_NODE, node),
                ]))
                .build(),
        ))
        .await?;
    let mut out = Vec::new();
    for s in summaries {
        let Some(id) = s.id else { continue };
        if is_forwarder(s.labels.as_ref()) {
            continue;
        }
        let Ok(c) = docker.inspect_container(&id, None).await else {
            continue;
        };
        let running = c.state.as_ref().and_then(|st| st.running) == Some(true);
        let config = c.config.clone().unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        // The forwarder of a service says which host ports it holds for it.
        let mut ports = labels
            .get(crate::stacks::LABEL_HOST_PORTS)
            .map(|l| crate::stacks::parse_host_ports(l))
            .unwrap_or_default();
        // Bound ports while it runs; the bindings asked for (always a host port of the
        // worker's choice) while it does not.
        let bound = if running {
            c.network_settings.as_ref().and_then(|n| n.ports.clone())
        } else {
            c.host_config.as_ref().and_then(|h| h.port_bindings.clone())
        };
        for (key, bindings) in bound.unwrap_or_default() {
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
            service_labels: labels
                .iter()
                .filter(|(k, _)| k.starts_with("SERVICE_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ports,
            has_healthcheck: config
                .healthcheck
                .as_ref()
                .and_then(|h| h.test.as_ref())
                .is_some_and(|t| t.first().map(String::as_str) != Some("NONE")),
            health,
            running,
            created: s.created.unwrap_or(0),
        });
    }
    Ok(out)
}

/// A view of container `shop-web-1` (service `web` of instance `shop`) for table tests.
#[cfg(test)]
pub(super) fn sample(env: &[&str], ports: &[(u16, &str, u16)], hc: bool) -> ContainerView {
    ContainerView {
        name: "shop-web-1".into(),
        service: "web".into(),
        instance: "shop".into(),
        env: env.iter().map(|s| (*s).to_owned()).collect(),
        service_labels: BTreeMap::new(),
        ports: ports
            .iter()
            .map(|(p, pr, h)| (*p, (*pr).to_owned(), *h))
            .collect(),
        has_healthcheck: hc,
        health: None,
        running: true,
        created: 0,
    }
}
