//! `/git/{user}/{id}.git`: the embedded code store over git's smart HTTP protocol (clone and
//! fetch; push of `main`, checked like an upload), behind basic auth whose password is the
//! code-store token (any user name), or, for fetching one repository only, the short-lived
//! credential the master hands a worker for a build ([`credential`]).

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
use crate::codestore::{Code, CodeStoreError, MAIN_REF, credential, protocol, receive};
use crate::ops::Master;

/// Largest negotiation request accepted (decompressed).
pub const REQUEST_LIMIT: usize = 16 * 1024 * 1024;

fn agent() -> String {
    format!("berth/{}", env!("CARGO_PKG_VERSION"))
}

/// The repository a request fetches from, if it is a fetch (`info/refs` of upload-pack or
/// `git-upload-pack`): what a clone credential may do.
fn fetched_repo(req: &Request) -> Option<(ValidName, ValidName)> {
    let rest = req.uri().path().strip_prefix("/git/")?;
    let mut parts = rest.splitn(3, '/');
    let (user, repo, action) = (parts.next()?, parts.next()?, parts.next()?);
    let fetch = match action {
        "info/refs" => req.uri().query() == Some("service=git-upload-pack"),
        "git-upload-pack" => req.method() == axum::http::Method::POST,
        _ => false,
    };
    if !fetch {
        return None;
    }
    repo_names(user, repo).ok()
}

/// Checks `Authorization: Basic` against the code-store token, or a clone credential against
/// the repository it fetches, in constant time.
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
    let key = &master.settings.git_token;
    let allowed = password.is_some_and(|p| {
        key.matches(&p)
            || fetched_repo(&req).is_some_and(|(user, id)| {
                credential::check(key, &user, &id, &p, berth_worker_api::auth::unix_now())
            })
    });
    if allowed {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized {
            challenge: "Basic realm=\"berth\"",
        })
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

