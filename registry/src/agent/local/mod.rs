//! The agent's local state: the services and checks registered through `/v1/agent/*` on this
//! host, their check runners, and what anti-entropy pushes into the catalog.

use berth_kit::fs::write_atomic;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checks::{CheckError, CheckKind, CheckResult, CheckRunner, Health};
use crate::dto::{self, AgentCheckRegistration, AgentServiceRegistration};
use crate::store::state::{Check, CheckStatus, Service};

mod register;

/// Shortest `DeregisterCriticalServiceAfter` (Consul: one minute).
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Consul's default `check_update_interval`.
pub const DEFAULT_CHECK_UPDATE_INTERVAL: Duration = Duration::from_secs(300);

/// Failures of agent operations; texts are Consul's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    /// A malformed registration.
    #[error("{0}")]
    Invalid(String),
    /// Unknown service id.
    #[error(
        "Unknown service ID \"{0}\". Ensure that the service ID is passed, not the service name."
    )]
    UnknownService(String),
    /// Unknown check id.
    #[error("Unknown check ID \"{0}\"")]
    UnknownCheck(String),
    /// A check registered for a service the agent does not have (Consul answers 404).
    #[error("ServiceID \"{0}\" does not exist")]
    NoSuchCheckService(String),
    /// A TTL update on a check without TTL.
    #[error("CheckID \"{0}\" does not have associated TTL")]
    NotTtl(String),
}

impl From<CheckError> for AgentError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Unknown(id) => Self::UnknownCheck(id),
            CheckError::NotTtl(id) => Self::NotTtl(id),
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// One check held by this agent.
#[derive(Debug, Clone)]
pub(crate) struct LocalCheck {
    pub(crate) check: Check,
    pub(crate) kind: Option<CheckKind>,
    pub(crate) deregister_after: Option<Duration>,
    pub(crate) critical_since: Option<Instant>,
    pub(crate) success_before_passing: u32,
    pub(crate) failures_before_critical: u32,
    /// An output-only change is waiting for `check_update_interval` before it is synced.
    pub(crate) output_deferred: bool,
}

impl LocalCheck {
    /// A check nobody runs (maintenance): no thresholds, no reaping.
    fn plain(check: Check) -> Self {
        Self {
            check,
            kind: None,
            deregister_after: None,
            critical_since: None,
            success_before_passing: 0,
            failures_before_critical: 0,
            output_deferred: false,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct LocalState {
    pub(crate) services: BTreeMap<String, Service>,
    pub(crate) checks: BTreeMap<String, LocalCheck>,
}

/// Registrations as received, persisted so a restarted agent serves them again.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    services: BTreeMap<String, AgentServiceRegistration>,
    checks: BTreeMap<String, AgentCheckRegistration>,
}

/// How a [`LocalAgent`] runs its checks and keeps its registrations.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Run script checks (`Args`).
    pub enable_script_checks: bool,
    /// A check whose output changes but not its status is synced at most this often
    /// (Consul's `check_update_interval`; zero: at once). Status changes sync at once.
    pub check_update_interval: Duration,
    /// Where registrations are kept across restarts (`None`: memory only).
    pub file: Option<PathBuf>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            enable_script_checks: false,
            check_update_interval: DEFAULT_CHECK_UPDATE_INTERVAL,
            file: None,
        }
    }
}

/// Services and checks of this agent; cheap to share.
pub struct LocalAgent {
    node: String,
    state: Mutex<LocalState>,
    runner: CheckRunner,
    version: watch::Sender<u64>,
    saved: Mutex<Saved>,
    file: Option<PathBuf>,
    check_update_interval: Duration,
    me: Weak<LocalAgent>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for LocalAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAgent")
            .field("node", &self.node)
            .finish()
    }
}

fn parse_duration(field: &str, text: &str) -> Result<Duration, AgentError> {
    dto::parse_go_duration(text)
        .ok_or_else(|| AgentError::Invalid(format!("Invalid {field}: {text:?}")))
}

