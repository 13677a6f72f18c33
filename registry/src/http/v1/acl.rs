//! ACLs over HTTP: the token extractor every handler uses ([`Authz`]), the middleware that
//! resolves it, and `/v1/acl/*` (bootstrap, tokens, policies).
//!
//! Tokens and policies are kept in [`AclStore`]: in memory, and in `acl.json` in the data
//! directory (written to a temporary file, fsynced, renamed) when the server is durable.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::acl::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET, AclError, AclResolver, Authorizer,
    MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME, Need, Policy, PolicyLink, Resource, SecretId,
    Token, parse_rules,
};
use crate::http::{ApiError, Params, json};

/// The resolved authorizer of the request (everything allowed when ACLs are off), put in the
/// request's extensions by the ACL middleware.
#[derive(Clone)]
pub(crate) struct Authz(pub(crate) Arc<Authorizer>);

impl Authz {
    pub(crate) fn allows(&self, resource: Resource, name: &str, need: Need) -> bool {
        self.0.allows(resource, name, need)
    }

    pub(crate) fn require(
        &self,
        resource: Resource,
        name: &str,
        need: Need,
    ) -> Result<(), ApiError> {
        if self.allows(resource, name, need) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("Permission denied".into()))
        }
    }

    pub(crate) fn require_ok(&self, ok: bool) -> Result<(), ApiError> {
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden("Permission denied".into()))
        }
    }
}

/// Fails closed: a route whose router lacks the resolving middleware answers 500 instead of
/// running without ACLs (the server's [`layer`], or the agent's, must wrap every route that
/// takes an `Authz`).
impl<S: Send + Sync> FromRequestParts<S> for Authz {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Authz>().cloned().ok_or_else(|| {
            tracing::error!(path = %parts.uri.path(), "route without ACL resolution refused");
            ApiError::Internal("ACL resolution missing for this route".into())
        })
    }
}

/// The secret presented with the request: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer`; empty values count as absent.
pub(crate) fn presented_token(parts: &Parts) -> Option<String> {
    let from_query = parts
        .uri
        .query()
        .map(|_| Params::parse(&parts.uri))
        .and_then(|p| p.get("token").map(str::to_owned));
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
    [from_query, header("x-consul-token"), bearer]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
}

/// Request span without the query string, which may carry `?token=`: tokens never reach logs.
pub(crate) fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}

