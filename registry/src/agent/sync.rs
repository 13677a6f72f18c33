//! Anti-entropy: makes the catalog's view of this agent's node equal to the local state.
//!
//! The same diff runs against the local store (server mode: the server's own agent) and against
//! a remote server through the HTTP client (agent mode): read the node's services and checks,
//! register what is missing or different, deregister what the catalog has and the agent does
//! not. It runs after every local change and every `interval` to repair drift both ways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::local::LocalAgent;
use crate::client::{Client, ClientError};
use crate::dto::{
    CatalogCheckRegistration, CatalogDeregistration, CatalogRegistration,
    CatalogServiceRegistration, ServiceAddress, Weights,
};
use crate::store::state::{Check, CheckStatus, Node, Service};
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
                let n = entry.node;
                Ok(Remote {
                    node: Some(Node {
                        name: n.node,
                        id: n.id,
                        address: n.address,
                        datacenter: n.datacenter,
                        tagged_addresses: n.tagged_addresses,
                        meta: n.meta,
                        create_index: n.create_index,
                        modify_index: n.modify_index,
                    }),
                    services: entry
                        .services
                        .into_values()
                        .map(|s| Service {
                            node: node.to_owned(),
                            id: s.id,
                            name: s.service,
                            tags: s.tags,
                            address: s.address,
                            port: s.port,
                            meta: s.meta,
                            tagged_addresses: s
                                .tagged_addresses
                                .into_iter()
                                .map(|(k, v)| (k, (v.address, v.port)))
                                .collect(),
                            kind: s.kind,
                            enable_tag_override: s.enable_tag_override,
                            weights: (s.weights.passing, s.weights.warning),
                            create_index: 0,
                            modify_index: 0,
                        })
                        .collect(),
                    checks: checks
                        .into_iter()
                        .map(|c| Check {
                            node: c.node,
                            id: c.check_id,
                            name: c.name,
                            status: CheckStatus::parse(&c.status).unwrap_or_default(),
                            notes: c.notes,
                            output: c.output,
                            service_id: c.service_id,
                            service_name: c.service_name,
                            service_tags: c.service_tags,
                            check_type: c.check_type,
                            definition: c.definition,
                            create_index: c.create_index,
                            modify_index: c.modify_index,
                        })
                        .collect(),
                })
            }
        }
    }

    pub(crate) async fn register(&self, reg: Registration) -> Result<(), SyncError> {
        match self {
            Self::Store(store) => Ok(store.catalog_register(reg).await?),
            Self::Remote(client) => Ok(client.catalog_register(&registration_dto(reg)).await?),
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

/// A registration as the catalog's HTTP API takes it.
pub(crate) fn registration_dto(reg: Registration) -> CatalogRegistration {
    let check = |c: Check| CatalogCheckRegistration {
        node: c.node,
        check_id: c.id,
        name: c.name,
        status: c.status.as_str().to_owned(),
        notes: c.notes,
        output: c.output,
        service_id: c.service_id,
        check_type: c.check_type,
        definition: Some(c.definition),
    };
    CatalogRegistration {
        id: reg.node.id,
        node: reg.node.name,
        address: reg.node.address,
        datacenter: reg.node.datacenter,
        tagged_addresses: reg.node.tagged_addresses,
        node_meta: reg.node.meta,
        service: reg.service.map(|s| CatalogServiceRegistration {
            id: s.id,
            service: s.name,
            tags: s.tags,
            address: s.address,
            tagged_addresses: s
                .tagged_addresses
                .into_iter()
                .map(|(k, (address, port))| (k, ServiceAddress { address, port }))
                .collect(),
            meta: s.meta,
            port: s.port,
            kind: s.kind,
            enable_tag_override: s.enable_tag_override,
            weights: Some(Weights {
                passing: s.weights.0,
                warning: s.weights.1,
            }),
        }),
        check: None,
        checks: reg.checks.into_iter().map(check).collect(),
        skip_node_update: reg.skip_node_update,
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

fn same_check(a: &Check, b: &Check) -> bool {
    (
        &a.name,
        a.status,
        &a.output,
        &a.notes,
        &a.service_id,
        &a.check_type,
    ) == (
        &b.name,
        b.status,
        &b.output,
        &b.notes,
        &b.service_id,
        &b.check_type,
    )
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

/// One anti-entropy round; returns how many catalog writes it made.
pub(crate) async fn sync_once(
    local: &LocalAgent,
    target: &Target,
    spec: &NodeSpec,
) -> Result<usize, SyncError> {
    let name = spec.node.name.clone();
    let (services, checks) = local.snapshot();
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
    let mut writes = 0;
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
        let checks_same = own
            .iter()
            .all(|c| rchecks.get(c.id.as_str()).is_some_and(|r| same_check(r, c)));
        if node_ok && service_same && checks_same {
            continue;
        }
        target.register(registration(Some(s.clone()), own)).await?;
        writes += 1;
        node_written = true;
    }
    let node_checks: Vec<Check> = checks
        .iter()
        .filter(|c| c.service_id.is_empty())
        .cloned()
        .collect();
    let node_checks_same = node_checks
        .iter()
        .all(|c| rchecks.get(c.id.as_str()).is_some_and(|r| same_check(r, c)));
    if !node_checks_same || (!node_ok && !node_written) {
        target.register(registration(None, node_checks)).await?;
        writes += 1;
    }
    for r in &remote.services {
        if spec.protected_services.contains(&r.id) || services.iter().any(|s| s.id == r.id) {
            continue;
        }
        target.deregister(&name, Some(r.id.clone()), None).await?;
        writes += 1;
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
        target.deregister(&name, None, Some(r.id.clone())).await?;
        writes += 1;
    }
    Ok(writes)
}

/// Runs anti-entropy until `shutdown`: after each local change and every `interval`; retries
/// failed rounds after a second.
pub(crate) async fn run(
    local: Arc<LocalAgent>,
    target: Target,
    spec: NodeSpec,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = local.subscribe();
    loop {
        changes.borrow_and_update();
        let wait = match sync_once(&local, &target, &spec).await {
            Ok(_) => interval,
            Err(err) => {
                tracing::warn!(cause = %err, node = %spec.node.name, "anti-entropy sync failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
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
