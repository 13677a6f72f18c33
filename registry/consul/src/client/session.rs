//! Sessions: create, destroy, renew and read.

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientError, segment};
use crate::duration::{go_duration, parse_go_duration};
use crate::types::{IdResponse, ServiceCheckRef, SessionCreateRequest, SessionEntry};

/// What happens to a session's locks when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Behavior {
    #[default]
    Release,
    Delete,
}

impl Behavior {
    fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Delete => "delete",
        }
    }
}

/// A session to create. `node: None` means the agent's own node; `node_checks: None` means
/// Consul's default (`serfHealth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRequest {
    pub name: String,
    pub node: Option<String>,
    pub ttl: Option<Duration>,
    pub lock_delay: Option<Duration>,
    pub behavior: Behavior,
    pub node_checks: Option<Vec<String>>,
    pub service_checks: Vec<String>,
}

/// A session as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: Behavior,
    pub ttl: Option<Duration>,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl From<SessionEntry> for Session {
    fn from(e: SessionEntry) -> Self {
        Self {
            id: e.id,
            name: e.name,
            node: e.node,
            lock_delay: Duration::from_nanos(e.lock_delay),
            behavior: if e.behavior == "delete" {
                Behavior::Delete
            } else {
                Behavior::Release
            },
            ttl: parse_go_duration(&e.ttl).filter(|d| !d.is_zero()),
            node_checks: e.node_checks,
            service_checks: e.service_checks.into_iter().map(|c| c.id).collect(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

impl Client {
    /// Creates a session and returns its id.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, ClientError> {
        let body = SessionCreateRequest {
            name: Some(request.name.clone()).filter(|n| !n.is_empty()),
            node: request.node.clone(),
            lock_delay: request
                .lock_delay
                .map(|d| serde_json::Value::String(go_duration(d))),
            behavior: Some(request.behavior.as_str().to_owned()),
            ttl: request.ttl.map(go_duration),
            node_checks: request.node_checks.clone(),
            service_checks: Some(
                request
                    .service_checks
                    .iter()
                    .map(|id| ServiceCheckRef {
                        id: id.clone(),
                        namespace: None,
                    })
                    .collect(),
            )
            .filter(|v: &Vec<ServiceCheckRef>| !v.is_empty()),
            ..SessionCreateRequest::default()
        };
        let created: IdResponse =
            Self::json(self.request(Method::PUT, "/v1/session/create").json(&body)).await?;
        Ok(created.id)
    }

    /// Destroys a session, releasing or deleting its locks.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ClientError> {
        Self::send_ok(self.request(Method::PUT, &format!("/v1/session/destroy/{}", segment(id))))
            .await
            .map(drop)
    }

    /// Renews a TTL session; `None` if it no longer exists.
    pub async fn session_renew(&self, id: &str) -> Result<Option<Session>, ClientError> {
        let builder = self.request(Method::PUT, &format!("/v1/session/renew/{}", segment(id)));
        let (entries, _) = Self::json_or_404::<Vec<SessionEntry>>(builder).await?;
        Ok(entries
            .and_then(|e| e.into_iter().next())
            .map(Session::from))
    }

    /// One session, `None` if unknown.
    pub async fn session_info(&self, id: &str) -> Result<Option<Session>, ClientError> {
        let entries: Vec<SessionEntry> =
            Self::json(self.request(Method::GET, &format!("/v1/session/info/{}", segment(id))))
                .await?;
        Ok(entries.into_iter().next().map(Session::from))
    }

    /// Every session.
    pub async fn session_list(&self) -> Result<Vec<Session>, ClientError> {
        let entries: Vec<SessionEntry> =
            Self::json(self.request(Method::GET, "/v1/session/list")).await?;
        Ok(entries.into_iter().map(Session::from).collect())
    }

    /// The sessions of one node.
    pub async fn session_node(&self, node: &str) -> Result<Vec<Session>, ClientError> {
        let entries: Vec<SessionEntry> =
            Self::json(self.request(Method::GET, &format!("/v1/session/node/{}", segment(node))))
                .await?;
        Ok(entries.into_iter().map(Session::from).collect())
    }
}
