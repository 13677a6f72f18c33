//! A stack's status as Docker and the record tell it (`status`), and the list of every stack
//! held here.

use super::*;

impl Stacks {
    pub async fn status(&self, id: &ValidName) -> Result<StackStatus, StackError> {
        let record = self.read_record(id)?;
        let containers = self.every_container_of(id).await?;
        let Some(record) = record.or_else(|| {
            (!containers.is_empty()).then(|| Record {
                id: id.clone(),
                state: StackState::Stopped,
                commit: None,
                error: None,
                ports: BTreeMap::new(),
                releases: Vec::new(),
                running: None,
                rollout: None,
            })
        }) else {
            return Err(StackError::NotFound(id.to_string()));
        };
        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        let mut containers = containers;
        containers.sort_by_key(|c| c.names.clone());
        for c in &containers {
            let labels = c.labels.clone().unwrap_or_default();
            // A forwarder's ports are its service's endpoints; it is no service of its own.
            let forwards = labels.get(forward::LABEL_FORWARD).cloned();
            let service = forwards
                .clone()
                .or_else(|| labels.get(plan::LABEL_SERVICE).cloned())
                .unwrap_or_default();
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned());
            let mut state = c
                .state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into());
            // After a stop every container has exited; only a running stack has completed ones.
            if state == "exited"
                && !matches!(record.state, StackState::Stopped | StackState::Stopping)
                && let Some(cid) = &c.id
                && self.completed_container(cid).await
            {
                state = "completed".to_owned();
            }
            let health = c
                .health
                .as_ref()
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| s != "none" && !s.is_empty())
                .or_else(|| health_from_status(c.status.as_deref().unwrap_or_default()));
            if state == "running" {
                for p in c.ports.clone().unwrap_or_default() {
                    if let Some(public) = p.public_port {
                        // IPv4 and IPv6 bindings are listed separately; keep one.
                        let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
                        let e = Endpoint {
                            service: service.clone(),
                            container_port: p.private_port,
                            protocol: proto,
                            host: self.settings.advertise.clone(),
                            host_port: public,
                        };
                        if !endpoints.contains(&e) {
                            endpoints.push(e);
                        }
                    }
                }
            }
            if forwards.is_some() {
                continue;
            }
            services.push(ServiceStatus {
                name: service,
                container: name,
                state,
                health,
            });
        }
        endpoints
            .sort_by(|a, b| (&a.service, a.container_port).cmp(&(&b.service, b.container_port)));
        let health = if record.state == StackState::Running {
            self.verdict(id)
        } else {
            Vec::new()
        };
        let state = if health.iter().any(|s| !s.state.is_ok()) {
            StackState::Degraded
        } else {
            record.state
        };
        let running_commit = matches!(state, StackState::Running | StackState::Degraded)
            .then(|| Self::running_release(&record, &containers))
            .flatten();
        Ok(StackStatus {
            id: id.clone(),
            state,
            health,
            running_commit,
            rolling: record.rollout.is_some(),
            commit: record.commit,
            project_name: compose_project_name(id),
            services,
            endpoints,
            error: record.error,
            kept: record.releases,
        })
    }

    /// Whether an exited container is a one-shot that ran to success: exit code 0 under a
    /// restart policy that leaves it alone after success (Compose's `completed`).
    async fn completed_container(&self, cid: &str) -> bool {
        let Ok(c) = self.docker.inspect_container(cid, None).await else {
            return false;
        };
        let policy = c
            .host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name);
        c.state.and_then(|s| s.exit_code) == Some(0)
            && matches!(
                policy,
                None | Some(
                    RestartPolicyNameEnum::EMPTY
                        | RestartPolicyNameEnum::NO
                        | RestartPolicyNameEnum::ON_FAILURE
                )
            )
    }

    pub async fn list(&self) -> Result<Vec<StackStatus>, StackError> {
        let mut out = Vec::new();
        for id in self.ids().await? {
            match self.status(&id).await {
                Ok(s) => out.push(s),
                Err(StackError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Older engines (API < 1.52) report health only inside the status text: `Up 3s (healthy)`.
fn health_from_status(status: &str) -> Option<String> {
    if status.contains("(healthy)") {
        Some("healthy".into())
    } else if status.contains("(unhealthy)") {
        Some("unhealthy".into())
    } else if status.contains("(health: starting)") {
        Some("starting".into())
    } else {
        None
    }
}
