//! `/v1/instances`: upload, build, start, stop, delete, read, log-stream, releases, deploy and rollback
//! handlers.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_worker_api::{DeleteResponse, LogQuery};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, OptionalJson, Path, Query, parse_wait, valid};
use crate::ops::Master;
use crate::record::{InstanceRecord, State as InstanceState};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Owner of the instance (name rule applies).
    pub user: Option<String>,
    /// Project the instance belongs to (name rule applies).
    pub project: Option<String>,
    /// Start a build of a new commit (default true).
    pub build: Option<bool>,
    /// Deploy the upload once committed (as `POST .../deploy`; default false).
    pub deploy: Option<bool>,
    /// Wait this long for the build (or deploy) to end (e.g. `30s`); 504 past it.
    pub wait: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait this long for the final record (e.g. `30s`); 504 past it.
    pub wait: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildBody {
    /// Full commit id to build; default the latest upload.
    pub commit: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub user: Option<String>,
    /// One of the instance states.
    pub state: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Keep the instance's git repository (default false).
    pub keep_code: Option<bool>,
}

fn required<'a>(field: &'static str, value: &'a Option<String>) -> Result<&'a str, ApiError> {
    value
        .as_deref()
        .ok_or_else(|| ApiError::bad_request(format!("missing query parameter {field}")))
}

/// Upload the instance's code (tar.gz) and, unless `build=false`, build it; a running instance
/// builds beside its running release, which keeps serving. With `deploy=true`, upload and deploy.
#[utoipa::path(put, path = "/v1/instances/{id}/code", tag = "instances",
    params(("id" = String, Path, description = "instance id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/gzip", description = "tar.gz with a compose file at its root"),
    responses(
        (status = 200, description = "the instance record", body = InstanceRecord),
        (status = 400, description = "bad input or hostile archive (names the field or entry)"),
        (status = 401, description = "no or unknown token"),
        (status = 409, description = "the state does not allow an upload, or the instance is busy"),
        (status = 413, description = "an upload cap was exceeded (named)"),
        (status = 502, description = "with `deploy=true`: the rollout failed; the old release keeps serving"),
        (status = 503, description = "no healthy worker for the build"),
        (status = 504, description = "`wait` passed before the build (or deploy) ended"),
    ),
    security(("bearer" = [])))]
pub async fn upload(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    let user = valid("user", required("user", &q.user)?)?;
    let project = valid("project", required("project", &q.project)?)?;
    let wait = parse_wait(q.wait.as_deref())?;
    // The body is read only with a slot, so at most `max_concurrent` uploads are in memory.
    let slot = master.upload_slot().await;
    let cap = master.settings.limits.max_compressed_bytes;
    let bytes = Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge(format!("upload exceeds the compressed size cap of {cap}"))
            } else {
                ApiError::bad_request(format!("cannot read the upload: {e}"))
            }
        })?
        .to_bytes();
    let deploy = q.deploy.unwrap_or(false);
    let record = master
        .upload(
            id.clone(),
            user,
            project,
            crate::ops::UploadBody { bytes, slot },
            q.build.unwrap_or(true) && !deploy,
            wait,
        )
        .await?;
    if deploy {
        return Ok(Json(master.deploy(id, record.commit, wait).await?));
    }
    Ok(Json(record))
}

/// Build the latest commit (or `{"commit": ...}`) on a worker chosen for the instance.
#[utoipa::path(post, path = "/v1/instances/{id}/build", tag = "instances",
    params(("id" = String, Path, description = "instance id"), WaitQuery),
    request_body(content = Option<BuildBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "build started; the record is in `building`", body = InstanceRecord),
        (status = 200, description = "final record (with `wait`), or already built", body = InstanceRecord),
        (status = 400, description = "bad input"), (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance"), (status = 409, description = "state does not allow a build"),
        (status = 422, description = "the app's fault: `invalid_compose`, `policy_rejected` (with details), `build_failed`, `image_missing` (with the service and last log lines)"),
        (status = 502, description = "a part of berth failed (the worker)"),
        (status = 503, description = "no healthy worker"), (status = 504, description = "`wait` passed"),
    ),
    security(("bearer" = [])))]
