//! Choosing a worker for an instance among the `berth-worker` services of the catalog.
//!
//! Candidates are the healthy workers (every check passing) below their advertised capacity (a
//! capacity of 0 or none means unbounded). An instance counts against its worker while it holds
//! resources there ([`holds_resources`]): a record refused before any build does not.
//! `least-loaded` takes the workers with the fewest instances placed on them according to the
//! instance records, then the lowest `instances` meta
//! they report, and breaks remaining ties round-robin; `round-robin` cycles through all candidates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::record::{InstanceRecord, State, WorkerRef};

/// Whether the instance holds resources on its worker (images, containers, or an operation under
/// way), so it counts against the worker's capacity: a built commit, or a state past a build.
/// A record refused before any build (`failed` or `uploaded` with nothing built) does not.
pub fn holds_resources(rec: &InstanceRecord) -> bool {
    rec.built_commit.is_some()
        || rec.state.is_transitional()
        || matches!(rec.state, State::Built | State::Running | State::Stopped)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    LeastLoaded,
    RoundRobin,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "least-loaded" => Ok(Strategy::LeastLoaded),
            "round-robin" => Ok(Strategy::RoundRobin),
            other => Err(format!(
                "unknown placement {other:?}: use least-loaded or round-robin"
            )),
        }
    }
}

/// One `berth-worker` service instance as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct WorkerInfo {
    /// `node/service-id`, unique in the catalog.
    pub id: String,
    pub node: String,
    pub service_id: String,
    /// Worker API base URL, `http://{address}:{port}`.
    pub url: String,
    /// Service address, else node address.
    pub address: String,
    pub healthy: bool,
    /// Checks that are not passing, as `name: status`.
    pub failing_checks: Vec<String>,
    /// `instances` meta the worker reports.
    pub reported_instances: Option<u32>,
    /// `capacity` meta the worker reports (0: unbounded).
    pub capacity: Option<u32>,
    pub version: Option<String>,
    /// Instances placed on it according to the records.
    pub placed: usize,
}

impl WorkerInfo {
    pub fn to_ref(&self) -> WorkerRef {
        WorkerRef {
            id: self.id.clone(),
            node: self.node.clone(),
            url: self.url.clone(),
            address: self.address.clone(),
        }
    }

    fn has_room(&self) -> bool {
        match self.capacity {
            Some(cap) if cap > 0 => self.placed < cap as usize,
            _ => true,
        }
    }
}

/// Fills `placed` of each worker from a count per worker id.
pub fn with_placed(
    mut workers: Vec<WorkerInfo>,
    placed: &HashMap<String, usize>,
) -> Vec<WorkerInfo> {
    for w in &mut workers {
        w.placed = placed.get(&w.id).copied().unwrap_or(0);
    }
    workers
}

/// Chooses a worker; `None` when no healthy worker has room. `rr` is the shared round-robin
/// cursor.
pub fn choose<'a>(
    workers: &'a [WorkerInfo],
    strategy: Strategy,
    rr: &AtomicUsize,
) -> Option<&'a WorkerInfo> {
    let mut candidates: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| w.healthy && w.has_room())
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    if candidates.is_empty() {
        return None;
    }
    if strategy == Strategy::LeastLoaded {
        let key = |w: &WorkerInfo| (w.placed, w.reported_instances.unwrap_or(0));
        let best = candidates.iter().map(|w| key(w)).min()?;
        candidates.retain(|w| key(w) == best);
    }
    let i = rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
    Some(candidates[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, healthy: bool, placed: usize, reported: u32, cap: Option<u32>) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            node: id.into(),
            service_id: "berth-worker".into(),
            url: format!("http://{id}:8833"),
            address: id.into(),
            healthy,
            failing_checks: vec![],
            reported_instances: Some(reported),
            capacity: cap,
            version: None,
            placed,
        }
    }

    #[test]
    fn choose_table() {
        // (workers, strategy, picks in order)
        let cases: Vec<(Vec<WorkerInfo>, Strategy, Vec<&str>)> = vec![
            (vec![], Strategy::LeastLoaded, vec![]),
            (
                vec![w("a", false, 0, 0, None)],
                Strategy::LeastLoaded,
                vec![],
            ),
            (
                vec![w("a", true, 1, 0, Some(1))],
                Strategy::LeastLoaded,
                vec![],
            ),
            (
                vec![
                    w("a", true, 2, 0, None),
                    w("b", true, 1, 9, None),
                    w("c", false, 0, 0, None),
                ],
                Strategy::LeastLoaded,
                vec!["b", "b"],
            ),
            (
                vec![w("a", true, 1, 5, None), w("b", true, 1, 2, None)],
                Strategy::LeastLoaded,
                vec!["b"],
            ),
            (
                vec![w("b", true, 0, 0, None), w("a", true, 0, 0, None)],
                Strategy::LeastLoaded,
                vec!["a", "b", "a"],
            ),
            (
                vec![w("a", true, 5, 0, None), w("b", true, 0, 0, None)],
                Strategy::RoundRobin,
                vec!["a", "b", "a"],
            ),
        ];
        for (workers, strategy, picks) in cases {
            let rr = AtomicUsize::new(0);
            if picks.is_empty() {
                assert!(choose(&workers, strategy, &rr).is_none(), "{workers:?}");
            }
            for want in picks {
                let got = choose(&workers, strategy, &rr).unwrap();
                assert_eq!(got.id, want, "{workers:?}");
            }
        }
    }

    #[test]
    fn what_counts_against_capacity() {
        // (state, built commit, counts)
        let cases = [
            (State::Uploaded, None, false),
            (State::Failed, None, false),
            (State::Failed, Some("c"), true),
            (State::Uploaded, Some("c"), true),
            (State::Building, None, true),
            (State::Built, None, true),
            (State::Starting, Some("c"), true),
            (State::Running, Some("c"), true),
            (State::Stopped, Some("c"), true),
            (State::Deleting, None, true),
        ];
        for (state, built, counts) in cases {
            let mut rec = InstanceRecord::new("i", "u", "p", "r".into());
            rec.state = state;
            rec.built_commit = built.map(str::to_owned);
            assert_eq!(holds_resources(&rec), counts, "{state} {built:?}");
        }
    }

    #[test]
    fn strategy_parses() {
        assert_eq!("round-robin".parse(), Ok(Strategy::RoundRobin));
        assert!("random".parse::<Strategy>().is_err());
    }
}
