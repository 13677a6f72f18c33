//! Anti-entropy: makes the catalog's view of this agent's node equal to the local state.
//!
//! The same diff runs against the local store (server mode: the server's own agent) and against
//! a remote server through the HTTP client (agent mode): read the node's services and checks,
//! register what is missing or different, deregister what the catalog has and the agent does
//! not. It runs after every local change and every `interval` to repair drift both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::local::LocalAgent;
use crate::client::{Client, ClientError};
use crate::convert;
use crate::dto::CatalogDeregistration;
use crate::store::state::{Check, Node, Service};
use crate::store::{Registration, Store, StoreError};

/// The check every node has that anti-entropy never touches (the server owns it).
pub(crate) const SERF_HEALTH: &str = "serfHealth";

/// Failures of one sync round.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// The local store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The server could not be reached or refused.
    #[error("server: {0}")]
    Client(#[from] ClientError),
}

/// Where the catalog lives.
#[derive(Clone)]
pub(crate) enum Target {
    Store(Store),
    Remote(Client),
}

/// What the catalog holds for one node.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    pub(crate) node: Option<Node>,
    pub(crate) services: Vec<Service>,
    pub(crate) checks: Vec<Check>,
}

impl Target {
    pub(crate) async fn read(&self, node: &str) -> Result<Remote, SyncError> {
        match self {
            Self::Store(store) => Ok(store.read(|s| Remote {
                node: s.nodes.get(node).cloned(),
                services: s.node_services(node).cloned().collect(),
                checks: s.node_checks(node).cloned().collect(),
            })),
            Self::Remote(client) => {
                let Some(entry) = client.catalog_node(node).await? else {
                    return Ok(Remote::default());
                };
                let checks = client.health_node(node).await?;
                Ok(Remote {
                    node: Some(convert::node_from_wire(entry.node)),
                    services: entry
                        .services
                        .into_values()
                        .map(|s| convert::service_from_wire(node, s))
                        .collect(),
                    checks: checks.into_iter().map(convert::check_from_wire).collect(),
                })
            }
        }
    }

    pub(crate) async fn register(&self, reg: Registration) -> Result<(), SyncError> {
        match self {
            Self::Store(store) => Ok(store.catalog_register(reg).await?),
            Self::Remote(client) => Ok(client
                .catalog_register(&convert::catalog_registration(reg))
                .await?),
        }
    }

    pub(crate) async fn deregister(
        &self,
        node: &str,
        service_id: Option<String>,
        check_id: Option<String>,
    ) -> Result<(), SyncError> {
        match self {
            Self::Store(store) => Ok(store
                .catalog_deregister(node.to_owned(), service_id, check_id)
                .await?),
            Self::Remote(client) => Ok(client
                .catalog_deregister(&CatalogDeregistration {
                    node: node.to_owned(),
                    datacenter: String::new(),
                    service_id,
                    check_id,
                })
                .await?),
        }
    }
}

/// The node record an agent's heartbeat and its anti-entropy both write.
pub(crate) fn agent_node(name: &str, id: &str, address: &str, datacenter: &str) -> Node {
    Node {
        name: name.to_owned(),
        id: id.to_owned(),
        address: address.to_owned(),
        datacenter: datacenter.to_owned(),
        tagged_addresses: [
            ("lan".to_owned(), address.to_owned()),
            ("wan".to_owned(), address.to_owned()),
        ]
        .into(),
        ..Node::default()
    }
}

fn same_service(a: &Service, b: &Service) -> bool {
    (
        &a.name,
        &a.tags,
        &a.address,
        a.port,
        &a.meta,
        &a.tagged_addresses,
        &a.kind,
        a.enable_tag_override,
        a.weights,
    ) == (
        &b.name,
        &b.tags,
        &b.address,
        b.port,
        &b.meta,
        &b.tagged_addresses,
        &b.kind,
        b.enable_tag_override,
        b.weights,
    )
}

/// Whether the catalog's check `a` matches the local `b`; the output is left out while an
/// output-only change waits for `check_update_interval`.
fn same_check(a: &Check, b: &Check, deferred: &BTreeSet<String>) -> bool {
    (deferred.contains(&b.id) || a.output == b.output) && same_check_but_output(a, b)
}

fn same_check_but_output(a: &Check, b: &Check) -> bool {
    (&a.name, a.status, &a.notes, &a.service_id, &a.check_type)
        == (&b.name, b.status, &b.notes, &b.service_id, &b.check_type)
}

/// How this agent's node should look in the catalog.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) node: Node,
    /// Service ids on the node that anti-entropy leaves alone (the server's `consul`).
    pub(crate) protected_services: Vec<String>,
    /// Node fields are owned elsewhere (server mode): never rewrite them.
    pub(crate) skip_node_update: bool,
}

