//! `/v1/acl/auth-method*`, `/v1/acl/binding-rule*`, `/v1/acl/login` and `/v1/acl/logout`.
//! Auth methods and binding rules are stored and managed as Consul does, with its checks;
//! berth verifies no credential, so `login` with an existing method is refused (403).

use crate::acl::auth_method::{AuthMethod, BindingRule, check_binding, valid_method_name};
use crate::http::filter::check_expression;
use crate::http::filter::schema::Ty;

use super::*;

/// An auth method on the wire (answers, and the body of create and update).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct AuthMethodDto {
    name: String,
    #[serde(rename = "Type")]
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    display_name: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Map<String, serde_json::Value>>,
    /// A Go duration: text or nanoseconds in a body, text in answers (omitted when zero).
    #[serde(rename = "MaxTokenTTL", skip_serializing_if = "is_zero_ttl")]
    max_token_ttl: serde_json::Value,
    #[serde(skip_serializing_if = "String::is_empty")]
    token_locality: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    token_name_format: String,
    create_index: u64,
    modify_index: u64,
}

fn is_zero_ttl(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

fn method_dto(m: &AuthMethod, with_config: bool) -> AuthMethodDto {
    AuthMethodDto {
        name: m.name.clone(),
        kind: m.kind.clone(),
        display_name: m.display_name.clone(),
        description: m.description.clone(),
        config: with_config.then(|| m.config.clone()),
        max_token_ttl: serde_json::Value::String(m.max_token_ttl.clone()),
        token_locality: m.token_locality.clone(),
        token_name_format: m.token_name_format.clone(),
        create_index: m.create_index,
        modify_index: m.modify_index,
    }
}

/// A binding rule on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct BindingRuleDto {
    #[serde(rename = "ID")]
    id: String,
    description: String,
    auth_method: String,
    selector: String,
    bind_type: String,
    bind_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind_vars: Option<serde_json::Value>,
    create_index: u64,
    modify_index: u64,
}

fn rule_dto(r: &BindingRule) -> BindingRuleDto {
    BindingRuleDto {
        id: r.id.clone(),
        description: r.description.clone(),
        auth_method: r.auth_method.clone(),
        selector: r.selector.clone(),
        bind_type: r.bind_type.clone(),
        bind_name: r.bind_name.clone(),
        bind_vars: r.bind_vars.clone(),
        create_index: r.create_index,
        modify_index: r.modify_index,
    }
}

/// The `MaxTokenTTL` of a body as a Go duration text (empty: none), within Consul's bounds.
fn max_token_ttl(v: &serde_json::Value) -> Result<String, ApiError> {
    let d = match v {
        serde_json::Value::Null => return Ok(String::new()),
        serde_json::Value::String(s) if s.is_empty() => return Ok(String::new()),
        _ => crate::convert::json_duration(v).ok_or_else(|| {
            ApiError::BadRequest(match v {
                serde_json::Value::String(s) => {
                    format!("AuthMethod decoding failed: time: invalid duration {s:?}")
                }
                _ => "AuthMethod decoding failed: invalid MaxTokenTTL".into(),
            })
        })?,
    };
    if d.is_zero() {
        return Ok(String::new());
    }
    if d > MAX_EXPIRATION {
        return Err(ApiError::BadRequest(format!(
            "MaxTokenTTL {} cannot be more than {}",
            go_duration(d),
            go_duration(MAX_EXPIRATION)
        )));
    }
    if d < MIN_EXPIRATION {
        return Err(ApiError::BadRequest(format!(
            "MaxTokenTTL {} cannot be less than {}",
            go_duration(d),
            go_duration(MIN_EXPIRATION)
        )));
    }
    Ok(go_duration(d))
}

/// `GET /v1/acl/auth-methods`: every method, without its configuration (Consul's stubs).
pub(super) async fn auth_method_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let list: Vec<AuthMethodDto> = acl.read(|d| {
        let mut list: Vec<&AuthMethod> = d.auth_methods.iter().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.into_iter().map(|m| method_dto(m, false)).collect()
    });
    Ok(json(&list))
}

pub(super) async fn auth_method_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| {
        d.auth_methods
            .iter()
            .find(|m| m.name == name)
            .map(|m| json(&method_dto(m, true)))
    })
    .ok_or_else(|| ApiError::NotFound("ACL auth method not found".into()))
}

/// `PUT /v1/acl/auth-method`: create or replace (Consul's upsert by name).
pub(super) async fn auth_method_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: AuthMethodDto = decode(&headers, body).await?;
    auth_method_upsert(&acl, req)
}

/// `PUT /v1/acl/auth-method/<name>`.
pub(super) async fn auth_method_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let mut req: AuthMethodDto = decode(&headers, body).await?;
    if req.name.is_empty() {
        req.name = name;
    } else if req.name != name {
        return Err(ApiError::BadRequest(
            "Auth Method Name in URL and payload do not match".into(),
        ));
    }
    auth_method_upsert(&acl, req)
}