/// Sets `X-Consul-Results-Filtered-By-ACLs: true` when something was dropped.
pub(crate) fn filtered(mut response: Response, dropped: bool) -> Response {
    if dropped {
        response.headers_mut().insert(
            HeaderName::from_static("x-consul-results-filtered-by-acls"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Persisted {
    bootstrapped: bool,
    /// Index at which the ACL system was bootstrapped (Consul's "reset index").
    bootstrap_index: u64,
    index: u64,
    /// Accessor of the stored record of the configured master token.
    master_accessor: Option<String>,
    tokens: Vec<Token>,
    policies: Vec<Policy>,
}

impl Persisted {
    /// Makes the configured master token and the anonymous token real tokens, and marks the
    /// ACL system bootstrapped, as Consul's leader does for `initial_management`. Returns
    /// whether anything changed.
    fn seed(&mut self, master: &SecretId) -> bool {
        let before = (
            self.bootstrapped,
            self.index,
            self.master_accessor.clone(),
            self.tokens.clone(),
        );
        if !self.bootstrapped {
            self.index += 1;
            self.bootstrapped = true;
            self.bootstrap_index = self.index;
        }
        let now = now_rfc3339();
        if !self
            .tokens
            .iter()
            .any(|t| t.accessor_id == ANONYMOUS_ACCESSOR_ID)
        {
            self.index += 1;
            // A token made with the literal secret `anonymous` already acted as the anonymous
            // token: it becomes the real one, policies kept.
            match self
                .tokens
                .iter_mut()
                .find(|t| t.secret_id.matches(ANONYMOUS_SECRET))
            {
                Some(t) => {
                    t.accessor_id = ANONYMOUS_ACCESSOR_ID.to_owned();
                    t.modify_index = self.index;
                }
                None => self.tokens.push(Token {
                    accessor_id: ANONYMOUS_ACCESSOR_ID.to_owned(),
                    secret_id: SecretId::new(ANONYMOUS_SECRET),
                    description: "Anonymous Token".to_owned(),
                    policies: vec![],
                    local: false,
                    create_time: now.clone(),
                    create_index: self.index,
                    modify_index: self.index,
                }),
            }
        }
        let by_secret = self
            .tokens
            .iter()
            .find(|t| t.secret_id.matches(master.expose()))
            .map(|t| t.accessor_id.clone());
        let recorded = self
            .master_accessor
            .clone()
            .filter(|a| self.tokens.iter().any(|t| t.accessor_id == *a));
        match (by_secret, recorded) {
            (Some(accessor), _) => self.master_accessor = Some(accessor),
            // The configured master token changed: the record follows it (rotation).
            (None, Some(accessor)) => {
                self.index += 1;
                let index = self.index;
                if let Some(t) = self.tokens.iter_mut().find(|t| t.accessor_id == accessor) {
                    t.secret_id = master.clone();
                    t.modify_index = index;
                }
            }
            (None, None) => {
                self.index += 1;
                let accessor = uuid::Uuid::new_v4().to_string();
                self.tokens.push(Token {
                    accessor_id: accessor.clone(),
                    secret_id: master.clone(),
                    description: "Initial Management Token".to_owned(),
                    policies: vec![PolicyLink {
                        id: MANAGEMENT_POLICY_ID.into(),
                        name: MANAGEMENT_POLICY_NAME.into(),
                    }],
                    local: false,
                    create_time: now,
                    create_index: self.index,
                    modify_index: self.index,
                });
                self.master_accessor = Some(accessor);
            }
        }
        before
            != (
                self.bootstrapped,
                self.index,
                self.master_accessor.clone(),
                self.tokens.clone(),
            )
    }
}

/// Tokens, policies and the resolver built from them.
pub(crate) struct AclStore {
    resolver: RwLock<AclResolver>,
    data: RwLock<Persisted>,
    file: Option<PathBuf>,
}

impl AclStore {
    /// ACLs off.
    pub(crate) fn disabled() -> Self {
        Self {
            resolver: RwLock::new(AclResolver::disabled()),
            data: RwLock::default(),
            file: None,
        }
    }

    /// ACLs on with `master` as the management token, loading `dir/acl.json` if present. The
    /// master and anonymous tokens are stored as real tokens, and the system counts as
    /// bootstrapped: `/v1/acl/bootstrap` is refused.
    pub(crate) fn enabled(master: SecretId, dir: Option<PathBuf>) -> std::io::Result<Self> {
        let file = dir.map(|d| d.join("acl.json"));
        let mut data: Persisted = match &file {
            Some(f) if f.exists() => serde_json::from_slice(&std::fs::read(f)?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            _ => Persisted::default(),
        };
        if data.seed(&master)
            && let Some(f) = &file
        {
            let bytes = serde_json::to_vec(&data).map_err(std::io::Error::other)?;
            write_atomic(f, &bytes)?;
        }
        let mut resolver = AclResolver::enabled(master);
        resolver.load(data.tokens.clone(), data.policies.clone());
        Ok(Self {
            resolver: RwLock::new(resolver),
            data: RwLock::new(data),
            file,
        })
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_enabled()
    }

    fn resolve(&self, secret: Option<&str>) -> Result<Authorizer, AclError> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(secret)
    }

    fn rule_texts(&self, secret: Option<&str>) -> Result<Option<Vec<String>>, AclError> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .rule_texts(secret)
    }

    fn token_by_secret(&self, secret: &str) -> Option<Token> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .token_for(secret)
            .cloned()
    }

    /// Applies `change` to the data, persists it, then reloads the resolver.
    fn modify<T>(
        &self,
        change: impl FnOnce(&mut Persisted) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let out = change(&mut data)?;
        if let Some(file) = &self.file {
            let bytes =
                serde_json::to_vec(&*data).map_err(|e| ApiError::Internal(e.to_string()))?;
            write_atomic(file, &bytes).map_err(|e| {
                tracing::error!(cause = %e, "persisting ACL data failed");
                ApiError::Internal("failed to persist ACL data".into())
            })?;
        }
        self.resolver
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .load(data.tokens.clone(), data.policies.clone());
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Persisted) -> T) -> T {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Middleware: resolves the request's token once and stores the [`Authz`] in its extensions.
/// Unknown tokens get 403 `ACL not found`.
pub(crate) async fn layer(
    State(acl): State<Arc<AclStore>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let secret = presented_token(&parts);
    match acl.resolve(secret.as_deref()) {
        Ok(authorizer) => {
            parts.extensions.insert(Authz(Arc::new(authorizer)));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(err) => ApiError::Forbidden(err.to_string()).into_response(),
    }
}

/// `/v1/acl/*` routes.
pub(crate) fn routes(acl: Arc<AclStore>) -> Router {
    Router::new()
        .route("/v1/acl/bootstrap", put(bootstrap))
        .route("/v1/acl/token", put(token_create))
        .route("/v1/acl/token/self", get(token_self))
        .route(
            "/v1/acl/token/{id}",
            get(token_read).put(token_update).delete(token_delete),
        )
        .route("/v1/acl/tokens", get(token_list))
        .route("/v1/acl/policy", put(policy_create))
        .route("/v1/acl/policy/name/{name}", get(policy_by_name))
        .route(
            "/v1/acl/policy/{id}",
            get(policy_read).put(policy_update).delete(policy_delete),
        )
        .route("/v1/acl/policies", get(policy_list))
        .route("/v1/internal/berth/acl/resolve", put(resolve_for_agent))
        .with_state(acl)
}

/// Body of `PUT /v1/internal/berth/acl/resolve`, by which a `berth-registry agent` asks how a
/// token presented to it resolves. The agent authenticates with its own token, which needs
/// `node:write` on the agent's node (as for its heartbeats). No `Debug`: it carries a secret.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ResolveRequest {
    /// The asking agent's node.
    pub(crate) node: String,
    /// The secret to resolve; empty for the anonymous token.
    #[serde(rename = "SecretID")]
    pub(crate) secret_id: String,
}

/// Answer of `PUT /v1/internal/berth/acl/resolve`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ResolveAnswer {
    /// ACLs are on at the server.
    pub(crate) enabled: bool,
    /// False for an unknown secret: the agent answers `ACL not found`.
    pub(crate) found: bool,
    /// Everything is allowed: ACLs are off, or a management token.
    pub(crate) management: bool,
    /// Rules texts of the token's policies.
    pub(crate) rules: Vec<String>,
}

async fn resolve_for_agent(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ResolveRequest = decode(&headers, body).await?;
    if req.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    authz.require(Resource::Node, &req.node, Need::Write)?;
    let secret = Some(req.secret_id.as_str()).filter(|s| !s.is_empty());
    let enabled = acl.is_enabled();
    let answer = match acl.rule_texts(secret) {
        Ok(None) => ResolveAnswer {
            enabled,
            found: true,
            management: true,
            rules: vec![],
        },
        Ok(Some(rules)) => ResolveAnswer {
            enabled,
            found: true,
            management: false,
            rules,
        },
        Err(AclError::NotFound) => ResolveAnswer {
            enabled,
            ..ResolveAnswer::default()
        },
        Err(err) => return Err(ApiError::Forbidden(err.to_string())),
    };
    Ok(json(&answer))
}

fn ensure_enabled(acl: &AclStore) -> Result<(), ApiError> {
    if acl.is_enabled() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("ACL support disabled".into()))
    }
}

