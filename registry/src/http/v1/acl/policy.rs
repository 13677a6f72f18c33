//! `/v1/acl/policy*` and `/v1/acl/policies`.

use super::*;

pub(super) async fn policy_create(
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

pub(super) fn find_policy(d: &Persisted, pick: impl Fn(&Policy) -> bool) -> Option<Policy> {
    let builtin = management_policy();
    if pick(&builtin) {
        return Some(builtin);
    }
    d.policies.iter().find(|p| pick(p)).cloned()
}

pub(super) async fn policy_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| find_policy(d, |p| p.id == id))
        .map(|p| json(&policy_dto(&p)))
        .ok_or_else(not_found)
}

pub(super) async fn policy_by_name(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    acl.read(|d| find_policy(d, |p| p.name == name))
        .map(|p| json(&policy_dto(&p)))
        .ok_or_else(not_found)
}

pub(super) async fn policy_update(
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

pub(super) async fn policy_delete(
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

pub(super) async fn policy_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let list: Vec<PolicyDto> = acl.read(|d| {
        std::iter::once(management_policy())
            .chain(d.policies.iter().cloned())
            .map(|p| policy_dto(&p))
            .collect()
    });
    Ok(json(&list))
}
