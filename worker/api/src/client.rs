//! Client of the worker API, used by the master. Every request is signed with the cluster token
//! ([`crate::auth`]), which itself never leaves the process; a health check challenges the worker
//! to prove it holds the same token.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::types::{
    BuildRequest, DeleteResponse, DeployRequest, ErrorBody, LogQuery, StackStatus, StartRequest,
    WorkerHealth,
};
use crate::{Secret, ValidName, auth, routes};

#[derive(Debug, thiserror::Error)]
pub enum WorkerClientError {
    /// The worker could not be reached or the connection broke.
    #[error("worker {base} unreachable: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The worker answered with an error body.
    #[error("worker answered {status}: {}", body.error.message)]
    Api { status: StatusCode, body: ErrorBody },
    /// The worker answered a health challenge without a valid proof: it does not hold the
    /// cluster token (or is not the node it claims to be).
    #[error("worker {base} did not prove it holds the cluster token")]
    Unproven { base: String },
    /// The worker answered something that is not the API's shape.
    #[error("worker answered {status} with an unexpected body: {snippet}")]
    Protocol { status: StatusCode, snippet: String },
}

impl WorkerClientError {
    /// HTTP status the worker answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Unreachable { .. } | Self::Unproven { .. } => None,
            Self::Api { status, .. } | Self::Protocol { status, .. } => Some(*status),
        }
    }
}

/// Talks to one worker at `base` (e.g. `http://10.0.0.5:8833`).
#[derive(Debug, Clone)]
pub struct WorkerClient {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

/// Builds and starts may take long; the client waits this long for them by default.
pub const LONG_OPERATION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl WorkerClient {
    pub fn new(base: impl Into<String>, token: Secret) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client without TLS always builds");
        Self::with_http(base, token, http)
    }

    pub fn with_http(base: impl Into<String>, token: Secret, http: reqwest::Client) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (no query: add it with `.query`); [`Self::execute`] signs it.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// Signs the finished request (method, path and query, body, date, nonce) and sends it.
    /// Every call goes through here.
    async fn execute(&self, req: RequestBuilder) -> Result<reqwest::Response, WorkerClientError> {
        let mut request = req.build().map_err(|source| self.unreachable(source))?;
        let url = request.url();
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let body = request
            .body()
            .and_then(|b| b.as_bytes())
            .unwrap_or_default();
        let signed = auth::sign_now(
            &self.token,
            request.method().as_str(),
            &path_and_query,
            body,
        );
        let headers = request.headers_mut();
        for (name, value) in [
            (auth::DATE_HEADER, signed.date.to_string()),
            (auth::NONCE_HEADER, signed.nonce),
            (auth::SIGNATURE_HEADER, signed.signature),
        ] {
            headers.insert(
                name,
                value.parse().expect("digits and hex are header values"),
            );
        }
        self.http
            .execute(request)
            .await
            .map_err(|source| self.unreachable(source))
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, WorkerClientError> {
        let resp = self.execute(req).await?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| protocol(status, &body));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) => Err(WorkerClientError::Api { status, body }),
            Err(_) => Err(protocol(status, &body)),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> WorkerClientError {
        WorkerClientError::Unreachable {
            base: self.base.clone(),
            source,
        }
    }

