//! `berth-registry-discovery-bench`: discovery read latency with a large catalog (1,000 nodes x 10
//! services) and the time for a change made through an agent to become visible on the server.
//! Prints one Markdown table. Run by `scripts/bench-discovery.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use serde_json::{Value, json};

/// Discovery benchmark against a running server and an agent joined to it.
#[derive(Debug, Parser)]
#[command(name = "berth-registry-discovery-bench")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:18500.
    #[arg(long)]
    server: String,
    /// Base URL of an agent joined to that server, e.g. http://127.0.0.2:18501.
    #[arg(long)]
    agent: String,
    /// Catalog nodes to register.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Services per node.
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Requests per read phase.
    #[arg(long, default_value_t = 300)]
    reads: usize,
    /// Agent-change samples.
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn populate(
    http: &reqwest::Client,
    server: &str,
    nodes: usize,
    services: usize,
) -> anyhow::Result<()> {
    let mut jobs = futures::stream::iter((0..nodes).flat_map(|n| (0..services).map(move |s| (n, s))))
        .map(|(n, s)| {
            let body = json!({
                "Node": format!("bench-node-{n:04}"),
                "Address": format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256),
                "NodeMeta": {"rack": format!("r{}", n % 8)},
                "Service": {"ID": format!("svc-{s}-{n}"), "Service": format!("svc-{s}"), "Port": 8000 + s, "Tags": ["bench"]},
                "Checks": [
                    {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
                    {"CheckID": format!("svc-{s}-{n}:alive"), "ServiceID": format!("svc-{s}-{n}"), "Status": "passing"}
                ]
            });
            let req = http.put(format!("{server}/v1/catalog/register")).json(&body);
            async move {
                let resp = req.send().await?;
                ensure!(resp.status().is_success(), "register failed: {}", resp.status());
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(64);
    while let Some(r) = jobs.next().await {
        r?;
    }
    Ok(())
}

async fn reads(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    expect: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = http.get(url).send().await?;
        ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        let body: Value = resp.json().await?;
        lat.push(t.elapsed());
        let got = body.as_array().map_or(0, Vec::len);
        ensure!(got == expect, "{url}: {got} entries, expected {expect}");
    }
    lat.sort();
    Ok(lat)
}

/// Registers a service through the agent and measures until a blocking query on the server
/// returns it.
async fn agent_changes(
    http: &reqwest::Client,
    server: &str,
    agent: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("agent-change-{i}");
        let url = format!("{server}/v1/catalog/service/{name}");
        let first = http.get(&url).send().await?;
        let index: u64 = first
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .context("X-Consul-Index")?;
        let t = Instant::now();
        let reg = json!({"Name": name, "Port": 9000, "Check": {"TTL": "1h", "Status": "passing"}});
        let put = http
            .put(format!("{agent}/v1/agent/service/register"))
            .json(&reg)
            .send();
        let (put, seen) = tokio::join!(put, async {
            let mut index = index;
            loop {
                let resp = http
                    .get(format!("{url}?index={index}&wait=30s"))
                    .send()
                    .await?;
                index = resp
                    .headers()
                    .get("x-consul-index")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(index);
                let body: Value = resp.json().await?;
                if body.as_array().is_some_and(|a| !a.is_empty()) {
                    return Ok::<_, anyhow::Error>(t.elapsed());
                }
            }
        });
        ensure!(put?.status().is_success(), "agent register failed");
        lat.push(seen?);
        http.put(format!("{agent}/v1/agent/service/deregister/{name}"))
            .send()
            .await?;
    }
    lat.sort();
    Ok(lat)
}

use futures::StreamExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let t = Instant::now();
    populate(&http, &args.server, args.nodes, args.services).await?;
    let populate_time = t.elapsed();
    let total = args.nodes * args.services;
    let health = reads(
        &http,
        &format!("{}/v1/health/service/svc-3?passing", args.server),
        args.reads,
        args.nodes,
    )
    .await?;
    let catalog = reads(
        &http,
        &format!("{}/v1/catalog/service/svc-3", args.server),
        args.reads,
        args.nodes,
    )
    .await?;
    let changes = agent_changes(&http, &args.server, &args.agent, args.changes).await?;
    println!(
        "Catalog: {} nodes x {} services = {total} instances, registered in {:.1} s ({:.0} registrations/s, 64 concurrent).\n",
        args.nodes,
        args.services,
        populate_time.as_secs_f64(),
        total as f64 / populate_time.as_secs_f64()
    );
    println!("| measurement | samples | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (label, lat) in [
        (
            format!(
                "GET /v1/health/service/svc-3?passing ({} entries)",
                args.nodes
            ),
            &health,
        ),
        (
            format!("GET /v1/catalog/service/svc-3 ({} entries)", args.nodes),
            &catalog,
        ),
        (
            "agent register -> visible on server (blocking query)".to_owned(),
            &changes,
        ),
    ] {
        println!(
            "| {label} | {} | {} | {} |",
            lat.len(),
            ms(percentile(lat, 50)),
            ms(percentile(lat, 99))
        );
    }
    Ok(())
}
