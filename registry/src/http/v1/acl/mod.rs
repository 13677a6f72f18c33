//! `/v1/acl/*`: bootstrap, tokens, policies, and the token resolution agents ask for. The
//! tokens and policies live in [`AclStore`]; the extractor and middleware in `http::authz`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
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
use crate::http::{ApiError, json};

mod auth;
mod policy;
mod role;
mod templated;
mod token;

use auth::*;
use policy::*;
use role::*;
use templated::*;
use token::*;

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
        .route("/v1/acl/auth-methods", get(auth_method_list))
        .route("/v1/acl/auth-method", put(auth_method_create))
        .route(
            "/v1/acl/auth-method/{name}",
            get(auth_method_read)
                .put(auth_method_update)
                .delete(auth_method_delete),
        )
        .route("/v1/acl/binding-rules", get(binding_rule_list))
        .route("/v1/acl/binding-rule", put(binding_rule_create))
        .route(
            "/v1/acl/binding-rule/{id}",
            get(binding_rule_read)
                .put(binding_rule_update)
                .delete(binding_rule_delete),
        )
        .route("/v1/acl/login", post(login))
        .route("/v1/acl/logout", post(logout))
        .route("/v1/acl/templated-policies", get(templated_policy_list))
        .route(
            "/v1/acl/templated-policy/name/{*name}",
            get(templated_policy_read),
        )
        .route(
            "/v1/acl/templated-policy/preview/{*name}",
            post(templated_policy_preview),
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
