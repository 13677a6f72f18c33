//! Why a command failed and whose fault it was, as an exit code: the one place the master's
//! answers are sorted into "your app failed" and "berth failed".

use berth_worker_api::{ErrorDetail, ErrorInfo};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::json;

/// An error in the master's shape: the master's own answer (its [`ErrorCode`] as a string), or
/// one this CLI makes up with a code of its own (`usage`, `unreachable`, `http_502`, ...).
///
/// [`ErrorCode`]: berth_worker_api::ErrorCode
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

impl From<ErrorInfo> for ErrorReport {
    fn from(e: ErrorInfo) -> Self {
        Self {
            code: e.code.as_str().to_owned(),
            message: e.message,
            details: e.details,
        }
    }
}

/// The process exit codes `berth --help` documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The app was refused or failed to build or start.
    App = 1,
    /// Bad arguments or configuration.
    Usage = 2,
    /// The master, a worker or the registry failed.
    Berth = 3,
}

/// A failed command: the error the master answered (or one made up in its shape here), and a
/// hint saying what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub status: Option<u16>,
    pub error: ErrorReport,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, code: &str, message: impl Into<String>) -> Self {
        Self {
            exit,
            status: None,
            error: ErrorReport {
                code: code.to_owned(),
                message: message.into(),
                details: Vec::new(),
            },
            hint: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, "usage", message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The master answered `status` with `error`.
    pub fn answered(status: StatusCode, error: impl Into<ErrorReport>) -> Self {
        let error = error.into();
        let exit = classify(status, &error);
        let hint = (status == StatusCode::UNAUTHORIZED).then(|| {
            "check the token: BERTH_TOKEN, --token, the config file, or .berth/master/api-token"
                .to_owned()
        });
        Self {
            exit,
            status: Some(status.as_u16()),
            error,
            hint,
        }
    }

    /// The error as `--json` prints it: the master's error shape plus the exit code.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": self.error,
            "status": self.status,
            "exit_code": self.exit as i32,
        })
    }
}

/// Whose fault an error answer is. 4xx are refusals of what was asked (the app, its state, the
/// token); a timeout is the app not building or getting ready in time. Among 502s, today's
/// master reports an app's failed build or start as `worker_error` too, naming the failed step
/// in the message ("build failed", "start failed"); those are the app's, the other 5xx berth's.
fn classify(status: StatusCode, error: &ErrorReport) -> Exit {
    if status.is_client_error() || status == StatusCode::GATEWAY_TIMEOUT {
        return Exit::App;
    }
    let app_step_failed = error.code == "worker_error"
        && ["build failed", "start failed"]
            .iter()
            .any(|step| error.message.contains(step));
    if app_step_failed {
        Exit::App
    } else {
        Exit::Berth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_of(status: u16, code: &str, message: &str) -> Exit {
        let error = ErrorReport {
            code: code.into(),
            message: message.into(),
            details: vec![],
        };
        Failure::answered(StatusCode::from_u16(status).unwrap(), error).exit
    }

    #[test]
    fn answers_are_sorted_by_whose_fault() {
        let cases = [
            (400, "invalid_upload", "rejected entry", Exit::App),
            (401, "unauthorized", "missing or unknown token", Exit::App),
            (409, "conflict", "instance is building", Exit::App),
            (413, "too_large", "cap", Exit::App),
            (422, "policy_rejected", "privileged", Exit::App),
            (504, "timeout", "readiness", Exit::App),
            (
                502,
                "worker_error",
                "worker w: build failed: step 2",
                Exit::App,
            ),
            (
                502,
                "worker_error",
                "worker w: start failed: exited",
                Exit::App,
            ),
            (
                502,
                "worker_error",
                "worker w unreachable: refused",
                Exit::Berth,
            ),
            (503, "registry_unavailable", "retry later", Exit::Berth),
            (503, "no_healthy_worker", "none", Exit::Berth),
            (500, "internal", "internal error", Exit::Berth),
        ];
        for (status, code, message, want) in cases {
            assert_eq!(exit_of(status, code, message), want, "{status} {message}");
        }
    }
}