pub async fn build(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    OptionalJson(body): OptionalJson<BuildBody>,
) -> Result<Response, ApiError> {
    let id = valid("id", &id)?;
    let wait = parse_wait(q.wait.as_deref())?;
    let record = master.build(id, body.and_then(|b| b.commit), wait).await?;
    let status = if record.state == InstanceState::Building {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)).into_response())
}

/// Start the stack; answers once it runs, with its endpoints.
#[utoipa::path(post, path = "/v1/instances/{id}/start", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses(
        (status = 200, description = "running, with endpoints", body = InstanceRecord),
        (status = 401, description = "no or unknown token"), (status = 404, description = "unknown instance"),
        (status = 409, description = "state does not allow a start"),
        (status = 422, description = "the app's fault: `invalid_compose`, `policy_rejected`, `build_failed`, `image_missing`, `start_failed`, `unhealthy` (with the service, the probe's output and the last log lines)"),
        (status = 502, description = "a part of berth failed (the worker unreachable, or a step of its own)"), (status = 503, description = "no healthy worker"),
        (status = 504, description = "readiness timed out"),
    ),
    security(("bearer" = [])))]
pub async fn start(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    Ok(Json(master.start(id).await?))
}

/// Stop the stack.
#[utoipa::path(post, path = "/v1/instances/{id}/stop", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses(
        (status = 200, description = "stopped", body = InstanceRecord),
        (status = 401, description = "no or unknown token"), (status = 404, description = "unknown instance"),
        (status = 409, description = "state does not allow a stop"), (status = 502, description = "the worker failed"),
    ),
    security(("bearer" = [])))]
pub async fn stop(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    Ok(Json(master.stop(id).await?))
}

/// Remove the stack, images, checkout and KV records on the worker and, unless kept, the repo.
#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "instance id"), DeleteQuery),
    responses(
        (status = 200, description = "deleted", body = DeleteOutcome),
        (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown or already deleted instance"),
        (status = 409, description = "busy"), (status = 502, description = "the worker failed"),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<DeleteOutcome>, ApiError> {
    let id = valid("id", &id)?;
    let keep_code = q.keep_code.unwrap_or(false);
    let done = master.delete(id.clone(), keep_code).await?;
    Ok(Json(DeleteOutcome {
        id: id.to_string(),
        deleted: true,
        code_kept: keep_code,
        worker: done.worker,
        note: done.note,
        former_workers: done.former,
    }))
}

/// What a delete did, as answered by `DELETE /v1/instances/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeleteOutcome {
    pub id: String,
    pub deleted: bool,
    pub code_kept: bool,
    /// What the worker removed; absent when the instance was never placed or its worker is gone.
    #[schema(value_type = Option<Object>)]
    pub worker: Option<DeleteResponse>,
    /// Why the worker was not asked, when it was not.
    pub note: Option<String>,
    /// What each worker the instance was placed on before (its `moves`) answered to the delete,
    /// one line per worker (best effort: one that is gone removes its copy when it returns).
    pub former_workers: Vec<String>,
}

/// The instance record.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses(
        (status = 200, description = "the record", body = InstanceRecord),
        (status = 400, description = "invalid id"), (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance"),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    Ok(Json(master.get(&id).await?))
}

/// Every instance record, optionally of one user and/or in one state.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(ListQuery),
    responses(
        (status = 200, description = "records in id order", body = Vec<InstanceRecord>),
        (status = 400, description = "invalid user or state"), (status = 401, description = "no or unknown token"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(master): State<Arc<Master>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<InstanceRecord>>, ApiError> {
    let user = q.user.as_deref().map(|u| valid("user", u)).transpose()?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(InstanceState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = InstanceState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("invalid state {s:?}: one of {}", all.join(", ")))
        })?),
    };
    Ok(Json(master.list(user.as_ref(), state).await?))
}

