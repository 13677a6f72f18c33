//! The discovery reads of Connect and gateways (`/v1/health/connect/<s>`,
//! `/v1/health/ingress/<s>`, `/v1/catalog/gateway-services/<g>`), answered as a Consul without
//! Connect answers them: berth registers no proxies and no gateway config entries, so every
//! list is empty; they still block and carry `X-Consul-Index` like the catalog reads.

use std::sync::Arc;

use axum::extract::{Path, State};

use crate::acl::{Need, Resource};
use crate::http::authz::Authz;
use crate::http::filter::schema::CHECK_SERVICE_NODE;
use crate::http::query::{Blocking, ConsulQuery};
use crate::http::{ApiError, AppState};
use crate::store::state::Topic;

/// An empty list at the catalog's index, once that is past the request's `index`.
async fn empty(app: &AppState, query: &ConsulQuery) -> Blocking {
    let ((), index) = query
        .block(app, Topic::Catalog, |state| ((), state.tables.catalog()))
        .await;
    Blocking::json(&[(); 0], index)
}

/// `GET /v1/health/connect/<service>` and `/v1/health/ingress/<service>`: the proxies and
/// ingress gateways of a service, none here. Needs `service:read` on the service, checked
/// before `?filter=` (against Consul's entry type), as in Consul since its sameness groups (a
/// Consul before them answered a denied token the empty list).
pub(crate) async fn health_proxies(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(service): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    authz.require(Resource::Service, &service, Need::Read)?;
    query.filter(CHECK_SERVICE_NODE)?;
    Ok(empty(&app, &query).await)
}

/// `GET /v1/catalog/gateway-services/<gateway>`: the services a gateway routes to, none here.
/// Needs `service:read` on the gateway, as in Consul.
pub(crate) async fn gateway_services(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    Path(gateway): Path<String>,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    authz.require(Resource::Service, &gateway, Need::Read)?;
    Ok(empty(&app, &query).await)
}