fn acl_need(acl: &AclStore, authz: &Authz, need: Need) -> Result<(), ApiError> {
    ensure_enabled(acl)?;
    authz.require_ok(authz.0.acl(need))
}

/// Token on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TokenDto {
    #[serde(rename = "AccessorID", default)]
    accessor_id: String,
    #[serde(rename = "SecretID", default)]
    secret_id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    policies: Vec<LinkDto>,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    create_time: String,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LinkDto {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    name: String,
}

/// Policy on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyDto {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rules: String,
    #[serde(default)]
    datacenters: Vec<String>,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
}

fn token_dto(t: &Token) -> TokenDto {
    TokenDto {
        accessor_id: t.accessor_id.clone(),
        secret_id: t.secret_id.expose().to_owned(),
        description: t.description.clone(),
        policies: t
            .policies
            .iter()
            .map(|p| LinkDto {
                id: p.id.clone(),
                name: p.name.clone(),
            })
            .collect(),
        local: t.local,
        create_time: t.create_time.clone(),
        hash: String::new(),
        create_index: t.create_index,
        modify_index: t.modify_index,
    }
}

fn policy_dto(p: &Policy) -> PolicyDto {
    PolicyDto {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        rules: p.rules.clone(),
        datacenters: p.datacenters.clone(),
        hash: String::new(),
        create_index: p.create_index,
        modify_index: p.modify_index,
    }
}

