//! The one error type of the HTTP layer and the plain-text and JSON answers built on it.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// Every error an endpoint answers with: plain text and Consul's status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// 500 with a text clients match (e.g. `does not have associated TTL`).
    #[error("{0}")]
    Internal(String),
    /// 403 `Permission denied` / `ACL not found`.
    #[error("{0}")]
    Forbidden(String),
    /// 401 `ACL support disabled`.
    #[error("{0}")]
    Unauthorized(String),
    /// 409: the request clashes with what exists (an agent's node name in use).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::acl::store::PersistError> for ApiError {
    fn from(err: crate::acl::store::PersistError) -> Self {
        Self::Internal(err.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::BadRequest(text) => (StatusCode::BAD_REQUEST, text),
            Self::NotFound(text) => (StatusCode::NOT_FOUND, text),
            Self::TooLarge(text) => (StatusCode::PAYLOAD_TOO_LARGE, text),
            Self::Internal(text) => (StatusCode::INTERNAL_SERVER_ERROR, text),
            Self::Forbidden(text) => (StatusCode::FORBIDDEN, text),
            Self::Unauthorized(text) => (StatusCode::UNAUTHORIZED, text),
            Self::Conflict(text) => (StatusCode::CONFLICT, text),
            Self::Store(StoreError::Rejected(text)) => (StatusCode::INTERNAL_SERVER_ERROR, text),
            Self::Store(StoreError::Closed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "registry is shutting down".to_owned(),
            ),
            Self::Store(err) => {
                tracing::error!(cause = %err, "registry store failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal store error".to_owned(),
                )
            }
        };
        plain(status, text)
    }
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response with Consul's content type.
pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => ApiError::Store(StoreError::Corrupt(err.to_string())).into_response(),
    }
}
