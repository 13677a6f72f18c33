//! The master's HTTP surface: [`router`] lists every route; errors map to HTTP in one place
//! ([`ApiError`]); extractor wrappers give bad input the same JSON error shape.

pub mod git;
pub mod instances;
pub mod system;

use std::sync::Arc;

use axum::Router;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use berth_model::{ErrorBody, ErrorCode, ErrorDetail, ValidName};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use crate::ops::{Master, OpError};
use crate::records::RecordsError;
use crate::upload::UploadError;

/// Largest JSON or other non-upload request body.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// Every route of the master, in one table.
pub fn router(master: Arc<Master>) -> Router {
    let api = Router::new()
        .route("/v1/instances", get(instances::list))
        .route(
            "/v1/instances/{id}",
            get(instances::show).delete(instances::delete),
        )
        .route("/v1/instances/{id}/code", put(instances::upload))
        .route("/v1/instances/{id}/build", post(instances::build))
        .route("/v1/instances/{id}/start", post(instances::start))
        .route("/v1/instances/{id}/stop", post(instances::stop))
        .route("/v1/instances/{id}/releases", get(instances::releases))
        .route("/v1/instances/{id}/deploy", post(instances::deploy))
        .route("/v1/instances/{id}/rollback", post(instances::rollback))
        .route("/v1/instances/{id}/logs", get(instances::logs))
        .route("/v1/workers", get(system::workers))
        .route_layer(middleware::from_fn_with_state(
            master.clone(),
            require_api_token,
        ));
    let git = Router::new()
        .route("/git/{user}/{repo}/info/refs", get(git::info_refs))
        .route("/git/{user}/{repo}/git-upload-pack", post(git::upload_pack))
        .route(
            "/git/{user}/{repo}/git-receive-pack",
            post(git::receive_pack),
        )
        .route_layer(middleware::from_fn_with_state(
            master.clone(),
            git::require_git_token,
        ));
    Router::new()
        .merge(api)
        .merge(git)
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(master)
}

/// Every error the API answers, as `{"error": {"code", "message", "details"?}}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        code: ErrorCode,
        message: String,
        details: Vec<ErrorDetail>,
    },
    Unauthorized {
        challenge: &'static str,
    },
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    TooLarge(String),
    Policy {
        message: String,
        details: Vec<ErrorDetail>,
    },
    /// The app's fault, with its code (422).
    App(Box<berth_model::ErrorInfo>),
    BadGateway {
        code: ErrorCode,
        message: String,
    },
    Unavailable {
        code: ErrorCode,
        message: String,
    },
    Timeout(String),
    /// The cause is logged; the client sees a generic message.
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: ErrorCode::BadRequest,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut challenge = None;
        let (status, code, message, details) = match self {
            ApiError::BadRequest {
                code,
                message,
                details,
            } => (StatusCode::BAD_REQUEST, code, message, details),
            ApiError::Unauthorized { challenge: c } => {
                challenge = Some(c);
                (
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "missing or unknown token".to_owned(),
                    vec![],
                )
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden, m, vec![]),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, m, vec![]),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route".to_owned(),
                vec![],
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, ErrorCode::Conflict, m, vec![]),
            ApiError::TooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                m,
                vec![],
            ),
            ApiError::Policy { message, details } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::PolicyRejected,
                message,
                details,
            ),
            ApiError::App(info) => {
                let body = ErrorBody { error: *info };
                return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
            }
            ApiError::BadGateway { code, message } => {
                (StatusCode::BAD_GATEWAY, code, message, vec![])
            }
            ApiError::Unavailable { code, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message, vec![])
            }
            ApiError::Timeout(m) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout, m, vec![]),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error; the master's log has the cause".to_owned(),
                    vec![],
                )
            }
        };
        let body = ErrorBody::new(code, message, details);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