fn management_policy() -> Policy {
    Policy {
        id: MANAGEMENT_POLICY_ID.into(),
        name: MANAGEMENT_POLICY_NAME.into(),
        description: "Builtin Policy that grants unlimited access".into(),
        rules: String::new(),
        datacenters: vec![],
        create_index: 1,
        modify_index: 1,
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

async fn decode<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = crate::http::read_body(headers, body, 1024 * 1024).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    crate::http::decode::decode_acl(&bytes).map_err(ApiError::BadRequest)
}

/// `PUT /v1/acl/bootstrap`: ACLs are only on with a configured master token, which bootstraps
/// the system at start (as Consul's `initial_management`), so this is always refused.
async fn bootstrap(State(acl): State<Arc<AclStore>>) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    Err(ApiError::Forbidden(format!(
        "Permission denied: ACL bootstrap no longer allowed (reset index: {})",
        acl.read(|d| d.bootstrap_index)
    )))
}

fn resolve_links(d: &Persisted, links: &[LinkDto]) -> Result<Vec<PolicyLink>, ApiError> {
    links
        .iter()
        .map(|l| {
            if l.id == MANAGEMENT_POLICY_ID || (l.id.is_empty() && l.name == MANAGEMENT_POLICY_NAME)
            {
                return Ok(PolicyLink {
                    id: MANAGEMENT_POLICY_ID.into(),
                    name: MANAGEMENT_POLICY_NAME.into(),
                });
            }
            d.policies
                .iter()
                .find(|p| {
                    (!l.id.is_empty() && p.id == l.id) || (l.id.is_empty() && p.name == l.name)
                })
                .map(|p| PolicyLink {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "No such ACL policy with {}",
                        if l.id.is_empty() {
                            format!("name {:?}", l.name)
                        } else {
                            format!("ID {:?}", l.id)
                        }
                    ))
                })
        })
        .collect()
}

async fn token_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: TokenDto = decode(&headers, body).await?;
    let token = acl.modify(|d| {
        let policies = resolve_links(d, &req.policies)?;
        let secret = if req.secret_id.is_empty() {
            SecretId::generate()
        } else {
            SecretId::new(req.secret_id.clone())
        };
        if d.tokens
            .iter()
            .any(|t| t.secret_id.matches(secret.expose()))
        {
            return Err(ApiError::BadRequest(
                "Invalid Token: SecretID is already in use".into(),
            ));
        }
        if !req.accessor_id.is_empty() && d.tokens.iter().any(|t| t.accessor_id == req.accessor_id)
        {
            return Err(ApiError::BadRequest(
                "Invalid Token: AccessorID is already in use".into(),
            ));
        }
        d.index += 1;
        let token = Token {
            accessor_id: if req.accessor_id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                req.accessor_id.clone()
            },
            secret_id: secret,
            description: req.description.clone(),
            policies,
            local: req.local,
            create_time: now_rfc3339(),
            create_index: d.index,
            modify_index: d.index,
        };
        d.tokens.push(token.clone());
        Ok(token)
    })?;
    Ok(json(&token_dto(&token)))
}

