//! What each write command does to the state: Consul's KV, session, txn and catalog rules.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::state::{Behavior, Change, Check, KvEntry, Node, Service, State, TableIndexes};
use super::{Command, Outcome, StoreError};

mod catalog;
mod kv;
mod session;
mod txn;

/// How a KV PUT treats the existing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetMode {
    Plain,
    /// Only if the ModifyIndex equals this (0: only if absent).
    Cas(u64),
    Acquire(String),
    Release(String),
}

/// A session to create; the api layer has applied Consul's defaults and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewSession {
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) node_checks: Vec<String>,
    pub(crate) service_checks: Vec<String>,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    pub(crate) ttl: Option<Duration>,
    /// The TTL as sent, echoed back in answers.
    pub(crate) ttl_text: String,
}

/// One KV operation of a transaction, verb as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnOp {
    pub(crate) verb: String,
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) flags: u64,
    pub(crate) index: u64,
    pub(crate) session: String,
}

/// One operation of a transaction: a KV op, or one of Consul's catalog verbs (`set`, `cas`,
/// `get`, `delete`, `delete-cas`) on a node, a service of a node, or a check. `cas` and
/// `delete-cas` compare the entry's `modify_index` as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnItem {
    Kv(TxnOp),
    Node {
        verb: String,
        node: Node,
    },
    Service {
        verb: String,
        node: String,
        service: Service,
    },
    Check {
        verb: String,
        check: Check,
    },
}

/// What one operation of an applied transaction read or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnResult {
    Kv(KvEntry),
    Node(Node),
    Service(Service),
    Check(Check),
}

/// A transaction either applied (with its results) or rolled back (with each failed op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnOutcome {
    Applied(Vec<TxnResult>),
    RolledBack(Vec<(usize, String)>),
}

/// A catalog registration: a node, optionally one service, and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) node: Node,
    pub(crate) service: Option<Service>,
    pub(crate) checks: Vec<Check>,
    pub(crate) skip_node_update: bool,
}

/// In-memory clocks owned by the writer: session TTL deadlines and per-key lock-delays.
///
/// A command never changes them directly: it records [`TimerEffect`]s, which the writer applies
/// only when the command is kept, and undoes when the batch that holds it fails to commit.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    deadlines: BTreeSet<(Instant, String)>,
    by_id: HashMap<String, Instant>,
    lock_delays: HashMap<String, Instant>,
}

/// One change to the clocks. `None` removes the deadline or lock-delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerEffect {
    /// The TTL deadline of a session.
    Deadline(String, Option<Instant>),
    /// The end of a key's lock-delay.
    LockDelay(String, Option<Instant>),
}

/// Lock-delays kept before the expired ones are dropped.
const LOCK_DELAY_PRUNE_AT: usize = 10_000;

impl Timers {
    /// Applies `effect` and returns the effect that undoes it.
    pub(crate) fn apply(&mut self, effect: TimerEffect, now: Instant) -> TimerEffect {
        match effect {
            TimerEffect::Deadline(id, at) => {
                let old = self.by_id.remove(&id);
                if let Some(old) = old {
                    self.deadlines.remove(&(old, id.clone()));
                }
                if let Some(at) = at {
                    self.deadlines.insert((at, id.clone()));
                    self.by_id.insert(id.clone(), at);
                }
                TimerEffect::Deadline(id, old)
            }
            TimerEffect::LockDelay(key, until) => {
                if self.lock_delays.len() > LOCK_DELAY_PRUNE_AT {
                    self.lock_delays.retain(|k, at| *at > now || *k == key);
                }
                let old = match until {
                    Some(until) => self.lock_delays.insert(key.clone(), until),
                    None => self.lock_delays.remove(&key),
                };
                TimerEffect::LockDelay(key, old)
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The sessions whose deadline has passed. Their deadlines stay until the expiry of each
    /// is kept (see [`Tx::session_expire`]).
    pub(crate) fn due_sessions(&self, now: Instant) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Moves every deadline that has passed to `to` (a retry after a failed commit).
    pub(crate) fn postpone_due(&mut self, now: Instant, to: Instant) {
        for id in self.due_sessions(now) {
            self.apply(TimerEffect::Deadline(id, Some(to)), now);
        }
    }

    fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| *until > now)
    }
}

/// One command's changes against the writer's working state, undone unless kept. Changes to
/// the clocks are only collected here; the writer applies them when the command is kept.
pub(crate) struct Tx<'a> {
    state: &'a mut State,
    timers: &'a Timers,
    now: Instant,
    index: u64,
    changes: Vec<Change>,
    undo: Vec<Change>,
    effects: Vec<TimerEffect>,
    saved_tables: TableIndexes,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(state: &'a mut State, timers: &'a Timers, now: Instant) -> Self {
        let index = state.index + 1;
        let saved_tables = state.tables;
        Self {
            state,
            timers,
            now,
            index,
            changes: Vec::new(),
            undo: Vec::new(),
            effects: Vec::new(),
            saved_tables,
        }
    }

