//! `/v1/agent/*` services and checks: the local agent's state, served the same way by a server
//! (its own agent) and by `berth-registry agent`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::acl::{Need, Resource};
use crate::agent::{AgentError, LocalAgent, worst};
use crate::checks::Health;
use crate::convert::{agent_service, health_check};
use crate::dto::{AgentCheckRegistration, AgentService, AgentServiceRegistration, HealthCheck};
use crate::http::{ApiError, Params, json, plain, read_json};
use crate::store::state::CheckStatus;

use crate::http::authz::{Authz, filtered};
use crate::http::filter::retain_values;
use crate::http::filter::schema::{AGENT_SERVICE, HEALTH_CHECK};
use crate::http::query::ConsulQuery;

/// What the local agent endpoints share.
pub(crate) struct AgentApi {
    pub(crate) local: Arc<LocalAgent>,
    pub(crate) datacenter: String,
}

/// The local agent's service and check routes, state applied. As Consul, an ID or name is the
/// rest of the path, `/` included (Patroni's service IDs look like `scope/name`).
pub(crate) fn routes(api: Arc<AgentApi>) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(register_service))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(deregister_service),
        )
        .route("/v1/agent/service/maintenance/{*id}", put(maintenance))
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route("/v1/agent/services", get(services))
        .route("/v1/agent/service/{*id}", get(service))
        .route("/v1/agent/checks", get(checks))
        .route("/v1/agent/check/register", put(register_check))
        .route("/v1/agent/check/deregister/{*id}", put(deregister_check))
        .route("/v1/agent/check/pass/{*id}", put(pass))
        .route("/v1/agent/check/warn/{*id}", put(warn))
        .route("/v1/agent/check/fail/{*id}", put(fail))
        .route("/v1/agent/check/update/{*id}", put(update))
        .route("/v1/agent/health/service/name/{*name}", get(health_by_name))
        .route("/v1/agent/health/service/id/{*id}", get(health_by_id))
        .with_state(api)
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Invalid(t) => ApiError::BadRequest(t),
            AgentError::UnknownService(_)
            | AgentError::UnknownCheck(_)
            | AgentError::NoSuchCheckService(_) => ApiError::NotFound(e.to_string()),
            AgentError::NotTtl(_) => ApiError::Internal(e.to_string()),
        }
    }
}

fn service_name_of(api: &AgentApi, id: &str) -> Option<String> {
    api.local.lock().services.get(id).map(|s| s.name.clone())
}

fn check_service_of(api: &AgentApi, id: &str) -> Option<String> {
    let state = api.local.lock();
    let check = state.checks.get(id)?;
    Some(
        state
            .services
            .get(&check.check.service_id)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
    )
}

/// Write on a check: on its service, or on the node for node-level checks.
fn may_write_check(authz: &Authz, api: &AgentApi, service: &str) -> Result<(), ApiError> {
    if service.is_empty() {
        authz.require(Resource::Node, api.local.node(), Need::Write)
    } else {
        authz.require(Resource::Service, service, Need::Write)
    }
}

/// A registration replaces the check with the same ID: write on what that check belongs to
/// (Consul's "vet any check that might be getting overwritten").
fn may_replace_check(authz: &Authz, api: &AgentApi, id: &str) -> Result<(), ApiError> {
    match check_service_of(api, id) {
        Some(service) => may_write_check(authz, api, &service),
        None => Ok(()),
    }
}

/// The ID a check definition registers under when it names one.
fn explicit_check_id(def: &AgentCheckRegistration) -> Option<&str> {
    def.check_id
        .as_deref()
        .or(def.id.as_deref())
        .filter(|i| !i.is_empty())
}

