//! BuildKit through the Engine API, without a session: `POST /build?version=2` with the
//! context tar as the body, the way the engine takes a remote context. Docker 20.10 and later
//! run it on their built-in BuildKit; steps are cached in BuildKit's own cache (kept across
//! releases; berth never prunes it), no step makes an image of its own, and labels are set on
//! the image config without a step of their own.
//!
//! bollard 0.21 cannot read that answer without its `buildkit` feature (a gRPC session stack):
//! the progress arrives as `moby.buildkit.trace` lines whose `aux` is a base64 protobuf
//! `StatusResponse`, which its `BuildInfo` fails to decode, and a decode error ends its stream.
//! So this module sends the request itself over the engine's Unix socket and reads the few
//! protobuf fields the build log needs (vertex names, cached, errors, log lines).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use base64::Engine as _;
use futures::StreamExt;

use crate::logbuf::LogBuf;

/// Which builder a worker uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BuilderChoice {
    /// BuildKit where the engine runs it (a Unix socket, an engine that accepts `version=2`),
    /// else the classic builder.
    #[default]
    Auto,
    BuildKit,
    Classic,
}

/// What a BuildKit build needs besides the context.
pub(super) struct BuildKitRequest<'a> {
    pub dockerfile: &'a str,
    pub tag: &'a str,
    pub target: Option<&'a str>,
    pub args: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
}

/// Why a BuildKit build did not produce an image.
#[derive(Debug)]
pub(super) enum BuildKitError {
    /// The engine (or its connection) cannot run BuildKit builds: use the classic builder.
    Unsupported(String),
    /// The build ran and failed (a step, the Dockerfile): the message for the user.
    Failed(String),
}

/// The engine's Unix socket, from `DOCKER_HOST` the way bollard finds it; `None` for any other
/// transport (TCP, TLS), which this module does not speak.
pub(super) fn engine_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Err(_) => Some(PathBuf::from("/var/run/docker.sock")),
        Ok(host) if host.is_empty() => Some(PathBuf::from("/var/run/docker.sock")),
        Ok(host) => host.strip_prefix("unix://").map(PathBuf::from),
    }
}

/// Builds `tar` with BuildKit through the engine at `socket` (API `version`, e.g. `1.41`),
/// writing the progress to `log` with `prefix`; answers the image id.
pub(super) async fn build(
    socket: &std::path::Path,
    version: &str,
    req: &BuildKitRequest<'_>,
    tar: Vec<u8>,
    log: &LogBuf,
    prefix: &str,
) -> Result<String, BuildKitError> {
    let unsupported = |e: &dyn std::fmt::Display| BuildKitError::Unsupported(e.to_string());
    let client = reqwest::Client::builder()
        .unix_socket(socket)
        .build()
        .map_err(|e| unsupported(&e))?;
    let json = |v: &BTreeMap<String, String>| serde_json::to_string(v).unwrap_or_default();
    let mut query: Vec<(&str, String)> = vec![
        ("version", "2".into()),
        ("dockerfile", req.dockerfile.into()),
        ("t", req.tag.into()),
        ("rm", "1".into()),
        ("forcerm", "1".into()),
        ("buildargs", json(req.args)),
        ("labels", json(req.labels)),
    ];
    if let Some(target) = req.target {
        query.push(("target", target.into()));
    }
    let resp = client
        .post(format!("http://docker/v{version}/build"))
        .query(&query)
        .header("Content-Type", "application/x-tar")
        .body(tar)
        .send()
        .await
        .map_err(|e| unsupported(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
            .unwrap_or(body);
        // An engine without BuildKit refuses the version; anything else is the build's fault
        // (a bad option, a Dockerfile the frontend rejects) and the classic builder would
        // refuse it too.
        let lower = message.to_ascii_lowercase();
        return Err(
            if lower.contains("buildkit") || lower.contains("builder version") {
                BuildKitError::Unsupported(message)
            } else {
                BuildKitError::Failed(message)
            },
        );
    }
    let mut trace = Trace::default();
    let mut image = None;
    let mut pending = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BuildKitError::Failed(format!("reading the build: {e}")))?;
        pending.extend_from_slice(&chunk);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            if let Some(id) = message(&line, &mut trace, log, prefix)? {
                image = Some(id);
            }
        }
    }
    if !pending.is_empty()
        && let Some(id) = message(&pending, &mut trace, log, prefix)?
    {
        image = Some(id);
    }
    image.ok_or_else(|| BuildKitError::Failed("the engine reported no image id".into()))
}

