//! Readiness: what a start (or a rollout) waits for before it answers, and the errors when that
//! never comes. `wait_ready` is the wait itself: every service that is not a one-shot dependency
//! runs, is healthy where it has a healthcheck, and its published TCP ports accept connections
//! (`wait_ports_accept`), the services looked at side by side; `wait_condition` also serves the
//! `depends_on` waits in between. A one-shot service that exits 0 (not restarted) is completed,
//! never a failure; a service that exits otherwise or turns unhealthy fails at once with its exit
//! code and last log lines, and the deadline ends every wait. Waits look again after a short
//! backoff (10 ms doubling to 250 ms).
//!
//! Healthy means the service's healthcheck test passed: Docker's own check, or, until Docker
//! has run its first one, the same test run by the worker in the container (`docker exec` of
//! the same command, as the container's user, within the check's timeout), as Docker would run
//! it. Docker 20.10 runs its first check only one `interval` after the start and has no
//! `start_interval`, so without that a start (and every dependent) waited a whole interval for
//! a service ready at once. After such a start Docker's health reads `starting` until its first
//! check: ready, not yet confirmed by Docker (the watcher counts `starting` as fine, not
//! `degraded`; the registrator relays it as `warning`). A failing worker run changes nothing;
//! once Docker has a result of its own (a check since the container's last start, see
//! [`docker_checked`]), its verdict alone counts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::exec::StartExecOptions;
use bollard::models::{ContainerState, ExecConfig, HealthStatusEnum};
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;

use super::ports::port_key;
use super::{StackError, Stacks, failed};
use crate::compose::plan;
use crate::compose::{Condition, Project, Restart, Service};
use crate::logbuf::LogBuf;

/// The pause between two looks at something a start waits for: 10 ms at first, doubling up to
/// 250 ms, so a container that is quick to come up is seen at once and a slow one costs few
/// requests.
#[derive(Debug)]
pub(super) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(10))
    }
}

impl Backoff {
    pub(super) async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(250));
    }
}

/// Containers (by id) whose healthcheck test passed when the worker ran it, and when: until
/// Docker's first check, a later wait on the same container counts that pass instead of running
/// the test again. A recreated container has another id; entries go once Docker has a result,
/// or after [`PROBED_FOR`].
#[derive(Debug, Default)]
pub(super) struct Probed(std::sync::Mutex<HashMap<String, Instant>>);

/// How long a worker's pass is remembered at most (longer than any sensible `interval`).
const PROBED_FOR: Duration = Duration::from_secs(600);

impl Probed {
    fn passed(&self, cid: &str) {
        let mut map = self.0.lock().expect("probed");
        map.retain(|_, at| at.elapsed() < PROBED_FOR);
        map.insert(cid.to_owned(), Instant::now());
    }

    fn has_passed(&self, cid: &str) -> bool {
        let map = self.0.lock().expect("probed");
        map.get(cid).is_some_and(|at| at.elapsed() < PROBED_FOR)
    }