async fn token_self(
    State(acl): State<Arc<AclStore>>,
    request: Request,
) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    let (parts, _) = request.into_parts();
    let secret = presented_token(&parts).unwrap_or_else(|| ANONYMOUS_SECRET.to_owned());
    match acl.token_by_secret(&secret) {
        Some(t) => Ok(json(&token_dto(&t))),
        None => Err(ApiError::Forbidden("ACL not found".into())),
    }
}

/// Consul's placeholder for a secret the caller may not see.
const REDACTED: &str = "<hidden>";

/// A token as `authz` may see it: the secret only with `acl:write` (Consul's
/// `redactTokenSecret`), since `acl:read` must not be a way to borrow other tokens.
fn visible_token(t: &Token, authz: &Authz) -> TokenDto {
    let mut dto = token_dto(t);
    if !authz.0.acl(Need::Write) {
        dto.secret_id = REDACTED.to_owned();
    }
    dto
}

async fn token_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| {
        d.tokens
            .iter()
            .find(|t| t.accessor_id == id)
            .map(|t| visible_token(t, &authz))
    })
    .map(|t| json(&t))
    .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))
}

async fn token_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: TokenDto = decode(&headers, body).await?;
    let token = acl.modify(|d| {
        let policies = resolve_links(d, &req.policies)?;
        d.index += 1;
        let index = d.index;
        let t = d
            .tokens
            .iter_mut()
            .find(|t| t.accessor_id == id)
            .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
        t.description.clone_from(&req.description);
        t.policies = policies;
        t.local = req.local;
        t.modify_index = index;
        Ok(t.clone())
    })?;
    Ok(json(&token_dto(&token)))
}

async fn token_delete(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    acl.modify(|d| {
        if id == ANONYMOUS_ACCESSOR_ID {
            return Err(ApiError::BadRequest(
                "Delete operation not permitted on the anonymous token".into(),
            ));
        }
        if d.master_accessor.as_deref() == Some(id.as_str()) {
            return Err(ApiError::BadRequest(
                "Delete operation not permitted on the configured master token".into(),
            ));
        }
        d.tokens.retain(|t| t.accessor_id != id);
        d.index += 1;
        Ok(())
    })?;
    Ok(json(&true))
}

async fn token_list(State(acl): State<Arc<AclStore>>, authz: Authz) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let list: Vec<TokenDto> =
        acl.read(|d| d.tokens.iter().map(|t| visible_token(t, &authz)).collect());
    Ok(json(&list))
}

async fn policy_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: PolicyDto = decode(&headers, body).await?;
    if req.name.is_empty() {
        return Err(ApiError::BadRequest(
            "Invalid Policy: no Name is set".into(),
        ));
    }
    parse_rules(&req.rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let policy = acl.modify(|d| {
        if req.name == MANAGEMENT_POLICY_NAME || d.policies.iter().any(|p| p.name == req.name) {
            return Err(ApiError::BadRequest(format!(
                "Invalid Policy: A Policy with Name {:?} already exists",
                req.name
            )));
        }
        d.index += 1;
        let p = Policy {
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            description: req.description.clone(),
            rules: req.rules.clone(),
            datacenters: req.datacenters.clone(),
            create_index: d.index,
            modify_index: d.index,
        };
        d.policies.push(p.clone());
        Ok(p)
    })?;
    Ok(json(&policy_dto(&policy)))
}

fn find_policy(d: &Persisted, pick: impl Fn(&Policy) -> bool) -> Option<Policy> {
    let builtin = management_policy();
    if pick(&builtin) {
        return Some(builtin);
    }
    d.policies.iter().find(|p| pick(p)).cloned()
}

async fn policy_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| find_policy(d, |p| p.id == id))
        .map(|p| json(&policy_dto(&p)))
        .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))
}

async fn policy_by_name(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| find_policy(d, |p| p.name == name))
        .map(|p| json(&policy_dto(&p)))
        .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))
}