fn opt_duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, AgentError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => parse_duration(field, t).map(Some),
    }
}

impl LocalAgent {
    /// A new agent for `node`; check tasks stop when `shutdown` is cancelled. Results are
    /// applied by a task spawned here.
    pub fn new(node: &str, enable_script_checks: bool, shutdown: CancellationToken) -> Arc<Self> {
        let options = LocalOptions {
            enable_script_checks,
            ..LocalOptions::default()
        };
        Self::with_options(node, options, shutdown)
    }

    /// Like [`LocalAgent::new`] with every option; registrations are restored from
    /// `options.file` when it exists.
    pub fn with_options(
        node: &str,
        options: LocalOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (runner, mut results) =
            CheckRunner::new(options.enable_script_checks, shutdown.clone());
        let agent = Arc::new_cyclic(|me| Self {
            node: node.to_owned(),
            state: Mutex::default(),
            runner,
            version: watch::Sender::new(0),
            saved: Mutex::default(),
            file: options.file,
            check_update_interval: options.check_update_interval,
            me: me.clone(),
            shutdown,
        });
        agent.restore();
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            while let Some(result) = results.recv().await {
                match weak.upgrade() {
                    Some(agent) => agent.apply(result),
                    None => break,
                }
            }
        });
        agent
    }

    fn restore(&self) {
        let Some(file) = &self.file else { return };
        let saved: Saved = match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(cause = %e, file = %file.display(), "unreadable agent state; starting empty");
                    return;
                }
            },
            Err(_) => return,
        };
        for (id, reg) in saved.services {
            if let Err(e) = self.register_service(reg, false) {
                tracing::warn!(service = %id, cause = %e, "could not restore service");
            }
        }
        for (id, def) in saved.checks {
            if let Err(e) = self.register_check(def) {
                tracing::warn!(check = %id, cause = %e, "could not restore check");
            }
        }
    }

    fn save(&self, change: impl FnOnce(&mut Saved)) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut saved);
        let Some(file) = &self.file else { return };
        let written = serde_json::to_vec(&*saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(file, &bytes));
        if let Err(e) = written {
            tracing::error!(cause = %e, file = %file.display(), "persisting agent state failed");
        }
    }

    /// This agent's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes whenever a service or check changes (anti-entropy waits on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Applies a check result from the runner.
    pub(crate) fn apply(&self, result: CheckResult) {
        let mut state = self.lock();
        let Some(local) = state.checks.get_mut(&result.id) else {
            return;
        };
        let change = set_status(local, health_status(result.status), result.output);
        self.changed(local, change);
    }

    /// Makes a check change visible to anti-entropy: a status change at once, an output-only
    /// change after `check_update_interval` (one timer per check; the output keeps updating
    /// locally meanwhile, and anti-entropy ignores it until the timer fires).
    fn changed(&self, local: &mut LocalCheck, change: Change) {
        match change {
            Change::None => {}
            Change::Status => self.bump(),
            Change::Output if self.check_update_interval.is_zero() => self.bump(),
            Change::Output if local.output_deferred => {}
            Change::Output => {
                local.output_deferred = true;
                let id = local.check.id.clone();
                let me = self.me.clone();
                let after = self.check_update_interval;
                let stop = self.shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(after) => {
                            if let Some(agent) = me.upgrade() {
                                agent.release_output(&id);
                            }
                        }
                    }
                });
            }
        }
    }

    fn release_output(&self, id: &str) {
        let mut state = self.lock();
        if let Some(local) = state.checks.get_mut(id) {
            local.output_deferred = false;
            drop(state);
            self.bump();
        }
    }

    /// `PUT /v1/agent/service/deregister/<id>`: the service and its checks.
    pub fn deregister_service(&self, id: &str) -> Result<(), AgentError> {
        let mut state = self.lock();
        if state.services.remove(id).is_none() {
            return Err(AgentError::UnknownService(id.to_owned()));
        }
        let checks: Vec<String> = state
            .checks
            .values()
            .filter(|c| c.check.service_id == id)
            .map(|c| c.check.id.clone())
            .collect();
        for cid in &checks {
            state.checks.remove(cid);
            self.runner.stop(cid);
        }
        drop(state);
        self.save(|s| {
            s.services.remove(id);
            for cid in &checks {
                s.checks.remove(cid);
            }
        });
        self.bump();
        Ok(())
    }

    /// `PUT /v1/agent/check/deregister/<id>`.
    pub fn deregister_check(&self, id: &str) -> Result<(), AgentError> {
        let mut state = self.lock();
        if state.checks.remove(id).is_none() {
            return Err(AgentError::UnknownCheck(id.to_owned()));
        }
        self.runner.stop(id);
        drop(state);
        self.save(|s| {
            s.checks.remove(id);
        });
        self.bump();
        Ok(())
    }

    /// `PUT /v1/agent/check/{pass,warn,fail,update}/<id>`: sets a TTL check and restarts its TTL.
    pub fn update_ttl(&self, id: &str, status: Health, output: String) -> Result<(), AgentError> {
        let mut state = self.lock();
        let local = state
            .checks
            .get_mut(id)
            .ok_or_else(|| AgentError::UnknownCheck(id.to_owned()))?;
        if !matches!(local.kind, Some(CheckKind::Ttl(_))) {
            return Err(AgentError::NotTtl(id.to_owned()));
        }
        self.runner.ttl_update(id, status, output.clone())?;
        let change = set_status(local, health_status(status), output);
        self.changed(local, change);
        Ok(())
    }

    /// `PUT /v1/agent/service/maintenance/<id>?enable=`: adds or removes the critical
    /// `_service_maintenance:<id>` check.
    pub fn maintenance(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), AgentError> {
        let mut state = self.lock();
        let service = state
            .services
            .get(service_id)
            .cloned()
            .ok_or_else(|| AgentError::UnknownService(service_id.to_owned()))?;
        let check_id = format!("_service_maintenance:{service_id}");
        if enable {
            let check = Check {
                service_id: service.id.clone(),
                service_name: service.name.clone(),
                service_tags: service.tags.clone(),
                ..self.maintenance_check(&check_id, "Service Maintenance Mode", "service", reason)
            };
            state.checks.insert(check_id, LocalCheck::plain(check));
        } else {
            state.checks.remove(&check_id);
        }
        drop(state);
        self.bump();
        Ok(())
    }

    /// Consul's node maintenance: a critical `_node_maintenance` check on the node, so every
    /// service of the node fails `?passing` until it is disabled.
    pub fn node_maintenance(&self, enable: bool, reason: &str) {
        let mut state = self.lock();
        if enable {
            let check = self.maintenance_check(
                NODE_MAINTENANCE_CHECK,
                "Node Maintenance Mode",
                "node",
                reason,
            );
            state
                .checks
                .insert(NODE_MAINTENANCE_CHECK.to_owned(), LocalCheck::plain(check));
        } else {
            state.checks.remove(NODE_MAINTENANCE_CHECK);
        }
        drop(state);
        self.bump();
    }

    fn maintenance_check(&self, id: &str, name: &str, of: &str, reason: &str) -> Check {
        let notes = if reason.is_empty() {
            format!(
                "Maintenance mode is enabled for this {of}, but no reason was provided. This is a default message."
            )
        } else {
            reason.to_owned()
        };
        Check {
            node: self.node.clone(),
            id: id.to_owned(),
            name: name.to_owned(),
            // Consul's check is critical; `maintenance` is only an aggregated status.
            status: CheckStatus::Critical,
            notes,
            check_type: "maintenance".into(),
            definition: serde_json::json!({}),
            ..Check::default()
        }
    }

    /// Copies of the services and checks (for answers and anti-entropy).
    pub(crate) fn snapshot(&self) -> (Vec<Service>, Vec<Check>) {
        let state = self.lock();
        (
            state.services.values().cloned().collect(),
            state.checks.values().map(|c| c.check.clone()).collect(),
        )
    }

    /// Like [`LocalAgent::snapshot`], with the ids of checks whose output is not to be synced
    /// yet (`check_update_interval`).
    pub(crate) fn sync_snapshot(&self) -> (Vec<Service>, Vec<Check>, BTreeSet<String>) {
        let state = self.lock();
        (
            state.services.values().cloned().collect(),
            state.checks.values().map(|c| c.check.clone()).collect(),
            state
                .checks
                .values()
                .filter(|c| c.output_deferred)
                .map(|c| c.check.id.clone())
                .collect(),
        )
    }

    /// Aggregated status of the services matching `pick`, or `None` if none match. As in
    /// Consul's `AggregatedStatus`, a maintenance check (told by its id) makes it `maintenance`;
    /// otherwise it is the worst status of the service's and the node's checks.
    pub(crate) fn service_health(
        &self,
        pick: impl Fn(&Service) -> bool,
    ) -> Option<Vec<(Service, CheckStatus)>> {
        let state = self.lock();
        let matched: Vec<(Service, CheckStatus)> = state
            .services
            .values()
            .filter(|s| pick(s))
            .map(|s| {
                let worst = state
                    .checks
                    .values()
                    .filter(|c| c.check.service_id == s.id || c.check.service_id.is_empty())
                    .map(|c| {
                        if is_maintenance_check(&c.check.id) {
                            CheckStatus::Maintenance
                        } else {
                            c.check.status
                        }
                    })
                    .fold(CheckStatus::Passing, worst);
                (s.clone(), worst)
            })
            .collect();
        (!matched.is_empty()).then_some(matched)
    }

    /// Deregisters services whose check has been critical longer than its
    /// `DeregisterCriticalServiceAfter`; returns their ids.
    pub fn reap(&self, now: Instant) -> Vec<String> {
        let doomed: Vec<String> = {
            let state = self.lock();
            state
                .checks
                .values()
                .filter(|c| !c.check.service_id.is_empty())
                .filter(|c| match (c.deregister_after, c.critical_since) {
                    (Some(after), Some(since)) => now.duration_since(since) >= after,
                    _ => false,
                })
                .map(|c| c.check.service_id.clone())
                .collect()
        };
        let mut reaped = Vec::new();
        for id in doomed {
            if self.deregister_service(&id).is_ok() {
                tracing::info!(service = %id, "deregistered service whose check stayed critical");
                reaped.push(id);
            }
        }
        reaped
    }

    /// Stops every check task.
    pub async fn close(&self) {
        self.runner.close().await;
    }
}

