//! `berth-registry-bench`: one HTTP/JSON load client that measures berth-registry and etcd side by
//! side (KV PUT and GET throughput and latency at 1 and N concurrent clients, and blocking-query
//! wake-up latency) and prints one Markdown table. Run by `scripts/bench-registry.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use serde_json::json;
use tokio::sync::Barrier;

/// Side-by-side KV benchmark of berth-registry (Consul API) and etcd (v3 JSON gateway).
#[derive(Debug, Parser)]
#[command(name = "berth-registry-bench")]
struct Args {
    /// Base URL of berth-registry, e.g. http://127.0.0.1:18500.
    #[arg(long)]
    berth: Option<String>,
    /// Base URL of etcd's client port (its HTTP/JSON gateway), e.g. http://127.0.0.1:12379.
    #[arg(long)]
    etcd: Option<String>,
    /// Concurrency levels to measure (0 skips the PUT/GET phases).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Operations per phase with one client.
    #[arg(long, default_value_t = 3000)]
    ops_single: usize,
    /// Operations per phase with more than one client.
    #[arg(long, default_value_t = 30000)]
    ops_many: usize,
    /// Upper bound on one phase's duration in seconds (the phase stops early at this bound).
    #[arg(long, default_value_t = 15)]
    max_phase_secs: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Number of distinct keys written and read.
    #[arg(long, default_value_t = 1024)]
    keys: usize,
    /// Wake-up samples (sequential PUT -> watcher return).
    #[arg(long, default_value_t = 300)]
    wakeups: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Berth,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Berth => "berth-registry",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Debug, Clone)]
struct Target {
    system: System,
    base: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// Result of one measured phase.
#[derive(Debug, Clone, Default)]
struct Stats {
    ops: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn from_samples(mut samples: Vec<Duration>, errors: usize, elapsed: Duration) -> Stats {
        samples.sort_unstable();
        Stats {
            ops: samples.len(),
            errors,
            elapsed,
            p50: percentile(&samples, 50),
            p99: percentile(&samples, 99),
        }
    }

    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

impl Target {
    async fn put(&self, http: &reqwest::Client, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self.system {
            System::Berth => {
                let resp = http
                    .put(format!("{}/v1/kv/{key}", self.base))
                    .body(value.to_vec())
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "berth put: {}", resp.status());
                let body = resp.bytes().await?;
                ensure!(body.as_ref() == b"true", "berth put answered {body:?}");
            }
            System::Etcd => {
                let resp = http
                    .post(format!("{}/v3/kv/put", self.base))
                    .json(&json!({"key": B64.encode(key), "value": B64.encode(value)}))
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "etcd put: {}", resp.status());
                resp.bytes().await?;
            }
        }
        Ok(())
    }

