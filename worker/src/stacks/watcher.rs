//! The watcher: what each service of a running stack is really doing. A loop inspects every
//! running stack's containers every [`INTERVAL`] and at once after a Docker event on one of this
//! node's containers (`die`, `start`, `restart`, `oom`, `health_status`), judging each service
//! ([`ServiceState`]); the verdict is kept in memory and reported by `status` (a stack with a
//! service that is not as it should be is `degraded`), with the last log lines of the services
//! that are not. Changes of verdict go to the stack's operation log and to whoever follows
//! [`Stacks::watch_verdicts`] (the registrator's state checks). berth's port forwarders
//! (`*-fwd`) are not the app's and are not judged; one found not running is started again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_worker_api::{ServiceHealth, ServiceState, StackState, ValidName, strip_ansi};
use bollard::models::{ContainerInspectResponse, HealthStatusEnum, RestartPolicyNameEnum};
use bollard::query_parameters::{EventsOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Stacks;
use crate::compose::plan;

/// How often every running stack is inspected, events or not.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A service whose container restarted within this long counts as `restarting` even while it
/// runs between two crashes; once it ran this long without a restart it is `running` again.
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);
/// Log lines kept per service that is not as it should be.
const LOG_LINES: usize = 10;

/// A container's restart count, when it last grew, and its last exit code.
type Seen = (i64, Instant, Option<i64>);

/// Every watched stack's verdict by instance id, as published after each pass (`None` before
/// the first pass).
pub type Verdicts = Option<Arc<HashMap<String, Vec<ServiceHealth>>>>;

