//! `{"error": {"code": "...", "message": "...", "details": [...]}}`, the one error shape of both
//! the master and the worker API, and [`ErrorCode`], the one list of its codes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>, details: Vec<ErrorDetail>) -> Self {
        Self {
            error: ErrorInfo {
                code,
                message: message.into(),
                details,
                service: None,
                probe_output: None,
                last_log_lines: Vec::new(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
    /// The service at fault (the app's faults: `build_failed`, `image_missing`, `start_failed`,
    /// `unhealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The healthcheck's last output (`unhealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_output: Option<String>,
    /// The last lines of the build or of the service's container, ANSI sequences stripped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log_lines: Vec<String>,
}

/// One reason a request or a compose file was rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub service: Option<String>,
    pub field: String,
    pub reason: String,
}

/// Every error code either API answers, serialised in snake case (`"no_healthy_worker"`). The
/// same refusal has the same code in both APIs; which status goes with which code is each
/// server's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: bad input (an id, a query, a body).
    BadRequest,
    /// 400: an upload that is not a valid, safe tar.gz with a compose file at its root.
    InvalidUpload,
    /// 401: missing or unknown token.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404: unknown instance, stack or route.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409: busy, or an operation the state does not allow, or a name owned by someone else.
    Conflict,
    /// 413: over a size cap.
    TooLarge,
    /// 422: rejected by policy (details name service, field, reason). The worker answered
    /// `rejected` before both APIs shared this list.
    PolicyRejected,
    /// 422: the compose file cannot be read: YAML syntax, an unknown or ill-typed key, a
    /// dependency cycle, a `service_healthy` dependency on a service without a healthcheck.
    InvalidCompose,
    /// 422: a service's image did not build (`service`, the build's `last_log_lines`).
    BuildFailed,
    /// 422: a service names an image this worker does not hold (images are never pulled).
    ImageMissing,
    /// 422: a service did not start or stopped during the start (`service`, its exit code in
    /// the message, `last_log_lines`).
    StartFailed,
    /// 422: a service failed its healthcheck during the start (`probe_output`,
    /// `last_log_lines`).
    Unhealthy,
    /// 500 from the worker: a step of berth's own failed (fetching the code, a checkout).
    Failed,
    /// 502: the worker failed or could not be reached.
    WorkerError,
    /// 502: the external git forge failed.
    ForgeError,
    /// 503: no healthy worker with free capacity.
    NoHealthyWorker,
    /// 503: the registry did not answer.
    RegistryUnavailable,
    /// 504: readiness or a `wait` timed out.
    Timeout,
    /// 500: the cause is in the server's log.
    Internal,
    /// A code this build does not know (a newer peer); never sent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire string, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidUpload => "invalid_upload",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::PolicyRejected => "policy_rejected",
            ErrorCode::InvalidCompose => "invalid_compose",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::ImageMissing => "image_missing",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::Unhealthy => "unhealthy",
            ErrorCode::Failed => "failed",
            ErrorCode::WorkerError => "worker_error",
            ErrorCode::ForgeError => "forge_error",
            ErrorCode::NoHealthyWorker => "no_healthy_worker",
            ErrorCode::RegistryUnavailable => "registry_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl ErrorCode {
    /// Whether the code names a fault of the app (its file, build or services), answered 422,
    /// as opposed to berth's own failures (5xx).
    pub fn is_app_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::PolicyRejected
                | ErrorCode::InvalidCompose
                | ErrorCode::BuildFailed
                | ErrorCode::ImageMissing
                | ErrorCode::StartFailed
                | ErrorCode::Unhealthy
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 21] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidUpload,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::PolicyRejected,
        ErrorCode::InvalidCompose,
        ErrorCode::BuildFailed,
        ErrorCode::ImageMissing,
        ErrorCode::StartFailed,
        ErrorCode::Unhealthy,
        ErrorCode::Failed,
        ErrorCode::WorkerError,
        ErrorCode::ForgeError,
        ErrorCode::NoHealthyWorker,
        ErrorCode::RegistryUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    #[test]
    fn codes_serialise_as_their_strings_and_back() {
        for code in ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let newer: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
    }

    #[test]
    fn body_shape() {
        let body = ErrorBody::new(ErrorCode::NotFound, "instance x not found", vec![]);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "not_found", "message": "instance x not found"}})
        );
    }
}
