//! How results reach people and scripts: aligned tables, coloured states (only on a terminal,
//! never with `NO_COLOR`), progress bars on a terminal's stderr, and `--json` on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::failure::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Busy,
    Bad,
    Dim,
    Bold,
}

impl Tone {
    fn code(self) -> &'static str {
        match self {
            Tone::Plain => "",
            Tone::Good => "32",
            Tone::Busy => "33",
            Tone::Bad => "31",
            Tone::Dim => "2",
            Tone::Bold => "1",
        }
    }

    /// The colour of an instance's state, or of one of its services'.
    pub fn of_state(state: &str) -> Tone {
        match state {
            "running" | "completed" => Tone::Good,
            "failed" | "degraded" | "restarting" | "exited" | "unhealthy" | "missing" => Tone::Bad,
            "building" | "starting" | "stopping" | "deleting" => Tone::Busy,
            _ => Tone::Plain,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
    /// Colour on stdout.
    color: bool,
    /// Colour on stderr.
    err_color: bool,
    /// Progress bars and spinners on stderr.
    progress: bool,
}

impl Out {
    pub fn new(json: bool) -> Out {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stderr = std::io::stderr().is_terminal();
        Out {
            json,
            color: !no_color && std::io::stdout().is_terminal(),
            err_color: !no_color && stderr,
            progress: !json && stderr,
        }
    }

    pub fn paint(&self, tone: Tone, text: &str) -> String {
        paint(self.color, tone, text)
    }

    pub fn paint_err(&self, tone: Tone, text: &str) -> String {
        paint(self.err_color, tone, text)
    }

    /// Prints `value` as one JSON document.
    pub fn print_json(&self, value: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }

    /// A note for people on stderr (not with `--json`).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{}", paint(self.err_color, Tone::Dim, text));
        }
    }

    /// Prints rows of (text, tone) cells under a header, columns aligned on the visible text.
    pub fn table(&self, header: &[&str], rows: &[Vec<(String, Tone)>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, (text, _)) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(text.chars().count());
                }
            }
        }
        let line = |cells: Vec<(String, Tone)>| {
            let last = cells.len().saturating_sub(1);
            let parts: Vec<String> = cells
                .into_iter()
                .enumerate()
                .map(|(i, (text, tone))| {
                    let pad = if i == last {
                        0
                    } else {
                        widths[i] - text.chars().count()
                    };
                    format!("{}{}", self.paint(tone, &text), " ".repeat(pad))
                })
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(
            header
                .iter()
                .map(|h| ((*h).to_owned(), Tone::Bold))
                .collect(),
        );
        for row in rows {
            line(row.clone());
        }
    }

    /// Reports a failure: the message, its details and a hint on stderr, and with `--json`
    /// the error document on stdout.
    pub fn failure(&self, failure: &Failure) {
        if self.json {
            self.print_json(&failure.to_json());
        }
        let c = self.err_color;
        eprintln!(
            "{} {}",
            paint(c, Tone::Bad, "error:"),
            failure.error.message
        );
        for d in &failure.error.details {
            let service = d
                .service
                .as_deref()
                .map(|s| format!("service {s}: "))
                .unwrap_or_default();
            eprintln!("  {service}{}: {}", d.field, d.reason);
        }
        if let Some(hint) = &failure.hint {
            eprintln!("{} {hint}", paint(c, Tone::Dim, "hint:"));
        }
    }

    /// A spinner with a message; hidden off a terminal, where `message` is printed once.
    pub fn spinner(&self, message: &str) -> ProgressBar {
        if !self.progress {
            self.note(message);
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A byte progress bar of `total` bytes; hidden off a terminal.
    pub fn bytes_bar(&self, message: &str, total: u64) -> ProgressBar {
        if !self.progress {
            self.note(message);
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        bar
    }

    /// Ends a spinner or bar with a line saying what was done.
    pub fn done(&self, bar: &ProgressBar, message: &str) {
        if bar.is_hidden() {
            self.note(message);
        } else {
            bar.finish_and_clear();
            eprintln!("{} {message}", paint(self.err_color, Tone::Good, "✓"));
        }
    }

    pub fn progress(&self) -> bool {
        self.progress
    }
}

fn paint(enabled: bool, tone: Tone, text: &str) -> String {
    if !enabled || tone == Tone::Plain || text.is_empty() {
        return text.to_owned();
    }
    format!("\x1b[{}m{text}\x1b[0m", tone.code())
}

/// A short commit id.
pub fn short(commit: Option<&str>) -> String {
    commit
        .map(|c| c.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

/// `1.5 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_when_enabled() {
        assert_eq!(paint(false, Tone::Bad, "failed"), "failed");
        assert_eq!(paint(true, Tone::Bad, "failed"), "\x1b[31mfailed\x1b[0m");
        assert_eq!(paint(true, Tone::Plain, "built"), "built");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
