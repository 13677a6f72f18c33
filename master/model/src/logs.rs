//! The query of an instance's log stream, shared by the master's
//! `GET /v1/instances/{id}/logs` and the worker's `GET /v1/stacks/{id}/logs`: which source, which
//! service, how much history and whether to follow.

use serde::{Deserialize, Serialize};

/// Which output a log stream carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// berth's own output of the last operations (build, start, stop): the default, as before
    /// `source` existed.
    #[default]
    Ops,
    /// The containers' stdout and stderr, each line prefixed with its service name.
    App,
    /// The operation output (lines prefixed `berth | `), then the app's.
    All,
}

/// `?source=app|ops|all&service=S&tail=N&since=T&follow=true&timestamps=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LogQuery {
    /// `ops` (default), `app` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LogSource>,
    /// Only this service's app output (app and all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only the last N lines of each service's app output before following.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only app output since T: Unix seconds, RFC 3339 (`2026-12-02T15:00:00Z`) or a duration
    /// back from now (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Keep the stream open: ops output until the current operation ends, app output across
    /// container restarts until the client leaves or the stack is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    /// Prefix each app line with Docker's RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<bool>,
}

impl LogQuery {
    pub fn source(&self) -> LogSource {
        self.source.unwrap_or_default()
    }

    pub fn follow(&self) -> bool {
        self.follow.unwrap_or(false)
    }
}
