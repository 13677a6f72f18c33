//! `/v1/acl/role*` and `/v1/acl/roles`.

use super::*;

/// Whether `name` is a valid role name (Consul: letters, digits, `-` and `_`, at most 256).
pub(super) fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a role grants: policies, then service identities, node identities and templated
/// policies.
pub(super) type RoleGrants = (Vec<PolicyLink>, Identities);

/// The checked parts of a role body.
pub(super) fn role_parts(d: &Persisted, req: &RoleDto) -> Result<RoleGrants, ApiError> {
    let ids = identities(
        &req.service_identities,
        &req.node_identities,
        &req.templated_policies,
        "role",
    )?;
    Ok((resolve_links(d, &req.policies)?, ids))
}

pub(super) fn check_role_name(d: &Persisted, name: &str, own_id: &str) -> Result<(), ApiError> {
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

pub(super) async fn role_create(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Write)?;
    let req: RoleDto = decode(&headers, body).await?;
    let role = modify(&acl, |d| {
        check_role_name(d, &req.name, "")?;
        let (policies, (service_identities, node_identities, templated_policies)) =
            role_parts(d, &req)?;
        d.index += 1;
        let role = Role {
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            description: req.description.clone(),
            policies,
            service_identities,
            node_identities,
            templated_policies,
            create_index: d.index,
            modify_index: d.index,
        };
        d.roles.push(role.clone());
        Ok(role)
    })?;
    Ok(json(&role_dto(&role)))
}

pub(super) async fn role_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| d.roles.iter().find(|r| r.id == id).map(role_dto))
        .map(|r| json(&r))
        .ok_or_else(not_found)
}

pub(super) async fn role_by_name(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| d.roles.iter().find(|r| r.name == name).map(role_dto))
        .map(|r| json(&r))
        .ok_or_else(not_found)
}

pub(super) async fn role_update(
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
        let (policies, (service_identities, node_identities, templated_policies)) =
            role_parts(d, &req)?;
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
        role.templated_policies = templated_policies;
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

pub(super) async fn role_delete(
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
pub(super) async fn role_list(
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
