//! Readiness: what a start waits for before it answers, and the errors when that never comes.
//! `wait_ready` is the wait itself: every service that is not a one-shot dependency runs, is
//! healthy where it has a healthcheck, and its published TCP ports accept connections
//! (`wait_ports_accept`); `wait_condition` also serves the `depends_on` waits in between. A
//! one-shot service that exits 0 (not restarted) is completed, never a failure; a service that
//! exits otherwise or turns unhealthy fails at once with its exit code and last log lines, and
//! the deadline ends every wait.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::models::HealthStatusEnum;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;

use super::ports::port_key;
use super::{StackError, Stacks, failed};
use crate::compose::plan;
use crate::compose::{Condition, Project, Restart, Service};
use crate::logbuf::LogBuf;

impl Stacks {
    /// Waits until the started stack is ready: each service running (except those another
    /// waits on to complete), healthy when `healthcheck(service)` says Docker runs a check, and
    /// accepting on its published TCP ports.
    pub(super) async fn wait_ready(
        &self,
        project: &Project,
        healthcheck: impl Fn(&str) -> bool,
        ports: &BTreeMap<String, u16>,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let one_shot: Vec<&str> = project
            .services
            .iter()
            .flat_map(|s| s.depends_on.iter())
            .filter(|(_, c)| **c == Condition::CompletedSuccessfully)
            .map(|(d, _)| d.as_str())
            .collect();
        for s in &project.services {
            if one_shot.contains(&s.name.as_str()) {
                continue;
            }
            self.wait_condition(project, &s.name, Condition::Started, deadline, log)
                .await?;
            if self.completed(project, &s.name).await? {
                log.line(&format!("service {} completed", s.name));
                continue;
            }
            if healthcheck(&s.name) {
                self.wait_condition(project, &s.name, Condition::Healthy, deadline, log)
                    .await?;
            }
            self.wait_ports_accept(project, s, ports, deadline).await?;
        }
        Ok(())
    }