    async fn get(&self, http: &reqwest::Client, key: &str) -> anyhow::Result<()> {
        match self.system {
            System::Berth => {
                let resp = http
                    .get(format!("{}/v1/kv/{key}", self.base))
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "berth get: {}", resp.status());
                resp.bytes().await?;
            }
            System::Etcd => {
                let resp = http
                    .post(format!("{}/v3/kv/range", self.base))
                    .json(&json!({"key": B64.encode(key)}))
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "etcd range: {}", resp.status());
                let body = resp.bytes().await?;
                ensure!(
                    body.windows(5).any(|w| w == b"\"kvs\""),
                    "etcd range found nothing for {key}"
                );
            }
        }
        Ok(())
    }

    /// One wake-up sample: a watcher waits on `key`; the time from just before the PUT is sent
    /// to the watcher's return, from the PUT's acknowledgement to the watcher's return (zero
    /// when the watcher returned first), and the PUT's own round trip (sent after the watcher's
    /// 20 ms head start, so on an idle server).
    async fn wakeup(
        &self,
        watch_http: &reqwest::Client,
        put_http: &reqwest::Client,
        key: &str,
        index: &mut u64,
        n: usize,
    ) -> anyhow::Result<(Duration, Duration, Duration)> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = {
            let target = self.clone();
            let http = watch_http.clone();
            let key = key.to_string();
            let index = *index;
            tokio::spawn(async move { target.watch_once(&http, &key, index, ready_tx).await })
        };
        ready_rx
            .await
            .context("watcher failed before it was ready")?;
        let start = Instant::now();
        self.put(put_http, key, format!("wake-{n}").as_bytes())
            .await?;
        let acked = Instant::now();
        let (returned_at, next_index) = watcher.await??;
        *index = next_index;
        Ok((
            returned_at.saturating_duration_since(start),
            returned_at.saturating_duration_since(acked),
            acked - start,
        ))
    }

    async fn watch_once(
        &self,
        http: &reqwest::Client,
        key: &str,
        index: u64,
        ready: tokio::sync::oneshot::Sender<()>,
    ) -> anyhow::Result<(Instant, u64)> {
        match self.system {
            System::Berth => {
                let pending = http
                    .get(format!("{}/v1/kv/{key}?index={index}&wait=30s", self.base))
                    .send();
                tokio::pin!(pending);
                // The request is on the wire once the future has been polled a while; the
                // server registers the watch well within this pause on an idle loopback.
                let resp = tokio::select! {
                    resp = &mut pending => resp?,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {
                        let _ = ready.send(());
                        pending.await?
                    }
                };
                ensure!(resp.status().is_success(), "berth watch: {}", resp.status());
                let next = resp
                    .headers()
                    .get("x-consul-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .context("berth watch: no X-Consul-Index")?;
                resp.bytes().await?;
                let at = Instant::now();
                ensure!(next > index, "berth watch returned without a change");
                Ok((at, next))
            }
            System::Etcd => {
                let mut resp = http
                    .post(format!("{}/v3/watch", self.base))
                    .json(&json!({"create_request": {"key": B64.encode(key)}}))
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "etcd watch: {}", resp.status());
                let mut buf = Vec::new();
                let mut ready = Some(ready);
                loop {
                    let chunk = resp.chunk().await?.context("etcd watch stream ended")?;
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let msg: serde_json::Value = serde_json::from_slice(&line)
                            .with_context(|| format!("etcd watch line {line:?}"))?;
                        let result = &msg["result"];
                        if result["events"].as_array().is_some_and(|e| !e.is_empty()) {
                            let at = Instant::now();
                            let rev = result["header"]["revision"]
                                .as_str()
                                .and_then(|r| r.parse().ok())
                                .unwrap_or(index + 1);
                            return Ok((at, rev));
                        }
                        if result["created"].as_bool() == Some(true)
                            && let Some(tx) = ready.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
    }
}

/// `template` with its first bytes replaced by the operation number, so every PUT changes its
/// key (berth, like Consul, skips the commit of a write identical to the stored entry).
fn unique_value(template: &[u8], i: usize) -> Vec<u8> {
    let mut value = template.to_vec();
    let stamp = format!("{i:020}");
    let n = stamp.len().min(value.len());
    value[..n].copy_from_slice(&stamp.as_bytes()[stamp.len() - n..]);
    value
}

fn key_for(i: usize, keys: usize) -> String {
    format!("bench/k{:05}", i % keys)
}

/// Runs `total` operations spread over `clients` concurrent clients (each with its own
/// connection), stopping early at `max`. Latency is per operation; throughput over the phase.
async fn load(
    target: &Target,
    op: Op,
    clients: usize,
    total: usize,
    max: Duration,
    args: &Args,
) -> anyhow::Result<Stats> {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let value = Arc::new(vec![b'v'; args.value_size]);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let target = target.clone();
        let next = Arc::clone(&next);
        let barrier = Arc::clone(&barrier);
        let value = Arc::clone(&value);
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let http = client()?;
            // Warm-up: open the connection outside the measurement.
            let warm = key_for(c, keys);
            match op {
                Op::Put => target.put(&http, &warm, &value).await?,
                Op::Get => target.get(&http, &warm).await?,
            }
            barrier.wait().await;
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || start.elapsed() >= max {
                    break;
                }
                let key = key_for(i, keys);
                let t = Instant::now();
                let done = match op {
                    Op::Put => target.put(&http, &key, &unique_value(&value, i)).await,
                    Op::Get => target.get(&http, &key).await,
                };
                match done {
                    Ok(()) => samples.push(t.elapsed()),
                    Err(err) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("{} {op:?}: {err:#}", target.system.name());
                        }
                    }
                }
            }
            anyhow::Ok((samples, errors))
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (samples, e) = task.await??;
        all.extend(samples);
        errors += e;
    }
    Ok(Stats::from_samples(all, errors, start.elapsed()))
}

