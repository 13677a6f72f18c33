//! `/v1/acl/*`: bootstrap, tokens, policies, and the token resolution agents ask for. The
//! tokens and policies live in [`AclStore`]; the extractor and middleware in `http::authz`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::acl::store::{AclStore, Persisted, now_rfc3339};
use crate::acl::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET, AclError, MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME, Need, Policy, PolicyLink, Resource, SecretId, Token, parse_rules,
};
use crate::convert::{LinkDto, PolicyDto, TokenDto, policy_dto, token_dto};
use crate::http::authz::{Authz, presented_token};
use crate::http::{ApiError, json};

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

/// [`AclStore::modify`] with the handlers' error type.
fn modify<T>(
    acl: &AclStore,
    change: impl FnOnce(&mut Persisted) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    acl.modify(change)
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
    let token = modify(&acl, |d| {
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
    let token = modify(&acl, |d| {
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
