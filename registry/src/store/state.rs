//! The registry's state as plain Rust values, and the row changes that move it forward.
//!
//! The writer task and the shared read copy both evolve only through [`State::apply`], so the
//! two copies (and the rows on disk) can never disagree about what a change means.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) flags: u64,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) lock_index: u64,
    pub(crate) session: Option<String>,
}

/// What happens to a session's locks when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Behavior {
    #[default]
    Release,
    Delete,
}

impl Behavior {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Delete => "delete",
        }
    }
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) node_checks: Vec<String>,
    pub(crate) service_checks: Vec<String>,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    pub(crate) ttl: Option<Duration>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// A catalog node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) datacenter: String,
    pub(crate) tagged_addresses: BTreeMap<String, String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// A service instance on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Service {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) tagged_addresses: BTreeMap<String, (String, u16)>,
    pub(crate) kind: String,
    pub(crate) enable_tag_override: bool,
    pub(crate) weights: (u32, u32),
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// Health of a check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckStatus {
    Passing,
    Warning,
    #[default]
    Critical,
    Maintenance,
}

impl CheckStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Maintenance => "maintenance",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }
}

/// A health check, node-level when `service_id` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Check {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: CheckStatus,
    pub(crate) notes: String,
    pub(crate) output: String,
    pub(crate) service_id: String,
    pub(crate) service_name: String,
    pub(crate) service_tags: Vec<String>,
    pub(crate) check_type: String,
    pub(crate) definition: serde_json::Value,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// `(node, id)`: services and checks are unique per node.
pub(crate) type NodeKey = (String, String);

/// One row change. `None` removes the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Kv(String, Option<KvEntry>),
    Tombstone(String, Option<u64>),
    Session(String, Option<Session>),
    Node(String, Option<Node>),
    Service(NodeKey, Option<Service>),
    Check(NodeKey, Option<Check>),
}

/// A group of tables whose watchers wake together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Kv,
    Sessions,
    Catalog,
}

impl Topic {
    pub(crate) const ALL: [Topic; 3] = [Topic::Kv, Topic::Sessions, Topic::Catalog];
}

impl Change {
    pub(crate) fn topic(&self) -> Topic {
        match self {
            Self::Kv(..) | Self::Tombstone(..) => Topic::Kv,
            Self::Session(..) => Topic::Sessions,
            Self::Node(..) | Self::Service(..) | Self::Check(..) => Topic::Catalog,
        }
    }
}

/// The index of the last change to each table (Consul's per-table index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableIndexes {
    pub(crate) kv: u64,
    pub(crate) sessions: u64,
    pub(crate) nodes: u64,
    pub(crate) services: u64,
    pub(crate) checks: u64,
}

impl TableIndexes {
    pub(crate) fn catalog(&self) -> u64 {
        self.nodes.max(self.services).max(self.checks)
    }
}

/// Everything the registry holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// The index of the last committed change (0 for an empty store).
    pub(crate) index: u64,
    pub(crate) tables: TableIndexes,
    pub(crate) kv: BTreeMap<String, KvEntry>,
    /// Deleted keys and the index of their deletion, so listing indexes never go backwards.
    pub(crate) tombstones: BTreeMap<String, u64>,
    pub(crate) sessions: BTreeMap<String, Session>,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) services: BTreeMap<NodeKey, Service>,
    pub(crate) checks: BTreeMap<NodeKey, Check>,
    /// Derived: keys locked by each session.
    pub(crate) locks: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// Applies one change made at `index` and returns the change that undoes it.
    pub(crate) fn apply(&mut self, change: Change, index: u64) -> Change {
        match change {
            Change::Kv(key, entry) => {
                self.tables.kv = index;
                let old = match entry {
                    Some(entry) => {
                        if let Some(session) = &entry.session {
                            self.locks
                                .entry(session.clone())
                                .or_default()
                                .insert(key.clone());
                        }
                        self.kv.insert(key.clone(), entry)
                    }
                    None => self.kv.remove(&key),
                };
                if let Some(old_session) = old.as_ref().and_then(|o| o.session.as_ref()) {
                    let still_held =
                        self.kv.get(&key).and_then(|e| e.session.as_ref()) == Some(old_session);
                    if !still_held && let Some(keys) = self.locks.get_mut(old_session) {
                        keys.remove(&key);
                        if keys.is_empty() {
                            self.locks.remove(old_session);
                        }
                    }
                }
                Change::Kv(key, old)
            }
            Change::Tombstone(key, at) => {
                self.tables.kv = index;
                let old = match at {
                    Some(at) => self.tombstones.insert(key.clone(), at),
                    None => self.tombstones.remove(&key),
                };
                Change::Tombstone(key, old)
            }
            Change::Session(id, session) => {
                self.tables.sessions = index;
                let old = match session {
                    Some(session) => self.sessions.insert(id.clone(), session),
                    None => self.sessions.remove(&id),
                };
                Change::Session(id, old)
            }
            Change::Node(name, node) => {
                self.tables.nodes = index;
                let old = match node {
                    Some(node) => self.nodes.insert(name.clone(), node),
                    None => self.nodes.remove(&name),
                };
                Change::Node(name, old)
            }
            Change::Service(key, service) => {
                self.tables.services = index;
                let old = match service {
                    Some(service) => self.services.insert(key.clone(), service),
                    None => self.services.remove(&key),
                };
                Change::Service(key, old)
            }
            Change::Check(key, check) => {
                self.tables.checks = index;
                let old = match check {
                    Some(check) => self.checks.insert(key.clone(), check),
                    None => self.checks.remove(&key),
                };
                Change::Check(key, old)
            }
        }
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub(crate) fn kv_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// The blocking index of one key: its ModifyIndex, or the KV table index when absent.
    pub(crate) fn kv_key_index(&self, key: &str) -> u64 {
        match self.kv.get(key) {
            Some(entry) => entry.modify_index,
            None => self.tables.kv,
        }
    }

    /// The blocking index of a prefix: the highest ModifyIndex or tombstone under it, else the
    /// KV table index.
    pub(crate) fn kv_prefix_index(&self, prefix: &str) -> u64 {
        let entries = self.kv_prefix(prefix).map(|e| e.modify_index).max();
        let tombs = self
            .tombstones
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, at)| *at)
            .max();
        match entries.max(tombs) {
            Some(index) => index,
            None => self.tables.kv,
        }
    }

    /// Services and checks of one node, for removal.
    pub(crate) fn node_services(&self, node: &str) -> impl Iterator<Item = &Service> + '_ {
        let node = node.to_owned();
        self.services
            .range((node.clone(), String::new())..)
            .take_while(move |((n, _), _)| *n == node)
            .map(|(_, s)| s)
    }

    /// Instances of the service called `name`.
    pub(crate) fn services_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.values().filter(move |s| s.name == name)
    }

    /// Checks of one node.
    pub(crate) fn node_checks(&self, node: &str) -> impl Iterator<Item = &Check> + '_ {
        let node = node.to_owned();
        self.checks
            .range((node.clone(), String::new())..)
            .take_while(move |((n, _), _)| *n == node)
            .map(|(_, c)| c)
    }
}
