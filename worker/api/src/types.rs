//! Wire types of the worker API (`/v1/stacks/...`), serialised as JSON by both sides.
//!
//! Routes (patterns and builders in [`crate::routes`]; all but `/healthz` must be signed with the
//! cluster token, see [`crate::auth`]):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/stacks/{id}/build` | [`BuildRequest`] | [`StackStatus`] once the build ended |
//! | `POST /v1/stacks/{id}/start` | [`StartRequest`] | [`StackStatus`] once every service is ready |
//! | `POST /v1/stacks/{id}/deploy` | [`DeployRequest`] | [`StackStatus`] once the running stack rolled to the commit (or failed and kept the old release) |
//! | `POST /v1/stacks/{id}/stop` | none | [`StackStatus`] |
//! | `DELETE /v1/stacks/{id}?keep_volumes=true` | none | [`DeleteResponse`] |
//! | `GET /v1/stacks/{id}` | none | [`StackStatus`] (404 if the worker holds no such stack) |
//! | `GET /v1/stacks` | none | `Vec<StackStatus>` |
//! | `GET /v1/stacks/{id}/logs?source=&service=&tail=&since=&follow=` ([`LogQuery`]) | none | `text/plain` stream: build and start output (`ops`, the default), the containers' output (`app`) or both |
//! | `GET /healthz?challenge=` | none | [`WorkerHealth`], with `X-Berth-Proof` for a challenge |
//!
//! Errors answer [`ErrorBody`] (codes: [`ErrorCode`]) with these statuses: 400 bad input, 401
//! unsigned, badly signed, replayed or outside the clock window, 404 unknown stack, 409 an operation that the stack's state does not allow or a Docker object under one of
//! the stack's names that is not the stack's own (the message names it and its owner), 422
//! the app's fault, with a code saying which ([`ErrorCode::is_app_fault`]: `policy_rejected`,
//! `invalid_compose` with [`ErrorDetail`]s naming service, field and reason; `build_failed`,
//! `image_missing`, `start_failed`, `unhealthy` with the service, the probe's output and the last
//! log lines), 500 a step of berth's own failed (fetch, checkout) or an internal error, 504
//! readiness timed out. Delete answers 200 even when it could not remove everything
//! ([`DeleteResponse::not_removed`]).

use serde::{Deserialize, Serialize};

use crate::{Secret, ValidName};

// Shared with the master: the endpoint a stack publishes and the error body.
pub use berth_model::{
    Endpoint, ErrorBody, ErrorCode, ErrorDetail, ErrorInfo, LogQuery, LogSource, ServiceHealth,
    ServiceState, strip_ansi,
};

/// Where the worker fetches the instance's code from, and with what credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoSource {
    /// Clone URL, e.g. `http://master:8080/git/alice/shop-1.git`.
    pub url: String,
    /// HTTP basic-auth user name for the code store (the token goes in `password`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    pub user: ValidName,
    pub project: ValidName,
    /// Full 40-hex commit id to build.
    pub commit: String,
    pub repo: RepoSource,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The commit the master believes is built; the worker answers 409 if it holds another.
    #[serde(default)]
    pub commit: Option<String>,
    /// Readiness timeout in seconds (worker default when absent; at most 86400, else 400).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A rollout of a running stack to `commit`: the worker fetches and checks it out, builds it
/// unless the images of that release are kept, then replaces the running containers service by
/// service. A stack that does not run answers 409 (start it instead).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub user: ValidName,
    pub project: ValidName,
    /// Full 40-hex commit id to roll to.
    pub commit: String,
    pub repo: RepoSource,
    /// Readiness timeout per service in seconds (worker default when absent; at most 86400).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackState {
    /// Known to the worker but nothing built yet (e.g. a build is running).
    Building,
    Built,
    Starting,
    Running,
    /// Running, but the watcher found a service that is not as it should be (exited,
    /// restarting, unhealthy): [`StackStatus::health`] says which. Only reported, never recorded.
    Degraded,
    Stopping,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    pub name: String,
    pub container: Option<String>,
    /// Docker's container state (`running`, `exited`, ...), `missing` if there is none.
    pub state: String,
    /// Docker's health status when the service has a healthcheck.
    #[serde(default)]
    pub health: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackStatus {
    pub id: ValidName,
    pub state: StackState,
    /// The commit whose images are built, if any.
    pub commit: Option<String>,
    /// The release the containers run, while the stack runs (a build beside a running stack
    /// moves `commit` ahead of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_commit: Option<String>,
    /// A rollout is under way (or was interrupted and not tidied yet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling: bool,
    /// Docker Compose project name of the stack.
    pub project_name: String,
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// The watcher's verdict per service while the stack runs (empty otherwise, and until the
    /// first inspection after a start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<ServiceHealth>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Last failure, when `state` is `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// Commits whose images the worker keeps for this stack, newest first (its last
    /// `--keep-releases` builds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeleteResponse {
    pub id: ValidName,
    /// False when the worker held nothing for this id (delete is idempotent).
    pub existed: bool,
    pub removed_containers: u32,
    pub removed_images: u32,
    pub removed_volumes: u32,
    pub removed_networks: u32,
    /// What the worker could not remove, one line each (`image 8d34bccd9769 (untagged
    /// b1-web:latest): ... image is being used by running container ...`). Delete goes on past
    /// such failures; a later delete of the same id tries again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerHealth {
    pub status: String,
    pub node: String,
    pub version: String,
    pub instances: u32,
    pub capacity: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_request_roundtrip_keeps_password_out_of_debug() {
        let req = BuildRequest {
            user: ValidName::parse("user", "alice").unwrap(),
            project: ValidName::parse("project", "shop").unwrap(),
            commit: "a".repeat(40),
            repo: RepoSource {
                url: "http://m/git/alice/shop-1.git".into(),
                username: Some("berth".into()),
                password: Some(Secret::new("tok")),
            },
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<BuildRequest>(&json).unwrap(), req);
        assert!(!format!("{req:?}").contains("tok"));
    }

    #[test]
    fn unknown_fields_rejected() {
        let err = serde_json::from_str::<StartRequest>(r#"{"bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }
}