fn auth_method_upsert(acl: &AclStore, req: AuthMethodDto) -> Result<Response, ApiError> {
    let bad = |t: String| ApiError::BadRequest(t);
    if req.name.is_empty() {
        return Err(bad("Invalid Auth Method: no Name is set".into()));
    }
    if !valid_method_name(&req.name) {
        return Err(bad(
            "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                .into(),
        ));
    }
    let ttl = max_token_ttl(&req.max_token_ttl)?;
    if !matches!(req.token_locality.as_str(), "" | "local" | "global") {
        return Err(bad(
            "Invalid Auth Method: TokenLocality should be one of 'local' or 'global'".into(),
        ));
    }
    let method = modify(acl, |d| {
        let existing = d.auth_methods.iter().position(|m| m.name == req.name);
        let mut kind = req.kind.clone();
        if let Some(i) = existing {
            if kind.is_empty() {
                kind.clone_from(&d.auth_methods[i].kind);
            } else if kind != d.auth_methods[i].kind {
                return Err(bad("the Type field of an Auth Method is immutable".into()));
            }
        }
        d.index += 1;
        let method = AuthMethod {
            name: req.name.clone(),
            kind,
            display_name: req.display_name.clone(),
            description: req.description.clone(),
            config: req.config.clone().unwrap_or_default(),
            max_token_ttl: ttl,
            token_locality: req.token_locality.clone(),
            token_name_format: req.token_name_format.clone(),
            create_index: existing.map_or(d.index, |i| d.auth_methods[i].create_index),
            modify_index: d.index,
        };
        method
            .check_config()
            .map_err(|e| bad(format!("Invalid Auth Method: {e}")))?;
        match existing {
            Some(i) => d.auth_methods[i] = method.clone(),
            None => d.auth_methods.push(method.clone()),
        }
        Ok(method)
    })?;
    Ok(json(&method_dto(&method, true)))
}

/// `DELETE /v1/acl/auth-method/<name>`: also deletes its binding rules and the tokens its
/// logins made; deleting one that does not exist succeeds, as in Consul.
pub(super) async fn auth_method_delete(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    modify(&acl, |d| {
        if d.auth_methods.iter().any(|m| m.name == name) {
            d.auth_methods.retain(|m| m.name != name);
            d.binding_rules.retain(|r| r.auth_method != name);
            d.tokens.retain(|t| t.auth_method != name);
            d.index += 1;
        }
        Ok(())
    })?;
    Ok(json(&true))
}

/// `GET /v1/acl/binding-rules`, with Consul's `authmethod` filter.
pub(super) async fn binding_rule_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let method = query.params.get("authmethod").filter(|v| !v.is_empty());
    let list: Vec<BindingRuleDto> = acl.read(|d| {
        d.binding_rules
            .iter()
            .filter(|r| method.is_none_or(|m| r.auth_method == *m))
            .map(rule_dto)
            .collect()
    });
    Ok(json(&list))
}

pub(super) async fn binding_rule_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| {
        d.binding_rules
            .iter()
            .find(|r| r.id == id)
            .map(|r| json(&rule_dto(r)))
    })
    .ok_or_else(|| ApiError::NotFound("ACL binding rule not found".into()))
}

pub(super) async fn binding_rule_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: BindingRuleDto = decode(&headers, body).await?;
    binding_rule_upsert(&acl, req, None)
}

pub(super) async fn binding_rule_update(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: BindingRuleDto = decode(&headers, body).await?;
    if !req.id.is_empty() && req.id != id {
        return Err(ApiError::BadRequest(
            "BindingRule ID in URL and payload do not match".into(),
        ));
    }
    binding_rule_upsert(&acl, req, Some(id))
}

/// The identity fields of `fields` as a filter schema: `serviceaccount.name` and the like
/// become nested structs of strings, `value.x` and `list.x` maps.
fn identity_schema(fields: &[String]) -> Ty {
    let has = |p: &str| fields.iter().any(|f| f.starts_with(p));
    if has("serviceaccount.") {
        return Ty::Struct(&[(
            "serviceaccount",
            Ty::Struct(&[("namespace", Ty::Str), ("name", Ty::Str), ("uid", Ty::Str)]),
        )]);
    }
    if has("entity_") || has("account_id") {
        return Ty::Struct(&[
            ("entity_name", Ty::Str),
            ("entity_id", Ty::Str),
            ("account_id", Ty::Str),
            ("entity_path", Ty::Str),
            ("entity_tags", Ty::StrMap),
        ]);
    }
    Ty::Struct(&[("value", Ty::StrMap), ("list", Ty::StrListMap)])
}