    /// The worker's health, once it proved it holds the cluster token: it answers a fresh
    /// challenge with the HMAC of the challenge and the node it names in its answer.
    pub async fn health(&self) -> Result<WorkerHealth, WorkerClientError> {
        let challenge = auth::nonce();
        let resp = self
            .http
            .get(format!("{}{}", self.base, routes::HEALTHZ))
            .query(&[(routes::CHALLENGE, &challenge)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = resp.status();
        let proof = resp
            .headers()
            .get(auth::PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if !status.is_success() {
            return Err(protocol(status, &body));
        }
        let health: WorkerHealth =
            serde_json::from_slice(&body).map_err(|_| protocol(status, &body))?;
        match proof {
            Some(p) if auth::check_health_proof(&self.token, &challenge, &health.node, &p) => {
                Ok(health)
            }
            _ => Err(WorkerClientError::Unproven {
                base: self.base.clone(),
            }),
        }
    }

    /// Builds `req.commit`; returns when the build has ended.
    pub async fn build(
        &self,
        id: &ValidName,
        req: &BuildRequest,
    ) -> Result<StackStatus, WorkerClientError> {
        self.send(
            self.request(Method::POST, &routes::build(id))
                .timeout(LONG_OPERATION_TIMEOUT)
                .json(req),
        )
        .await
    }

    /// Starts the stack; returns once every service is ready, with its endpoints.
    pub async fn start(
        &self,
        id: &ValidName,
        req: &StartRequest,
    ) -> Result<StackStatus, WorkerClientError> {
        self.send(
            self.request(Method::POST, &routes::start(id))
                .timeout(LONG_OPERATION_TIMEOUT)
                .json(req),
        )
        .await
    }

    /// Rolls the running stack to `req.commit`; returns once the rollout ended.
    pub async fn deploy(
        &self,
        id: &ValidName,
        req: &DeployRequest,
    ) -> Result<StackStatus, WorkerClientError> {
        self.send(
            self.request(Method::POST, &routes::deploy(id))
                .timeout(LONG_OPERATION_TIMEOUT)
                .json(req),
        )
        .await
    }

    pub async fn stop(&self, id: &ValidName) -> Result<StackStatus, WorkerClientError> {
        self.send(
            self.request(Method::POST, &routes::stop(id))
                .timeout(LONG_OPERATION_TIMEOUT),
        )
        .await
    }

    pub async fn delete(
        &self,
        id: &ValidName,
        keep_volumes: bool,
    ) -> Result<DeleteResponse, WorkerClientError> {
        self.send(
            self.request(Method::DELETE, &routes::stack(id))
                .query(&[(routes::KEEP_VOLUMES, keep_volumes)])
                .timeout(LONG_OPERATION_TIMEOUT),
        )
        .await
    }

    /// The stack's status, `None` if the worker holds no such stack.
    pub async fn status(&self, id: &ValidName) -> Result<Option<StackStatus>, WorkerClientError> {
        match self
            .send(
                self.request(Method::GET, &routes::stack(id))
                    .timeout(Duration::from_secs(30)),
            )
            .await
        {
            Ok(status) => Ok(Some(status)),
            Err(WorkerClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    pub async fn list(&self) -> Result<Vec<StackStatus>, WorkerClientError> {
        self.send(
            self.request(Method::GET, routes::STACKS)
                .timeout(Duration::from_secs(30)),
        )
        .await
    }

    /// The stack's build and start log as a byte stream; with `follow` it stays open for new
    /// output until the stack's current operation ends.
    pub async fn logs(
        &self,
        id: &ValidName,
        follow: bool,
    ) -> Result<impl Stream<Item = reqwest::Result<Bytes>> + use<>, WorkerClientError> {
        let q = LogQuery {
            follow: Some(follow),
            ..LogQuery::default()
        };
        self.log_stream(id, &q).await
    }

    /// The log stream `q` asks for (operation output, the app's, or both) as bytes.
    pub async fn log_stream(
        &self,
        id: &ValidName,
        q: &LogQuery,
    ) -> Result<impl Stream<Item = reqwest::Result<Bytes>> + use<>, WorkerClientError> {
        let resp = self
            .execute(self.request(Method::GET, &routes::logs(id)).query(q))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .bytes()
                .await
                .map_err(|source| self.unreachable(source))?;
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(body) => WorkerClientError::Api { status, body },
                Err(_) => protocol(status, &body),
            });
        }
        Ok(resp.bytes_stream())
    }
}

fn protocol(status: StatusCode, body: &[u8]) -> WorkerClientError {
    WorkerClientError::Protocol {
        status,
        snippet: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}