    /// Ends the command: keeps its changes (and takes its index) or undoes them. Returns the
    /// row changes and the clock changes to apply, both empty when undone.
    pub(crate) fn finish(mut self, keep: bool) -> (Vec<Change>, Vec<TimerEffect>) {
        if !keep {
            self.rollback();
        }
        if !self.changes.is_empty() {
            self.state.index = self.index;
        }
        (self.changes, self.effects)
    }

    fn rollback(&mut self) {
        for change in self.undo.drain(..).rev() {
            self.state.apply(change, self.index);
        }
        self.changes.clear();
        self.effects.clear();
        self.state.tables = self.saved_tables;
    }

    fn put(&mut self, change: Change) {
        let old = self.state.apply(change.clone(), self.index);
        self.undo.push(old);
        self.changes.push(change);
    }

    /// Whether `key` is inside a lock-delay, counting the ones this command has started.
    fn lock_delayed(&self, key: &str) -> bool {
        let pending = self.effects.iter().rev().find_map(|effect| match effect {
            TimerEffect::LockDelay(k, until) if k == key => Some(*until),
            _ => None,
        });
        match pending {
            Some(until) => until.is_some_and(|until| until > self.now),
            None => self.timers.lock_delayed(key, self.now),
        }
    }

    pub(crate) fn execute(&mut self, command: Command) -> Result<Outcome, StoreError> {
        match command {
            Command::KvSet {
                key,
                value,
                flags,
                mode,
            } => self.kv_set(key, value, flags, mode).map(Outcome::Bool),
            Command::KvDelete { key, cas } => Ok(Outcome::Bool(self.kv_delete(&key, cas))),
            Command::KvDeleteTree { prefix } => {
                self.kv_delete_tree(&prefix);
                Ok(Outcome::Done)
            }
            Command::SessionCreate(new) => {
                self.session_create(new).map(|s| Outcome::Session(Some(s)))
            }
            Command::SessionDestroy(id) => {
                self.session_end(&id);
                Ok(Outcome::Done)
            }
            Command::SessionRenew(id) => Ok(Outcome::Session(self.session_renew(&id))),
            Command::Txn(ops) => Ok(Outcome::Txn(self.txn(ops))),
            Command::CatalogRegister(registration) => {
                self.catalog_register(*registration).map(|()| Outcome::Done)
            }
            Command::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => {
                self.catalog_deregister(&node, service_id.as_deref(), check_id.as_deref());
                Ok(Outcome::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut State, timers: &mut Timers, f: impl FnOnce(&mut Tx<'_>)) {
        let now = Instant::now();
        let mut tx = Tx::new(state, timers, now);
        f(&mut tx);
        let (_, effects) = tx.finish(true);
        for effect in effects {
            timers.apply(effect, now);
        }
    }

    #[tokio::test]
    async fn reaping_tombstones_never_moves_a_prefix_index_backwards() {
        let mut state = State::default();
        let mut timers = Timers::default();
        for i in 0..6 {
            let key = format!("p/{i}");
            run(&mut state, &mut timers, |tx| {
                tx.kv_set(key, Bytes::new(), 0, SetMode::Plain).unwrap();
            });
        }
        for i in 1..6 {
            run(&mut state, &mut timers, |tx| {
                tx.kv_delete(&format!("p/{i}"), None);
            });
        }
        let before = state.kv_prefix_index("p/");
        assert_eq!(state.tombstones.len(), 5);
        run(&mut state, &mut timers, |tx| tx.reap_tombstones(2));
        assert_eq!(state.tombstones.len(), 2);
        assert!(state.kv_prefix_index("p/") >= before);
        run(&mut state, &mut timers, |tx| tx.reap_tombstones(0));
        assert!(state.tombstones.is_empty());
        assert!(state.kv_prefix_index("p/") >= before);
        assert_eq!(state.kv.len(), 1);
    }

    #[tokio::test]
    async fn failed_txn_leaves_no_trace() {
        let mut state = State::default();
        let mut timers = Timers::default();
        run(&mut state, &mut timers, |tx| {
            tx.kv_set("a".into(), Bytes::from_static(b"1"), 0, SetMode::Plain)
                .unwrap();
        });
        let snapshot = (
            state.index,
            state.tables,
            state.kv.clone(),
            state.tombstones.clone(),
        );
        let op = |verb: &str, key: &str| TxnOp {
            verb: verb.into(),
            key: key.into(),
            value: Bytes::from_static(b"x"),
            flags: 0,
            index: 0,
            session: String::new(),
        };
        let mut outcome = None;
        run(&mut state, &mut timers, |tx| {
            outcome = Some(tx.txn(vec![
                TxnItem::Kv(op("delete", "a")),
                TxnItem::Kv(op("set", "b")),
                TxnItem::Kv(op("get", "missing")),
            ]));
        });
        assert!(
            matches!(outcome, Some(TxnOutcome::RolledBack(ref e)) if e.len() == 1 && e[0].0 == 2)
        );
        assert_eq!(
            (
                state.index,
                state.tables,
                state.kv.clone(),
                state.tombstones.clone()
            ),
            snapshot
        );
    }
}
