//! The master's public API over HTTP (blocking reqwest), with every answer that is not a 2xx
//! turned into a [`Failure`].

use std::time::Duration;

use berth_worker_api::{Endpoint, ErrorBody};
use reqwest::blocking::{Body, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Target;
use crate::failure::{ErrorReport, Exit, Failure};

#[derive(Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

/// The parts of an instance record the CLI shows (the master's JSON is printed as it is with
/// `--json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub project: String,
    pub state: String,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub built_commit: Option<String>,
    #[serde(default)]
    pub worker: Option<WorkerRef>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub services: Vec<ServiceState>,
    #[serde(default)]
    pub error: Option<RecordError>,
    #[serde(default)]
    pub updated_at: String,
}

/// One service of a running instance, as its worker's watcher last reported it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerRef {
    pub id: String,
    #[serde(default)]
    pub node: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecordError {
    pub step: String,
    pub message: String,
}

impl RecordError {
    /// `step: message`, without the log lines a worker appends to the message after
    /// `last log lines:` (`berth logs` shows those, and deploy prints the log's tail itself).
    pub fn headline(&self) -> String {
        format!("{}: {}", self.step, self.summary())
    }

    /// The message without the log lines appended to it.
    pub fn summary(&self) -> &str {
        let message = self.message.split("last log lines:").next().unwrap_or("");
        message.trim_end().trim_end_matches(';').trim_end()
    }
}

impl Record {
    pub fn parse(value: &Value) -> Result<Record, Failure> {
        serde_json::from_value(value.clone()).map_err(|e| {
            Failure::new(
                Exit::Berth,
                "protocol",
                format!("the master's instance record is not what this berth reads: {e}"),
            )
        })
    }
}

/// The URL of an endpoint: `http://` for TCP ports, `udp://` otherwise.
pub fn url_of(endpoint: &Endpoint) -> String {
    let scheme = if endpoint.protocol == "udp" {
        "udp"
    } else {
        "http"
    };
    format!("{scheme}://{}/", endpoint.address())
}

impl Client {
    pub fn new(target: &Target) -> Result<Client, Failure> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Builds and starts answer when they end; each call bounds its own wait.
            .timeout(None)
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(Exit::Berth, "client", format!("http client: {e}")))?;
        Ok(Client {
            http,
            base: target.url.clone(),
            token: target.token.clone(),
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; a 2xx answer is returned, anything else is a [`Failure`].
    pub fn send(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let resp = req.send().map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let error = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error.into(),
            Err(_) => ErrorReport {
                code: format!("http_{}", status.as_u16()),
                message: if text.trim().is_empty() {
                    format!("the master answered {status}")
                } else {
                    format!("the master answered {status}: {}", text.trim())
                },
                details: Vec::new(),
            },
        };
        Err(Failure::answered(status, error))
    }

    pub fn json(&self, req: RequestBuilder) -> Result<Value, Failure> {
        self.send(req)?.json().map_err(|e| {
            Failure::new(
                Exit::Berth,
                "protocol",
                format!("the master's answer is not JSON: {e}"),
            )
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        self.json(self.request(Method::GET, path))
    }

    pub fn post(&self, path: &str) -> Result<Value, Failure> {
        self.json(self.request(Method::POST, path))
    }

    /// The instance record, or `None` when there is no such instance.
    pub fn record(&self, id: &str) -> Result<Option<Value>, Failure> {
        match self.get(&format!("/v1/instances/{id}")) {
            Ok(v) => Ok(Some(v)),
            Err(f) if f.status == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// Uploads a tar.gz as the instance's code without building it.
    pub fn upload(
        &self,
        id: &str,
        user: &str,
        project: &str,
        body: Body,
    ) -> Result<Value, Failure> {
        let req = self
            .request(Method::PUT, &format!("/v1/instances/{id}/code"))
            .query(&[("user", user), ("project", project), ("build", "false")])
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(body);
        self.json(req)
    }

    /// The logs endpoint's stream.
    pub fn logs(&self, id: &str, query: &[(&str, String)]) -> Result<Response, Failure> {
        self.send(
            self.request(Method::GET, &format!("/v1/instances/{id}/logs"))
                .query(query),
        )
    }

    fn unreachable(&self, err: &reqwest::Error) -> Failure {
        let mut cause = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        Failure::new(
            Exit::Berth,
            "unreachable",
            format!("the master at {} did not answer: {cause}", self.base),
        )
        .with_hint("is it running? check BERTH_MASTER or the config file (berth --help)")
    }
}

#[cfg(test)]
mod tests {
    use super::RecordError;

    #[test]
    fn an_error_headline_leaves_the_log_lines_out() {
        let err = |message: &str| RecordError {
            step: "build".into(),
            message: message.into(),
        };
        assert_eq!(
            err("build of service api failed: exit code: 1; last log lines:\n[api] #6 ERROR")
                .headline(),
            "build: build of service api failed: exit code: 1"
        );
        assert_eq!(err("no such image").headline(), "build: no such image");
    }
}