/// One JSON line of the build answer: progress goes to the log, an error ends the build, the
/// image id is answered.
fn message(
    line: &[u8],
    trace: &mut Trace,
    log: &LogBuf,
    prefix: &str,
) -> Result<Option<String>, BuildKitError> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return Ok(None);
    };
    if let Some(error) = v
        .get("errorDetail")
        .and_then(|d| d.get("message"))
        .or_else(|| v.get("error"))
        .and_then(|m| m.as_str())
    {
        return Err(BuildKitError::Failed(error.to_owned()));
    }
    match v.get("id").and_then(|i| i.as_str()) {
        Some("moby.buildkit.trace") => {
            if let Some(bytes) = v
                .get("aux")
                .and_then(|a| a.as_str())
                .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            {
                for text in trace.read(&bytes) {
                    log.line(&format!("{prefix}{text}"));
                }
            }
        }
        Some("moby.image.id") => {
            return Ok(v
                .get("aux")
                .and_then(|a| a.get("ID"))
                .and_then(|i| i.as_str())
                .map(str::to_owned));
        }
        _ => {
            if let Some(text) = v.get("stream").and_then(|s| s.as_str()) {
                for l in text.lines().filter(|l| !l.trim().is_empty()) {
                    log.line(&format!("{prefix}{l}"));
                }
            }
        }
    }
    Ok(None)
}

/// The state of BuildKit's progress, turned into plain lines like `docker build --progress
/// plain` prints: `#3 [2/3] RUN make`, its output, `#3 CACHED`, `#3 DONE`, `#3 ERROR: ...`.
#[derive(Debug, Default)]
pub(super) struct Trace {
    numbers: HashMap<String, usize>,
    announced: Vec<String>,
    finished: Vec<String>,
}

impl Trace {
    /// Reads one `StatusResponse` (protobuf); answers the new lines.
    pub(super) fn read(&mut self, status: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for (field, value) in fields(status) {
            match (field, value) {
                (1, Wire::Bytes(vertex)) => self.vertex(vertex, &mut out),
                (3, Wire::Bytes(entry)) => self.log(entry, &mut out),
                _ => {}
            }
        }
        out
    }

    fn number(&mut self, digest: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(digest.to_owned()).or_insert(next)
    }

