//! `/v1/acl/*`: bootstrap, tokens, policies, and the token resolution agents ask for. The
//! tokens and policies live in [`AclStore`]; the extractor and middleware in `http::authz`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use crate::acl::store::{AclStore, Persisted};
use crate::acl::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET, AclError, MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME, Need, NodeIdentity, Policy, PolicyLink, Resource, Role, SecretId,
    ServiceIdentity, Token, parse_rules,
};
use crate::convert::{
    LinkDto, PolicyDto, RoleDto, TokenDto, node_identities_of, policy_dto, role_dto,
    service_identities_of, token_dto,
};
use crate::http::authz::{Authz, presented_token};
use crate::http::query::ConsulQuery;
use crate::http::{ApiError, json, plain};

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
        .route("/v1/acl/token/{id}/clone", put(token_clone))
        .route("/v1/acl/tokens", get(token_list))
        .route("/v1/acl/role", put(role_create))
        .route("/v1/acl/role/name/{name}", get(role_by_name))
        .route(
            "/v1/acl/role/{id}",
            get(role_read).put(role_update).delete(role_delete),
        )
        .route("/v1/acl/roles", get(role_list))
        .route("/v1/acl/auth-methods", get(empty_list))
        .route("/v1/acl/auth-method", put(auth_method_write))
        .route(
            "/v1/acl/auth-method/{name}",
            get(auth_method_read).put(auth_method_write).delete(deleted),
        )
        .route("/v1/acl/binding-rules", get(empty_list))
        .route("/v1/acl/binding-rule", put(binding_rule_create))
        .route(
            "/v1/acl/binding-rule/{id}",
            get(binding_rule_read)
                .put(binding_rule_update)
                .delete(deleted),
        )
        .route("/v1/acl/login", post(login))
        .route("/v1/acl/logout", post(logout))
        .route("/v1/acl/templated-policies", get(templated_policies))
        .route(
            "/v1/acl/templated-policy/name/{name}",
            get(templated_policies),
        )
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

/// [`AclStore::modify`] with the handlers' error type. Expired tokens are reaped on the way
/// (they already count as gone everywhere), so they do not pile up in the store.
fn modify<T>(
    acl: &AclStore,
    change: impl FnOnce(&mut Persisted) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    acl.modify(|d| {
        let now = std::time::SystemTime::now();
        d.tokens.retain(|t| !t.is_expired(now));
        change(d)
    })
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

/// Links to roles given by ID or name (Consul's texts for one that does not exist).
fn resolve_role_links(d: &Persisted, links: &[LinkDto]) -> Result<Vec<PolicyLink>, ApiError> {
    links
        .iter()
        .map(|l| {
            d.roles
                .iter()
                .find(|r| {
                    (!l.id.is_empty() && r.id == l.id) || (l.id.is_empty() && r.name == l.name)
                })
                .map(|r| PolicyLink {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
                .ok_or_else(|| {
                    ApiError::BadRequest(if l.id.is_empty() {
                        format!("No such ACL role with name {:?}", l.name)
                    } else {
                        format!("No such ACL role with ID {:?}", l.id)
                    })
                })
        })
        .collect()
}

/// Whether `name` is a valid service or node identity name (Consul's rule).
fn valid_identity_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(inner)
}

/// The identities of a token or role body (`of` is "token" or "role"), checked as Consul.
fn identities(
    services: &[crate::convert::ServiceIdentityDto],
    nodes: &[crate::convert::NodeIdentityDto],
    templated: &[serde_json::Value],
    of: &str,
) -> Result<(Vec<ServiceIdentity>, Vec<NodeIdentity>), ApiError> {
    if !templated.is_empty() {
        return Err(ApiError::BadRequest(
            "templated policies are not implemented by berth".into(),
        ));
    }
    for s in services {
        if s.service_name.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "Service identity is missing the service name field on this {of}"
            )));
        }
        if !valid_identity_name(&s.service_name) {
            return Err(ApiError::BadRequest(format!(
                "Service identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                s.service_name
            )));
        }
    }
    for n in nodes {
        if n.node_name.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "Node identity is missing the node name field on this {of}"
            )));
        }
        if !valid_identity_name(&n.node_name) {
            return Err(ApiError::BadRequest(format!(
                "Node identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                n.node_name
            )));
        }
        if n.datacenter.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "Node identity is missing the datacenter field on this {of}"
            )));
        }
    }
    let mut services = service_identities_of(services);
    services.sort_by(|a, b| a.service_name.cmp(&b.service_name));
    services.dedup_by(|a, b| a.service_name == b.service_name);
    Ok((services, node_identities_of(nodes)))
}