    fn forget(&self, cid: &str) {
        self.0.lock().expect("probed").remove(cid);
    }
}

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
        let waits = project
            .services
            .iter()
            .filter(|s| !one_shot.contains(&s.name.as_str()))
            .map(|s| async {
                self.wait_condition(project, &s.name, Condition::Started, deadline, log)
                    .await?;
                if self.completed(project, &s.name).await? {
                    log.line(&format!("service {} completed", s.name));
                    return Ok(());
                }
                if healthcheck(&s.name) {
                    self.wait_condition(project, &s.name, Condition::Healthy, deadline, log)
                        .await?;
                }
                self.wait_ports_accept(project, s, ports, deadline).await
            });
        futures::future::try_join_all(waits).await?;
        Ok(())
    }

    /// Waits until each published TCP port of `s` accepts connections, on the host port and on
    /// the container's own address.
    pub(super) async fn wait_ports_accept(
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
            let mut pause = Backoff::default();
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
                pause.sleep().await;
            }
        }
        Ok(())
    }

    /// Waits until `service` meets `cond`; fails early when it never can. A `service_healthy`
    /// condition is met by Docker's `healthy`, or, while Docker has not run its first check yet
    /// (health `starting`, no result), by the worker's own run of the same test (see the
    /// module's doc).
    pub(super) async fn wait_condition(
        &self,
        project: &Project,
        service: &str,
        cond: Condition,
        deadline: Instant,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let name = plan::container_name(&project.name, service);
        let mut pause = Backoff::default();
        loop {
            let c = self.docker.inspect_container(&name, None).await?;
            let test = c
                .config
                .as_ref()
                .and_then(|c| c.healthcheck.as_ref())
                .and_then(|h| Some((h.test.clone()?, h.timeout)));
            let state = c.state.unwrap_or_default();
            let running = state.running == Some(true);
            let exited = !running
                && state
                    .finished_at
                    .as_deref()
                    .is_some_and(|f| !f.starts_with("0001"));
            let docker_checked = docker_checked(&state);
            // A pass counts for one run of the container: a restart keeps its id.
            let cid = format!(
                "{}@{}",
                c.id.unwrap_or_default(),
                state.started_at.as_deref().unwrap_or_default()
            );
            let health = state.health.and_then(|h| h.status);
            if docker_checked {
                self.probed.forget(&cid);
            }
            let before_docker =
                running && !docker_checked && health == Some(HealthStatusEnum::STARTING);
            match cond {
                Condition::Started if running => return Ok(()),
                Condition::Healthy if health == Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                // Until Docker's first check, the worker runs the same test itself as soon as
                // the container runs (a pass is what Docker's first check would find); once
                // Docker has a result, the wait is Docker's.
                Condition::Healthy if before_docker && self.probed.has_passed(&cid) => {
                    return Ok(());
                }
                Condition::Healthy if before_docker && let Some((test, timeout)) = &test => {
                    let timeout = timeout
                        .filter(|t| *t > 0)
                        .map_or(Duration::from_secs(30), |ns| {
                            Duration::from_nanos(ns.unsigned_abs())
                        });
                    // A slow run must not hide Docker's own result meanwhile.
                    let timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
                    let passed = tokio::select! {
                        passed = self.probe(&name, test, timeout) => passed,
                        () = self.until_docker_checks(&name) => false,
                    };
                    if passed {
                        self.probed.passed(&cid);
                        log.line(&format!(
                            "{service} passed its healthcheck (run by the worker; Docker's first check follows one interval after the start)"
                        ));
                        return Ok(());
                    }
                }
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
            pause.sleep().await;
        }
    }

    /// Returns once Docker has a health result of its own for container `name` (or it stopped
    /// running, or is gone): the wait is then Docker's.
    async fn until_docker_checks(&self, name: &str) {
        let mut pause = Backoff::default();
        loop {
            pause.sleep().await;
            let Ok(c) = self.docker.inspect_container(name, None).await else {
                return;
            };
            let state = c.state.unwrap_or_default();
            if state.running != Some(true)
                || state.health.as_ref().and_then(|h| h.status) != Some(HealthStatusEnum::STARTING)
                || docker_checked(&state)
            {
                return;
            }
        }
    }

    /// Runs a healthcheck `test` (`CMD ...` or `CMD-SHELL ...`) in container `name` the way
    /// Docker does (as the container's user, within `timeout`); true when it exits 0.
    async fn probe(&self, name: &str, test: &[String], timeout: Duration) -> bool {
        let cmd: Vec<String> = match test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            _ => return false,
        };
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    name,
                    ExecConfig {
                        cmd: Some(cmd),
                        attach_stdout: Some(false),
                        attach_stderr: Some(false),
                        ..Default::default()
                    },
                )
                .await
                .ok()?;
            self.docker
                .start_exec(
                    &exec.id,
                    Some(StartExecOptions {
                        detach: true,
                        ..Default::default()
                    }),
                )
                .await
                .ok()?;
            let mut pause = Backoff::default();
            loop {
                let e = self.docker.inspect_exec(&exec.id).await.ok()?;
                if e.running != Some(true) {
                    return e.exit_code;
                }
                pause.sleep().await;
            }
        };
        matches!(tokio::time::timeout(timeout, run).await, Ok(Some(0)))
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

    /// The app's fault: a service that stopped or turned unhealthy while the start waited,
    /// with its last log lines and (unhealthy) its probe's last output.
    async fn failure(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        let name = plan::container_name(&project.name, service);
        let probe = self
            .docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|c| c.state?.health?.log?.pop()?.output)
            .map(|o| berth_worker_api::strip_ansi(o.trim()))
            .filter(|o| !o.is_empty());
        let code = if what.contains("unhealthy") {
            berth_worker_api::ErrorCode::Unhealthy
        } else {
            berth_worker_api::ErrorCode::StartFailed
        };
        let mut err =
            super::faults::fault(code, service, format!("service {service} {what}"), &lines);
        if let StackError::App(f) = &mut err {
            f.probe_output = probe;
        }
        err
    }

    async fn timeout_error(&self, project: &Project, service: &str, what: &str) -> StackError {
        let lines = self.last_lines(project, service).await;
        StackError::Timeout(format!(
            "timed out waiting for service {service} to be {what}; last log lines:\n{lines}"
        ))
    }
}

/// Whether Docker has a health result of its own for the container's current run: a check that
/// began once the container (last) started. A stopped container keeps its earlier run's results
/// in its health log when it starts again (Docker only resets the status to `starting`), and
/// those say nothing about this run. A time that cannot be read counts as Docker's result.
fn docker_checked(state: &ContainerState) -> bool {
    let Some(log) = state.health.as_ref().and_then(|h| h.log.as_ref()) else {
        return false;
    };
    let at = |t: Option<&str>| t.and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    let started = at(state.started_at.as_deref());
    log.iter().any(|r| match (started, at(r.start.as_deref())) {
        (Some(started), Some(checked)) => checked >= started,
        _ => true,
    })
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

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerState, Health, HealthcheckResult};

    use super::docker_checked;

    fn state(started: &str, checks: &[&str]) -> ContainerState {
        ContainerState {
            started_at: Some(started.to_owned()),
            health: Some(Health {
                log: Some(
                    checks
                        .iter()
                        .map(|c| HealthcheckResult {
                            start: Some((*c).to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_checks_since_the_last_start_are_dockers_result() {
        let started = "2026-12-04T18:30:11.5Z";
        assert!(!docker_checked(&state(started, &[])));
        // The earlier run's results, kept across a stop and a start.
        assert!(!docker_checked(&state(
            started,
            &[
                "2026-12-04T18:29:50.123456789Z",
                "2026-12-04T18:30:11.499999Z"
            ]
        )));
        assert!(docker_checked(&state(
            started,
            &["2026-12-04T18:29:50Z", "2026-12-04T18:30:12.5001Z"]
        )));
        assert!(docker_checked(&state(started, &["not a time"])));
        assert!(!docker_checked(&ContainerState::default()));
    }
}
