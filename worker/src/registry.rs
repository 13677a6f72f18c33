//! The worker's side of the registry: a small client of the Consul agent HTTP API (service
//! register / deregister / list through the local agent, KV put / delete tree). It speaks only
//! Consul's documented API, so a berth agent and a real Consul agent both work.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_worker_api::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {base} unreachable: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// A check definition in Consul's agent form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    #[serde(rename = "Name", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(rename = "Interval", skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(rename = "Timeout", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_after: Option<String>,
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Tags")]
    pub tags: Vec<String>,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Meta")]
    pub meta: BTreeMap<String, String>,
    #[serde(rename = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// One entry of `GET /v1/agent/services`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "Port", default)]
    pub port: u16,
    #[serde(rename = "Meta", default)]
    pub meta: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Agent {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl Agent {
    pub fn new(base: impl Into<String>, token: Option<Secret>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client without TLS always builds");
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, RegistryError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path));
        if let Some(token) = self.token.as_ref().filter(|t| !t.is_empty()) {
            req = req.header("X-Consul-Token", token.expose());
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| RegistryError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| RegistryError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(RegistryError::Status {
                what: format!("{method} {path}"),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            })
        }
    }

    #[tracing::instrument(skip_all, fields(id = %reg.id), err)]
    pub async fn register(&self, reg: &Registration) -> Result<(), RegistryError> {
        let body = serde_json::to_vec(reg).expect("registration serialises");
        self.call(
            reqwest::Method::PUT,
            "/v1/agent/service/register",
            Some(body),
        )
        .await
        .map(drop)
    }

    #[tracing::instrument(skip(self), err)]
    pub async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        let path = format!("/v1/agent/service/deregister/{}", percent_encode(id));
        match self.call(reqwest::Method::PUT, &path, None).await {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(RegistryError::Status { status, .. })
                if status == reqwest::StatusCode::NOT_FOUND =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn services(&self) -> Result<HashMap<String, AgentService>, RegistryError> {
        let body = self
            .call(reqwest::Method::GET, "/v1/agent/services", None)
            .await?;
        serde_json::from_slice(&body).map_err(|e| RegistryError::Status {
            what: "GET /v1/agent/services".into(),
            status: reqwest::StatusCode::OK,
            body: e.to_string(),
        })
    }

    pub async fn kv_put(&self, key: &str, value: &str) -> Result<(), RegistryError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/kv/{key}"),
            Some(value.as_bytes().to_vec()),
        )
        .await
        .map(drop)
    }

    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), RegistryError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/kv/{prefix}?recurse=true"),
            None,
        )
        .await
        .map(drop)
    }
}

/// Percent-encodes a path segment (service ids hold `:`).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Agent {
    /// Sets a TTL check's status (`passing`, `warning`, `critical`).
    pub async fn update_check(&self, check_id: &str, status: &str) -> Result<(), RegistryError> {
        let body = serde_json::json!({ "Status": status })
            .to_string()
            .into_bytes();
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/agent/check/update/{}", percent_encode(check_id)),
            Some(body),
        )
        .await
        .map(drop)
    }
}
