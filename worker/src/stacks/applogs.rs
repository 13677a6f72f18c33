//! App logs: the stack's containers' stdout and stderr through the Engine API, one line at a time
//! prefixed with the service name (`api | listening`), merged across services, and with `follow`
//! carried across container restarts and recreations until the client leaves or the stack is
//! deleted. Lines seen before a restart are not sent twice (Docker's timestamps tell them apart).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_worker_api::{LogQuery, LogSource, ValidName};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{StackError, Stacks};
use crate::compose::plan;
use crate::docker::label_filter;

/// Lines buffered between the followers and a slow client.
const QUEUE: usize = 256;
/// How often a follower looks for its service's container again once the stream ended, and how
/// often the stream looks for services that appeared since it began.
const POLL: Duration = Duration::from_secs(1);
/// Prefix of operation lines in `source=all`.
const OPS_PREFIX: &str = "berth | ";

type Chunk = Result<Bytes, std::io::Error>;

/// What one service's follower needs.
#[derive(Clone)]
struct Follow {
    docker: Docker,
    id: ValidName,
    node: String,
    /// The stack's state file: once it is gone the stack is deleted and following ends.
    state_file: PathBuf,
    tail: Option<u64>,
    since: Option<i64>,
    follow: bool,
    timestamps: bool,
    width: usize,
}

impl Stacks {
    /// The log stream `q` asks for: operation output (`ops`, the default), the app's output
    /// (`app`, also the default when a service is named) or both (`all`).
    pub async fn log_stream(
        &self,
        id: &ValidName,
        q: &LogQuery,
    ) -> Result<impl Stream<Item = Chunk> + Send + use<>, StackError> {
        if self.read_record(id)?.is_none() && self.containers_of(id).await?.is_empty() {
            return Err(StackError::NotFound(id.to_string()));
        }
        let source = match (q.source, &q.service) {
            (Some(s), _) => s,
            (None, Some(_)) => LogSource::App,
            (None, None) => LogSource::Ops,
        };
        if source == LogSource::Ops {
            return Ok(self.log(id).stream(q.follow()).boxed());
        }
        let since = q.since.as_deref().map(parse_since).transpose()?;
        let mut services = self.services_with_containers(id).await?;
        if let Some(only) = &q.service {
            if !services.contains(only) {
                return Err(StackError::NotFound(format!(
                    "service {only} of stack {id} (it has no container; services: {})",
                    services.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            services = HashSet::from([only.clone()]);
        }
        let (tx, rx) = mpsc::channel::<Chunk>(QUEUE);
        let follow = Follow {
            docker: crate::docker::long(&self.docker, Duration::from_secs(7 * 24 * 3600)),
            id: id.clone(),
            node: self.settings.node.clone(),
            state_file: self.stack_dir(id).join("state.json"),
            tail: q.tail,
            since,
            follow: q.follow(),
            timestamps: q.timestamps.unwrap_or(false),
            width: services.iter().map(String::len).max().unwrap_or(0),
        };
        let ops = (source == LogSource::All).then(|| self.log(id));
        let only = q.service.clone();
        tokio::spawn(async move {
            if let Some(ops) = ops {
                let mut lines = std::pin::pin!(ops.stream(false));
                while let Some(Ok(chunk)) = lines.next().await {
                    let text = String::from_utf8_lossy(&chunk);
                    let prefixed: String =
                        text.lines().map(|l| format!("{OPS_PREFIX}{l}\n")).collect();
                    if tx.send(Ok(Bytes::from(prefixed))).await.is_err() {
                        return;
                    }
                }
            }
            supervise(follow, services, only.is_none(), tx).await;
        });
        Ok(tokio_stream_of(rx).boxed())
    }

    /// Services of the stack that have a container now.
    async fn services_with_containers(
        &self,
        id: &ValidName,
    ) -> Result<HashSet<String>, StackError> {
        Ok(self
            .containers_of(id)
            .await?
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(plan::LABEL_SERVICE).cloned())
            .collect())
    }
}

fn tokio_stream_of(mut rx: mpsc::Receiver<Chunk>) -> impl Stream<Item = Chunk> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Runs one follower per service; when following every service, also starts followers for
/// services whose containers appear later (a rollout, a changed compose file). Ends when every
/// follower ended, or the client left.
async fn supervise(f: Follow, services: HashSet<String>, watch_new: bool, tx: mpsc::Sender<Chunk>) {
    let mut followers = tokio::task::JoinSet::new();
    let mut known = services.clone();
    let mut sorted: Vec<String> = services.into_iter().collect();
    sorted.sort();
    for service in sorted {
        followers.spawn(follow_service(f.clone(), service, tx.clone()));
    }
    let watch = f.follow && watch_new;
    loop {
        if followers.is_empty() && (!watch || !f.state_file.exists()) {
            break;
        }
        tokio::select! {
            _ = tx.closed() => break,
            Some(_) = followers.join_next(), if !followers.is_empty() => {}
            _ = tokio::time::sleep(POLL), if watch => {
                for service in current_services(&f).await {
                    if known.insert(service.clone()) {
                        followers.spawn(follow_service(f.clone(), service, tx.clone()));
                    }
                }
            }
        }
    }
    followers.abort_all();
}

async fn current_services(f: &Follow) -> Vec<String> {
    containers(f, None)
        .await
        .iter()
        .filter_map(|c| c.labels.as_ref()?.get(plan::LABEL_SERVICE).cloned())
        .collect()
}

/// The stack's containers (of one service), newest first.
async fn containers(f: &Follow, service: Option<&str>) -> Vec<bollard::models::ContainerSummary> {
    let mut labels = vec![
        (plan::LABEL_BERTH_INSTANCE, f.id.as_str()),
        (plan::LABEL_BERTH_NODE, f.node.as_str()),
    ];
    if let Some(s) = service {
        labels.push((plan::LABEL_SERVICE, s));
    }
    let mut list = f
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&label_filter(&labels))
                .build(),
        ))
        .await
        .unwrap_or_default();
    list.sort_by_key(|c| std::cmp::Reverse(c.created));
    list
}

