//! The fence between copies of an instance: the master's record at `berth/instances/{id}` is the
//! one truth of where an instance lives. The worker reads it (through its registry agent, with
//! Consul's KV API only) before it builds or starts a stack, and at start-up and on every
//! registrator reconnect it removes the stacks the records place on another worker, on no
//! worker, or that no longer have a record: a worker that comes back after its instances moved
//! never serves or registers a second copy.
//!
//! Only positive answers act: a registry that cannot be read (down, or a token without KV read)
//! leaves every stack as it is and lets operations go on, logged; so does a registry holding no
//! record at all (a wrong or emptied registry is no proof that every instance was deleted).
//! Removal is [`Stacks::delete`], which touches only objects labelled with this node; a copy the
//! records place elsewhere keeps its named volumes (the data a move left behind, removed by the
//! instance's delete, which asks every former worker), one whose record is gone loses them, as
//! the delete it missed would have done. The registrator registers the containers
//! of an instance only once a record read here placed it on this worker ([`Fence::confirmed`]).
//!
//! Besides those passes, [`Fence::follow`] holds a blocking query on the records' prefix
//! through the agent: when a record changes so that it excludes a stack held here (the instance
//! moved away, or was deleted), it wakes the registrator's fenced pass at once
//! ([`Fence::excluded`]), so a worker that stayed up does not serve a moved instance for up to
//! the 30 s of the periodic pass.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_consul::client::{Client, ClientError};
use berth_worker_api::{InstanceRecord, RECORD_PREFIX, Secret, ValidName, instance_record_key};

use crate::stacks::{StackError, Stacks};

/// Where the master's record places an instance, as seen from one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The record names this worker's node.
    Here,
    /// The record names another worker's node.
    Elsewhere(String),
    /// The record names no worker.
    Unplaced,
    /// There is no record (the instance was deleted, or never existed).
    Gone,
    /// The record is there but not one (the reason, for logs); nothing is decided.
    Unknown(String),
    /// The registry did not answer (the reason, for logs); nothing is decided.
    Unreachable(String),
}

impl Placement {
    /// Whether this worker must not hold the stack: the record says so positively.
    pub fn excludes(&self) -> bool {
        matches!(
            self,
            Placement::Elsewhere(_) | Placement::Unplaced | Placement::Gone
        )
    }

    /// Why this worker must not hold the stack, for errors and logs.
    pub fn reason(&self, id: &ValidName) -> String {
        match self {
            Placement::Here => format!("instance {id} is placed on this worker"),
            Placement::Elsewhere(node) => {
                format!("the master's record places instance {id} on worker {node}")
            }
            Placement::Unplaced => {
                format!("the master's record of instance {id} places it on no worker")
            }
            Placement::Gone => format!("the master has no record of instance {id}"),
            Placement::Unknown(why) | Placement::Unreachable(why) => {
                format!("the master's record of instance {id} is unreadable: {why}")
            }
        }
    }
}

/// The placement of `record` (if any) for the worker of `node`.
pub fn placement_of(record: Option<&InstanceRecord>, node: &str) -> Placement {
    match record {
        None => Placement::Gone,
        Some(r) => match &r.worker {
            None => Placement::Unplaced,
            Some(w) if w.node == node => Placement::Here,
            Some(w) => Placement::Elsewhere(w.node.clone()),
        },
    }
}

/// How long one record read may take; past it the placement is unknown (a registry cut off
/// must not hold up a build, a start or the registrator).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the master's records for the stacks of one worker.
pub struct Fence {
    client: Client,
    node: String,
    stacks: Arc<Stacks>,
    /// Instances a record read last placed on this worker.
    here: Mutex<HashSet<String>>,
    /// Woken when a record changed to exclude a stack held here.
    excluded: tokio::sync::Notify,
}