async fn wakeups(target: &Target, n: usize) -> anyhow::Result<(Stats, Stats, Stats)> {
    let watch_http = client()?;
    let put_http = client()?;
    let key = "bench/wake";
    target.put(&put_http, key, b"start").await?;
    let mut index = match target.system {
        System::Berth => {
            let resp = put_http
                .get(format!("{}/v1/kv/{key}", target.base))
                .send()
                .await?;
            resp.headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .context("no X-Consul-Index")?
        }
        System::Etcd => 0,
    };
    let start = Instant::now();
    let mut from_put = Vec::with_capacity(n);
    let mut from_ack = Vec::with_capacity(n);
    let mut round_trips = Vec::with_capacity(n);
    for i in 0..n {
        let (put, ack, round_trip) = target
            .wakeup(&watch_http, &put_http, key, &mut index, i)
            .await?;
        from_put.push(put);
        from_ack.push(ack);
        round_trips.push(round_trip);
    }
    let elapsed = start.elapsed();
    Ok((
        Stats::from_samples(from_put, 0, elapsed),
        Stats::from_samples(from_ack, 0, elapsed),
        Stats::from_samples(round_trips, 0, elapsed),
    ))
}

#[derive(Debug, Default)]
struct Report {
    rows: Vec<(String, Vec<Option<Stats>>)>,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn cell(stats: &Option<Stats>, throughput: bool) -> String {
    match stats {
        None => "n/a".into(),
        Some(s) if throughput => format!(
            "{:.0} ops/s, p50 {} ms, p99 {} ms{}",
            s.throughput(),
            ms(s.p50),
            ms(s.p99),
            if s.errors > 0 {
                format!(" ({} errors)", s.errors)
            } else {
                String::new()
            }
        ),
        Some(s) => format!("p50 {} ms, p99 {} ms (n={})", ms(s.p50), ms(s.p99), s.ops),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut targets = Vec::new();
    if let Some(berth) = &args.berth {
        targets.push(Target {
            system: System::Berth,
            base: berth.trim_end_matches('/').to_string(),
        });
    }
    if let Some(etcd) = &args.etcd {
        targets.push(Target {
            system: System::Etcd,
            base: etcd.trim_end_matches('/').to_string(),
        });
    }
    if targets.is_empty() {
        bail!("give --berth, --etcd or both");
    }
    if args.value_size == 0 || args.keys == 0 {
        bail!("--value-size and --keys must be positive");
    }
    let max = Duration::from_secs(args.max_phase_secs);

    let mut report = Report::default();
    for &clients in args.clients.iter().filter(|&&c| c > 0) {
        let total = if clients <= 1 {
            args.ops_single
        } else {
            args.ops_many
        };
        for op in [Op::Put, Op::Get] {
            let mut cells = Vec::new();
            for target in &targets {
                eprintln!(
                    "{}: {op:?} x{total} with {clients} client(s)",
                    target.system.name()
                );
                cells.push(Some(load(target, op, clients, total, max, &args).await?));
            }
            let label = format!(
                "{} {}B, {clients} client{}",
                match op {
                    Op::Put => "PUT",
                    Op::Get => "GET",
                },
                args.value_size,
                if clients == 1 { "" } else { "s" }
            );
            report.rows.push((label, cells));
        }
    }
    let (mut from_put, mut from_ack, mut idle_puts) = (Vec::new(), Vec::new(), Vec::new());
    for target in &targets {
        eprintln!("{}: {} wake-ups", target.system.name(), args.wakeups);
        let (put, ack, idle_put) = wakeups(target, args.wakeups).await?;
        from_put.push(Some(put));
        from_ack.push(Some(ack));
        idle_puts.push(Some(idle_put));
    }
    report
        .rows
        .push(("wake-up (PUT sent -> watcher returns)".into(), from_put));
    report
        .rows
        .push(("wake-up (PUT acked -> watcher returns)".into(), from_ack));
    report.rows.push((
        "wake-up's PUT (sent -> acked, server idle 20 ms)".into(),
        idle_puts,
    ));

    println!();
    let mut header = String::from("| workload |");
    let mut rule = String::from("|---|");
    for target in &targets {
        header.push_str(&format!(" {} |", target.system.name()));
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for (label, cells) in &report.rows {
        let throughput = !label.starts_with("wake-up");
        let mut line = format!("| {label} |");
        for c in cells {
            line.push_str(&format!(" {} |", cell(c, throughput)));
        }
        println!("{line}");
    }
    Ok(())
}