/// Consul's defaults for `acl.token_min_expiration_ttl` and `token_max_expiration_ttl`.
const MIN_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration as Go prints it (`1m0s`, `24h0m0s`, `1.5s`).
fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) if nanos == 0 && s == 0 => "0s".to_owned(),
        (0, 0, s) => format!("{s}{frac}s"),
        (0, m, s) => format!("{m}m{s}{frac}s"),
        (h, m, s) => format!("{h}h{m}m{s}{frac}s"),
    }
}

/// The expiration time a create body asks for (`ExpirationTTL` or `ExpirationTime`), checked
/// against Consul's default bounds (1 minute to 24 hours ahead).
fn expiration_of(
    req: &TokenDto,
    now: std::time::SystemTime,
) -> Result<Option<std::time::SystemTime>, ApiError> {
    let bad = |t: String| ApiError::BadRequest(t);
    let ttl = match &req.expiration_ttl {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(0) => None,
            Some(ns) if ns < 0 => {
                return Err(bad(format!(
                    "Token Expiration TTL '{}' should be > 0",
                    go_duration_signed(ns)
                )));
            }
            Some(ns) => Some(std::time::Duration::from_nanos(ns.unsigned_abs())),
            None => return Err(bad("Request decode failed: invalid ExpirationTTL".into())),
        },
        Some(serde_json::Value::String(text)) if text.is_empty() => None,
        Some(serde_json::Value::String(text)) => {
            if let Some(rest) = text.strip_prefix('-')
                && crate::dto::parse_go_duration(rest).is_some()
            {
                return Err(bad(format!("Token Expiration TTL '{text}' should be > 0")));
            }
            match crate::dto::parse_go_duration(text) {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => {
                    return Err(bad(format!(
                        "Request decode failed: time: invalid duration {text:?}"
                    )));
                }
            }
        }
        Some(_) => return Err(bad("Request decode failed: invalid ExpirationTTL".into())),
    };
    let time = match req.expiration_time.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => Some(humantime::parse_rfc3339_weak(text).map_err(|_| {
            bad(format!(
                "Request decode failed: parsing time {text:?} as RFC 3339"
            ))
        })?),
    };
    let at = match (ttl, time) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "Token Expiration TTL and Expiration Time cannot both be set".into(),
            ));
        }
        (Some(ttl), None) => now + ttl,
        (None, Some(at)) => at,
        (None, None) => return Ok(None),
    };
    let ahead = at
        .duration_since(now)
        .map_err(|_| bad("ExpirationTime cannot be before CreateTime".into()))?;
    if ahead > MAX_EXPIRATION {
        return Err(bad(format!(
            "ExpirationTime cannot be more than {} in the future (was {})",
            go_duration(MAX_EXPIRATION),
            go_duration(ahead)
        )));
    }
    if ahead < MIN_EXPIRATION {
        return Err(bad(format!(
            "ExpirationTime cannot be less than {} in the future (was {})",
            go_duration(MIN_EXPIRATION),
            go_duration(ahead)
        )));
    }
    Ok(Some(at))
}

fn go_duration_signed(ns: i64) -> String {
    let d = go_duration(std::time::Duration::from_nanos(ns.unsigned_abs()));
    if ns < 0 { format!("-{d}") } else { d }
}

fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(at).to_string()
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
    if !req.auth_method.is_empty() {
        return Err(ApiError::BadRequest(
            "AuthMethod field is disallowed outside of Login".into(),
        ));
    }
    let (service_identities, node_identities) = identities(
        &req.service_identities,
        &req.node_identities,
        &req.templated_policies,
        "token",
    )?;
    let now = std::time::SystemTime::now();
    let expiration = expiration_of(&req, now)?;
    let token = modify(&acl, |d| {
        let policies = resolve_links(d, &req.policies)?;
        let roles = resolve_role_links(d, &req.roles)?;
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
            roles,
            service_identities,
            node_identities,
            local: req.local,
            create_time: rfc3339(now),
            expiration_time: expiration.map(rfc3339),
            create_index: d.index,
            modify_index: d.index,
        };
        d.tokens.push(token.clone());
        Ok(token)
    })?;
    Ok(json(&token_dto(&token)))
}

/// `PUT /v1/acl/token/<id>/clone`: a new token (new accessor and secret) with the source's
/// policies, roles, identities, locality and expiry; `Description` from the body, or the
/// source's.
async fn token_clone(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: TokenDto = decode(&headers, body).await?;
    let now = std::time::SystemTime::now();
    let token = modify(&acl, |d| {
        let source = d
            .tokens
            .iter()
            .find(|t| t.accessor_id == id && !t.is_expired(now))
            .cloned()
            .ok_or_else(not_found)?;
        d.index += 1;
        let token = Token {
            accessor_id: uuid::Uuid::new_v4().to_string(),
            secret_id: SecretId::generate(),
            description: if req.description.is_empty() {
                source.description.clone()
            } else {
                req.description.clone()
            },
            create_time: rfc3339(now),
            create_index: d.index,
            modify_index: d.index,
            ..source
        };
        d.tokens.push(token.clone());
        Ok(token)
    })?;
    Ok(json(&token_dto(&token)))
}

