//! `/v1/acl/token*` and `/v1/acl/tokens`: create, clone, read, update, delete, list; links to
//! policies and roles, identities and expiry as Consul checks them.

use super::*;

/// Links to roles given by ID or name (Consul's texts for one that does not exist).
pub(super) fn resolve_role_links(
    d: &Persisted,
    links: &[LinkDto],
) -> Result<Vec<PolicyLink>, ApiError> {
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

pub(super) use crate::acl::templated::valid_identity_name;

/// The identities of a token or role body (`of` is "token" or "role"), checked as Consul.
pub(super) fn identities(
    services: &[crate::convert::ServiceIdentityDto],
    nodes: &[crate::convert::NodeIdentityDto],
    templated: &[crate::convert::TemplatedPolicyDto],
    of: &str,
) -> Result<Identities, ApiError> {
    let templated = crate::convert::templated_policies_of(templated);
    for t in &templated {
        t.check().map_err(ApiError::BadRequest)?;
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
    Ok((services, node_identities_of(nodes), templated))
}

/// What [`identities`] checked: service identities, node identities, templated policies.
pub(super) type Identities = (
    Vec<ServiceIdentity>,
    Vec<NodeIdentity>,
    Vec<crate::acl::TemplatedPolicy>,
);

/// Consul's defaults for `acl.token_min_expiration_ttl` and `token_max_expiration_ttl`.
pub(super) const MIN_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(60);
pub(super) const MAX_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration as Go prints it (`1m0s`, `24h0m0s`, `1.5s`).
pub(super) fn go_duration(d: std::time::Duration) -> String {
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
pub(super) fn expiration_of(
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

pub(super) fn go_duration_signed(ns: i64) -> String {
    let d = go_duration(std::time::Duration::from_nanos(ns.unsigned_abs()));
    if ns < 0 { format!("-{d}") } else { d }
}

pub(super) fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(at).to_string()
}

pub(super) fn resolve_links(d: &Persisted, links: &[LinkDto]) -> Result<Vec<PolicyLink>, ApiError> {
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

pub(super) async fn token_create(
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
    let (service_identities, node_identities, templated_policies) = identities(
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
            templated_policies,
            auth_method: String::new(),
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
pub(super) async fn token_clone(
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
pub(super) fn not_found() -> ApiError {
    ApiError::NotFound("ACL not found".into())
}

pub(super) async fn token_self(
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
pub(super) const REDACTED: &str = "<hidden>";

/// A token as `authz` may see it: the secret only with `acl:write` (Consul's
/// `redactTokenSecret`), since `acl:read` must not be a way to borrow other tokens.
pub(super) fn visible_token(t: &Token, authz: &Authz) -> TokenDto {
    let mut dto = token_dto(t);
    if !authz.0.acl(Need::Write) {
        dto.secret_id = REDACTED.to_owned();
    }
    dto
}

pub(super) async fn token_read(
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

pub(super) async fn token_update(
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
    let (service_identities, node_identities, templated_policies) = identities(
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
        t.templated_policies = templated_policies;
        t.local = req.local;
        t.modify_index = index;
        Ok(t.clone())
    })?;
    Ok(json(&token_dto(&token)))
}

pub(super) async fn token_delete(
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
pub(super) async fn token_list(
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
