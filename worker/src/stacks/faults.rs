//! The app's faults: what a build or start answers when the stack's own file, build or services
//! are to blame (422 with a code saying which, the service, the probe's output and the last log
//! lines, ANSI sequences stripped), as opposed to berth's own failures.

use berth_worker_api::{ErrorCode, strip_ansi};

use super::StackError;

/// One fault of the app, answered 422 with `code`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppFault {
    pub code: ErrorCode,
    pub service: Option<String>,
    pub message: String,
    pub probe_output: Option<String>,
    pub last_log_lines: Vec<String>,
}

impl std::fmt::Display for AppFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(p) = &self.probe_output {
            write!(f, "; health probe said: {p}")?;
        }
        if !self.last_log_lines.is_empty() {
            write!(f, "; last log lines:\n{}", self.last_log_lines.join("\n"))?;
        }
        Ok(())
    }
}

/// A fault of `service` with the log text `lines` (split, stripped, blank lines left out).
pub(super) fn fault(
    code: ErrorCode,
    service: &str,
    message: impl Into<String>,
    lines: &str,
) -> StackError {
    StackError::App(Box::new(AppFault {
        code,
        service: Some(service.to_owned()),
        message: strip_ansi(&message.into()),
        probe_output: None,
        last_log_lines: strip_ansi(lines)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    }))
}
