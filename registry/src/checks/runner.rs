//! Runs each check in its own task and reports results on a channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::{self, HttpClient, HttpProbe};
use super::{CheckError, Health, StatusHandler};

/// Shortest interval Consul allows; shorter ones are raised to it.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of HTTP, TCP and script checks when none is given (capped by the interval).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Output of a TTL check whose TTL ran out.
pub fn ttl_expired_output(last_output: &str) -> String {
    format!("TTL expired (last output before timeout follows): {last_output}")
}

/// How a check decides its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Updated by clients (`/v1/agent/check/pass|warn|fail|update`); critical when not
    /// updated within the TTL.
    Ttl(Duration),
    /// An HTTP request every interval.
    Http {
        /// The request.
        probe: HttpProbe,
        /// Time between runs.
        interval: Duration,
        /// Per-run timeout (`None`: 10 s, at most the interval).
        timeout: Option<Duration>,
    },
    /// A TCP connect every interval.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Time between runs.
        interval: Duration,
        /// Per-run timeout.
        timeout: Option<Duration>,
    },
    /// A program run without a shell every interval (only with script checks enabled).
    Script {
        /// Program and arguments.
        args: Vec<String>,
        /// Time between runs.
        interval: Duration,
        /// Per-run timeout.
        timeout: Option<Duration>,
    },
}

/// A check to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Check id, unique on the agent.
    pub id: String,
    /// What to run.
    pub kind: CheckKind,
    /// Consecutive passing results before passing is reported.
    pub success_before_passing: u32,
    /// Consecutive failing results before critical is reported.
    pub failures_before_critical: u32,
}

/// A status to apply to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Check id.
    pub id: String,
    /// New status.
    pub status: Health,
    /// New output.
    pub output: String,
}

struct Running {
    cancel: CancellationToken,
    ttl: Option<mpsc::UnboundedSender<(Health, String)>>,
}