/// `GET info/refs?service=git-upload-pack|git-receive-pack`: the ref advertisement.
pub async fn info_refs(
    State(master): State<Arc<Master>>,
    Path((user, repo)): Path<(String, String)>,
    Query(q): Query<ServiceQuery>,
) -> Result<Response, ApiError> {
    let push = match q.service.as_deref() {
        Some("git-upload-pack") => false,
        Some("git-receive-pack") => true,
        _ => {
            return Err(ApiError::bad_request(
                "only git's smart protocol is served (service=git-upload-pack or \
                 git-receive-pack)",
            ));
        }
    };
    let (user, id) = repo_names(&user, &repo)?;
    let store = master.codestore.clone();
    let body = tokio::task::spawn_blocking(move || {
        let internal = |e: protocol::ProtocolError| ApiError::Internal(e.to_string());
        if push {
            return match store.open(&user, &id) {
                Ok(repo) => receive::advertise(Some(&repo), &agent()).map_err(internal),
                Err(CodeStoreError::NotFound { .. }) => {
                    receive::advertise(None, &agent()).map_err(internal)
                }
                Err(other) => Err(not_found(other)),
            };
        }
        let repo = store.open(&user, &id).map_err(not_found)?;
        protocol::advertise(&repo, &agent()).map_err(internal)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let kind = if push {
        "application/x-git-receive-pack-advertisement"
    } else {
        "application/x-git-upload-pack-advertisement"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// Reads a request body up to `limit` bytes (after gunzip when it is gzip-encoded).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| ApiError::TooLarge(format!("request body exceeds {limit} bytes")))?
        .to_bytes();
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("bad gzip request body: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "request body exceeds {limit} bytes"
        )));
    }
    Ok(out)
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

/// `POST git-receive-pack`: a `git push` of `main`, held to the upload rules (caps, hostile
/// paths, compose file at the root) and recorded as the instance's latest upload through the
/// same path; a refused push answers `ng` with the reason and leaves `main` unmoved. The
/// instance must exist (its first upload names its project).
pub async fn receive_pack(
    State(master): State<Arc<Master>>,
    Path((user, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let (user, id) = repo_names(&user, &repo)?;
    let limits = master.settings.limits;
    // Commands are a few lines; the pack is held to the compressed-size cap of an upload.
    let limit = usize::try_from(limits.max_compressed_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let slot = master.upload_slot().await;
    let body = read_body(&headers, body, limit).await?;
    let size = body.len() as u64;
    let request = receive::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let side_band = request.side_band;
    let answer = |refs: Vec<(String, Result<(), String>)>,
                  unpack: Result<(), &str>,
                  messages: Vec<String>| {
        (
            [
                (
                    header::CONTENT_TYPE,
                    "application/x-git-receive-pack-result",
                ),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            receive::report(side_band, unpack, &refs, &messages),
        )
            .into_response()
    };
    if request.commands.is_empty() {
        // git's probe before a large push: nothing to do.
        return Ok(answer(Vec::new(), Ok(()), Vec::new()));
    }
    let mut refs: Vec<(String, Result<(), String>)> = Vec::new();
    let mut main = None;
    for command in &request.commands {
        let refusal = if command.name != MAIN_REF {
            Some(format!("only {MAIN_REF} is accepted"))
        } else if command.new.is_zero() {
            Some("main cannot be deleted; DELETE the instance through the API".to_owned())
        } else if main.is_some() {
            Some("main named twice".to_owned())
        } else {
            main = Some(command.clone());
            None
        };
        if let Some(reason) = refusal {
            refs.push((command.name.clone(), Err(reason)));
        }
    }
    let Some(command) = main else {
        return Ok(answer(refs, Ok(()), Vec::new()));
    };
    let refuse = |mut refs: Vec<(String, Result<(), String>)>, reason: String| {
        refs.push((MAIN_REF.to_owned(), Err(reason)));
        refs
    };
    let record = match master.records.get(&id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            let reason = format!(
                "no instance {id}: make its first upload through the API (PUT \
                 /v1/instances/{id}/code), then push"
            );
            return Ok(answer(refuse(refs, reason), Ok(()), Vec::new()));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    if record.user != user.as_str() {
        let reason = format!("instance {id} belongs to another user");
        return Ok(answer(refuse(refs, reason), Ok(()), Vec::new()));
    }
    let project = valid("project", &record.project)?;
    let pack = request.pack.to_vec();
    drop(body);
    let (store, u, i) = (master.codestore.clone(), user.clone(), id.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let repo = store
            .open(&u, &i)
            .map_err(|e| receive::Refusal::Ref(e.to_string()))?;
        receive::check(&repo, &command, &pack, &limits)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let pushed = match checked {
        Ok(pushed) => pushed,
        Err(receive::Refusal::Unpack(e)) => {
            tracing::info!(%id, cause = %e, "push refused");
            let refs = refuse(refs, "unpacker error".into());
            return Ok(answer(refs, Err(&e), vec![e.clone()]));
        }
        Err(receive::Refusal::Ref(e)) => {
            tracing::info!(%id, cause = %e, "push refused");
            return Ok(answer(refuse(refs, e), Ok(()), Vec::new()));
        }
    };
    let commit = pushed.commit.to_string();
    let result = master
        .upload_code(
            id.clone(),
            user.clone(),
            project,
            Code::Pushed(pushed),
            size,
            slot,
            started,
            true,
            None,
        )
        .await;
    match result {
        Ok(rec) => {
            let messages = vec![format!("berth: instance {id} is {} at {commit}", rec.state)];
            refs.push((MAIN_REF.to_owned(), Ok(())));
            Ok(answer(refs, Ok(()), messages))
        }
        Err(err) => {
            // The code may be stored though a later step (the build) failed: say which.
            let store = master.codestore.clone();
            let head = tokio::task::spawn_blocking(move || store.head(&user, &id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            if head.as_deref() == Some(commit.as_str()) {
                refs.push((MAIN_REF.to_owned(), Ok(())));
                Ok(answer(
                    refs,
                    Ok(()),
                    vec![format!("berth: stored, but: {err}")],
                ))
            } else {
                Ok(answer(refuse(refs, err.to_string()), Ok(()), Vec::new()))
            }
        }
    }
}
