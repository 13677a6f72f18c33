//! Auth methods, binding rules, login/logout and templated policies: answered as a Consul
//! with none configured.

use super::*;

// Auth methods, binding rules and login: berth has no auth method, and answers as a Consul
// with none configured; creating one is not implemented (501), never pretended.

/// The list of a kind berth has none of (auth methods, binding rules).
pub(super) async fn empty_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Ok(json(&Vec::<()>::new()))
}

/// Deleting an auth method or binding rule that does not exist succeeds, as in Consul.
pub(super) async fn deleted(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    Ok(json(&true))
}

pub(super) async fn auth_method_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Err(ApiError::NotFound("ACL auth method not found".into()))
}

pub(super) async fn auth_method_write(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    Ok(plain(
        StatusCode::NOT_IMPLEMENTED,
        "ACL auth methods are not implemented by berth".into(),
    ))
}

pub(super) async fn binding_rule_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Err(ApiError::NotFound("ACL binding rule not found".into()))
}

/// A binding rule names an auth method, and berth has none: Consul's answers for that.
pub(super) async fn binding_rule_create(
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

pub(super) async fn binding_rule_update(
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
pub(super) async fn login(State(acl): State<Arc<AclStore>>) -> Result<Response, ApiError> {
    ensure_enabled(&acl)?;
    Err(ApiError::Forbidden("ACL not found".into()))
}

/// `POST /v1/acl/logout`: only tokens made by `login` can log out, and berth makes none.
pub(super) async fn logout(
    State(acl): State<Arc<AclStore>>,
    request: Request,
) -> Result<Response, ApiError> {
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
pub(super) async fn templated_policies(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    Ok(plain(
        StatusCode::NOT_IMPLEMENTED,
        "ACL templated policies are not implemented by berth".into(),
    ))
}