/// The instance's logs, streamed from its worker: berth's build and start output (`source=ops`,
/// the default unless `service` is given) or the app's stdout and stderr (`source=app`, each line
/// `service | text`, followed across container restarts), or both (`all`). A stream ends when the
/// client leaves.
#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "instances",
    params(("id" = String, Path, description = "instance id"), LogQuery),
    responses(
        (status = 200, description = "text/plain stream", content_type = "text/plain", body = String),
        (status = 400, description = "bad query (e.g. `since`)"),
        (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance, or a service without a container"),
        (status = 409, description = "not placed on a worker yet"), (status = 502, description = "worker unreachable"),
    ),
    security(("bearer" = [])))]
pub async fn logs(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let id = valid("id", &id)?;
    let stream = master.logs(&id, &q).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The instance's releases (uploads), newest first, with which one is built and which runs.
#[utoipa::path(get, path = "/v1/instances/{id}/releases", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses(
        (status = 200, description = "releases, newest first (at most 100)", body = Vec<crate::ops::Release>),
        (status = 400, description = "invalid id"), (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance"),
    ),
    security(("bearer" = [])))]
pub async fn releases(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<crate::ops::Release>>, ApiError> {
    let id = valid("id", &id)?;
    Ok(Json(master.releases(&id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Full commit id (40 hex) of a release; default the release before the running one (or
    /// before the built one when the instance does not run).
    pub commit: Option<String>,
}

/// Roll back to an earlier release, the same rollout as `deploy`: a running instance keeps
/// serving throughout, and a release whose images are kept builds nothing.
#[utoipa::path(post, path = "/v1/instances/{id}/rollback", tag = "instances",
    params(("id" = String, Path, description = "instance id"), WaitQuery),
    request_body(content = Option<RollbackBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "rolled back: the final record", body = InstanceRecord),
        (status = 400, description = "bad input (e.g. a commit that is not 40 hex digits)"),
        (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance, or a commit that is not one of its releases"),
        (status = 409, description = "no earlier release, the state does not allow it, or busy"),
        (status = 422, description = "rejected by the worker's policy"),
        (status = 502, description = "the worker failed"), (status = 503, description = "no healthy worker"),
        (status = 504, description = "`wait` (default 10m) passed before the rollout ended"),
    ),
    security(("bearer" = [])))]
pub async fn rollback(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    OptionalJson(body): OptionalJson<RollbackBody>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    let wait = parse_wait(q.wait.as_deref())?;
    let record = master
        .rollback(id, body.and_then(|b| b.commit), wait)
        .await?;
    Ok(Json(record))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// Full commit id (40 hex) of a release; default the latest upload.
    pub commit: Option<String>,
}

/// Roll the instance to a release. A running instance rolls service by service, start-first
/// where it can, each new container gated on its readiness; a failed rollout switches back and
/// the old release keeps serving (the record's `deploy` and `error` say which service failed and
/// why). A release whose images the worker keeps builds nothing. An instance that does not run
/// is built (if needed) and started.
#[utoipa::path(post, path = "/v1/instances/{id}/deploy", tag = "instances",
    params(("id" = String, Path, description = "instance id"), WaitQuery),
    request_body(content = Option<DeployBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "deployed: the final record, `running_commit` is the release", body = InstanceRecord),
        (status = 400, description = "bad input (e.g. a commit that is not 40 hex digits)"),
        (status = 401, description = "no or unknown token"),
        (status = 404, description = "unknown instance, or a commit that is not one of its releases"),
        (status = 409, description = "the state does not allow it, or busy"),
        (status = 422, description = "rejected by the worker's policy"),
        (status = 502, description = "the rollout (or build, or start) failed; a running instance keeps its old release"),
        (status = 503, description = "no healthy worker"),
        (status = 504, description = "`wait` (default 10m) passed before the rollout ended"),
    ),
    security(("bearer" = [])))]
pub async fn deploy(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    OptionalJson(body): OptionalJson<DeployBody>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id = valid("id", &id)?;
    let wait = parse_wait(q.wait.as_deref())?;
    let record = master.deploy(id, body.and_then(|b| b.commit), wait).await?;
    Ok(Json(record))
}