/// The watcher's memory: the verdict per stack and when each container's restart count last
/// grew.
#[derive(Debug)]
pub(super) struct Watched {
    verdicts: std::sync::Mutex<HashMap<String, Vec<ServiceHealth>>>,
    /// Per container: its restart count, when that last grew, and its last exit code (Docker
    /// resets the code to 0 once the container runs again).
    restarts: std::sync::Mutex<HashMap<String, Seen>>,
    /// The verdicts, published when they change.
    published: tokio::sync::watch::Sender<Verdicts>,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            verdicts: Default::default(),
            restarts: Default::default(),
            published: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Stacks {
    /// The watcher's last verdict on stack `id`: each service's state, empty when the stack is not
    /// running or was not inspected yet.
    pub fn verdict(&self, id: &ValidName) -> Vec<ServiceHealth> {
        self.watched
            .verdicts
            .lock()
            .expect("verdicts")
            .get(id.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// The verdicts of every watched stack, updated when one changes.
    pub fn watch_verdicts(&self) -> tokio::sync::watch::Receiver<Verdicts> {
        self.watched.published.subscribe()
    }

    /// Runs the watcher until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let events = tokio::spawn(events(self.clone(), wake.clone(), shutdown.clone()));
        loop {
            self.inspect_all().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = wake.notified() => {}
            }
        }
        let _ = events.await;
    }

    /// Inspects every running stack now and keeps the verdicts.
    pub async fn inspect_all(&self) {
        let Ok(ids) = self.ids().await else { return };
        let mut verdicts = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let running = matches!(
                self.read_record(&id),
                Ok(Some(r)) if r.state == StackState::Running
            );
            if !running {
                continue;
            }
            // An operation (a rollout, a start) is changing the stack: its verdict stands until
            // the next pass. Otherwise the lock is held through the pass, so no operation
            // starts while a forwarder is started again.
            let lock = self.lock(&id);
            let Ok(_held) = lock.try_lock() else {
                verdicts.insert(id.to_string(), self.verdict(&id));
                continue;
            };
            // One listing of the stack's containers serves both the forwarders and the app.
            let listed = self.every_container_of(&id).await.map(|all| {
                all.into_iter()
                    .partition::<Vec<_>, _>(|c| super::forward::is_forwarder(c.labels.as_ref()))
            });
            let result = match listed {
                Ok((forwarders, containers)) => {
                    self.restart_stopped_forwarders(&id, forwarders).await;
                    self.inspect_stack(&id, containers, &mut seen).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(services) => {
                    let before = self.verdict(&id);
                    if summary(&before) != summary(&services) {
                        let log = self.log(&id);
                        log.line(&format!("== watcher: {}", summary(&services)));
                    }
                    verdicts.insert(id.to_string(), services);
                }
                Err(e) => tracing::warn!(instance = %id, cause = %e, "watcher cannot inspect"),
            }
        }
        *self.watched.verdicts.lock().expect("verdicts") = verdicts.clone();
        self.watched.published.send_if_modified(|p| {
            if p.as_deref() == Some(&verdicts) {
                return false;
            }
            *p = Some(Arc::new(verdicts));
            true
        });
        self.watched
            .restarts
            .lock()
            .expect("restarts")
            .retain(|cid, _| seen.contains(cid));
    }

    /// Judges each service of stack `id` from its app `containers` (forwarders left out).
    async fn inspect_stack(
        &self,
        id: &ValidName,
        mut containers: Vec<bollard::models::ContainerSummary>,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<ServiceHealth>, super::StackError> {
        containers.sort_by_key(|c| std::cmp::Reverse(c.created));
        // The checkout holds the running release unless a build beside it moved it on (then
        // its service list is not the running one's).
        let checkout = self.checkout(id).commit();
        let same_release = checkout.is_some()
            && containers.iter().all(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(plan::LABEL_BERTH_COMMIT))
                    == checkout.as_ref()
            });
        let mut out: Vec<ServiceHealth> = Vec::new();
        for c in containers {
            let Some(service) = c
                .labels
                .as_ref()
                .and_then(|l| l.get(plan::LABEL_SERVICE))
                .cloned()
            else {
                continue;
            };
            // The newest container of a service speaks for it; a forwarder is berth's own.
            if out.iter().any(|s| s.name == service)
                || crate::registrator::view::is_forwarder(c.labels.as_ref())
            {
                continue;
            }
            let Some(cid) = c.id else { continue };
            seen.insert(cid.clone());
            let Ok(inspect) = self.docker.inspect_container(&cid, None).await else {
                continue;
            };
            let restarts = inspect.restart_count.unwrap_or(0);
            let state = inspect.state.clone().unwrap_or_default();
            let exited = (state.running != Some(true))
                .then_some(state.exit_code)
                .flatten();
            let (recently, last_exit) = self.restarted_recently(&cid, restarts, exited);
            let mut health = judge(&service, &inspect, recently);
            if health.state == ServiceState::Restarting {
                health.exit_code = health.exit_code.filter(|c| *c != 0).or(last_exit);
            }
            if !health.state.is_ok() {
                health.last_log_lines = self.last_log_lines(&cid).await;
            }
            out.push(health);
        }
        // A service of the running release without any container (removed by hand, or never
        // recreated) is missing, not silently absent.
        if same_release && let Ok(project) = self.load_project(id) {
            for s in &project.services {
                if !out.iter().any(|h| h.name == s.name) {
                    out.push(ServiceHealth {
                        name: s.name.clone(),
                        state: ServiceState::Missing,
                        restarts: 0,
                        exit_code: None,
                        probe_output: None,
                        last_log_lines: Vec::new(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Starts again a forwarder of a running stack that is not running (killed, or exited and
    /// not restarted by Docker, which leaves a killed container alone): it holds the service's
    /// published port, so while it is down the app is unreachable though every app container
    /// runs. It goes on forwarding to the target it kept. Said in the stack's log.
    async fn restart_stopped_forwarders(
        &self,
        id: &ValidName,
        forwarders: Vec<bollard::models::ContainerSummary>,
    ) {
        for f in forwarders {
            if f.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            let Some(cid) = f.id.as_deref() else { continue };
            let name = f
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map_or(cid, |n| n.trim_start_matches('/'));
            let status = f.status.clone().unwrap_or_default();
            let log = self.log(id);
            match self.docker.start_container(cid, None).await {
                Ok(()) => {
                    tracing::warn!(instance = %id, forwarder = name, %status, "forwarder was not running: started it again");
                    log.line(&format!(
                        "== watcher: forwarder {name} was not running ({status}): started it again"
                    ));
                }
                Err(e) => {
                    tracing::warn!(instance = %id, forwarder = name, cause = %e, "forwarder is not running and cannot be started");
                    log.line(&format!(
                        "== watcher: forwarder {name} is not running ({status}) and cannot be started: {e}"
                    ));
                }
            }
        }
    }

    /// Whether the container's restart count grew within [`RESTART_WINDOW`], and the last exit
    /// code seen (`exited`: the code now, when it does not run).
    fn restarted_recently(
        &self,
        cid: &str,
        count: i64,
        exited: Option<i64>,
    ) -> (bool, Option<i64>) {
        let mut seen = self.watched.restarts.lock().expect("restarts");
        let now = Instant::now();
        let entry = seen.entry(cid.to_owned()).or_insert((count, now, None));
        if count > entry.0 {
            entry.0 = count;
            entry.1 = now;
        }
        if exited.is_some() {
            entry.2 = exited;
        }
        // A container first seen with restarts behind it counts from that sighting.
        (
            count > 0 && now.duration_since(entry.1) < RESTART_WINDOW,
            entry.2,
        )
    }

    /// Remembers the exit code of a `die` event: a container that restarts at once shows code 0
    /// again by the time it is inspected.
    fn died(&self, cid: &str, code: Option<i64>) {
        let mut seen = self.watched.restarts.lock().expect("restarts");
        let entry = seen
            .entry(cid.to_owned())
            .or_insert((0, Instant::now(), None));
        if code.is_some() {
            entry.2 = code;
        }
    }

    async fn last_log_lines(&self, cid: &str) -> Vec<String> {
        let mut stream = self.docker.logs(
            cid,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail(&LOG_LINES.to_string())
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        strip_ansi(&text)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// One service's state from its container's inspection.
fn judge(service: &str, c: &ContainerInspectResponse, restarted_recently: bool) -> ServiceHealth {
    let state = c.state.clone().unwrap_or_default();
    let restarts = u32::try_from(c.restart_count.unwrap_or(0)).unwrap_or(u32::MAX);
    let exited_once = state
        .finished_at
        .as_deref()
        .is_some_and(|f| !f.starts_with("0001"));
    let exit_code = state.exit_code.filter(|_| exited_once);
    let health = state.health.clone();
    let health_status = health.as_ref().and_then(|h| h.status);
    let probe_output = health
        .as_ref()
        .and_then(|h| h.log.as_ref())
        .and_then(|log| log.last())
        .and_then(|r| r.output.clone())
        .map(|o| strip_ansi(o.trim()))
        .filter(|o| !o.is_empty());
    let one_shot = matches!(
        c.host_config
            .as_ref()
            .and_then(|h| h.restart_policy.as_ref())
            .and_then(|p| p.name),
        None | Some(
            RestartPolicyNameEnum::EMPTY
                | RestartPolicyNameEnum::NO
                | RestartPolicyNameEnum::ON_FAILURE
        )
    );
    let verdict = if state.restarting == Some(true) {
        ServiceState::Restarting
    } else if state.running == Some(true) {
        match health_status {
            Some(HealthStatusEnum::UNHEALTHY) => ServiceState::Unhealthy,
            _ if restarted_recently => ServiceState::Restarting,
            Some(HealthStatusEnum::STARTING) => ServiceState::Starting,
            _ => ServiceState::Running,
        }
    } else if exited_once && state.exit_code == Some(0) && one_shot {
        ServiceState::Completed
    } else {
        ServiceState::Exited
    };
    let probe_output = match health_status {
        Some(HealthStatusEnum::HEALTHY) | None => None,
        _ => probe_output,
    };
    ServiceHealth {
        name: service.to_owned(),
        state: verdict,
        restarts,
        exit_code,
        probe_output,
        last_log_lines: Vec::new(),
    }
}

/// `api running, worker restarting (3 restarts, exit code 1)`.
fn summary(services: &[ServiceHealth]) -> String {
    services
        .iter()
        .map(|s| {
            let mut text = format!("{} {}", s.name, s.state.as_str());
            if !s.state.is_ok() {
                let mut why = Vec::new();
                if s.restarts > 0 {
                    why.push(format!("{} restarts", s.restarts));
                }
                if let Some(code) = s.exit_code {
                    why.push(format!("exit code {code}"));
                }
                if !why.is_empty() {
                    text.push_str(&format!(" ({})", why.join(", ")));
                }
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wakes the watcher on every relevant Docker event of this node's containers; reconnects when
/// the stream ends (a daemon restart), waking the watcher so it resyncs.
async fn events(stacks: Arc<Stacks>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "label".to_owned(),
            vec![format!(
                "{}={}",
                plan::LABEL_BERTH_NODE,
                stacks.settings.node
            )],
        ),
    ]);
    loop {
        let mut stream = stacks.docker.events(Some(
            EventsOptionsBuilder::default().filters(&filters).build(),
        ));
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(ev)) => {
                    let action = ev.action.unwrap_or_default();
                    if action == "die"
                        && let Some(actor) = &ev.actor
                        && let Some(cid) = &actor.id
                    {
                        let code = actor
                            .attributes
                            .as_ref()
                            .and_then(|a| a.get("exitCode"))
                            .and_then(|c| c.parse().ok());
                        stacks.died(cid, code);
                    }
                    if matches!(action.as_str(), "die" | "start" | "restart" | "oom")
                        || action.starts_with("health_status")
                    {
                        wake.notify_one();
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        wake.notify_one();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
