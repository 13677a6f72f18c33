//! `/healthz`, `/metrics`, `/openapi.json` and `/v1/workers`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::ApiError;
use crate::ops::Master;
use crate::placement::WorkerInfo;
use crate::record::{
    DeployRecord, DeployState, Endpoint, InstanceRecord, PlacementMove, RecordError,
    State as InstanceState, WorkerRef,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// Liveness; no auth.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "the master is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Prometheus text exposition; no auth.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "metrics", content_type = "text/plain", body = String)))]
pub async fn metrics(State(master): State<Arc<Master>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        master.metrics.render(),
    )
}

/// Every `berth-worker` service, healthy or not, with its load.
#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses(
        (status = 200, description = "workers in id order", body = Vec<WorkerInfo>),
        (status = 401, description = "no or unknown token"),
        (status = 503, description = "registry unavailable"),
    ),
    security(("bearer" = [])))]
pub async fn workers(State(master): State<Arc<Master>>) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    Ok(Json(master.workers().await?))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "berth master API", description = "Upload, build, deploy, roll back, start, stop and delete instances; errors are {\"error\": {\"code\", \"message\", \"details\"?}}"),
    paths(
        super::instances::upload,
        super::instances::build,
        super::instances::start,
        super::instances::stop,
        super::instances::releases,
        super::instances::deploy,
        super::instances::rollback,
        super::instances::delete,
        super::instances::show,
        super::instances::list,
        super::instances::logs,
        workers,
        healthz,
        metrics,
        openapi,
    ),
    components(schemas(berth_model::LogSource, berth_model::ServiceHealth, berth_model::ServiceState, berth_model::ErrorBody, berth_model::ErrorInfo, berth_model::ErrorDetail, berth_model::ErrorCode, InstanceRecord, InstanceState, WorkerRef, RecordError, PlacementMove, Endpoint, super::instances::DeleteOutcome, WorkerInfo, Health, super::instances::BuildBody, super::instances::RollbackBody, super::instances::DeployBody, DeployRecord, DeployState, crate::ops::Release)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// This document, generated from the handlers and types.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