/// What reading a token, policy or role that does not exist answers (404, as Consul).
fn not_found() -> ApiError {
    ApiError::NotFound("ACL not found".into())
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
    let now = std::time::SystemTime::now();
    acl.read(|d| {
        d.tokens
            .iter()
            .find(|t| t.accessor_id == id && !t.is_expired(now))
            .map(|t| visible_token(t, &authz))
    })
    .map(|t| json(&t))
    .ok_or_else(not_found)
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
    if !req.auth_method.is_empty() {
        return Err(ApiError::BadRequest("Cannot change AuthMethod".into()));
    }
    let (service_identities, node_identities) = identities(
        &req.service_identities,
        &req.node_identities,
        &req.templated_policies,
        "token",
    )?;
    let now = std::time::SystemTime::now();
    let token = modify(&acl, |d| {
        let policies = resolve_links(d, &req.policies)?;
        let roles = resolve_role_links(d, &req.roles)?;
        d.index += 1;
        let index = d.index;
        let t = d
            .tokens
            .iter_mut()
            .find(|t| t.accessor_id == id && !t.is_expired(now))
            .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
        let ttl_given = req
            .expiration_ttl
            .as_ref()
            .is_some_and(|v| !v.is_null() && *v != serde_json::json!(0) && *v != "");
        let time_changed = req
            .expiration_time
            .as_deref()
            .filter(|t| !t.is_empty())
            .is_some_and(|given| {
                let parse = |s: &str| humantime::parse_rfc3339_weak(s).ok();
                parse(given) != t.expiration_time.as_deref().and_then(parse)
            });
        if ttl_given || time_changed {
            return Err(ApiError::BadRequest("Cannot change expiration time".into()));
        }
        t.description.clone_from(&req.description);
        t.policies = policies;
        t.roles = roles;
        t.service_identities = service_identities;
        t.node_identities = node_identities;
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
    modify(&acl, |d| {
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

/// `GET /v1/acl/tokens`, with Consul's `policy`, `role`, `authmethod` and `servicename`
/// filters (tokens linking that policy or role directly, made by that auth method, or with
/// that service identity). Expired tokens are not listed.
async fn token_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let params = &query.params;
    let policy = params.get("policy").filter(|v| !v.is_empty());
    let role = params.get("role").filter(|v| !v.is_empty());
    let auth_method = params.get("authmethod").filter(|v| !v.is_empty());
    let service = params.get("servicename").filter(|v| !v.is_empty());
    let now = std::time::SystemTime::now();
    let list: Vec<TokenDto> = acl.read(|d| {
        d.tokens
            .iter()
            .filter(|t| !t.is_expired(now))
            .filter(|t| policy.is_none_or(|p| t.policies.iter().any(|l| l.id == p)))
            .filter(|t| role.is_none_or(|r| t.roles.iter().any(|l| l.id == r)))
            // No token comes from an auth method: berth has none.
            .filter(|_| auth_method.is_none())
            .filter(|t| {
                service.is_none_or(|s| t.service_identities.iter().any(|i| i.service_name == s))
            })
            .map(|t| visible_token(t, &authz))
            .collect()
    });
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
    let policy = modify(&acl, |d| {
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
        .ok_or_else(not_found)
}

async fn policy_by_name(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| find_policy(d, |p| p.name == name))
        .map(|p| json(&policy_dto(&p)))
        .ok_or_else(not_found)
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
    let policy = modify(&acl, |d| {
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
    modify(&acl, |d| {
        d.policies.retain(|p| p.id != id);
        for t in &mut d.tokens {
            t.policies.retain(|l| l.id != id);
        }
        for r in &mut d.roles {
            r.policies.retain(|l| l.id != id);
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

/// Whether `name` is a valid role name (Consul: letters, digits, `-` and `_`, at most 256).
fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a role grants: policies, service identities, node identities.
type RoleGrants = (Vec<PolicyLink>, Vec<ServiceIdentity>, Vec<NodeIdentity>);

/// The checked parts of a role body.
fn role_parts(d: &Persisted, req: &RoleDto) -> Result<RoleGrants, ApiError> {
    let (services, nodes) = identities(
        &req.service_identities,
        &req.node_identities,
        &req.templated_policies,
        "role",
    )?;
    Ok((resolve_links(d, &req.policies)?, services, nodes))
}

fn check_role_name(d: &Persisted, name: &str, own_id: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("Invalid Role: no Name is set".into()));
    }
    if !valid_role_name(name) {
        return Err(ApiError::BadRequest(
            "Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                .into(),
        ));
    }
    if d.roles.iter().any(|r| r.name == name && r.id != own_id) {
        return Err(ApiError::BadRequest(format!(
            "Invalid Role: A Role with Name {name:?} already exists"
        )));
    }
    Ok(())
}

async fn role_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: RoleDto = decode(&headers, body).await?;
    let role = modify(&acl, |d| {
        check_role_name(d, &req.name, "")?;
        let (policies, service_identities, node_identities) = role_parts(d, &req)?;
        d.index += 1;
        let role = Role {
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            description: req.description.clone(),
            policies,
            service_identities,
            node_identities,
            create_index: d.index,
            modify_index: d.index,
        };
        d.roles.push(role.clone());
        Ok(role)
    })?;
    Ok(json(&role_dto(&role)))
}

async fn role_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| d.roles.iter().find(|r| r.id == id).map(role_dto))
        .map(|r| json(&r))
        .ok_or_else(not_found)
}

async fn role_by_name(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| d.roles.iter().find(|r| r.name == name).map(role_dto))
        .map(|r| json(&r))
        .ok_or_else(not_found)
}

async fn role_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: RoleDto = decode(&headers, body).await?;
    let role = modify(&acl, |d| {
        if !d.roles.iter().any(|r| r.id == id) {
            return Err(ApiError::BadRequest(format!("Cannot find role {id:?}")));
        }
        check_role_name(d, &req.name, &id)?;
        let (policies, service_identities, node_identities) = role_parts(d, &req)?;
        d.index += 1;
        let index = d.index;
        let role = d
            .roles
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(not_found)?;
        role.name.clone_from(&req.name);
        role.description.clone_from(&req.description);
        role.policies = policies;
        role.service_identities = service_identities;
        role.node_identities = node_identities;
        role.modify_index = index;
        let role = role.clone();
        for t in &mut d.tokens {
            for link in t.roles.iter_mut().filter(|l| l.id == role.id) {
                link.name.clone_from(&role.name);
            }
        }
        Ok(role)
    })?;
    Ok(json(&role_dto(&role)))
}

async fn role_delete(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    modify(&acl, |d| {
        d.roles.retain(|r| r.id != id);
        for t in &mut d.tokens {
            t.roles.retain(|l| l.id != id);
        }
        d.index += 1;
        Ok(())
    })?;
    Ok(json(&true))
}

/// `GET /v1/acl/roles`, with Consul's `policy` filter (roles linking that policy).
async fn role_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let policy = query.params.get("policy").filter(|v| !v.is_empty());
    let list: Vec<RoleDto> = acl.read(|d| {
        d.roles
            .iter()
            .filter(|r| policy.is_none_or(|p| r.policies.iter().any(|l| l.id == p)))
            .map(role_dto)
            .collect()
    });
    Ok(json(&list))
}

// Auth methods, binding rules and login: berth has no auth method, and answers as a Consul
// with none configured; creating one is not implemented (501), never pretended.

/// The list of a kind berth has none of (auth methods, binding rules).
async fn empty_list(State(acl): State<Arc<AclStore>>, authz: Authz) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Ok(json(&Vec::<()>::new()))
}

/// Deleting an auth method or binding rule that does not exist succeeds, as in Consul.
async fn deleted(State(acl): State<Arc<AclStore>>, authz: Authz) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    Ok(json(&true))
}

async fn auth_method_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Err(ApiError::NotFound("ACL auth method not found".into()))
}