    /// Waits until each published TCP port of `s` accepts connections, on the host port and on
    /// the container's own address.
    async fn wait_ports_accept(
        &self,
        project: &Project,
        s: &Service,
        ports: &BTreeMap<String, u16>,
        deadline: Instant,
    ) -> Result<(), StackError> {
        for p in s.ports.iter().filter(|p| p.protocol == "tcp") {
            let port = ports[&port_key(&s.name, p.container_port, &p.protocol)];
            let ip = match self.settings.publish_address.as_str() {
                "0.0.0.0" => "127.0.0.1",
                "::" => "::1",
                ip => ip,
            };
            let addr: SocketAddr = format!("{ip}:{port}")
                .parse()
                .or_else(|_| format!("[{ip}]:{port}").parse())
                .map_err(|_| failed("readiness", format!("bad host ip {ip:?}")))?;
            loop {
                // Docker's userland proxy accepts on the host port before the app listens, so
                // the container's own address must accept too.
                let Some(inner) = self.running_ip(project, &s.name).await? else {
                    // A one-shot that exited 0 meanwhile is done, not failed.
                    return Ok(());
                };
                let inner_ok = match inner {
                    Some(ip) => tokio::net::TcpStream::connect((ip, p.container_port))
                        .await
                        .is_ok(),
                    None => true,
                };
                if inner_ok && tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(self
                        .timeout_error(
                            project,
                            &s.name,
                            &format!("port {} ({addr}) accepting connections", p.container_port),
                        )
                        .await);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Waits until `service` meets `cond`; fails early when it never can.
    pub(super) async fn wait_condition(
        &self,
        project: &Project,
        service: &str,
        cond: Condition,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let name = plan::container_name(&project.name, service);
        loop {
            let c = self.docker.inspect_container(&name, None).await?;
            let state = c.state.unwrap_or_default();
            let running = state.running == Some(true);
            let exited = !running
                && state
                    .finished_at
                    .as_deref()
                    .is_some_and(|f| !f.starts_with("0001"));
            let health = state.health.and_then(|h| h.status);
            match cond {
                Condition::Started if running => return Ok(()),
                Condition::Healthy if health == Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Condition::Healthy if health == Some(HealthStatusEnum::UNHEALTHY) => {
                    return Err(self.failure(project, service, "became unhealthy").await);
                }
                Condition::CompletedSuccessfully if exited && state.exit_code == Some(0) => {
                    return Ok(());
                }
                Condition::CompletedSuccessfully if exited => {
                    return Err(self
                        .failure(
                            project,
                            service,
                            &format!("exited with code {}", state.exit_code.unwrap_or(-1)),
                        )
                        .await);
                }
                // A one-shot that already ran to success was started (Compose semantics).
                Condition::Started if exited && completes(project, service, state.exit_code) => {
                    return Ok(());
                }
                Condition::Started | Condition::Healthy if exited => {
                    return Err(self
                        .failure(
                            project,
                            service,
                            &format!("exited with code {}", state.exit_code.unwrap_or(-1)),
                        )
                        .await);
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let what = match cond {
                    Condition::Started => "running",
                    Condition::Healthy => "healthy",
                    Condition::CompletedSuccessfully => "completed",
                };
                log.line(&format!("timed out waiting for {service} to be {what}"));
                return Err(self.timeout_error(project, service, what).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether `service` ran to completion: its container exited 0 and is not restarted.
    async fn completed(&self, project: &Project, service: &str) -> Result<bool, StackError> {
        let name = plan::container_name(&project.name, service);
        let state = self
            .docker
            .inspect_container(&name, None)
            .await?
            .state
            .unwrap_or_default();
        Ok(state.running != Some(true)
            && state.restarting != Some(true)
            && state
                .finished_at
                .as_deref()
                .is_some_and(|f| !f.starts_with("0001"))
            && completes(project, service, state.exit_code))
    }

    /// The container's address on its first network (`Some(None)` without one), `None` when it
    /// completed (exited 0, not restarted), failing if it stopped otherwise.
    async fn running_ip(
        &self,
        project: &Project,
        service: &str,
    ) -> Result<Option<Option<std::net::IpAddr>>, StackError> {
        let name = plan::container_name(&project.name, service);
        let c = self.docker.inspect_container(&name, None).await?;
        let state = c.state.unwrap_or_default();
        if state.running != Some(true) {
            if state.restarting != Some(true) && completes(project, service, state.exit_code) {
                return Ok(None);
            }
            let what = match state.exit_code {
                Some(code) => format!("stopped running (exited with code {code})"),
                None => "stopped running".to_owned(),
            };
            return Err(self.failure(project, service, &what).await);
        }
        Ok(Some(c.network_settings.and_then(|n| n.networks).and_then(
            |nets| {
                nets.values()
                    .find_map(|e| e.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            },
        )))
    }

    async fn last_lines(&self, project: &Project, service: &str) -> String {
        let name = plan::container_name(&project.name, service);
        let mut out = String::new();
        let mut stream = self.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail("20")
                    .build(),
            ),
        );
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    async fn failure(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        failed(
            &format!("start of service {service}"),
            format!("service {service} {what}; last log lines:\n{lines}"),
        )
    }

    async fn timeout_error(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        StackError::Timeout(format!(
            "timed out waiting for service {service} to be {what}; last log lines:\n{lines}"
        ))
    }
}

/// Whether an exit with `code` ends `service` for good and successfully: code 0 under a restart
/// policy that does not restart it after success (`no`, `on-failure`), as Compose treats
/// one-shot services (seeders, migrations).
pub(super) fn completes(project: &Project, service: &str, code: Option<i64>) -> bool {
    code == Some(0)
        && project
            .service(service)
            .is_some_and(|s| one_shot_policy(&s.restart))
}

/// Whether a restart policy leaves a container that exited 0 alone.
pub(super) fn one_shot_policy(restart: &Restart) -> bool {
    matches!(restart, Restart::No | Restart::OnFailure(_))
}
