//! The registry's own log, streamed to `/v1/agent/monitor` callers: a tracing layer that, while
//! at least one monitor listens, formats each event at the most verbose level any of them asked
//! for (whatever `RUST_LOG` says for the process's own output) and broadcasts it. With no
//! listener it formats nothing. Nothing here knows HTTP.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// Lines a slow monitor may fall behind before it loses some (Consul's monitor buffer).
const BUFFER: usize = 512;

/// One log event, in both of Consul's monitor formats.
#[derive(Debug)]
pub(crate) struct LogLine {
    pub(crate) level: Level,
    /// `2026-01-02T03:04:05.678Z [INFO]  target: message: key=value`, newline-ended.
    pub(crate) text: String,
    /// hclog's JSON: `{"@level","@message","@module","@timestamp",...fields}`, newline-ended.
    pub(crate) json: String,
}

struct Hub {
    lines: broadcast::Sender<std::sync::Arc<LogLine>>,
    /// Listeners per requested level, error (0) to trace (4).
    wanted: [AtomicUsize; 5],
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        lines: broadcast::Sender::new(BUFFER),
        wanted: Default::default(),
    })
}

pub(crate) fn rank(level: Level) -> usize {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

/// Whether some listener wants events of `level`.
pub(crate) fn wanted(level: Level) -> bool {
    hub().wanted[rank(level)..]
        .iter()
        .any(|n| n.load(Ordering::Relaxed) > 0)
}

/// The level a monitor asks for, as Consul reads `?loglevel=` (any case; `ERR` is `ERROR`).
pub(crate) fn parse_level(text: &str) -> Option<Level> {
    Some(match text.to_ascii_uppercase().as_str() {
        "TRACE" => Level::TRACE,
        "DEBUG" => Level::DEBUG,
        "INFO" => Level::INFO,
        "WARN" => Level::WARN,
        "ERR" | "ERROR" => Level::ERROR,
        _ => return None,
    })
}

/// A listener: lines at `level` and less verbose, until dropped.
pub(crate) struct Listener {
    pub(crate) level: Level,
    pub(crate) lines: broadcast::Receiver<std::sync::Arc<LogLine>>,
}

impl Listener {
    pub(crate) fn new(level: Level) -> Self {
        let lines = hub().lines.subscribe();
        hub().wanted[rank(level)].fetch_add(1, Ordering::Relaxed);
        Self { level, lines }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        hub().wanted[rank(self.level)].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The layer to install beside the process's own log output.
pub fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    Broadcast.with_filter(Wanted)
}

struct Wanted;

impl<S> Filter<S> for Wanted {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        wanted(*meta.level())
    }
}

struct Broadcast;

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs.push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name().to_owned(), text));
        }
    }
}

impl<S: Subscriber> Layer<S> for Broadcast {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let level = meta.level().as_str();
        let tag = format!("[{level}]");
        let mut text = format!("{at} {tag:<8}{}: {}", meta.target(), fields.message);
        for (k, v) in &fields.pairs {
            let _ = write!(text, ": {k}={v}");
        }
        text.push('\n');
        let mut json = serde_json::Map::new();
        json.insert("@level".into(), level.to_ascii_lowercase().into());
        json.insert("@message".into(), fields.message.into());
        json.insert("@module".into(), meta.target().into());
        json.insert("@timestamp".into(), at.into());
        for (k, v) in fields.pairs {
            json.insert(k, v.into());
        }
        let mut json = serde_json::Value::Object(json).to_string();
        json.push('\n');
        let _ = hub().lines.send(std::sync::Arc::new(LogLine {
            level: *meta.level(),
            text,
            json,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_as_consul_names_them() {
        assert_eq!(parse_level("debug"), Some(Level::DEBUG));
        assert_eq!(parse_level("ERR"), Some(Level::ERROR));
        assert_eq!(parse_level("Warn"), Some(Level::WARN));
        assert_eq!(parse_level("shouting"), None);
    }

    #[test]
    fn lines_reach_listeners_at_their_level_only() {
        use tracing_subscriber::prelude::*;
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("nobody listens");
            let mut info = Listener::new(Level::INFO);
            assert!(wanted(Level::INFO) && !wanted(Level::DEBUG));
            tracing::debug!("too verbose");
            tracing::info!(key = "v", "hello");
            let line = info.lines.try_recv().unwrap();
            assert!(
                line.text
                    .ends_with("[INFO]  berth_registry::logs::tests: hello: key=v\n"),
                "{}",
                line.text
            );
            let json: serde_json::Value = serde_json::from_str(&line.json).unwrap();
            assert_eq!(json["@level"], "info");
            assert_eq!(json["key"], "v");
            assert!(
                info.lines.try_recv().is_err(),
                "the debug line was not formatted"
            );
            drop(info);
            assert!(!wanted(Level::ERROR));
        });
    }
}
