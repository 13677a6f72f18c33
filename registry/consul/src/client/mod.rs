//! Typed client for the registry's Consul-compatible HTTP API (works against real Consul too).
//!
//! One file per API area (`kv`, `session`, `txn`, `catalog` with health, `agent` with status);
//! this module holds the [`Client`] itself, its errors and the request plumbing they share.

mod agent;
mod catalog;
mod kv;
mod session;
mod txn;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use kv::{KvPair, PutOptions};
pub use session::{Behavior, Session, SessionRequest};
pub use txn::{TxnError, TxnOp};

/// Time allowed for a non-blocking request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Characters escaped in a key's path segment (`/` stays a separator, as Consul clients do).
const KEY_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'+')
    .add(b'&')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("registry unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("registry answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot decode registry answer: {0}")]
    Decode(String),
}

/// An ACL token; never printed.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Client of one registry (or Consul agent) HTTP address.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Shared by clones: [`Client::set_token`] changes it for all of them.
    token: Arc<RwLock<Option<Token>>>,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8500`; `token` is sent as `X-Consul-Token` when set.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(base_url).map_err(|err| invalid(&err.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(invalid("only http:// is supported"));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .tcp_nodelay(true)
            .build()
            .map_err(|err| ClientError::Unreachable(redact_url(err)))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: Arc::new(RwLock::new(token.filter(|t| !t.is_empty()).map(Token))),
        })
    }

    /// Replaces the token sent from now on, by this client and its clones (an agent's token
    /// set at run time); empty or `None` sends none.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) =
            token.filter(|t| !t.is_empty()).map(Token);
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        match &*self.token.read().unwrap_or_else(|e| e.into_inner()) {
            Some(token) => builder.header("X-Consul-Token", &token.0),
            None => builder,
        }
    }

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, KEY_ESCAPES))
    }

    async fn send(builder: RequestBuilder) -> Result<Response, ClientError> {
        builder
            .send()
            .await
            .map_err(|err| ClientError::Unreachable(redact_url(err)))
    }

    /// Sends and returns the response if 2xx, else a `Status` error.
    async fn send_ok(builder: RequestBuilder) -> Result<Response, ClientError> {
        let response = Self::send(builder).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(status_error(response).await)
        }
    }

    async fn json<T: DeserializeOwned>(builder: RequestBuilder) -> Result<T, ClientError> {
        decode(Self::send_ok(builder).await?).await
    }

    /// Like `json`, but a 404 is `None`.
    async fn json_or_404<T: DeserializeOwned>(
        builder: RequestBuilder,
    ) -> Result<(Option<T>, u64), ClientError> {
        let response = Self::send(builder).await?;
        let index = index_of(&response);
        if response.status() == StatusCode::NOT_FOUND {
            return Ok((None, index));
        }
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        Ok((Some(decode(response).await?), index))
    }

    fn blocking(builder: RequestBuilder, index: u64, wait: Duration) -> RequestBuilder {
        let wait_ms = wait.as_millis().max(1);
        builder
            .query(&[
                ("index", index.to_string()),
                ("wait", format!("{wait_ms}ms")),
            ])
            .timeout(wait + wait / 16 + REQUEST_TIMEOUT)
    }

    async fn put_json<T: Serialize>(&self, path: &str, body: &T) -> Result<(), ClientError> {
        Self::send_ok(self.request(Method::PUT, path).json(body))
            .await
            .map(drop)
    }
}

/// Escapes one path segment (ids, names).
fn segment(value: &str) -> String {
    const SEGMENT_ESCAPES: &AsciiSet = &KEY_ESCAPES.add(b'/');
    utf8_percent_encode(value, SEGMENT_ESCAPES).to_string()
}

fn index_of(response: &Response) -> u64 {
    response
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Drops the query string and any user info from the URL a `reqwest::Error` carries (its
/// `Display` prints the URL): a `?token=` or a password must never reach a log line.
pub fn redact_url(mut err: reqwest::Error) -> reqwest::Error {
    if let Some(url) = err.url_mut() {
        url.set_query(None);
        // Both only fail for URLs that cannot carry user info, which then have none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    err
}

async fn status_error(response: Response) -> ClientError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    ClientError::Status { status, body }
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|err| ClientError::Unreachable(redact_url(err)))?;
    serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_errors_name_no_query_or_password() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = reqwest::Client::new()
            .get(format!(
                "http://user:pw@{addr}/v1/kv/a?token=s3cret&recurse"
            ))
            .send()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("s3cret"), "premise: {err}");
        let text = ClientError::Unreachable(redact_url(err)).to_string();
        assert!(text.contains(&format!("{addr}/v1/kv/a")), "{text}");
        assert!(!text.contains("s3cret") && !text.contains("pw@"), "{text}");
    }
}
