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
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub check: Option<Check>,
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
        Self {
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
        }
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

    /// Sets a TTL check's status: `passing`, `warning` or anything else for critical.
    pub async fn update_check(&self, check_id: &str, status: &str) -> Result<(), RegistryError> {
        match status {
            "passing" => self.client.agent_check_pass(check_id, None).await,
            "warning" => self.client.agent_check_warn(check_id, None).await,
            _ => self.client.agent_check_fail(check_id, None).await,
        }
    }
}