impl From<OpError> for ApiError {
    fn from(err: OpError) -> Self {
        match err {
            OpError::Invalid { field, message } => ApiError::BadRequest {
                code: ErrorCode::BadRequest,
                details: vec![ErrorDetail {
                    service: None,
                    field: field.to_owned(),
                    reason: message.clone(),
                }],
                message,
            },
            OpError::Upload(UploadError::TooLarge { .. }) => ApiError::TooLarge(err.to_string()),
            OpError::Upload(UploadError::Hostile { ref entry, reason }) => ApiError::BadRequest {
                code: ErrorCode::InvalidUpload,
                details: vec![ErrorDetail {
                    service: None,
                    field: entry.clone(),
                    reason: reason.to_owned(),
                }],
                message: err.to_string(),
            },
            OpError::Upload(UploadError::Malformed(_) | UploadError::MissingCompose) => {
                ApiError::BadRequest {
                    code: ErrorCode::InvalidUpload,
                    message: err.to_string(),
                    details: vec![],
                }
            }
            OpError::NotFound(id) => ApiError::NotFound(format!(
                "instance {id} not found (never created, or deleted)"
            )),
            OpError::UnknownCommit(m) | OpError::Missing(m) => ApiError::NotFound(m),
            OpError::Conflict(m) => ApiError::Conflict(m),
            OpError::Policy { message, details } => ApiError::Policy { message, details },
            OpError::App(info) => ApiError::App(info),
            OpError::NoWorker(m) => ApiError::Unavailable {
                code: ErrorCode::NoHealthyWorker,
                message: m,
            },
            OpError::Timeout(m) => ApiError::Timeout(m),
            OpError::Worker(m) => ApiError::BadGateway {
                code: ErrorCode::WorkerError,
                message: m,
            },
            OpError::Forge(e) => ApiError::BadGateway {
                code: ErrorCode::ForgeError,
                message: e.to_string(),
            },
            OpError::Records(RecordsError::Registry(e)) => {
                tracing::error!(cause = %e, "registry call failed");
                ApiError::Unavailable {
                    code: ErrorCode::RegistryUnavailable,
                    message: "the registry did not answer; retry later".into(),
                }
            }
            OpError::Records(e @ RecordsError::LockLost { .. }) => ApiError::Conflict(format!(
                "{e}; another operation may have taken over: read the record and retry"
            )),
            OpError::Records(e) => ApiError::Internal(e.to_string()),
            OpError::CodeStore(e) => ApiError::Internal(e.to_string()),
            OpError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// Validates a name from a path or query, naming the field in the error.
pub fn valid(field: &'static str, value: &str) -> Result<ValidName, ApiError> {
    ValidName::parse(field, value).map_err(|e| ApiError::BadRequest {
        code: ErrorCode::BadRequest,
        message: e.to_string(),
        details: vec![ErrorDetail {
            service: None,
            field: field.to_owned(),
            reason: format!("must be {}", berth_model::NAME_RULE),
        }],
    })
}

/// Query-string extractor answering bad input in the API's error shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("invalid query: {}", e.body_text()))
            })
    }
}

/// Path-parameter extractor answering bad input (e.g. a segment that is not UTF-8 once
/// percent-decoded) in the API's error shape, naming the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let message = format!("invalid path: {}", e.body_text());
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                Err(ApiError::BadRequest {
                    code: ErrorCode::BadRequest,
                    details: field
                        .map(|field| ErrorDetail {
                            service: None,
                            field,
                            reason: message.clone(),
                        })
                        .into_iter()
                        .collect(),
                    message,
                })
            }
            Err(other) => Err(ApiError::Internal(format!(
                "path extraction: {}",
                other.body_text()
            ))),
        }
    }
}

/// Optional JSON body: empty means `None`; anything else must parse as `T` (400 otherwise, 413
/// past the body limit), whatever its content type.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge(format!("request body exceeds {JSON_BODY_LIMIT} bytes"))
                }
                _ => ApiError::bad_request(format!("cannot read body: {}", e.body_text())),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// `/v1` routes need `Authorization: Bearer <api token>`.
async fn require_api_token(
    State(master): State<Arc<Master>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| credentials(v, "Bearer"));
    match presented {
        Some(token) if master.settings.api_token.matches(token) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized {
            challenge: "Bearer realm=\"berth\"",
        }),
    }
}

/// The credentials of an `Authorization` value using `scheme`, matched case-insensitively as
/// RFC 7235 says (`Bearer`, `bearer`, `BEARER`).
pub(crate) fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Parses `wait=30s` (humantime; at most an hour).
pub fn parse_wait(wait: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(wait) = wait else { return Ok(None) };
    let d = humantime::parse_duration(wait)
        .map_err(|e| ApiError::bad_request(format!("invalid wait {wait:?}: {e} (e.g. 30s, 5m)")))?;
    if d > std::time::Duration::from_secs(3600) {
        return Err(ApiError::bad_request(format!(
            "invalid wait {wait:?}: at most 1h"
        )));
    }
    Ok(Some(d))
}