async fn register_service(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let reg: AgentServiceRegistration = read_json(&headers, body)
        .await?
        .ok_or_else(|| ApiError::BadRequest("Missing service name".into()))?;
    // Consul's vetServiceRegister: the service, the service it replaces (same ID) and any
    // check of another service its checks would replace.
    authz.require(Resource::Service, &reg.name, Need::Write)?;
    let id = reg
        .id
        .as_deref()
        .filter(|i| !i.is_empty())
        .unwrap_or(&reg.name);
    if let Some(replaced) = service_name_of(&api, id) {
        authz.require(Resource::Service, &replaced, Need::Write)?;
    }
    for def in reg.check.iter().chain(&reg.checks) {
        if let Some(check_id) = explicit_check_id(def) {
            may_replace_check(&authz, &api, check_id)?;
        }
    }
    let replace = Params::parse(&uri).has("replace-existing-checks");
    api.local.register_service(reg, replace)?;
    Ok(StatusCode::OK.into_response())
}

async fn deregister_service(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(name) = service_name_of(&api, &id) {
        authz.require(Resource::Service, &name, Need::Write)?;
    }
    api.local.deregister_service(&id)?;
    Ok(StatusCode::OK.into_response())
}

/// `?enable=` of the maintenance endpoints, as Consul parses it.
fn enable_param(params: &Params) -> Result<bool, ApiError> {
    match params.get("enable") {
        None => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ApiError::BadRequest("Invalid value for enable".into())),
    }
}

async fn node_maintenance(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::parse(&uri);
    let enable = enable_param(&params)?;
    authz.require(Resource::Node, api.local.node(), Need::Write)?;
    api.local
        .node_maintenance(enable, params.get("reason").unwrap_or(""));
    Ok(StatusCode::OK.into_response())
}

async fn maintenance(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::parse(&uri);
    let enable = enable_param(&params)?;
    if let Some(name) = service_name_of(&api, &id) {
        authz.require(Resource::Service, &name, Need::Write)?;
    }
    api.local
        .maintenance(&id, enable, params.get("reason").unwrap_or(""))?;
    Ok(StatusCode::OK.into_response())
}

fn agent_services(api: &AgentApi, authz: &Authz) -> (BTreeMap<String, AgentService>, bool) {
    let (services, _) = api.local.snapshot();
    let total = services.len();
    let map: BTreeMap<String, AgentService> = services
        .iter()
        .filter(|s| authz.allows(Resource::Service, &s.name, Need::Read))
        .map(|s| {
            let mut dto = agent_service(s, &api.datacenter);
            dto.create_index = None;
            dto.modify_index = None;
            (s.id.clone(), dto)
        })
        .collect();
    let dropped = map.len() != total;
    (map, dropped)
}

async fn services(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    let filter = query.filter(AGENT_SERVICE)?;
    let (mut map, dropped) = agent_services(&api, &authz);
    retain_values(filter.as_ref(), &mut map);
    Ok(filtered(json(&map), dropped))
}

async fn service(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (map, _) = agent_services(&api, &authz);
    match map.get(&id) {
        Some(s) => Ok(json(s)),
        None => Err(ApiError::NotFound(format!("unknown service ID: {id}"))),
    }
}

async fn checks(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    let filter = query.filter(HEALTH_CHECK)?;
    let (services, checks) = api.local.snapshot();
    let total = checks.len();
    let mut map: BTreeMap<String, HealthCheck> = checks
        .iter()
        .filter(|c| {
            if c.service_id.is_empty() {
                authz.allows(Resource::Node, api.local.node(), Need::Read)
            } else {
                let name = services
                    .iter()
                    .find(|s| s.id == c.service_id)
                    .map_or("", |s| s.name.as_str());
                authz.allows(Resource::Service, name, Need::Read)
            }
        })
        .map(|c| (c.id.clone(), health_check(c)))
        .collect();
    let dropped = map.len() != total;
    retain_values(filter.as_ref(), &mut map);
    Ok(filtered(json(&map), dropped))
}

async fn register_check(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let def: AgentCheckRegistration = read_json(&headers, body)
        .await?
        .ok_or_else(|| ApiError::BadRequest("Missing check name".into()))?;
    let service = def
        .service_id
        .as_deref()
        .and_then(|sid| service_name_of(&api, sid))
        .unwrap_or_default();
    may_write_check(&authz, &api, &service)?;
    let id = explicit_check_id(&def)
        .or(def.name.as_deref())
        .unwrap_or_default();
    may_replace_check(&authz, &api, id)?;
    api.local.register_check(def)?;
    Ok(StatusCode::OK.into_response())
}

