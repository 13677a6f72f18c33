//! Client of the worker API, used by the master. Every call carries the cluster token.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::types::{
    BuildRequest, DeleteResponse, ErrorBody, LogQuery, StackStatus, StartRequest, WorkerHealth,
};
use crate::{Secret, ValidName, routes};

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
    /// The worker answered something that is not the API's shape.
    #[error("worker answered {status} with an unexpected body: {snippet}")]
    Protocol { status: StatusCode, snippet: String },
}

impl WorkerClientError {
    /// HTTP status the worker answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Unreachable { .. } => None,
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

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token.expose())
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, WorkerClientError> {
        let resp = req
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
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

    pub async fn health(&self) -> Result<WorkerHealth, WorkerClientError> {
        self.send(
            self.request(Method::GET, routes::HEALTHZ)
                .timeout(Duration::from_secs(10)),
        )
        .await
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
            .request(Method::GET, &routes::logs(id))
            .query(q)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
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