/// One catalog write anti-entropy makes, named for refusal bookkeeping and logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Item {
    /// A service with its checks.
    Service(String),
    /// The node record with its node-level checks.
    Node,
    /// Removing a service the agent does not have.
    RemoveService(String),
    /// Removing a check the agent does not have.
    RemoveCheck(String),
}

impl Item {
    fn what(&self) -> &'static str {
        match self {
            Self::Service(_) => "service registration",
            Self::Node => "node registration",
            Self::RemoveService(_) => "service deregistration",
            Self::RemoveCheck(_) => "check deregistration",
        }
    }

    fn id(&self) -> &str {
        match self {
            Self::Service(id) | Self::RemoveService(id) | Self::RemoveCheck(id) => id,
            Self::Node => "",
        }
    }
}

/// Why the server turned one write down while the others may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 403: the agent's token may not make this write.
    Acl,
    /// 400: the server rejects the registration itself.
    Invalid,
}

impl SyncError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Client(ClientError::Status { status: 403, .. }) => Some(Refusal::Acl),
            Self::Client(ClientError::Status { status: 400, .. })
            | Self::Store(StoreError::Rejected(_)) => Some(Refusal::Invalid),
            _ => None,
        }
    }
}

/// Writes the server refused, with what was attempted (Consul marks such items in sync): they
/// are retried when the attempted content changes or at the next full round, not on every
/// change, and logged once.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    items: BTreeMap<Item, Option<Registration>>,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Round {
    /// Catalog writes made.
    pub(crate) writes: usize,
    /// Writes the server refused in this round.
    pub(crate) refused: usize,
    /// Writes left out because they were refused before with the same content.
    pub(crate) held: usize,
}

impl Round {
    /// Runs `write` for `item` unless it was refused before with the same `attempt` (and this is
    /// not a full round); a refusal is recorded and the round goes on, other errors end it.
    async fn write<F>(
        &mut self,
        refused: &mut Refused,
        full: bool,
        item: Item,
        attempt: Option<Registration>,
        write: F,
    ) -> Result<(), SyncError>
    where
        F: std::future::Future<Output = Result<(), SyncError>>,
    {
        let before = refused.items.get(&item);
        if !full && before == Some(&attempt) {
            self.held += 1;
            return Ok(());
        }
        match write.await {
            Ok(()) => {
                refused.items.remove(&item);
                self.writes += 1;
                Ok(())
            }
            Err(err) => {
                let Some(why) = err.refusal() else {
                    return Err(err);
                };
                if before != Some(&attempt) {
                    let what = item.what();
                    match why {
                        Refusal::Acl => tracing::warn!(
                            id = %item.id(), cause = %err,
                            "{what} blocked by ACLs; retried when it changes or at the next full sync"
                        ),
                        Refusal::Invalid => tracing::warn!(
                            id = %item.id(), cause = %err,
                            "{what} rejected by the server; retried when it changes or at the next full sync"
                        ),
                    }
                } else {
                    tracing::debug!(id = %item.id(), cause = %err, "{} still refused", item.what());
                }
                refused.items.insert(item, attempt);
                self.refused += 1;
                Ok(())
            }
        }
    }
}

