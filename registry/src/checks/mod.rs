//! The check runner: runs an agent's TTL, HTTP, TCP and script checks and reports results.
//!
//! Each check is one task. Results of HTTP, TCP and script checks pass through a
//! [`StatusHandler`] (Consul's `SuccessBeforePassing` / `FailuresBeforeCritical` thresholds; TTL
//! checks ignore them, as Consul's `CheckTTL` does) and are sent on a channel as
//! [`CheckResult`]s; the owner of the checks (the agent's local state) applies them. The runner
//! knows nothing of services, the catalog or HTTP APIs.

mod probe;
mod runner;

pub use probe::HttpProbe;
pub use runner::{CheckKind, CheckResult, CheckRunner, CheckSpec, ttl_expired_output};

use std::fmt;

/// Consul's health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`.
    Critical,
}

impl Health {
    /// Consul's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Parses Consul's wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    /// The worse of two states (critical > warning > passing), for aggregation.
    pub fn worst(self, other: Self) -> Self {
        let rank = |h: Self| match h {
            Self::Passing => 0,
            Self::Warning => 1,
            Self::Critical => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the check subsystem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    /// No such check is running.
    #[error("Unknown check ID \"{0}\"")]
    Unknown(String),
    /// The check is not a TTL check (Consul's text, matched by clients).
    #[error("CheckID \"{0}\" does not have associated TTL")]
    NotTtl(String),
    /// A script check while script checks are disabled.
    #[error(
        "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true"
    )]
    ScriptsDisabled,
    /// A check definition that cannot run.
    #[error("invalid check: {0}")]
    Invalid(String),
}

/// Applies `SuccessBeforePassing` and `FailuresBeforeCritical`: a result changes the reported
/// status only after that many consecutive results of its kind.
#[derive(Debug, Clone, Default)]
pub struct StatusHandler {
    success_before_passing: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl StatusHandler {
    /// A handler with the two thresholds (0 and 1 both mean "at once").
    pub fn new(success_before_passing: u32, failures_before_critical: u32) -> Self {
        Self {
            success_before_passing,
            failures_before_critical,
            ..Self::default()
        }
    }

    /// Records one result; returns whether it should be reported.
    pub fn observe(&mut self, status: Health) -> bool {
        match status {
            Health::Passing | Health::Warning => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                self.successes >= self.success_before_passing
            }
            Health::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                self.failures >= self.failures_before_critical
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_delay_status_changes() {
        use Health::*;
        // (success_before_passing, failures_before_critical, observations, expected reports)
        let cases: &[(u32, u32, &[Health], &[bool])] = &[
            (0, 0, &[Passing, Critical, Passing], &[true, true, true]),
            (2, 0, &[Passing, Passing, Passing], &[false, true, true]),
            (0, 3, &[Critical, Critical, Critical], &[false, false, true]),
            (
                0,
                2,
                &[Critical, Passing, Critical, Critical],
                &[false, true, false, true],
            ),
            (
                2,
                2,
                &[Warning, Critical, Warning, Warning],
                &[false, false, false, true],
            ),
        ];
        for (sbp, fbc, obs, want) in cases {
            let mut h = StatusHandler::new(*sbp, *fbc);
            let got: Vec<bool> = obs.iter().map(|s| h.observe(*s)).collect();
            assert_eq!(&got, want, "sbp={sbp} fbc={fbc} {obs:?}");
        }
    }

    #[test]
    fn health_parses_and_aggregates() {
        for h in [Health::Passing, Health::Warning, Health::Critical] {
            assert_eq!(Health::parse(h.as_str()), Some(h));
        }
        assert_eq!(Health::parse("maintenance"), None);
        assert_eq!(Health::Passing.worst(Health::Warning), Health::Warning);
        assert_eq!(Health::Critical.worst(Health::Warning), Health::Critical);
    }
}
