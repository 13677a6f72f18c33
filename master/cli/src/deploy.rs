//! `berth deploy`: pack the folder (refusing before sending what the master would refuse),
//! upload it with a byte progress bar, build it showing one progress line per service, start it
//! and print its URLs. On an instance that runs, the new release is built beside it and rolled
//! out (`POST /v1/instances/{id}/deploy`) instead of started.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_worker_api::ids;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use reqwest::blocking::Body;
use serde_json::{Value, json};

use crate::archive::{self, Caps, PackError};
use crate::cli::DeployArgs;
use crate::client::{Client, Record, url_of};
use crate::commands::{print_urls, valid_id};
use crate::failure::{Exit, Failure};
use crate::output::{Out, Tone, short, size};

/// Log lines shown when a build or start fails.
const TAIL_LINES: usize = 25;

pub fn deploy(
    client: &Client,
    out: &Out,
    default_user: Option<&str>,
    args: &DeployArgs,
) -> Result<(), Failure> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => default_id(&args.dir)?,
    };
    valid_id(&id)?;
    let existing = client.record(&id)?.map(|v| Record::parse(&v)).transpose()?;
    let user = args
        .user
        .clone()
        .or_else(|| existing.as_ref().map(|r| r.user.clone()))
        .or_else(|| default_user.map(str::to_owned))
        .or_else(login_name)
        .unwrap_or_else(|| "berth".into());
    let project = args
        .project
        .clone()
        .or_else(|| existing.as_ref().map(|r| r.project.clone()))
        .unwrap_or_else(|| id.clone());
    for (field, value) in [("user", &user), ("project", &project)] {
        ids::validate(field, value).map_err(|e| Failure::usage(e.to_string()))?;
    }

    let packed = archive::pack(&args.dir, &Caps::default()).map_err(refused)?;
    out.note(&format!(
        "packed {} ({}): {} files, {} ({} compressed)",
        args.dir.display(),
        packed.compose,
        packed.entries,
        size(packed.bytes),
        size(packed.body.len() as u64)
    ));

    let total = packed.body.len() as u64;
    let bar = out.bytes_bar(&format!("uploading {id}"), total);
    let body = Body::sized(
        Counting {
            inner: Cursor::new(packed.body),
            bar: bar.clone(),
        },
        total,
    );
    let uploaded = client.upload(&id, &user, &project, body);
    bar.finish_and_clear();
    let uploaded = Record::parse(&uploaded?)?;
    out.done(
        &bar,
        &format!(
            "uploaded {} as commit {}",
            size(total),
            short(uploaded.commit.as_deref())
        ),
    );

    let built = build(
        client,
        out,
        &id,
        uploaded.commit.as_deref(),
        Duration::from_secs(args.build_timeout),
    )?;
    out.note(&format!(
        "built commit {}",
        short(built.built_commit.as_deref())
    ));

    // A running instance keeps serving while the new release builds; it is then rolled out.
    let started = if matches!(built.state.as_str(), "running" | "degraded") {
        let spinner = out.spinner(&format!("rolling {id} out to the new release"));
        let req = client
            .request(Method::POST, &format!("/v1/instances/{id}/deploy"))
            .query(&[("wait", format!("{}s", args.build_timeout))]);
        let deployed = client.json(req);
        spinner.finish_and_clear();
        deployed
    } else {
        let spinner = out.spinner(&format!("starting {id}"));
        let started = client.post(&format!("/v1/instances/{id}/start"));
        spinner.finish_and_clear();
        started
    };
    let started = match started {
        Ok(v) => v,
        Err(f) => return Err(with_log_tail(client, out, &id, f)),
    };
    let record = Record::parse(&started)?;
    if out.json {
        let urls: Vec<Value> = record
            .endpoints
            .iter()
            .map(|e| json!({ "service": e.service, "url": url_of(e) }))
            .collect();
        out.print_json(&json!({ "instance": started, "urls": urls }));
        return Ok(());
    }
    println!(
        "{} is {}",
        record.id,
        out.paint(Tone::of_state(&record.state), &record.state)
    );
    print_urls(out, &record, Some("URLs"));
    Ok(())
}