async fn policy_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: PolicyDto = decode(&headers, body).await?;
    parse_rules(&req.rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let policy = acl.modify(|d| {
        d.index += 1;
        let index = d.index;
        let p = d
            .policies
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
        if !req.name.is_empty() {
            p.name.clone_from(&req.name);
        }
        p.description.clone_from(&req.description);
        p.rules.clone_from(&req.rules);
        p.datacenters.clone_from(&req.datacenters);
        p.modify_index = index;
        Ok(p.clone())
    })?;
    Ok(json(&policy_dto(&policy)))
}

async fn policy_delete(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    if id == MANAGEMENT_POLICY_ID {
        return Err(ApiError::BadRequest(
            "Cannot delete the builtin global-management policy".into(),
        ));
    }
    acl.modify(|d| {
        d.policies.retain(|p| p.id != id);
        for t in &mut d.tokens {
            t.policies.retain(|l| l.id != id);
        }
        d.index += 1;
        Ok(())
    })?;
    Ok(json(&true))
}

async fn policy_list(State(acl): State<Arc<AclStore>>, authz: Authz) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let list: Vec<PolicyDto> = acl.read(|d| {
        std::iter::once(management_policy())
            .chain(d.policies.iter().cloned())
            .map(|p| policy_dto(&p))
            .collect()
    });
    Ok(json(&list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(master: &str, dir: &std::path::Path) -> AclStore {
        AclStore::enabled(SecretId::new(master), Some(dir.to_owned())).unwrap()
    }

    #[test]
    fn seeded_tokens_survive_restarts_and_follow_the_configured_master() {
        let dir = tempfile::tempdir().unwrap();
        let first = store("root", dir.path());
        let (accessor, index) = first.read(|d| {
            assert!(d.bootstrapped);
            (d.master_accessor.clone().unwrap(), d.bootstrap_index)
        });
        assert_eq!(first.token_by_secret("root").unwrap().accessor_id, accessor);
        assert_eq!(
            first.token_by_secret(ANONYMOUS_SECRET).unwrap().accessor_id,
            ANONYMOUS_ACCESSOR_ID
        );
        drop(first);
        // A restart with the same master token changes nothing.
        let again = store("root", dir.path());
        again.read(|d| {
            assert_eq!(d.master_accessor.as_deref(), Some(accessor.as_str()));
            assert_eq!(d.bootstrap_index, index);
            assert_eq!(d.tokens.len(), 2);
        });
        drop(again);
        // A new master token replaces the old one's secret: the old one stops working.
        let rotated = store("root-2", dir.path());
        assert!(rotated.token_by_secret("root").is_none());
        assert_eq!(
            rotated.token_by_secret("root-2").unwrap().accessor_id,
            accessor
        );
        assert!(rotated.resolve(Some("root")).is_err());
        assert!(rotated.resolve(Some("root-2")).unwrap().is_management());
    }

    #[test]
    fn a_token_with_the_anonymous_secret_becomes_the_anonymous_token() {
        let mut data = Persisted {
            tokens: vec![Token {
                accessor_id: "custom".into(),
                secret_id: SecretId::new(ANONYMOUS_SECRET),
                description: "made before the anonymous token was seeded".into(),
                policies: vec![PolicyLink {
                    id: "p1".into(),
                    name: "dns".into(),
                }],
                local: false,
                create_time: String::new(),
                create_index: 1,
                modify_index: 1,
            }],
            ..Persisted::default()
        };
        assert!(data.seed(&SecretId::new("root")));
        let anon: Vec<&Token> = data
            .tokens
            .iter()
            .filter(|t| t.secret_id.matches(ANONYMOUS_SECRET))
            .collect();
        assert_eq!(anon.len(), 1);
        assert_eq!(anon[0].accessor_id, ANONYMOUS_ACCESSOR_ID);
        assert_eq!(anon[0].policies[0].name, "dns");
        assert!(
            !data.seed(&SecretId::new("root")),
            "seeding twice is a no-op"
        );
    }
}