    fn vertex(&mut self, vertex: &[u8], out: &mut Vec<String>) {
        let (mut digest, mut name, mut error) = (String::new(), String::new(), String::new());
        let (mut cached, mut started, mut completed) = (false, false, false);
        for (field, value) in fields(vertex) {
            match (field, value) {
                (1, Wire::Bytes(b)) => digest = String::from_utf8_lossy(b).into_owned(),
                (3, Wire::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
                (4, Wire::Varint(v)) => cached = v != 0,
                (5, Wire::Bytes(_)) => started = true,
                (6, Wire::Bytes(_)) => completed = true,
                (7, Wire::Bytes(b)) => error = String::from_utf8_lossy(b).into_owned(),
                _ => {}
            }
        }
        if digest.is_empty() {
            return;
        }
        let n = self.number(&digest);
        if (started || cached || completed) && !self.announced.contains(&digest) {
            self.announced.push(digest.clone());
            out.push(format!("#{n} {name}"));
        }
        if (cached || completed) && !self.finished.contains(&digest) {
            self.finished.push(digest);
            out.push(if !error.is_empty() {
                format!("#{n} ERROR: {error}")
            } else if cached {
                format!("#{n} CACHED")
            } else {
                format!("#{n} DONE")
            });
        }
    }

    fn log(&mut self, entry: &[u8], out: &mut Vec<String>) {
        let (mut digest, mut msg) = (String::new(), Vec::new());
        for (field, value) in fields(entry) {
            match (field, value) {
                (1, Wire::Bytes(b)) => digest = String::from_utf8_lossy(b).into_owned(),
                (4, Wire::Bytes(b)) => msg = b.to_vec(),
                _ => {}
            }
        }
        let n = self.number(&digest);
        for line in String::from_utf8_lossy(&msg).lines() {
            if !line.trim().is_empty() {
                out.push(format!("#{n} {line}"));
            }
        }
    }
}

/// A protobuf field value, as far as the trace needs it.
#[derive(Debug, PartialEq, Eq)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one protobuf message, in order; stops at the first malformed one.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = (u64, Wire<'_>)> {
    std::iter::from_fn(move || {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Wire::Varint(varint(&mut buf)?),
            1 | 5 => {
                let len = if wire == 1 { 8 } else { 4 };
                buf = buf.get(len..)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Wire::Bytes(bytes)
            }
            _ => return None,
        };
        Some((field, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((n << 3) | 2).unwrap()];
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn answer_lines_give_progress_errors_and_the_image() {
        let log = LogBuf::new();
        let mut trace = Trace::default();
        let mut vertex = field(1, b"sha256:aa");
        vertex.extend(field(3, b"[1/1] FROM base"));
        vertex.extend([4 << 3, 1]);
        let aux = base64::engine::general_purpose::STANDARD.encode(field(1, &vertex));
        let lines = [
            format!(r#"{{"id":"moby.buildkit.trace","aux":"{aux}"}}"#),
            r#"{"stream":"Successfully tagged x:1\n"}"#.to_owned(),
            "not json".to_owned(),
        ];
        for line in &lines {
            assert!(matches!(
                message(line.as_bytes(), &mut trace, &log, "[app] "),
                Ok(None)
            ));
        }
        let id = message(
            br#"{"id":"moby.image.id","aux":{"ID":"sha256:0123"}}"#,
            &mut trace,
            &log,
            "[app] ",
        );
        assert!(
            matches!(id, Ok(Some(ref i)) if i == "sha256:0123"),
            "{id:?}"
        );
        let err = message(
            br#"{"errorDetail":{"message":"exit code: 1"},"error":"exit code: 1"}"#,
            &mut trace,
            &log,
            "[app] ",
        );
        assert!(matches!(err, Err(BuildKitError::Failed(ref m)) if m == "exit code: 1"));
        let tail = log.tail(10);
        assert!(tail.contains("[app] #1 [1/1] FROM base"), "{tail}");
        assert!(tail.contains("[app] #1 CACHED"), "{tail}");
        assert!(tail.contains("[app] Successfully tagged x:1"), "{tail}");
    }

    #[test]
    fn trace_lines_from_status_responses() {
        // A vertex started, its log, then completed; another one cached.
        let mut v1 = field(1, b"sha256:aa");
        v1.extend(field(3, b"[2/2] RUN echo hi"));
        v1.extend(field(5, &[8, 1]));
        let mut done = v1.clone();
        done.extend(field(6, &[8, 2]));
        let mut v2 = field(1, b"sha256:bb");
        v2.extend(field(3, b"[1/2] FROM base"));
        v2.extend([4 << 3, 1]);
        let mut log = field(1, b"sha256:aa");
        log.extend(field(4, b"hi\n\nthere\n"));
        let mut failed = field(1, b"sha256:cc");
        failed.extend(field(3, b"[3/3] RUN false"));
        failed.extend(field(6, &[8, 3]));
        failed.extend(field(7, b"exit code: 1"));

        let mut trace = Trace::default();
        let mut lines = trace.read(&[field(1, &v1), field(1, &v2)].concat());
        lines.extend(trace.read(&field(3, &log)));
        lines.extend(trace.read(&[field(1, &done), field(1, &v1)].concat()));
        lines.extend(trace.read(&field(1, &failed)));
        assert_eq!(
            lines,
            [
                "#1 [2/2] RUN echo hi",
                "#2 [1/2] FROM base",
                "#2 CACHED",
                "#1 hi",
                "#1 there",
                "#1 DONE",
                "#3 [3/3] RUN false",
                "#3 ERROR: exit code: 1",
            ]
        );
        // Garbage is no line and no panic.
        assert!(trace.read(&[0xff, 0xff, 0x0a, 0x50, 1]).is_empty());
    }
}