fn binding_rule_upsert(
    acl: &AclStore,
    req: BindingRuleDto,
    id: Option<String>,
) -> Result<Response, ApiError> {
    let bad = |t: String| ApiError::BadRequest(t);
    let rule = modify(acl, |d| {
        let existing = match &id {
            None => None,
            Some(id) => {
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(bad("Binding Rule ID invalid UUID".into()));
                }
                Some(
                    d.binding_rules
                        .iter()
                        .position(|r| r.id == *id)
                        .ok_or_else(|| bad(format!("cannot find binding rule {id}")))?,
                )
            }
        };
        let mut auth_method = req.auth_method.clone();
        if let Some(i) = existing {
            if auth_method.is_empty() {
                auth_method.clone_from(&d.binding_rules[i].auth_method);
            } else if auth_method != d.binding_rules[i].auth_method {
                return Err(bad(
                    "the AuthMethod field of an Binding Rule is immutable".into()
                ));
            }
        }
        if auth_method.is_empty() {
            return Err(bad("Invalid Binding Rule: no AuthMethod is set".into()));
        }
        let method = d
            .auth_methods
            .iter()
            .find(|m| m.name == auth_method)
            .ok_or_else(|| bad(format!("cannot find auth method with name {auth_method:?}")))?;
        let fields = method.selectable_fields();
        if !req.selector.is_empty() {
            check_expression(&req.selector, identity_schema(&fields))
                .map_err(|e| bad(format!("invalid Binding Rule: Selector is invalid: {e}")))?;
        }
        d.index += 1;
        let rule = BindingRule {
            id: existing.map_or_else(
                || uuid::Uuid::new_v4().to_string(),
                |i| d.binding_rules[i].id.clone(),
            ),
            description: req.description.clone(),
            auth_method,
            selector: req.selector.clone(),
            bind_type: req.bind_type.clone(),
            bind_name: req.bind_name.clone(),
            bind_vars: req.bind_vars.clone(),
            create_index: existing.map_or(d.index, |i| d.binding_rules[i].create_index),
            modify_index: d.index,
        };
        check_binding(&rule, &fields).map_err(bad)?;
        match existing {
            Some(i) => d.binding_rules[i] = rule.clone(),
            None => d.binding_rules.push(rule.clone()),
        }
        Ok(rule)
    })?;
    Ok(json(&rule_dto(&rule)))
}

/// `DELETE /v1/acl/binding-rule/<id>`; one that does not exist is deleted already.
pub(super) async fn binding_rule_delete(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    modify(&acl, |d| {
        if d.binding_rules.iter().any(|r| r.id == id) {
            d.binding_rules.retain(|r| r.id != id);
            d.index += 1;
        }
        Ok(())
    })?;
    Ok(json(&true))
}

/// The body of `POST /v1/acl/login`.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct LoginDto {
    auth_method: String,
    bearer_token: String,
}

/// `POST /v1/acl/login`: an unknown method is Consul's `ACL not found`; for a known one berth
/// has no validator that could verify the bearer token, and refuses it as unverified.
pub(super) async fn login(
    State(acl): State<Arc<AclStore>>,
    request: Request,
) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    // A token sent with the request is ignored, as Consul's handler does (the Go client
    // sends its configured one with every call).
    let (parts, body) = request.into_parts();
    let req: LoginDto = decode(&parts.headers, body).await?;
    if req.auth_method.is_empty() || req.bearer_token.is_empty() {
        return Err(ApiError::BadRequest(
            "Invalid Login request: Missing auth parameters".into(),
        ));
    }
    let kind = acl.read(|d| {
        d.auth_methods
            .iter()
            .find(|m| m.name == req.auth_method)
            .map(|m| m.kind.clone())
    });
    match kind {
        None => Err(ApiError::Forbidden(format!(
            "ACL not found: auth method {:?} not found",
            req.auth_method
        ))),
        Some(kind) => Err(ApiError::Forbidden(format!(
            "Permission denied: the bearer token could not be verified (berth has no {kind} validator)"
        ))),
    }
}

/// `POST /v1/acl/logout`: deletes the presented token when a `login` made it; any other token
/// is refused, as in Consul.
pub(super) async fn logout(
    State(acl): State<Arc<AclStore>>,
    request: Request,
) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    let (parts, _) = request.into_parts();
    let Some(secret) = presented_token(&parts).filter(|s| !s.is_empty()) else {
        return Err(ApiError::Forbidden("ACL not found".into()));
    };
    let Some(token) = acl.token_by_secret(&secret) else {
        return Err(ApiError::Forbidden("ACL not found".into()));
    };
    if token.auth_method.is_empty() {
        return Err(ApiError::Forbidden("Permission denied".into()));
    }
    modify(&acl, |d| {
        d.tokens.retain(|t| t.accessor_id != token.accessor_id);
        d.index += 1;
        Ok(())
    })?;
    Ok(json(&true))
}