/// One anti-entropy round. Each service, the node's checks and each removal are written
/// separately: a write the server refuses (ACLs, validation) is recorded in `refused` and the
/// round goes on; any other failure ends the round. A `full` round also retries refused writes.
pub(crate) async fn sync_once(
    local: &LocalAgent,
    target: &Target,
    spec: &NodeSpec,
    refused: &mut Refused,
    full: bool,
) -> Result<Round, SyncError> {
    let name = spec.node.name.clone();
    let (services, checks, deferred) = local.sync_snapshot();
    let remote = target.read(&name).await?;
    let node_ok = spec.skip_node_update
        || remote.node.as_ref().is_some_and(|n| {
            n.address == spec.node.address
                && n.id == spec.node.id
                && n.tagged_addresses == spec.node.tagged_addresses
                && n.meta == spec.node.meta
        });
    let rservices: BTreeMap<&str, &Service> =
        remote.services.iter().map(|s| (s.id.as_str(), s)).collect();
    let rchecks: BTreeMap<&str, &Check> =
        remote.checks.iter().map(|c| (c.id.as_str(), c)).collect();
    let registration = |service: Option<Service>, checks: Vec<Check>| Registration {
        node: spec.node.clone(),
        service,
        checks,
        skip_node_update: spec.skip_node_update,
    };
    let mut round = Round::default();
    let mut pending: Vec<Item> = Vec::new();
    let mut node_written = false;
    for s in &services {
        let own: Vec<Check> = checks
            .iter()
            .filter(|c| c.service_id == s.id)
            .cloned()
            .collect();
        let service_same = rservices
            .get(s.id.as_str())
            .is_some_and(|r| same_service(r, s));
        let checks_same = own.iter().all(|c| {
            rchecks
                .get(c.id.as_str())
                .is_some_and(|r| same_check(r, c, &deferred))
        });
        if node_ok && service_same && checks_same {
            continue;
        }
        let reg = registration(Some(s.clone()), own);
        let item = Item::Service(s.id.clone());
        pending.push(item.clone());
        let writes = round.writes;
        round
            .write(refused, full, item, attempt_of(&reg), target.register(reg))
            .await?;
        node_written |= round.writes > writes;
    }
    let node_checks: Vec<Check> = checks
        .iter()
        .filter(|c| c.service_id.is_empty())
        .cloned()
        .collect();
    let node_checks_same = node_checks.iter().all(|c| {
        rchecks
            .get(c.id.as_str())
            .is_some_and(|r| same_check(r, c, &deferred))
    });
    if !node_checks_same || (!node_ok && !node_written) {
        let reg = registration(None, node_checks);
        pending.push(Item::Node);
        round
            .write(
                refused,
                full,
                Item::Node,
                attempt_of(&reg),
                target.register(reg),
            )
            .await?;
    }
    for r in &remote.services {
        if spec.protected_services.contains(&r.id) || services.iter().any(|s| s.id == r.id) {
            continue;
        }
        let item = Item::RemoveService(r.id.clone());
        pending.push(item.clone());
        let write = target.deregister(&name, Some(r.id.clone()), None);
        round.write(refused, full, item, None, write).await?;
    }
    for r in &remote.checks {
        let removed_with_service =
            !r.service_id.is_empty() && !services.iter().any(|s| s.id == r.service_id);
        if r.id == SERF_HEALTH
            || removed_with_service
            || spec.protected_services.contains(&r.service_id)
            || checks.iter().any(|c| c.id == r.id)
        {
            continue;
        }
        let item = Item::RemoveCheck(r.id.clone());
        pending.push(item.clone());
        let write = target.deregister(&name, None, Some(r.id.clone()));
        round.write(refused, full, item, None, write).await?;
    }
    // A refusal of something that no longer needs writing is over.
    refused.items.retain(|item, _| pending.contains(item));
    Ok(round)
}

/// What a registration would change, minus check output (which changes on its own and must not
/// make a refused write look new).
fn attempt_of(reg: &Registration) -> Option<Registration> {
    let mut reg = reg.clone();
    for c in &mut reg.checks {
        c.output.clear();
    }
    Some(reg)
}

/// Delay before retrying after the `failures`-th failed round in a row: 1 s, doubling, at most
/// `cap` (the full-sync interval).
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(cap.max(Duration::from_secs(1)))
}

/// Runs anti-entropy until `shutdown`: after each local change and every `interval` (a full
/// round, which also retries refused writes); a failed round is retried with a doubling delay.
/// Rounds run only while `admitted` holds (the server took the agent's heartbeat; another live
/// agent with the same node name must not have its services replaced).
pub(crate) async fn run(
    local: Arc<LocalAgent>,
    target: Target,
    spec: NodeSpec,
    interval: Duration,
    mut admitted: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut changes = local.subscribe();
    let mut refused = Refused::default();
    let mut failures = 0u32;
    let mut full = true;
    // False once the sender is gone (the server's own agent is always admitted).
    let mut watching = true;
    loop {
        if !*admitted.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                ok = admitted.wait_for(|a| *a) => if ok.is_err() { return },
            }
            full = true;
        }
        changes.borrow_and_update();
        let wait = match sync_once(&local, &target, &spec, &mut refused, full).await {
            Ok(_) => {
                failures = 0;
                interval
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, interval);
                tracing::warn!(cause = %err, node = %spec.node.name, retry_in = ?wait, "anti-entropy sync failed");
                wait
            }
        };
        full = tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            () = tokio::time::sleep(wait) => true,
            // Admission changed, or the server came back after failed heartbeats (it may have
            // lost this node's registrations): a full round now, not after the backoff.
            changed = admitted.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    false
                } else {
                    failures = 0;
                    true
                }
            }
        };
    }
}

/// Deregisters services whose checks stayed critical too long, every 30 s (Consul's reaper).
pub(crate) async fn run_reaper(local: Arc<LocalAgent>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => { local.reap(tokio::time::Instant::now()); }
        }
    }
}

#[cfg(test)]
mod tests;
