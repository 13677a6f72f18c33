//! `GET /v1/agent/metrics`: gauges of this registry's state in Consul's JSON shape (go-metrics'
//! in-memory summary) or, with `?format=prometheus`, in Prometheus' text format.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde::Serialize;

use crate::acl::{Need, Resource};
use crate::http::authz::Authz;
use crate::http::query::ConsulQuery;
use crate::http::{ApiError, AppState, json};
use crate::members::MemberStatus;

/// Prometheus' text exposition format, version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// go-metrics' `MetricsSummary`, as Consul encodes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MetricsSummary {
    /// Start of the current 10 s interval, in Go's `time.Time.String()` form.
    timestamp: String,
    gauges: Vec<Gauge>,
    points: Vec<serde_json::Value>,
    counters: Vec<serde_json::Value>,
    samples: Vec<serde_json::Value>,
}

/// go-metrics' `GaugeValue`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Gauge {
    name: &'static str,
    value: f64,
    labels: BTreeMap<String, String>,
}

/// The gauges, read from the committed state and the member table in one pass.
fn gauges(app: &AppState) -> Vec<(&'static str, &'static str, f64)> {
    let (nodes, services, instances, kv, sessions, ttl_sessions, index) = app.store.read(|s| {
        let names: std::collections::BTreeSet<&str> =
            s.services.values().map(|svc| svc.name.as_str()).collect();
        (
            s.nodes.len(),
            names.len(),
            s.services.len(),
            s.kv.len(),
            s.sessions.len(),
            s.sessions.values().filter(|x| x.ttl.is_some()).count(),
            s.index,
        )
    });
    let clients = app
        .members
        .list()
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .count();
    // Gauges are floats in go-metrics; counts this large lose nothing that matters.
    let n = |x: usize| x as f64;
    let index = index as f64;
    vec![
        ("consul.state.nodes", "Nodes in the catalog.", n(nodes)),
        (
            "consul.state.services",
            "Distinct service names in the catalog.",
            n(services),
        ),
        (
            "consul.state.service_instances",
            "Service instances in the catalog.",
            n(instances),
        ),
        ("consul.state.kv_entries", "Keys in the KV store.", n(kv)),
        (
            "consul.session_ttl.active",
            "Sessions with a TTL.",
            n(ttl_sessions),
        ),
        (
            "consul.members.servers",
            "Servers in the cluster (this one).",
            1.0,
        ),
        (
            "consul.members.clients",
            "Agents alive (heartbeating).",
            n(clients),
        ),
        (
            "berth.state.sessions",
            "Sessions, with or without a TTL.",
            n(sessions),
        ),
        (
            "berth.state.index",
            "Index of the last committed change (berth has no Raft log).",
            index,
        ),
    ]
}

/// Go's `time.Time.String()` of `at` in UTC, truncated to the 10 s interval go-metrics keeps.
fn interval_start(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let start = UNIX_EPOCH + Duration::from_secs(secs - secs % 10);
    let text = humantime::format_rfc3339_seconds(start).to_string();
    format!("{} +0000 UTC", text.trim_end_matches('Z').replace('T', " "))
}

/// `foo.bar` as Prometheus names it (`foo_bar`).
fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn prometheus(gauges: &[(&'static str, &'static str, f64)]) -> Response {
    let mut text = String::new();
    for (name, help, value) in gauges {
        let name = prometheus_name(name);
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    response
}

/// `GET /v1/agent/metrics[?format=prometheus]`: needs `agent:read`, as in Consul.
pub(crate) async fn metrics(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    query: ConsulQuery,
) -> Result<Response, ApiError> {
    authz.require(Resource::Agent, &app.node_name, Need::Read)?;
    let gauges = gauges(&app);
    if query.params.get("format") == Some("prometheus") {
        return Ok(prometheus(&gauges));
    }
    let summary = MetricsSummary {
        timestamp: interval_start(SystemTime::now()),
        gauges: gauges
            .into_iter()
            .map(|(name, _, value)| Gauge {
                name,
                value,
                labels: BTreeMap::new(),
            })
            .collect(),
        points: Vec::new(),
        counters: Vec::new(),
        samples: Vec::new(),
    };
    Ok(json(&summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_names_follow_go_metrics() {
        let at = UNIX_EPOCH + Duration::from_secs(1_764_693_437);
        assert_eq!(interval_start(at), "2025-12-02 16:37:10 +0000 UTC");
        assert_eq!(
            prometheus_name("consul.state.kv_entries"),
            "consul_state_kv_entries"
        );
    }
}
