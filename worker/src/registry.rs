//! The worker's side of the registry, through `berth_consul::client::Client`: services and
//! checks with the local agent (berth agent or real Consul agent). Domain types here
//! are plain Rust; the Consul-shaped DTOs stay in `berth_consul::types`.

use std::collections::{BTreeMap, HashMap};

use berth_consul::client::{Client, ClientError};
use berth_consul::types::{AgentCheckRegistration, AgentServiceRegistration};
use berth_worker_api::Secret;

pub use berth_consul::client::ClientError as RegistryError;

/// A check the agent runs (HTTP or TCP) or expects to be told about (TTL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    pub name: Option<String>,
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub ttl: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub deregister_after: Option<String>,
    /// A TTL check the registrator feeds from the container's Docker health status (not sent to
    /// the agent; a `SERVICE_CHECK_TTL` check of the same TTL is the application's own).
    pub relays_docker_health: bool,
}

/// One service registration with the local agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    /// The published host port (0 for a container that publishes none).
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub check: Option<Check>,
    /// berth's own TTL check `service:<id>:berth`, following the container's state as the
    /// watcher judges it (`None`: no such check, as for the worker's own registration).
    pub state: Option<StateCheck>,
}

/// The status and output of a registration's state check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCheck {
    /// `passing`, `warning` or `critical`.
    pub status: String,
    pub output: String,
}

/// The name of berth's state check on every container registration.
pub const STATE_CHECK_NAME: &str = "berth: container state";
/// Its TTL: the registrator refreshes it at least every 30 s, so it expires (critical) only when
/// nobody watches the container any more (the worker is gone).
pub const STATE_CHECK_TTL: &str = "90s";

/// The agent check id of a service's embedded check.
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// The agent check id of a registration's state check.
pub fn state_check_id(service_id: &str) -> String {
    format!("service:{service_id}:berth")
}

/// What the agent holds for one service (the parts a resync compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentService {
    pub id: String,
    pub service: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
}

impl From<&Registration> for AgentServiceRegistration {
    fn from(r: &Registration) -> Self {
        let mut reg = Self {
            id: Some(r.id.clone()),
            name: r.name.clone(),
            tags: r.tags.clone(),
            address: Some(r.address.clone()),
            meta: r.meta.clone(),
            port: Some(r.port),
            check: r.check.as_ref().map(|c| AgentCheckRegistration {
                name: c.name.clone(),
                http: c.http.clone(),
                tcp: c.tcp.clone(),
                ttl: c.ttl.clone(),
                // A check URL the worker confined to the container must stay there: a redirect
                // could send the agent anywhere and show the answer in the check output.
                disable_redirects: c.http.as_ref().map(|_| true),
                interval: c.interval.clone(),
                timeout: c.timeout.clone(),
                deregister_critical_service_after: c.deregister_after.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(state) = &r.state {
            // Two checks: each gets its id explicitly (Consul would number them otherwise). The
            // state check is born with a status other than its real one (critical, as every new
            // TTL check, or warning when it is to be critical): the update that follows then
            // changes the status, which the agent syncs at once with its output (an output-only
            // change waits for Consul's check_update_interval, 5 min by default).
            if let Some(c) = &mut reg.check {
                c.check_id = Some(check_id(&r.id));
            }
            reg.checks.push(AgentCheckRegistration {
                check_id: Some(state_check_id(&r.id)),
                name: Some(STATE_CHECK_NAME.to_owned()),
                ttl: Some(STATE_CHECK_TTL.to_owned()),
                status: Some(
                    if state.status == "critical" {
                        "warning"
                    } else {
                        "critical"
                    }
                    .to_owned(),
                ),
                notes: Some(
                    "the container's state as berth's watcher sees it: running, or why not"
                        .to_owned(),
                ),
                ..Default::default()
            });
        }
        reg
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    client: Client,
}

impl Agent {
    pub fn new(base: &str, token: Option<Secret>) -> Result<Self, RegistryError> {
        Ok(Self {
            client: Client::new(base, token.map(|t| t.expose().to_owned()))?,
        })
    }

    pub fn base(&self) -> &str {
        self.client.base_url()
    }

    #[tracing::instrument(skip_all, fields(id = %reg.id), err)]
    pub async fn register(&self, reg: &Registration) -> Result<(), RegistryError> {
        self.client.agent_service_register(&reg.into()).await
    }

    #[tracing::instrument(skip(self), err)]
    pub async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        match self.client.agent_service_deregister(id).await {
            // Already gone is what we wanted.
            Err(ClientError::Status { status: 404, .. }) => Ok(()),
            other => other,
        }
    }

    pub async fn services(&self) -> Result<HashMap<String, AgentService>, RegistryError> {
        Ok(self
            .client
            .agent_services()
            .await?
            .into_iter()
            .map(|(id, s)| {
                (
                    id,
                    AgentService {
                        id: s.id,
                        service: s.service,
                        port: s.port,
                        meta: s.meta,
                    },
                )
            })
            .collect())
    }

    /// Sets a TTL check's status (`passing`, `warning`, `critical`) and output.
    pub async fn set_check(
        &self,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Result<(), RegistryError> {
        self.client
            .agent_check_update(check_id, status, output)
            .await
    }

    /// Sets a TTL check's status: `passing`, `warning` or anything else for critical.
    pub async fn update_check(&self, check_id: &str, status: &str) -> Result<(), RegistryError> {
        match status {
            "passing" => self.client.agent_check_pass(check_id, None).await,
            "warning" => self.client.agent_check_warn(check_id, None).await,
            _ => self.client.agent_check_fail(check_id, None).await,
        }
    }
}
