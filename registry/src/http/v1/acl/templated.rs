//! `/v1/acl/templated-policies`, `/v1/acl/templated-policy/name/<name>` and
//! `/v1/acl/templated-policy/preview/<name>`: Consul's built-in templates, and the synthetic
//! policy a template renders for given variables.

use std::collections::BTreeMap;

use crate::acl::TemplatedPolicy;
use crate::acl::templated::{TEMPLATES, Template, synthetic_id, template};

use super::*;

/// A template on the wire (Consul's `ACLTemplatedPolicyResponse`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TemplateDto {
    template_name: &'static str,
    schema: &'static str,
    template: &'static str,
    description: &'static str,
}

fn template_dto(t: &'static Template) -> TemplateDto {
    TemplateDto {
        template_name: t.name,
        schema: t.schema,
        template: t.template,
        description: t.description,
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError::BadRequest(format!("Invalid templated policy Name: {name}"))
}

/// `GET /v1/acl/templated-policies`: every template, keyed by name.
pub(super) async fn templated_policy_list(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let all: BTreeMap<&str, TemplateDto> = TEMPLATES
        .iter()
        .map(|t| (t.name, template_dto(t)))
        .collect();
    Ok(json(&all))
}

/// `GET /v1/acl/templated-policy/name/<name>` (the name holds a `/`).
pub(super) async fn templated_policy_read(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    let t = template(&name).ok_or_else(|| unknown(&name))?;
    Ok(json(&template_dto(t)))
}

/// The body of a preview: the template's variables.
#[derive(Default, Deserialize)]
#[serde(default)]
struct VariablesDto {
    #[serde(rename = "Name")]
    name: String,
}

/// `POST /v1/acl/templated-policy/preview/<name>`: the synthetic policy the template renders
/// for the posted variables, checked as a token's templated policy would be.
pub(super) async fn templated_policy_preview(
    State(acl): State<Arc<AclStore>>,
    authz: Authz,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    acl_need(&acl, &authz, Need::Read)?;
    template(&name).ok_or_else(|| unknown(&name))?;
    let vars: VariablesDto = decode(&headers, body).await?;
    let linked = TemplatedPolicy {
        template_name: name.clone(),
        name: vars.name,
        datacenters: vec![],
    };
    linked.check().map_err(ApiError::BadRequest)?;
    let rules = linked.rules();
    let id = synthetic_id(&rules);
    Ok(json(&PolicyDto {
        name: format!("synthetic-policy-{id}"),
        id,
        description: format!("synthetic policy generated from templated policy: {name}"),
        rules,
        ..PolicyDto::default()
    }))
}
