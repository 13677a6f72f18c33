//! `{"error": {"code": "...", "message": "...", "details": [...]}}`, the one error shape of both
//! the master and the worker API, and [`ErrorCode`], the one list of its codes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

/// One reason a request or a compose file was rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub service: Option<String>,
    pub field: String,
    pub reason: String,
}

/// Every error code either API answers, serialised in snake case (`"no_healthy_worker"`). The
/// same refusal has the same code in both APIs; which status goes with which code is each
/// server's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// 422: rejected by policy or a bad compose file (details name service, field, reason).
    /// The worker answered `rejected` before both APIs shared this list.
    PolicyRejected,
    /// 500 from the worker: a build or start failed (the message has the step and the log tail).
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

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidUpload,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::PolicyRejected,
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
