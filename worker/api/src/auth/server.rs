//! The worker side of [`super`] as axum middleware: one layer over every signed route, and the
//! proof header of a health answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AuthError, DATE_HEADER, MAX_BODY, NONCE_HEADER, SIGNATURE_HEADER, Verifier};
use crate::{ErrorBody, ErrorCode};

fn refuse(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (
        status,
        axum::Json(ErrorBody::new(code, message, Vec::new())),
    )
        .into_response()
}

/// Lets a request through only when [`Verifier::verify`] accepts it; answers 401 otherwise
/// (413 for a body over [`MAX_BODY`]). The body is read whole and handed on unchanged.
pub async fn require_signature(
    State(verifier): State<Arc<Verifier>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if header(SIGNATURE_HEADER).is_none() {
        return unauthorized(AuthError::Missing);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("request body over {MAX_BODY} bytes or broken"),
        );
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let checked = verifier.verify(
        parts.method.as_str(),
        path_and_query,
        &bytes,
        (
            header(DATE_HEADER),
            header(NONCE_HEADER),
            header(SIGNATURE_HEADER),
        ),
        super::unix_now(),
    );
    match checked {
        Ok(()) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(err) => {
            tracing::warn!(cause = %err, path = parts.uri.path(), "refused an unsigned or badly signed request");
            unauthorized(err)
        }
    }
}

fn unauthorized(err: AuthError) -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        err.to_string(),
    )
}

/// The headers a health answer carries for `challenge` (none without one, or for a challenge
/// too long to be the master's).
pub fn proof_headers(verifier: &Verifier, challenge: Option<&str>, node: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(c) = challenge.filter(|c| !c.is_empty() && c.len() <= super::MAX_NONCE) {
        let proof = super::health_proof(verifier.key(), c, node);
        if let Ok(v) = HeaderValue::from_str(&proof) {
            headers.insert(HeaderName::from_static(super::PROOF_HEADER), v);
        }
    }
    headers
}
