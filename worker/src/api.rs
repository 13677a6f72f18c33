//! The worker API: one router serving every route of `berth_worker_api::routes`, the request
//! signature check over every `/v1` route (`berth_worker_api::auth`), handlers that call the
//! stack manager, and the one `ApiError`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_worker_api::auth::{self, Verifier};
use berth_worker_api::{
    BuildRequest, DeleteResponse, DeployRequest, ErrorBody, ErrorCode, LogQuery, Secret,
    StackStatus, StartRequest, ValidName, WorkerHealth, routes,
};
use serde::Deserialize;

use crate::fence::Fence;
use crate::stacks::{StackError, Stacks};

#[derive(Clone)]
pub struct AppState {
    pub stacks: Arc<Stacks>,
    pub token: Secret,
    pub capacity: u32,
    /// Builds and starts only of instances the master's records place here (`None`: all).
    pub fence: Option<Arc<Fence>>,
}

/// Every route of the worker API; every route of `v1` is behind the signature check.
pub fn router(state: AppState) -> Router {
    let verifier = Arc::new(Verifier::new(state.token.clone()));
    let v1 = Router::new()
        .route(routes::STACKS, get(list))
        .route(routes::STACK, get(status).delete(delete))
        .route(routes::STACK_BUILD, post(build))
        .route(routes::STACK_START, post(start))
        .route(routes::STACK_DEPLOY, post(deploy))
        .route(routes::STACK_STOP, post(stop))
        .route(routes::STACK_LOGS, get(logs))
        .route_layer(middleware::from_fn_with_state(
            verifier.clone(),
            auth::require_signature,
        ));
    Router::new()
        .route(
            routes::HEALTHZ,
            get(move |state, query| healthz(state, query, verifier)),
        )
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Stack(#[from] StackError),
    /// The task running an operation panicked or was cancelled.
    #[error("operation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = match self {
            Self::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                m,
                Vec::new(),
            ),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, m, Vec::new()),
            e @ Self::Task(_) => {
                tracing::error!(cause = %e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error".to_owned(),
                    Vec::new(),
                )
            }
            Self::Stack(e) => match e {
                StackError::BadRequest(m) => (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    m,
                    Vec::new(),
                ),
                e @ StackError::NotFound(_) => (
                    StatusCode::NOT_FOUND,
                    ErrorCode::NotFound,
                    e.to_string(),
                    Vec::new(),
                ),
                StackError::Conflict(m) => {
                    (StatusCode::CONFLICT, ErrorCode::Conflict, m, Vec::new())
                }
                StackError::Rejected { message, details } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::PolicyRejected,
                    message,
                    details,
                ),
                StackError::InvalidCompose { message, details } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidCompose,
                    message,
                    details,
                ),
                StackError::App(fault) => {
                    // The message reads on its own (cause, probe, last lines); the fields carry the same.
                    let mut body = ErrorBody::new(fault.code, fault.to_string(), Vec::new());
                    body.error.service = fault.service;
                    body.error.probe_output = fault.probe_output;
                    body.error.last_log_lines = fault.last_log_lines;
                    return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
                }
                e @ StackError::Failed { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Failed,
                    e.to_string(),
                    Vec::new(),
                ),
                StackError::Timeout(m) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::Timeout,
                    m,
                    Vec::new(),
                ),
                e @ (StackError::Docker(_) | StackError::Io { .. }) => {
                    // Internals are logged, not answered.
                    tracing::error!(cause = %e, "internal error");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::Internal,
                        "internal error".to_owned(),
                        Vec::new(),
                    )
                }
            },
        };
        let body = ErrorBody::new(code, message, details);
        (status, Json(body)).into_response()
    }
}

/// `Json` whose rejections answer the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::BadRequest(rejection_message(e))),
        }
    }
}

fn rejection_message(e: JsonRejection) -> String {
    e.body_text()
}

fn parse_id(raw: &str) -> Result<ValidName, ApiError> {
    ValidName::parse("id", raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    challenge: Option<String>,
}

/// The health answer; with a challenge, the proof that this worker holds the cluster token.
async fn healthz(
    State(state): State<AppState>,
    Query(q): Query<HealthQuery>,
    verifier: Arc<Verifier>,
) -> impl IntoResponse {
    let node = &state.stacks.settings().node;
    let proof = auth::proof_headers(&verifier, q.challenge.as_deref(), node);
    (
        proof,
        Json(WorkerHealth {
            status: "ok".into(),
            node: state.stacks.settings().node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            instances: state.stacks.count() as u32,
            capacity: state.capacity,
        }),
    )
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<StackStatus>>, ApiError> {
    Ok(Json(state.stacks.list().await?))
}

async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StackStatus>, ApiError> {
    Ok(Json(state.stacks.status(&parse_id(&id)?).await?))
}

async fn build(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<BuildRequest>,
) -> Result<Json<StackStatus>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(fence) = &state.fence {
        fence.admit(&id, "build").await?;
    }
    // The operation runs to its end even if the caller goes away (no half-written state).
    let stacks = state.stacks.clone();
    let result = tokio::spawn(async move { stacks.build(&id, &req).await }).await?;
    Ok(Json(result?))
}

async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<StackStatus>, ApiError> {
    let id = parse_id(&id)?;
    // The body is optional: no body means worker defaults.
    let req: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?
    };
    if let Some(fence) = &state.fence {
        fence.admit(&id, "start").await?;
    }
    let stacks = state.stacks.clone();
    let result = tokio::spawn(async move { stacks.start(&id, &req).await }).await?;
    Ok(Json(result?))
}

async fn deploy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Json<StackStatus>, ApiError> {
    let id = parse_id(&id)?;
    // The rollout runs to its end (or its undo) even if the caller goes away.
    let stacks = state.stacks.clone();
    let result = tokio::spawn(async move { stacks.deploy(&id, &req).await }).await?;
    Ok(Json(result?))
}

async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StackStatus>, ApiError> {
    let id = parse_id(&id)?;
    let stacks = state.stacks.clone();
    let result = tokio::spawn(async move { stacks.stop(&id).await }).await?;
    Ok(Json(result?))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    keep_volumes: bool,
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let id = parse_id(&id)?;
    let stacks = state.stacks.clone();
    let result = tokio::spawn(async move { stacks.delete(&id, q.keep_volumes).await }).await?;
    Ok(Json(result?))
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let stream = state.stacks.log_stream(&id, &q).await?;
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
