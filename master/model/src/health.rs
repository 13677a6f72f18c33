//! What each service of a running stack is doing, as the worker's watcher sees it and the
//! instance record keeps it: [`ServiceHealth`] and its [`ServiceState`].

use serde::{Deserialize, Serialize};

/// The state of one service of a stack that should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Runs (and passes its healthcheck, if it has one).
    Running,
    /// Runs; its healthcheck has not passed yet.
    Starting,
    /// Crash-looping: Docker is restarting it, or restarted it within the last few seconds
    /// (`restarts` counts them).
    Restarting,
    /// Stopped with `exit_code` and Docker will not start it again.
    Exited,
    /// Runs but fails its healthcheck (`probe_output` has the probe's last answer).
    Unhealthy,
    /// A one-shot that exited 0 under a restart policy that leaves it so (seeders, migrations).
    Completed,
    /// Has no container.
    Missing,
}

impl ServiceState {
    /// Whether the service is as it should be (an instance is `degraded` when one is not).
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            ServiceState::Running | ServiceState::Starting | ServiceState::Completed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Starting => "starting",
            ServiceState::Restarting => "restarting",
            ServiceState::Exited => "exited",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Completed => "completed",
            ServiceState::Missing => "missing",
        }
    }
}

/// One service of a running (or degraded) instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceHealth {
    pub name: String,
    pub state: ServiceState,
    /// How often Docker restarted its container.
    #[serde(default)]
    pub restarts: u32,
    /// The last exit code, once the container exited at least once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The healthcheck's last output (ANSI sequences stripped), when the service has one and
    /// it is not passing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_output: Option<String>,
    /// The container's last log lines, when the service is not as it should be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log_lines: Vec<String>,
}

/// Removes ANSI escape sequences (colours, cursor moves) and other control characters but
/// newlines and tabs from text shown to users.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ params... final byte in @..~
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ESC ] ... BEL or ESC \
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Character set designations take one more character: ESC ( B.
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                    chars.next();
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_and_controls_are_removed() {
        for (input, want) in [
            ("\u{1b}[31mERROR\u{1b}[0m boom", "ERROR boom"),
            ("\u{1b}[1;38;5;196mred\u{1b}[m\n", "red\n"),
            ("\u{1b}]0;title\u{7}text", "text"),
            ("a\rb\tc\u{1b}(B", "ab\tc"),
            ("plain", "plain"),
        ] {
            assert_eq!(strip_ansi(input), want, "{input:?}");
        }
    }
}