/// Runs checks; cloning shares the same set of running checks.
#[derive(Clone)]
pub struct CheckRunner {
    running: Arc<Mutex<HashMap<String, Running>>>,
    results: mpsc::UnboundedSender<CheckResult>,
    enable_script_checks: bool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl CheckRunner {
    /// A runner whose results arrive on the returned receiver. Every check task stops when
    /// `shutdown` is cancelled.
    pub fn new(
        enable_script_checks: bool,
        shutdown: CancellationToken,
    ) -> (Self, mpsc::UnboundedReceiver<CheckResult>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Self {
            running: Arc::default(),
            results: tx,
            enable_script_checks,
            shutdown,
            tasks: TaskTracker::new(),
        };
        (runner, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a check definition can run here (script checks need enabling).
    pub fn validate(&self, kind: &CheckKind) -> Result<(), CheckError> {
        match kind {
            CheckKind::Script { .. } if !self.enable_script_checks => {
                Err(CheckError::ScriptsDisabled)
            }
            CheckKind::Script { args, .. } if args.is_empty() => {
                Err(CheckError::Invalid("script check with empty Args".into()))
            }
            CheckKind::Ttl(ttl) if ttl.is_zero() => {
                Err(CheckError::Invalid("TTL must be > 0".into()))
            }
            _ => Ok(()),
        }
    }

    /// Starts (or restarts, replacing) a check.
    pub fn start(&self, spec: CheckSpec) -> Result<(), CheckError> {
        self.validate(&spec.kind)?;
        let cancel = self.shutdown.child_token();
        // Consul's CheckTTL has no StatusHandler: a TTL check's status is what its client last
        // set, and expiry turns it critical at once, whatever the thresholds say.
        let handler = match spec.kind {
            CheckKind::Ttl(_) => StatusHandler::default(),
            _ => StatusHandler::new(spec.success_before_passing, spec.failures_before_critical),
        };
        let reporter = Reporter {
            id: spec.id.clone(),
            tx: self.results.clone(),
            handler,
        };
        let ttl = match spec.kind {
            CheckKind::Ttl(ttl) => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.tasks
                    .spawn(ttl_task(ttl, rx, reporter, cancel.clone()));
                Some(tx)
            }
            kind => {
                let http = match &kind {
                    CheckKind::Http { probe, .. } => {
                        Some(HttpClient::new(probe).map_err(CheckError::Invalid)?)
                    }
                    _ => None,
                };
                self.tasks
                    .spawn(interval_task(kind, http, reporter, cancel.clone()));
                None
            }
        };
        if let Some(old) = self.lock().insert(spec.id, Running { cancel, ttl }) {
            old.cancel.cancel();
        }
        Ok(())
    }

    /// Stops a check; unknown ids are ignored.
    pub fn stop(&self, id: &str) {
        if let Some(old) = self.lock().remove(id) {
            old.cancel.cancel();
        }
    }

    /// Whether a check with this id is running.
    pub fn is_running(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Sets a TTL check's status and output and restarts its TTL.
    pub fn ttl_update(&self, id: &str, status: Health, output: String) -> Result<(), CheckError> {
        let running = self.lock();
        let r = running
            .get(id)
            .ok_or_else(|| CheckError::Unknown(id.to_owned()))?;
        let tx = r
            .ttl
            .as_ref()
            .ok_or_else(|| CheckError::NotTtl(id.to_owned()))?;
        // A closed channel means the task is stopping; the check is going away anyway.
        let _ = tx.send((status, output));
        Ok(())
    }

    /// Stops every check and waits for their tasks.
    pub async fn close(&self) {
        for (_, r) in self.lock().drain() {
            r.cancel.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct Reporter {
    id: String,
    tx: mpsc::UnboundedSender<CheckResult>,
    handler: StatusHandler,
}

impl Reporter {
    fn report(&mut self, status: Health, output: String) {
        if self.handler.observe(status) {
            let _ = self.tx.send(CheckResult {
                id: self.id.clone(),
                status,
                output,
            });
        }
    }
}

async fn ttl_task(
    ttl: Duration,
    mut updates: mpsc::UnboundedReceiver<(Health, String)>,
    mut reporter: Reporter,
    cancel: CancellationToken,
) {
    let mut last_output = String::new();
    let mut deadline = Some(Instant::now() + ttl);
    loop {
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            update = updates.recv() => {
                let Some((status, output)) = update else { return };
                last_output.clone_from(&output);
                deadline = Some(Instant::now() + ttl);
                reporter.report(status, output);
            }
            () = expiry => {
                deadline = None;
                reporter.report(Health::Critical, ttl_expired_output(&last_output));
            }
        }
    }
}

async fn interval_task(
    kind: CheckKind,
    http: Option<HttpClient>,
    mut reporter: Reporter,
    cancel: CancellationToken,
) {
    let (interval, timeout) = match &kind {
        CheckKind::Http {
            interval, timeout, ..
        }
        | CheckKind::Tcp {
            interval, timeout, ..
        }
        | CheckKind::Script {
            interval, timeout, ..
        } => (*interval, *timeout),
        CheckKind::Ttl(_) => return,
    };
    let interval = interval.max(MIN_INTERVAL);
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval));
    loop {
        let run = async {
            match &kind {
                CheckKind::Http { probe, .. } => match &http {
                    Some(client) => probe::http(client, probe, timeout).await,
                    None => unreachable!("http checks get a client in start"),
                },
                CheckKind::Tcp { addr, .. } => probe::tcp(addr, timeout).await,
                CheckKind::Script { args, .. } => probe::script(args, timeout).await,
                CheckKind::Ttl(_) => unreachable!("ttl checks run in ttl_task"),
            }
        };
        let (status, output) = tokio::select! {
            () = cancel.cancelled() => return,
            r = run => r,
        };
        reporter.report(status, output);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl_spec(id: &str, ttl: u64) -> CheckSpec {
        CheckSpec {
            id: id.into(),
            kind: CheckKind::Ttl(Duration::from_secs(ttl)),
            success_before_passing: 0,
            failures_before_critical: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_to_critical_with_the_last_output() {
        let (runner, mut rx) = CheckRunner::new(false, CancellationToken::new());
        runner.start(ttl_spec("t", 10)).unwrap();
        let start = Instant::now();
        runner
            .ttl_update("t", Health::Passing, "all good".into())
            .unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.status, first.output.as_str()),
            (Health::Passing, "all good")
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        runner
            .ttl_update("t", Health::Warning, "slow".into())
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().status, Health::Warning);
        let expired = rx.recv().await.unwrap();
        assert_eq!(expired.status, Health::Critical);
        assert_eq!(
            expired.output,
            "TTL expired (last output before timeout follows): slow"
        );
        // Expiry is 10 s after the last update, not after registration.
        assert_eq!(start.elapsed(), Duration::from_secs(18));
        runner.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_checks_ignore_thresholds_and_reject_errors() {
        let (runner, mut rx) = CheckRunner::new(false, CancellationToken::new());
        let mut spec = ttl_spec("t", 30);
        spec.success_before_passing = 2;
        spec.failures_before_critical = 3;
        runner.start(spec).unwrap();
        let start = Instant::now();
        runner.ttl_update("t", Health::Passing, "1".into()).unwrap();
        let r = rx.recv().await.unwrap();
        assert_eq!((r.status, r.output.as_str()), (Health::Passing, "1"));
        // Expiry is critical at once: FailuresBeforeCritical does not delay it.
        let expired = tokio::time::timeout(Duration::from_secs(3600), rx.recv())
            .await
            .expect("the TTL expiry is reported")
            .unwrap();
        assert_eq!(
            (expired.status, expired.output.as_str()),
            (
                Health::Critical,
                "TTL expired (last output before timeout follows): 1"
            )
        );
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(
            runner.ttl_update("nope", Health::Passing, String::new()),
            Err(CheckError::Unknown("nope".into()))
        );
        let tcp = CheckSpec {
            id: "tcp".into(),
            kind: CheckKind::Tcp {
                addr: "127.0.0.1:9".into(),
                interval: Duration::from_secs(3600),
                timeout: None,
            },
            success_before_passing: 0,
            failures_before_critical: 0,
        };
        runner.start(tcp).unwrap();
        assert_eq!(
            runner
                .ttl_update("tcp", Health::Passing, String::new())
                .unwrap_err()
                .to_string(),
            "CheckID \"tcp\" does not have associated TTL"
        );
        runner.stop("t");
        assert!(!runner.is_running("t"));
        runner.close().await;
    }

    #[tokio::test]
    async fn script_checks_need_enabling() {
        let (runner, _rx) = CheckRunner::new(false, CancellationToken::new());
        let spec = CheckSpec {
            id: "s".into(),
            kind: CheckKind::Script {
                args: vec!["/bin/true".into()],
                interval: Duration::from_secs(10),
                timeout: None,
            },
            success_before_passing: 0,
            failures_before_critical: 0,
        };
        assert_eq!(runner.start(spec.clone()), Err(CheckError::ScriptsDisabled));
        let (enabled, mut rx) = CheckRunner::new(true, CancellationToken::new());
        enabled.start(spec).unwrap();
        assert_eq!(rx.recv().await.unwrap().status, Health::Passing);
        enabled.close().await;
    }

    #[tokio::test]
    async fn tcp_check_runs_every_interval_until_stopped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (runner, mut rx) = CheckRunner::new(false, CancellationToken::new());
        let spec = CheckSpec {
            id: "tcp".into(),
            kind: CheckKind::Tcp {
                addr: addr.clone(),
                interval: Duration::from_secs(1),
                timeout: None,
            },
            success_before_passing: 0,
            failures_before_critical: 0,
        };
        runner.start(spec).unwrap();
        assert_eq!(rx.recv().await.unwrap().status, Health::Passing);
        drop(listener);
        loop {
            let r = rx.recv().await.unwrap();
            if r.status == Health::Critical {
                assert!(r.output.starts_with(&format!("dial tcp {addr}")));
                break;
            }
        }
        runner.stop("tcp");
        assert!(!runner.is_running("tcp"));
        runner.close().await;
        drop(runner);
        while let Some(r) = rx.recv().await {
            assert_eq!(r.id, "tcp");
        }
    }
}
