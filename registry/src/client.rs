//! Typed client for the registry's Consul-compatible HTTP API (works against real Consul too).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dto::{
    self, AgentSelf, AgentService, AgentServiceRegistration, CatalogDeregistration, CatalogNode,
    CatalogNodeServices, CatalogRegistration, CatalogService, HealthCheck, IdResponse, KvEntry,
    ServiceCheckRef, ServiceEntry, SessionCreateRequest, SessionEntry, TxnErrorEntry, TxnKvOp,
    TxnResponse,
};

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

/// A transaction failed: either it rolled back (409, with Consul's reasons) or the call failed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("transaction rolled back: {}", describe_rollback(.0))]
    RolledBack(Vec<TxnErrorEntry>),
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn describe_rollback(errors: &[TxnErrorEntry]) -> String {
    errors
        .iter()
        .map(|e| format!("op {}: {}", e.op_index, e.what))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A KV entry with its value decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

impl From<KvEntry> for KvPair {
    fn from(e: KvEntry) -> Self {
        Self {
            key: e.key,
            value: e.value.unwrap_or_default(),
            flags: e.flags,
            create_index: e.create_index,
            modify_index: e.modify_index,
            lock_index: e.lock_index,
            session: e.session.filter(|s| !s.is_empty()),
        }
    }
}

/// Options of a KV PUT: at most one of `cas`, `acquire` and `release`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub flags: u64,
    pub cas: Option<u64>,
    pub acquire: Option<String>,
    pub release: Option<String>,
}

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
            ttl: dto::parse_go_duration(&e.ttl).filter(|d| !d.is_zero()),
            node_checks: e.node_checks,
            service_checks: e.service_checks.into_iter().map(|c| c.id).collect(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

/// One KV operation of a transaction (Consul's verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Get {
        key: String,
    },
    GetOrEmpty {
        key: String,
    },
    GetTree {
        prefix: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckSession {
        key: String,
        session: String,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteTree {
        prefix: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
}

impl TxnOp {
    fn into_dto(self) -> dto::TxnOp {
        let op = |verb: &str, key: String| TxnKvOp {
            verb: verb.to_owned(),
            key,
            ..TxnKvOp::default()
        };
        let kv = match self {
            Self::Set { key, value, flags } => TxnKvOp {
                value: Some(value),
                flags: Some(flags),
                ..op("set", key)
            },
            Self::Cas {
                key,
                value,
                flags,
                index,
            } => TxnKvOp {
                value: Some(value),
                flags: Some(flags),
                index: Some(index),
                ..op("cas", key)
            },
            Self::Lock {
                key,
                value,
                session,
            } => TxnKvOp {
                value: Some(value),
                session: Some(session),
                ..op("lock", key)
            },
            Self::Unlock {
                key,
                value,
                session,
            } => TxnKvOp {
                value: Some(value),
                session: Some(session),
                ..op("unlock", key)
            },
            Self::Get { key } => op("get", key),
            Self::GetOrEmpty { key } => op("get-or-empty", key),
            Self::GetTree { prefix } => op("get-tree", prefix),
            Self::CheckIndex { key, index } => TxnKvOp {
                index: Some(index),
                ..op("check-index", key)
            },
            Self::CheckSession { key, session } => TxnKvOp {
                session: Some(session),
                ..op("check-session", key)
            },
            Self::CheckNotExists { key } => op("check-not-exists", key),
            Self::Delete { key } => op("delete", key),
            Self::DeleteTree { prefix } => op("delete-tree", prefix),
            Self::DeleteCas { key, index } => TxnKvOp {
                index: Some(index),
                ..op("delete-cas", key)
            },
        };
        dto::TxnOp { kv }
    }
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
    token: Option<Token>,
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
            token: token.filter(|t| !t.is_empty()).map(Token),
        })
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
        match &self.token {
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

    // ---- KV ----

    /// Reads one key; `None` if absent.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvPair>, ClientError> {
        Ok(self.kv_get_blocking_inner(key, None).await?.0)
    }

    /// Blocks until the key's index passes `index` (or `wait` elapses); returns the entry and
    /// the index to pass next time.
    pub async fn kv_get_blocking(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<KvPair>, u64), ClientError> {
        self.kv_get_blocking_inner(key, Some((index, wait))).await
    }

    async fn kv_get_blocking_inner(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvPair>, u64), ClientError> {
        let mut builder = self.request(Method::GET, &Self::kv_path(key));
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let (entries, index) = Self::json_or_404::<Vec<KvEntry>>(builder).await?;
        Ok((
            entries.and_then(|e| e.into_iter().next()).map(KvPair::from),
            index,
        ))
    }

    /// Every entry under `prefix`, in key order (empty if none).
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvPair>, ClientError> {
        Ok(self.kv_list_inner(prefix, None).await?.0)
    }

    /// Blocking form of [`Client::kv_list`].
    pub async fn kv_list_blocking(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<KvPair>, u64), ClientError> {
        self.kv_list_inner(prefix, Some((index, wait))).await
    }

    async fn kv_list_inner(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvPair>, u64), ClientError> {
        let mut builder = self
            .request(Method::GET, &Self::kv_path(prefix))
            .query(&[("recurse", "")]);
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let (entries, index) = Self::json_or_404::<Vec<KvEntry>>(builder).await?;
        Ok((
            entries
                .unwrap_or_default()
                .into_iter()
                .map(KvPair::from)
                .collect(),
            index,
        ))
    }

    /// Key names under `prefix`, cut after `separator` when given.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let mut builder = self
            .request(Method::GET, &Self::kv_path(prefix))
            .query(&[("keys", "")]);
        if let Some(sep) = separator {
            builder = builder.query(&[("separator", sep)]);
        }
        Ok(Self::json_or_404::<Vec<String>>(builder)
            .await?
            .0
            .unwrap_or_default())
    }

    /// Writes a value; `true` on success.
    pub async fn kv_put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<bool, ClientError> {
        self.kv_put_with(key, value, &PutOptions::default()).await
    }

    /// Writes a value with flags, check-and-set or lock options; `false` if refused.
    pub async fn kv_put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &PutOptions,
    ) -> Result<bool, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if options.flags != 0 {
            query.push(("flags", options.flags.to_string()));
        }
        if let Some(cas) = options.cas {
            query.push(("cas", cas.to_string()));
        }
        if let Some(session) = &options.acquire {
            query.push(("acquire", session.clone()));
        }
        if let Some(session) = &options.release {
            query.push(("release", session.clone()));
        }
        let builder = self
            .request(Method::PUT, &Self::kv_path(key))
            .query(&query)
            .body(value.into());
        Self::json(builder).await
    }

    /// Deletes a key (succeeds if absent).
    pub async fn kv_delete(&self, key: &str) -> Result<(), ClientError> {
        Self::send_ok(self.request(Method::DELETE, &Self::kv_path(key)))
            .await
            .map(drop)
    }

    /// Deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), ClientError> {
        Self::send_ok(
            self.request(Method::DELETE, &Self::kv_path(prefix))
                .query(&[("recurse", "")]),
        )
        .await
        .map(drop)
    }

    /// Deletes a key only if its ModifyIndex is `index`; `false` if it changed.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, ClientError> {
        let builder = self
            .request(Method::DELETE, &Self::kv_path(key))
            .query(&[("cas", index.to_string())]);
        Self::json(builder).await
    }

    // ---- sessions ----

    /// Creates a session and returns its id.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, ClientError> {
        let body = SessionCreateRequest {
            name: Some(request.name.clone()).filter(|n| !n.is_empty()),
            node: request.node.clone(),
            lock_delay: request
                .lock_delay
                .map(|d| serde_json::Value::String(dto::go_duration(d))),
            behavior: Some(request.behavior.as_str().to_owned()),
            ttl: request.ttl.map(dto::go_duration),
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

    // ---- transactions ----

    /// Runs KV operations atomically; a rollback comes back as [`TxnError::RolledBack`].
    pub async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<KvPair>, TxnError> {
        let body: Vec<dto::TxnOp> = ops.into_iter().map(TxnOp::into_dto).collect();
        let response = Self::send(self.request(Method::PUT, "/v1/txn").json(&body)).await?;
        let status = response.status();
        if status == StatusCode::CONFLICT {
            let answer: TxnResponse = decode(response).await?;
            return Err(TxnError::RolledBack(answer.errors.unwrap_or_default()));
        }
        if !status.is_success() {
            return Err(status_error(response).await.into());
        }
        let answer: TxnResponse = decode(response).await?;
        Ok(answer
            .results
            .unwrap_or_default()
            .into_iter()
            .map(|r| KvPair::from(r.kv))
            .collect())
    }

    // ---- catalog and health ----

    /// Registers a node, optionally with a service and checks.
    pub async fn catalog_register(
        &self,
        registration: &CatalogRegistration,
    ) -> Result<(), ClientError> {
        self.put_json("/v1/catalog/register", registration).await
    }

    /// Removes a node, or one of its services or checks.
    pub async fn catalog_deregister(
        &self,
        deregistration: &CatalogDeregistration,
    ) -> Result<(), ClientError> {
        self.put_json("/v1/catalog/deregister", deregistration)
            .await
    }

    /// Instances of a service, optionally only those with `tag`.
    pub async fn catalog_service(
        &self,
        name: &str,
        tag: Option<&str>,
    ) -> Result<Vec<CatalogService>, ClientError> {
        let mut builder = self.request(
            Method::GET,
            &format!("/v1/catalog/service/{}", segment(name)),
        );
        if let Some(tag) = tag {
            builder = builder.query(&[("tag", tag)]);
        }
        Self::json(builder).await
    }

    /// The datacenter of the registry (the first of `/v1/catalog/datacenters`, which needs no
    /// ACL token).
    pub async fn catalog_datacenter(&self) -> Result<String, ClientError> {
        let list: Vec<String> =
            Self::json(self.request(Method::GET, "/v1/catalog/datacenters")).await?;
        list.into_iter()
            .next()
            .ok_or_else(|| ClientError::Decode("the registry lists no datacenter".into()))
    }

    /// Every node.
    pub async fn catalog_nodes(&self) -> Result<Vec<CatalogNode>, ClientError> {
        Self::json(self.request(Method::GET, "/v1/catalog/nodes")).await
    }

    /// A node and its services; `None` for an unknown node.
    pub async fn catalog_node(
        &self,
        node: &str,
    ) -> Result<Option<CatalogNodeServices>, ClientError> {
        Self::json(self.request(Method::GET, &format!("/v1/catalog/node/{}", segment(node)))).await
    }

    /// Every check of a node.
    pub async fn health_node(&self, node: &str) -> Result<Vec<HealthCheck>, ClientError> {
        Self::json(self.request(Method::GET, &format!("/v1/health/node/{}", segment(node)))).await
    }

    /// Instances of a service with their node and checks; `passing_only` drops unhealthy ones.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
    ) -> Result<Vec<ServiceEntry>, ClientError> {
        Ok(self.health_service_inner(name, passing_only, None).await?.0)
    }

    /// Blocking form of [`Client::health_service`].
    pub async fn health_service_blocking(
        &self,
        name: &str,
        passing_only: bool,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<ServiceEntry>, u64), ClientError> {
        self.health_service_inner(name, passing_only, Some((index, wait)))
            .await
    }

    async fn health_service_inner(
        &self,
        name: &str,
        passing_only: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<ServiceEntry>, u64), ClientError> {
        let mut builder = self.request(
            Method::GET,
            &format!("/v1/health/service/{}", segment(name)),
        );
        if passing_only {
            builder = builder.query(&[("passing", "true")]);
        }
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let response = Self::send_ok(builder).await?;
        let index = index_of(&response);
        Ok((decode(response).await?, index))
    }

    // ---- agent and status ----

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
pub(crate) fn redact_url(mut err: reqwest::Error) -> reqwest::Error {
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