/// The default instance id: the folder's name, lowercased, with what the name rule does not
/// allow turned into `-`.
fn default_id(dir: &Path) -> Result<String, Failure> {
    let real = std::fs::canonicalize(dir)
        .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_start_matches(['-', '_', '.'])
        .chars()
        .take(63)
        .collect();
    if id.is_empty() {
        return Err(Failure::usage(format!(
            "cannot make an instance id from the folder name {name:?}: pass --id"
        )));
    }
    Ok(id)
}

/// `$USER` (or `$LOGNAME`) when it passes the name rule.
fn login_name() -> Option<String> {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|u| u.to_lowercase())
        .find(|u| ids::validate("user", u).is_ok())
}

fn refused(err: PackError) -> Failure {
    let code = match err {
        PackError::TooLarge { .. } => "too_large",
        PackError::Io { .. } | PackError::NotAFolder(_) => "unreadable",
        _ => "invalid_upload",
    };
    let exit = match err {
        PackError::NotAFolder(_) => Exit::Usage,
        _ => Exit::App,
    };
    Failure::new(exit, code, err.to_string())
        .with_hint("nothing was sent; fix the folder and deploy again")
}

/// Counts the bytes the upload reads into its progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Starts the build and waits for its end, following the worker's log meanwhile for one
/// progress line per service ([`Progress`]). A running instance builds beside its running release: its record stays
/// `running` and the build has ended when `built_commit` is `commit` or the record has an error.
fn build(
    client: &Client,
    out: &Out,
    id: &str,
    commit: Option<&str>,
    limit: Duration,
) -> Result<Record, Failure> {
    let seen = log_lines(client, id);
    let value = client.post(&format!("/v1/instances/{id}/build"))?;
    let mut record = Record::parse(&value)?;
    let mut progress = Progress::new(out, id);
    let deadline = Instant::now() + limit;
    let mut seen = seen;
    let beside = |r: &Record| matches!(r.state.as_str(), "running" | "degraded");
    let building = |r: &Record| {
        r.state == "building"
            || (beside(r) && r.error.is_none() && r.built_commit.as_deref() != commit)
    };
    while building(&record) {
        if Instant::now() > deadline {
            progress.clear();
            return Err(Failure::new(
                Exit::App,
                "timeout",
                format!(
                    "the build of {id} still runs after {} s; berth status {id} shows when it ends",
                    limit.as_secs()
                ),
            ));
        }
        if !out.json {
            seen = progress.read(client, id, seen, true);
        }
        std::thread::sleep(Duration::from_millis(300));
        record = Record::parse(&client.get(&format!("/v1/instances/{id}"))?)?;
    }
    // A build can end before its log was followed at all (a warm build takes a fraction of a
    // second): what it wrote since line `seen` still gives its services' lines.
    if !out.json {
        progress.read(client, id, seen, false);
    }
    let ok =
        record.state == "built" || (beside(&record) && record.built_commit.as_deref() == commit);
    progress.clear();
    if ok {
        return Ok(record);
    }
    let message = record
        .error
        .as_ref()
        .map(|e| format!("{} failed: {}", e.step, e.summary()))
        .unwrap_or_else(|| format!("the build ended in state {}", record.state));
    Err(with_log_tail(
        client,
        out,
        id,
        Failure::new(Exit::App, "build_failed", message),
    ))
}

/// Lines in the instance's log now (0 when it has none yet).
fn log_lines(client: &Client, id: &str) -> usize {
    client
        .logs(id, &[("follow", "false".into())])
        .ok()
        .and_then(|r| r.text().ok())
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Adds the last log lines to a failed build or start, on stderr.
fn with_log_tail(client: &Client, out: &Out, id: &str, failure: Failure) -> Failure {
    if out.json {
        return failure;
    }
    let text = client
        .logs(id, &[("follow", "false".into())])
        .ok()
        .and_then(|r| r.text().ok())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if !lines.is_empty() {
        eprintln!("last log lines of {id}:");
        for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
            eprintln!("  {line}");
        }
    }
    failure.with_hint(format!("berth logs {id} shows the whole log"))
}