impl Fence {
    /// A fence for `stacks`, reading the records through the registry agent at `registry`.
    pub fn new(
        registry: &str,
        token: Option<Secret>,
        stacks: Arc<Stacks>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::new(registry, token.map(|t| t.expose().to_owned()))?,
            node: stacks.settings().node.clone(),
            stacks,
            here: Mutex::new(HashSet::new()),
            excluded: tokio::sync::Notify::new(),
        })
    }

    /// Resolves when [`Fence::follow`] saw a record change that excludes a stack held here.
    pub async fn excluded(&self) {
        self.excluded.notified().await;
    }

    /// Follows the records with a blocking query on their prefix until `shutdown`, waking
    /// [`Fence::excluded`] when one places a stack held here elsewhere, nowhere, or is gone (the
    /// fenced pass then reads each record again before it removes anything).
    pub async fn follow(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        const WAIT: Duration = Duration::from_secs(300);
        let mut index = 0;
        loop {
            let read = self.client.kv_list_blocking(RECORD_PREFIX, index, WAIT);
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = tokio::time::timeout(WAIT + READ_TIMEOUT, read) => a,
            };
            match answer {
                Ok(Ok((pairs, next))) => {
                    // An index that went backwards (a new registry) starts over.
                    let changed = next != index;
                    index = if next < index { 0 } else { next };
                    if changed && self.excludes_any(&pairs).await {
                        self.excluded.notify_one();
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(cause = %e, "fence: cannot follow the records");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Whether `records` (every record) exclude a stack held here that was confirmed here.
    async fn excludes_any(&self, records: &[berth_consul::client::KvPair]) -> bool {
        let Ok(ids) = self.stacks.ids().await else {
            return false;
        };
        ids.iter()
            .filter(|id| self.confirmed(id.as_str()))
            .any(|id| {
                let key = instance_record_key(id);
                match records.iter().find(|p| p.key == key) {
                    None => true,
                    Some(pair) => serde_json::from_slice::<InstanceRecord>(&pair.value)
                        .is_ok_and(|r| placement_of(Some(&r), &self.node).excludes()),
                }
            })
    }

    /// Where the record of `id` places it (remembered for [`Fence::confirmed`]).
    #[tracing::instrument(skip_all, fields(instance = %id))]
    pub async fn placement(&self, id: &ValidName) -> Placement {
        let key = instance_record_key(id);
        let read = tokio::time::timeout(READ_TIMEOUT, self.client.kv_get(&key));
        let placement = match read.await {
            Ok(Ok(None)) => Placement::Gone,
            Ok(Ok(Some(pair))) => match serde_json::from_slice::<InstanceRecord>(&pair.value) {
                Ok(record) => placement_of(Some(&record), &self.node),
                Err(e) => Placement::Unknown(format!("not a record: {e}")),
            },
            Ok(Err(e)) => Placement::Unreachable(e.to_string()),
            Err(_) => Placement::Unreachable(format!("no answer within {READ_TIMEOUT:?}")),
        };
        let mut here = self.here.lock().expect("fence set");
        match placement {
            Placement::Here => {
                here.insert(id.to_string());
            }
            Placement::Unknown(_) | Placement::Unreachable(_) => {}
            _ => {
                here.remove(id.as_str());
            }
        }
        placement
    }

    /// Whether the last record read placed `instance` on this worker (what the registrator
    /// registers).
    pub fn confirmed(&self, instance: &str) -> bool {
        self.here.lock().expect("fence set").contains(instance)
    }

    /// Answers 409 when the record places `id` elsewhere (or nowhere, or is gone), before a
    /// build or start (`op`) changes anything.
    pub async fn admit(&self, id: &ValidName, op: &str) -> Result<(), StackError> {
        let placement = self.placement(id).await;
        if placement.excludes() {
            tracing::warn!(instance = %id, op, reason = %placement.reason(id), "fenced: refused");
            return Err(StackError::Conflict(format!(
                "{}: this worker ({}) does not {op} it",
                placement.reason(id),
                self.node
            )));
        }
        if let Placement::Unknown(why) | Placement::Unreachable(why) = &placement {
            tracing::warn!(instance = %id, op, cause = %why, "cannot read the master's record; going on");
        }
        Ok(())
    }

    /// Whether the registry holds any instance record (`None`: it did not answer).
    async fn any_record(&self) -> Option<bool> {
        let keys = self.client.kv_keys(RECORD_PREFIX, Some("/"));
        match tokio::time::timeout(READ_TIMEOUT, keys).await {
            Ok(Ok(keys)) => Some(!keys.is_empty()),
            _ => None,
        }
    }

    /// Removes every stack held here that the records exclude. Stacks whose record cannot be
    /// read stay.
    pub async fn reconcile(&self) -> Reconciled {
        let stacks = &self.stacks;
        let ids = match stacks.ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(cause = %e, "fence: cannot list the stacks");
                return Reconciled {
                    removed: Vec::new(),
                    undecided: 1,
                };
            }
        };
        let mut removed = Vec::new();
        let mut undecided = 0;
        // Whether the registry holds any record, asked once when a record is missing.
        let mut any_record: Option<bool> = None;
        let count = ids.len();
        for (n, id) in ids.into_iter().enumerate() {
            let placement = self.placement(&id).await;
            if let Placement::Unreachable(why) = &placement {
                // The others would wait out the same registry: all are left for the next time.
                tracing::warn!(cause = %why, "fence: registry unreachable; stacks kept");
                undecided += count - n;
                break;
            }
            if let Placement::Unknown(why) = &placement {
                tracing::warn!(instance = %id, cause = %why, "fence: record unreadable; stack kept");
                undecided += 1;
                continue;
            }
            if !placement.excludes() {
                continue;
            }
            let gone = placement == Placement::Gone;
            if gone {
                if any_record.is_none() {
                    any_record = self.any_record().await;
                }
                if any_record != Some(true) {
                    tracing::warn!(instance = %id, "fence: the registry holds no record at all; stack kept");
                    undecided += 1;
                    continue;
                }
            }
            let reason = placement.reason(&id);
            tracing::warn!(instance = %id, %reason, "fence: removing a copy this worker must not hold");
            stacks
                .log(&id)
                .line(&format!("fence: {reason}; removing this worker's copy"));
            match stacks.delete(&id, !gone).await {
                Ok(resp) if resp.not_removed.is_empty() => removed.push(id),
                Ok(resp) => {
                    tracing::warn!(instance = %id, left = ?resp.not_removed, "fence: copy partly removed");
                    removed.push(id);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, cause = %e, "fence: cannot remove the copy");
                    undecided += 1;
                }
            }
        }
        Reconciled { removed, undecided }
    }
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The stacks removed.
    pub removed: Vec<ValidName>,
    /// Stacks left for the next time: record unreadable, or removal failed.
    pub undecided: usize,
}