async fn auth_method_write(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    Ok(plain(
        StatusCode::NOT_IMPLEMENTED,
        "ACL auth methods are not implemented by berth".into(),
    ))
}

async fn binding_rule_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Err(ApiError::NotFound("ACL binding rule not found".into()))
}

/// A binding rule names an auth method, and berth has none: Consul's answers for that.
async fn binding_rule_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: serde_json::Value = decode_value(&headers, body).await?;
    let method = req
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("AuthMethod")))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("");
    if method.is_empty() {
        return Err(ApiError::BadRequest(
            "Invalid Binding Rule: no AuthMethod is set".into(),
        ));
    }
    Err(ApiError::BadRequest(format!(
        "Invalid Binding Rule: unknown AuthMethod {method:?}"
    )))
}

async fn binding_rule_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    Err(ApiError::BadRequest(format!(
        "Cannot find binding rule {id:?}"
    )))
}

/// `POST /v1/acl/login`: no auth method exists to verify the credential with.
async fn login(State(acl): State<Arc<AclStore>>) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    Err(ApiError::Forbidden("ACL not found".into()))
}

/// `POST /v1/acl/logout`: only tokens made by `login` can log out, and berth makes none.
async fn logout(State(acl): State<Arc<AclStore>>, request: Request) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    let (parts, _) = request.into_parts();
    match presented_token(&parts) {
        Some(secret) if acl.token_by_secret(&secret).is_some() => {
            Err(ApiError::Forbidden("Permission denied".into()))
        }
        _ => Err(ApiError::Forbidden("ACL not found".into())),
    }
}

/// Templated policies are not implemented: refused, never ignored.
async fn templated_policies(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Ok(plain(
        StatusCode::NOT_IMPLEMENTED,
        "ACL templated policies are not implemented by berth".into(),
    ))
}

async fn decode_value(headers: &HeaderMap, body: Body) -> Result<serde_json::Value, ApiError> {
    let bytes = crate::http::read_body(headers, body, 1024 * 1024).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}
