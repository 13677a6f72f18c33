//! The local agent (services, TTL checks, `/v1/agent/self`) and `/v1/status/*`.

use std::collections::HashMap;

use reqwest::Method;

use super::{Client, ClientError, segment};
use crate::types::{AgentSelf, AgentService, AgentServiceRegistration};

impl Client {
    /// Registers a service (and its checks) with the local agent.
    pub async fn agent_service_register(
        &self,
        registration: &AgentServiceRegistration,
    ) -> Result<(), ClientError> {
        self.put_json("/v1/agent/service/register", registration)
            .await
    }

    /// Removes a service from the local agent.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<(), ClientError> {
        Self::send_ok(self.request(
            Method::PUT,
            &format!("/v1/agent/service/deregister/{}", segment(id)),
        ))
        .await
        .map(drop)
    }

    /// The local agent's services by id.
    pub async fn agent_services(&self) -> Result<HashMap<String, AgentService>, ClientError> {
        Self::json(self.request(Method::GET, "/v1/agent/services")).await
    }

    /// Marks a TTL check passing.
    pub async fn agent_check_pass(&self, id: &str, note: Option<&str>) -> Result<(), ClientError> {
        self.agent_check("pass", id, note).await
    }

    /// Marks a TTL check warning.
    pub async fn agent_check_warn(&self, id: &str, note: Option<&str>) -> Result<(), ClientError> {
        self.agent_check("warn", id, note).await
    }

    /// Marks a TTL check critical.
    pub async fn agent_check_fail(&self, id: &str, note: Option<&str>) -> Result<(), ClientError> {
        self.agent_check("fail", id, note).await
    }

    async fn agent_check(
        &self,
        verb: &str,
        id: &str,
        note: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut builder = self.request(
            Method::PUT,
            &format!("/v1/agent/check/{verb}/{}", segment(id)),
        );
        if let Some(note) = note {
            builder = builder.query(&[("note", note)]);
        }
        Self::send_ok(builder).await.map(drop)
    }

    /// Sets a TTL check's status (`passing`, `warning`, `critical`) and output
    /// (`PUT /v1/agent/check/update/<id>`).
    pub async fn agent_check_update(
        &self,
        id: &str,
        status: &str,
        output: &str,
    ) -> Result<(), ClientError> {
        self.put_json(
            &format!("/v1/agent/check/update/{}", segment(id)),
            &serde_json::json!({ "Status": status, "Output": output }),
        )
        .await
    }

    /// The agent's configuration and membership.
    pub async fn agent_self(&self) -> Result<AgentSelf, ClientError> {
        Self::json(self.request(Method::GET, "/v1/agent/self")).await
    }

    /// The leader's address (`ip:port`), empty while there is none.
    pub async fn status_leader(&self) -> Result<String, ClientError> {
        Self::json(self.request(Method::GET, "/v1/status/leader")).await
    }

    /// The addresses of the voting servers.
    pub async fn status_peers(&self) -> Result<Vec<String>, ClientError> {
        Self::json(self.request(Method::GET, "/v1/status/peers")).await
    }
}