/// The build's progress: on a terminal a spinner for the build and one per service showing its
/// latest output; elsewhere (not with `--json`) one plain line as each service's build starts
/// and one as it ends, from the worker's log lines ([`ServiceEvent`]).
struct Progress {
    multi: MultiProgress,
    main: ProgressBar,
    services: BTreeMap<String, ProgressBar>,
    /// Services whose end was shown: a failed build's log line repeats the log's tail (after
    /// `last log lines:`), whose `service web: built ...` must not print a second time.
    ended: BTreeSet<String>,
    visible: bool,
    out: Out,
}

impl Progress {
    fn new(out: &Out, id: &str) -> Progress {
        let visible = out.progress();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let main = spinner_bar(&multi, None);
        main.set_message(format!("building {id}"));
        if !visible {
            out.note(&format!("building {id}"));
        }
        Progress {
            multi,
            main,
            services: BTreeMap::new(),
            ended: BTreeSet::new(),
            visible,
            out: *out,
        }
    }

    /// Reads the log from line `seen` on, with `follow` until the operation ends (or the stream
    /// breaks); returns the lines seen.
    fn read(&mut self, client: &Client, id: &str, mut seen: usize, follow: bool) -> usize {
        let Ok(resp) = client.logs(id, &[("follow", follow.to_string())]) else {
            return seen;
        };
        for (n, line) in BufReader::new(resp).lines().enumerate() {
            let Ok(line) = line else { break };
            if n < seen {
                continue;
            }
            seen = n + 1;
            self.line(&line);
        }
        seen
    }

    fn line(&mut self, line: &str) {
        let text = strip_stamp(line);
        if text.is_empty() {
            return;
        }
        let Some(event) = ServiceEvent::parse(text) else {
            // A service's build output (`[NAME] text`) goes to its line, the rest to the build's.
            let shown = |t: &str| t.chars().take(100).collect::<String>();
            if let Some((name, rest)) = text
                .strip_prefix('[')
                .and_then(|r| r.split_once("] "))
                .filter(|(name, _)| self.services.contains_key(*name))
            {
                self.services[name].set_message(shown(rest));
            } else {
                self.main.set_message(shown(text));
            }
            return;
        };
        let (name, done) = match &event {
            ServiceEvent::Building(name) if self.ended.contains(name) => return,
            ServiceEvent::Building(name) => {
                let multi = &self.multi;
                let bar = self
                    .services
                    .entry(name.clone())
                    .or_insert_with(|| spinner_bar(multi, Some(name)));
                bar.set_message("building");
                if !self.visible {
                    self.out.note(&format!("building {name}"));
                }
                return;
            }
            ServiceEvent::Built { name, seconds } => {
                (name, format!("built {name} in {seconds:.1}s"))
            }
            ServiceEvent::Unchanged(name) => {
                (name, format!("kept {name} (unchanged, nothing built)"))
            }
            ServiceEvent::Failed(name) => (name, format!("build of {name} failed")),
        };
        if !self.ended.insert(name.clone()) {
            return;
        }
        if let Some(bar) = self.services.remove(name) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        if !self.visible {
            self.out.note(&done);
            return;
        }
        let mark = match event {
            ServiceEvent::Failed(_) => self.out.paint_err(Tone::Bad, "✗"),
            _ => self.out.paint_err(Tone::Good, "✓"),
        };
        let _ = self.multi.println(format!("{mark} {done}"));
    }