/// Sends one service's output; with `follow`, attaches again whenever its container runs again
/// (or another container takes its place), skipping lines already sent.
async fn follow_service(f: Follow, service: String, tx: mpsc::Sender<Chunk>) {
    let prefix = format!("{service:<width$} | ", width = f.width);
    // The newest timestamp sent (normalised, comparable as text) and the container attached.
    let mut last: Option<String> = None;
    let mut attached: Option<(String, bool)> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let newest = containers(&f, Some(&service)).await.into_iter().next();
        let Some((cid, running)) = newest.and_then(|c| {
            let running = c.state.map(|s| s.to_string()).as_deref() == Some("running");
            Some((c.id?, running))
        }) else {
            if !f.follow || !f.state_file.exists() {
                return;
            }
            tokio::time::sleep(POLL).await;
            continue;
        };
        // A container that stopped and was read to its end has nothing new until it runs again.
        let again = attached.as_ref().is_some_and(|(a, r)| *a == cid && !r);
        if !again || running {
            let first = last.is_none() && attached.is_none();
            attached = Some((cid.clone(), running));
            let mut opts = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .follow(f.follow);
            if first {
                if let Some(n) = f.tail {
                    opts = opts.tail(&n.to_string());
                }
                if let Some(s) = f.since {
                    opts = opts.since(i32::try_from(s).unwrap_or(i32::MAX));
                }
            } else if let Some(secs) = last.as_deref().and_then(unix_seconds) {
                opts = opts.since(i32::try_from(secs).unwrap_or(i32::MAX));
            }
            let mut stream = f.docker.logs(&cid, Some(opts.build()));
            let mut partial = String::new();
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = stream.next() => next,
                };
                let Some(Ok(out)) = next else { break };
                let message = match out {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message } => message,
                    LogOutput::StdIn { .. } => continue,
                };
                partial.push_str(&String::from_utf8_lossy(&message));
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
                    let key = normalise(stamp);
                    if last.as_ref().is_some_and(|l| key <= *l) {
                        continue;
                    }
                    last = Some(key);
                    let out = if f.timestamps {
                        format!("{prefix}{stamp} {text}\n")
                    } else {
                        format!("{prefix}{text}\n")
                    };
                    if tx.send(Ok(Bytes::from(out))).await.is_err() {
                        return;
                    }
                }
            }
            if let Some(a) = attached.as_mut() {
                a.1 = false;
            }
        }
        if !f.follow {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Docker's RFC 3339 timestamp with its fraction padded to nine digits, so that two of them
/// compare as text in time order (`...05.1Z` and `...05.123456789Z`).
fn normalise(stamp: &str) -> String {
    let body = stamp.trim_end_matches('Z');
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    format!("{secs}.{frac:0<9}Z")
}

/// Unix seconds of a normalised timestamp (whole seconds, rounded down).
fn unix_seconds(stamp: &str) -> Option<i64> {
    let secs = stamp.split_once('.').map_or(stamp, |(s, _)| s);
    let t = humantime::parse_rfc3339(&format!("{secs}Z")).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// `since`: Unix seconds, an RFC 3339 time, or a duration back from now (`10m`).
fn parse_since(raw: &str) -> Result<i64, StackError> {
    if let Ok(secs) = raw.parse::<i64>() {
        return Ok(secs);
    }
    let at = humantime::parse_rfc3339_weak(raw)
        .or_else(|_| humantime::parse_duration(raw).map(|d| SystemTime::now() - d))
        .map_err(|_| {
            StackError::BadRequest(format!(
                "invalid since {raw:?}: Unix seconds, RFC 3339 or a duration such as 10m"
            ))
        })?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_compare_in_time_order_once_normalised() {
        let a = normalise("2026-12-02T15:04:05.1Z");
        let b = normalise("2026-12-02T15:04:05.123456789Z");
        let c = normalise("2026-12-02T15:04:06Z");
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(unix_seconds(&b), Some(1796223845));
    }

    #[test]
    fn since_takes_seconds_times_and_durations() {
        assert_eq!(parse_since("1796223845").unwrap(), 1796223845);
        assert_eq!(parse_since("2026-12-02T15:04:05Z").unwrap(), 1796223845);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - 600 - parse_since("10m").unwrap()).abs() <= 1);
        assert!(matches!(
            parse_since("yesterday"),
            Err(StackError::BadRequest(_))
        ));
    }
}