async fn deregister_check(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(service) = check_service_of(&api, &id) {
        may_write_check(&authz, &api, &service)?;
    }
    api.local.deregister_check(&id)?;
    Ok(StatusCode::OK.into_response())
}

async fn ttl(
    api: &AgentApi,
    authz: &Authz,
    id: &str,
    status: Health,
    output: String,
) -> Result<Response, ApiError> {
    if let Some(service) = check_service_of(api, id) {
        may_write_check(authz, api, &service)?;
    }
    api.local.update_ttl(id, status, output)?;
    Ok(StatusCode::OK.into_response())
}

async fn pass(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let note = Params::parse(&uri).get("note").unwrap_or("").to_owned();
    ttl(&api, &authz, &id, Health::Passing, note).await
}

async fn warn(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let note = Params::parse(&uri).get("note").unwrap_or("").to_owned();
    ttl(&api, &authz, &id, Health::Warning, note).await
}

async fn fail(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let note = Params::parse(&uri).get("note").unwrap_or("").to_owned();
    ttl(&api, &authz, &id, Health::Critical, note).await
}

/// Body of `PUT /v1/agent/check/update/<id>`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CheckUpdate {
    #[serde(default)]
    status: String,
    #[serde(default)]
    output: String,
}

async fn update(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upd: CheckUpdate = read_json(&headers, body).await?.unwrap_or_default();
    let status = Health::parse(&upd.status)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid check status: {:?}", upd.status)))?;
    ttl(&api, &authz, &id, status, upd.output).await
}

/// One entry of the agent health endpoints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentHealth {
    aggregated_status: String,
    service: AgentService,
    checks: Vec<HealthCheck>,
}

fn status_code(status: CheckStatus) -> StatusCode {
    match status {
        CheckStatus::Passing => StatusCode::OK,
        CheckStatus::Warning => StatusCode::TOO_MANY_REQUESTS,
        CheckStatus::Critical | CheckStatus::Maintenance => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn health_entries(
    api: &AgentApi,
    pick: impl Fn(&str, &str) -> bool,
) -> Option<(CheckStatus, Vec<AgentHealth>)> {
    let matched = api.local.service_health(|s| pick(&s.id, &s.name))?;
    let (_, checks) = api.local.snapshot();
    let mut overall = CheckStatus::Passing;
    let entries = matched
        .into_iter()
        .map(|(s, status)| {
            overall = worst(overall, status);
            AgentHealth {
                aggregated_status: status.as_str().to_owned(),
                service: agent_service(&s, &api.datacenter),
                checks: checks
                    .iter()
                    .filter(|c| c.service_id == s.id)
                    .map(health_check)
                    .collect(),
            }
        })
        .collect();
    Some((overall, entries))
}

fn health_answer<T: Serialize>(status: CheckStatus, body: &T, text: bool) -> Response {
    let mut response = if text {
        plain(StatusCode::OK, status.as_str().to_owned())
    } else {
        json(body)
    };
    *response.status_mut() = status_code(status);
    response
}

async fn health_by_name(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    authz.require(Resource::Service, &name, Need::Read)?;
    let text = Params::parse(&uri).get("format") == Some("text");
    match health_entries(&api, |_, n| n == name) {
        Some((status, entries)) => Ok(health_answer(status, &entries, text)),
        None => Ok(plain(
            StatusCode::NOT_FOUND,
            format!("ServiceName {name} Not Found"),
        )),
    }
}

async fn health_by_id(
    State(api): State<Arc<AgentApi>>,
    authz: Authz,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    if let Some(name) = service_name_of(&api, &id) {
        authz.require(Resource::Service, &name, Need::Read)?;
    }
    let text = Params::parse(&uri).get("format") == Some("text");
    match health_entries(&api, |i, _| i == id) {
        Some((status, mut entries)) => {
            let entry = entries.remove(0);
            Ok(health_answer(status, &entry, text))
        }
        None => Ok(plain(
            StatusCode::NOT_FOUND,
            format!("ServiceId {id} not found"),
        )),
    }
}
