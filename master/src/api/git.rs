//! `/git/{user}/{id}.git`: the embedded code store over git's smart HTTP protocol, read-only,
//! behind basic auth whose password is the code-store token (any user name).

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_worker_api::ValidName;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use super::{ApiError, Path, Query, valid};
use crate::codestore::{CodeStoreError, protocol};
use crate::ops::Master;

/// Largest negotiation request accepted (decompressed).
pub const REQUEST_LIMIT: usize = 16 * 1024 * 1024;

fn agent() -> String {
    format!("berth/{}", env!("CARGO_PKG_VERSION"))
}

/// Checks `Authorization: Basic` against the code-store token in constant time.
pub(super) async fn require_git_token(
    State(master): State<Arc<Master>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let password = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| super::credentials(v, "Basic"))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()));
    match password {
        Some(p) if master.settings.git_token.matches(&p) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized {
            challenge: "Basic realm=\"berth\"",
        }),
    }
}

fn repo_names(user: &str, repo: &str) -> Result<(ValidName, ValidName), ApiError> {
    let user = valid("user", user)?;
    let id = repo
        .strip_suffix(".git")
        .ok_or_else(|| ApiError::NotFound("repositories are named <id>.git".into()))?;
    Ok((user, valid("id", id)?))
}

fn not_found(err: CodeStoreError) -> ApiError {
    match err {
        CodeStoreError::NotFound { user, id } => {
            ApiError::NotFound(format!("no repository {user}/{id}.git"))
        }
        other => ApiError::Internal(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct ServiceQuery {
    service: Option<String>,
}

/// `GET info/refs?service=git-upload-pack`: the ref advertisement.
pub async fn info_refs(
    State(master): State<Arc<Master>>,
    Path((user, repo)): Path<(String, String)>,
    Query(q): Query<ServiceQuery>,
) -> Result<Response, ApiError> {
    match q.service.as_deref() {
        Some("git-upload-pack") => {}
        Some("git-receive-pack") => {
            return Err(ApiError::Forbidden(
                "the code store is read-only; upload code through the API".into(),
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "only git's smart protocol is served (service=git-upload-pack)",
            ));
        }
    }
    let (user, id) = repo_names(&user, &repo)?;
    let store = master.codestore.clone();
    let body = tokio::task::spawn_blocking(move || {
        let repo = store.open(&user, &id).map_err(not_found)?;
        protocol::advertise(&repo, &agent()).map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/x-git-upload-pack-advertisement",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `POST git-upload-pack`: one round of negotiation, and the pack when it is done.
pub async fn upload_pack(
    State(master): State<Arc<Master>>,
    Path((user, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (user, id) = repo_names(&user, &repo)?;
    let raw = Limited::new(body, REQUEST_LIMIT)
        .collect()
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!("negotiation request exceeds {REQUEST_LIMIT} bytes"))
        })?
        .to_bytes();
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let request = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(REQUEST_LIMIT as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::bad_request(format!("bad gzip request body: {e}")))?;
        if out.len() > REQUEST_LIMIT {
            return Err(ApiError::TooLarge(format!(
                "negotiation request exceeds {REQUEST_LIMIT} bytes"
            )));
        }
        out
    } else {
        raw.to_vec()
    };
    let store = master.codestore.clone();
    let result = tokio::task::spawn_blocking(move || {
        let repo = store.open(&user, &id).map_err(not_found)?;
        protocol::upload_pack(&repo, &request).map_err(|e| match e {
            protocol::ProtocolError::Git(e) => ApiError::Internal(e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    master.metrics.git_fetch(result.is_ok());
    let (body, stats) = result?;
    if let Some(objects) = stats.objects {
        tracing::debug!(objects, bytes = stats.pack_bytes, "pack sent");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-git-upload-pack-result"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `POST git-receive-pack`: refused, the store is written only through uploads.
pub async fn receive_pack() -> ApiError {
    ApiError::Forbidden("the code store is read-only; upload code through the API".into())
}
