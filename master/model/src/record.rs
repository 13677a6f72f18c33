//! The instance record kept in the registry KV at `berth/instances/{id}` (written by the master,
//! read by the front door and operators), its states and the rule of which operation each state
//! allows; and [`Endpoint`], one published port, which the worker reports and the record keeps.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::health::ServiceHealth;

/// Life cycle of an instance. `building`, `starting`, `stopping` and `deleting` are transitional:
/// they are only ever seen while a master holds the instance lock; one found with the lock free
/// was interrupted (its master stopped) and is recorded as such before the next operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    Uploaded,
    Building,
    Built,
    Starting,
    Running,
    /// Started, but a service that should run does not: it exited, crash-loops or is unhealthy
    /// (`services` says which and why). Returns to `running` when every service recovers.
    Degraded,
    Stopping,
    Stopped,
    Deleting,
    Failed,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Uploaded,
        State::Building,
        State::Built,
        State::Starting,
        State::Running,
        State::Degraded,
        State::Stopping,
        State::Stopped,
        State::Deleting,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Uploaded => "uploaded",
            State::Building => "building",
            State::Built => "built",
            State::Starting => "starting",
            State::Running => "running",
            State::Degraded => "degraded",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Deleting => "deleting",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the stack's containers run (`running` or `degraded`): what the front door routes
    /// and a rollback starts again.
    pub fn is_up(self) -> bool {
        matches!(self, State::Running | State::Degraded)
    }

    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            State::Building | State::Starting | State::Stopping | State::Deleting
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation on an instance, for state checks, metrics and error steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Upload,
    Build,
    Start,
    Stop,
    Delete,
    Deploy,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upload => "upload",
            Op::Build => "build",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Delete => "delete",
            Op::Deploy => "deploy",
        }
    }

    /// The states in which this operation may begin (an interrupted transitional state has been
    /// turned into `failed` before this is asked).
    pub fn allowed_in(self) -> &'static [State] {
        match self {
            // A running instance builds beside its running stack, which keeps serving.
            Op::Upload | Op::Build => &[
                State::Uploaded,
                State::Built,
                State::Running,
                State::Degraded,
                State::Stopped,
                State::Failed,
            ],
            Op::Deploy => &[
                State::Uploaded,
                State::Built,
                State::Running,
                State::Degraded,
                State::Stopped,
                State::Failed,
            ],
            Op::Start => &[
                State::Built,
                State::Stopped,
                State::Running,
                State::Degraded,
                State::Failed,
            ],
            Op::Stop => &[
                State::Running,
                State::Degraded,
                State::Stopped,
                State::Failed,
            ],
            Op::Delete => &[
                State::Uploaded,
                State::Built,
                State::Running,
                State::Degraded,
                State::Stopped,
                State::Failed,
            ],
        }
    }

    pub fn allows(self, state: State) -> bool {
        self.allowed_in().contains(&state)
    }

    /// "start is allowed in built, stopped, running".
    pub fn explain(self, state: State) -> String {
        let allowed: Vec<&str> = self.allowed_in().iter().map(|s| s.as_str()).collect();
        format!(
            "instance is {state}; {} is allowed in {}",
            self.as_str(),
            allowed.join(", ")
        )
    }
}

/// Where an instance is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerRef {
    /// `node/service-id` of the worker's `berth-worker` service in the catalog.
    pub id: String,
    pub node: String,
    /// Base URL of the worker API.
    pub url: String,
    /// Address published in `instance/{id}/ip`.
    pub address: String,
}

/// The step that failed and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordError {
    pub step: String,
    pub message: String,
}

/// How a rollout stands: `deploying` while it runs (under the instance lock), then `deployed`
/// or `failed` (the old release kept serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    Deploying,
    Deployed,
    Failed,
}

/// The last rollout of a running instance to a release. The instance stays `running` through
/// it: one complete release serves at every moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployRecord {
    /// The release rolled to.
    pub commit: String,
    /// The release serving when it began.
    pub from: Option<String>,
    /// Whether it was a rollback.
    #[serde(default)]
    pub rollback: bool,
    pub state: DeployState,
    /// What failed and why (the worker's message names the service, the probe and the last
    /// log lines).
    #[serde(default)]
    pub error: Option<String>,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// When the old containers of a deployed rollout were gone: the deploy answers once the new
    /// release serves, and its worker retires the old containers after that (the observer
    /// notes the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

/// A placement change, kept in the record so a move is visible afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacementMove {
    pub at: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
}

