//! The registrator's view of a container: what it needs of each running berth container of
//! this node, read from Docker (name, service, instance, environment, `SERVICE_*` labels,
//! published ports, or those a forwarder holds for it, healthcheck and health).

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
}

/// The views of this node's running berth containers.
pub async fn views(
    docker: &Docker,
    node: &str,
) -> Result<Vec<ContainerView>, bollard::errors::Error> {
    let summaries = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(false)
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
        let Ok(c) = docker.inspect_container(&id, None).await else {
            continue;
        };
        if c.state.as_ref().and_then(|st| st.running) != Some(true) {
            continue;
        }
        let config = c.config.clone().unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        // A forwarder is no service; the container it forwards to says which host ports it
        // holds for it.
        if labels.contains_key(crate::stacks::LABEL_FORWARD) {
            continue;
        }
        let mut ports = labels
            .get(crate::stacks::LABEL_HOST_PORTS)
            .map(|l| crate::stacks::parse_host_ports(l))
            .unwrap_or_default();
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
    }
}