    fn clear(&self) {
        for bar in self.services.values() {
            bar.finish_and_clear();
        }
        self.main.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// A worker log line without its `[   1.23s] ` time since the operation began.
fn strip_stamp(line: &str) -> &str {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .filter(|(stamp, _)| {
            stamp
                .trim()
                .strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok())
        })
        .map_or(line, |(_, rest)| rest)
        .trim()
}

/// What the worker's build log says of one service (`worker/src/stacks/build.rs` and
/// `build/image.rs`).
#[derive(Debug, PartialEq)]
enum ServiceEvent {
    /// `building service NAME as TAG`
    Building(String),
    /// `service NAME: built as TAG in 1.23 s (how)`
    Built { name: String, seconds: f64 },
    /// `service NAME: unchanged, image ID kept as TAG (nothing built)`
    Unchanged(String),
    /// `service NAME: build failed: ...`
    Failed(String),
}

impl ServiceEvent {
    fn parse(text: &str) -> Option<ServiceEvent> {
        if let Some(rest) = text.strip_prefix("building service ") {
            let name = rest.split(' ').next().filter(|n| !n.is_empty())?;
            return Some(ServiceEvent::Building(name.to_owned()));
        }
        let (name, rest) = text.strip_prefix("service ")?.split_once(": ")?;
        if name.contains(' ') {
            return None;
        }
        let name = name.to_owned();
        if rest.starts_with("build failed") {
            return Some(ServiceEvent::Failed(name));
        }
        if rest.starts_with("unchanged,") {
            return Some(ServiceEvent::Unchanged(name));
        }
        let seconds = rest
            .strip_prefix("built as ")?
            .split_once(" in ")?
            .1
            .split_once(" s")?
            .0
            .parse()
            .ok()?;
        Some(ServiceEvent::Built { name, seconds })
    }
}

/// A spinner line in `multi`, for a service (`name`, in bold before its output) or the build.
/// It joins `multi` before it ticks: a spinner that ticked on its own first drew a line of its
/// own, which stayed on the terminal, frozen, above the live ones.
fn spinner_bar(multi: &MultiProgress, name: Option<&str>) -> ProgressBar {
    let template = match name {
        Some(_) => "{spinner} {prefix:.bold} {wide_msg} {elapsed}",
        None => "{spinner} {wide_msg} {elapsed}",
    };
    let bar = multi.add(ProgressBar::hidden());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if let Some(name) = name {
        bar.set_prefix(name.to_owned());
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_id_follows_the_name_rule() {
        let base = tempfile::tempdir().unwrap();
        for (name, want) in [
            ("sample-app", "sample-app"),
            ("My App!", "my-app-"),
            ("_x", "x"),
        ] {
            let dir = base.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            assert_eq!(default_id(&dir).unwrap(), want);
        }
    }

    #[test]
    fn a_service_ends_once_though_a_failed_build_repeats_its_log() {
        let mut progress = Progress::new(&Out::new(true), "x");
        for line in [
            "[   0.01s] building service web as x-web:1",
            "[   0.40s] service web: built as x-web:1 in 0.39 s (BuildKit)",
            "[   0.79s] build failed: build of service api failed: exit code: 1; last log lines:",
            "[   0.01s] building service web as x-web:1",
            "[   0.40s] service web: built as x-web:1 in 0.39 s (BuildKit)",
        ] {
            progress.line(line);
        }
        assert!(progress.services.is_empty(), "web's line came back");
        assert_eq!(progress.ended.len(), 1);
    }

    #[test]
    fn worker_build_lines_become_service_events() {
        let cases = [
            (
                "[   0.01s] building service api as berth-x-api:1c8c7a246a79",
                Some(ServiceEvent::Building("api".into())),
            ),
            (
                "[   1.25s] service api: built as berth-x-api:1c8c7a246a79 in 1.23 s (buildkit)",
                Some(ServiceEvent::Built {
                    name: "api".into(),
                    seconds: 1.23,
                }),
            ),
            (
                "[   0.02s] service web: unchanged, image 0a1b2c3d4e5f kept as berth-x-web:df80 (nothing built)",
                Some(ServiceEvent::Unchanged("web".into())),
            ),
            (
                "[   2.00s] service web: build failed: RUN false: exit code 1",
                Some(ServiceEvent::Failed("web".into())),
            ),
            ("[   0.50s] [api] Step 1/3 : FROM berth-base:latest", None),
            (
                "[   0.60s] service api: not built (another service failed)",
                None,
            ),
            ("stack ready", None),
        ];
        for (line, want) in cases {
            assert_eq!(ServiceEvent::parse(strip_stamp(line)), want, "{line}");
        }
        assert_eq!(strip_stamp("[api] Step 1/3"), "[api] Step 1/3");
    }
}