/// The instance record, JSON at `berth/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceRecord {
    pub id: String,
    pub user: String,
    pub project: String,
    /// Latest commit uploaded (what a build without `commit` builds).
    pub commit: Option<String>,
    /// Commit whose images the worker holds.
    #[serde(default)]
    pub built_commit: Option<String>,
    /// When `built_commit` was built (RFC 3339).
    #[serde(default)]
    pub built_at: Option<String>,
    /// Commit the running stack was started from; set by a successful start, cleared when the
    /// stack stops, fails or is rebuilt.
    #[serde(default)]
    pub running_commit: Option<String>,
    /// The last rollout of a running instance (deploy or rollback), while it runs and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployRecord>,
    /// Commits whose images the worker keeps (its last `--keep-releases` builds, newest first):
    /// a rollout to one of them builds nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_commits: Vec<String>,
    /// When each commit of `kept_commits` (and `built_commit`) was built (RFC 3339), so the
    /// releases list can say it for every release whose images are kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub built_times: BTreeMap<String, String>,
    /// Clone URL of the instance's repository (no credentials).
    pub repo: String,
    pub worker: Option<WorkerRef>,
    pub state: State,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Each service's state while the instance runs (`running` or `degraded`), as its worker's
    /// watcher last reported it; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceHealth>,
    pub error: Option<RecordError>,
    #[serde(default)]
    pub moves: Vec<PlacementMove>,
    pub created_at: String,
    pub updated_at: String,
}

/// One published port of one service, as the outside world reaches it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub service: String,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The worker's advertised address.
    pub host: String,
    pub host_port: u16,
}

impl Endpoint {
    /// `host:port`, ready to paste into a URL.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.host_port)
        } else {
            format!("{}:{}", self.host, self.host_port)
        }
    }
}

/// Most placement moves kept in a record.
pub const MAX_MOVES: usize = 20;

impl InstanceRecord {
    pub fn new(id: &str, user: &str, project: &str, repo: String) -> Self {
        let now = now();
        Self {
            id: id.to_owned(),
            user: user.to_owned(),
            project: project.to_owned(),
            commit: None,
            built_commit: None,
            built_at: None,
            running_commit: None,
            deploy: None,
            kept_commits: Vec::new(),
            built_times: BTreeMap::new(),
            repo,
            worker: None,
            state: State::Uploaded,
            endpoints: Vec::new(),
            services: Vec::new(),
            error: None,
            moves: Vec::new(),
            created_at: now.clone(),
            updated_at: now,
        }
    }

    /// Notes that `commit` is the built one. `fresh` says it was built just now; a rollout to a
    /// release whose images were kept keeps the time that release was built.
    pub fn note_built(&mut self, commit: &str, fresh: bool) {
        let at = match self.built_times.get(commit) {
            Some(at) if !fresh => at.clone(),
            _ => now(),
        };
        self.built_times.insert(commit.to_owned(), at.clone());
        self.built_commit = Some(commit.to_owned());
        self.built_at = Some(at);
        self.prune_built_times();
    }

    /// Forgets the build times of commits whose images are no longer kept.
    pub fn prune_built_times(&mut self) {
        let (kept, built) = (&self.kept_commits, &self.built_commit);
        self.built_times
            .retain(|c, _| kept.contains(c) || built.as_deref() == Some(c.as_str()));
    }

    pub fn touch(&mut self) {
        self.updated_at = now();
    }

    pub fn fail(&mut self, step: &str, message: impl Into<String>) {
        self.state = State::Failed;
        self.running_commit = None;
        self.services.clear();
        self.error = Some(RecordError {
            step: step.to_owned(),
            message: message.into(),
        });
    }

    pub fn record_move(&mut self, to: &WorkerRef, reason: &str) {
        self.moves.push(PlacementMove {
            at: now(),
            from: self.worker.as_ref().map(|w| w.id.clone()),
            to: to.id.clone(),
            reason: reason.to_owned(),
        });
        if self.moves.len() > MAX_MOVES {
            let extra = self.moves.len() - MAX_MOVES;
            self.moves.drain(..extra);
        }
        self.worker = Some(to.clone());
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_roundtrip_and_rules() {
        for st in State::ALL {
            assert_eq!(State::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{st}\""));
        }
        assert!(Op::Start.allows(State::Running));
        assert!(!Op::Start.allows(State::Uploaded));
        assert!(Op::Build.allows(State::Running));
        assert!(!Op::Build.allows(State::Starting));
        for st in State::ALL.into_iter().filter(|s| s.is_transitional()) {
            for op in [
                Op::Upload,
                Op::Build,
                Op::Start,
                Op::Stop,
                Op::Delete,
                Op::Deploy,
            ] {
                assert!(!op.allows(st), "{op:?} in {st}");
            }
        }
        assert_eq!(
            Op::Start.explain(State::Uploaded),
            "instance is uploaded; start is allowed in built, stopped, running, degraded, failed"
        );
    }

    #[test]
    fn records_without_release_fields_still_read() {
        let old = serde_json::json!({
            "id": "a", "user": "u", "project": "p", "commit": null, "repo": "r",
            "worker": null, "state": "built", "error": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        });
        let rec: InstanceRecord = serde_json::from_value(old).unwrap();
        assert_eq!(rec.running_commit, None);
        assert_eq!(rec.built_at, None);
        assert_eq!(rec.built_commit, None);
    }

    #[test]
    fn endpoint_address() {
        let mut e = Endpoint {
            service: "web".into(),
            container_port: 80,
            protocol: "tcp".into(),
            host: "10.0.0.5".into(),
            host_port: 32768,
        };
        assert_eq!(e.address(), "10.0.0.5:32768");
        e.host = "fd00::1".into();
        assert_eq!(e.address(), "[fd00::1]:32768");
    }
}