const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";

/// Consul's node (`_node_maintenance`) and service (`_service_maintenance:<id>`) maintenance
/// check ids.
fn is_maintenance_check(id: &str) -> bool {
    id == NODE_MAINTENANCE_CHECK || id.starts_with("_service_maintenance:")
}

/// Orders statuses by badness: maintenance and critical are worst.
pub(crate) fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
    let rank = |s: CheckStatus| match s {
        CheckStatus::Passing => 0,
        CheckStatus::Warning => 1,
        CheckStatus::Critical => 2,
        CheckStatus::Maintenance => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn health_status(h: Health) -> CheckStatus {
    match h {
        Health::Passing => CheckStatus::Passing,
        Health::Warning => CheckStatus::Warning,
        Health::Critical => CheckStatus::Critical,
    }
}

/// What a check update changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Output,
    Status,
}

fn set_status(local: &mut LocalCheck, status: CheckStatus, output: String) -> Change {
    if status == CheckStatus::Critical {
        local.critical_since.get_or_insert_with(Instant::now);
    } else {
        local.critical_since = None;
    }
    let change = if local.check.status != status {
        Change::Status
    } else if local.check.output != output {
        Change::Output
    } else {
        Change::None
    };
    local.check.status = status;
    local.check.output = output;
    change
}