#[cfg(test)]
mod tests {
    use berth_worker_api::WorkerRef;

    use super::*;

    fn record(node: Option<&str>) -> InstanceRecord {
        let mut r = InstanceRecord::new("shop", "u", "p", "r".into());
        r.worker = node.map(|n| WorkerRef {
            id: format!("{n}/berth-worker:{n}"),
            node: n.to_owned(),
            url: "http://w".into(),
            address: "10.0.0.1".into(),
        });
        r
    }

    #[test]
    fn placement_from_the_record() {
        let here = record(Some("n1"));
        let there = record(Some("n2"));
        let nowhere = record(None);
        for (rec, want, excludes) in [
            (Some(&here), Placement::Here, false),
            (Some(&there), Placement::Elsewhere("n2".into()), true),
            (Some(&nowhere), Placement::Unplaced, true),
            (None, Placement::Gone, true),
        ] {
            let got = placement_of(rec, "n1");
            assert_eq!(got, want);
            assert_eq!(got.excludes(), excludes, "{got:?}");
        }
        assert!(!Placement::Unknown("not json".into()).excludes());
        assert!(!Placement::Unreachable("down".into()).excludes());
        let id = ValidName::parse("id", "shop").unwrap();
        assert_eq!(
            Placement::Elsewhere("n2".into()).reason(&id),
            "the master's record places instance shop on worker n2"
        );
    }
}
