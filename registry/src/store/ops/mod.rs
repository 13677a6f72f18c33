//! What each write command does to the state: Consul's KV, session, txn and catalog rules.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::state::{
    Behavior, Change, Check, CheckStatus, KvEntry, Node, Service, Session, State, TableIndexes,
};
use super::{Command, Outcome, StoreError};

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

/// A transaction either applied (with its results) or rolled back (with each failed op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnOutcome {
    Applied(Vec<KvEntry>),
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

    // ---- KV ----

    fn kv_set(
        &mut self,
        key: String,
        value: Bytes,
        flags: u64,
        mode: SetMode,
    ) -> Result<bool, StoreError> {
        let existing = self.state.kv.get(&key);
        let (session, lock_index) = match &mode {
            SetMode::Plain => (
                existing.and_then(|e| e.session.clone()),
                existing.map_or(0, |e| e.lock_index),
            ),
            SetMode::Cas(expected) => {
                let current = existing.map_or(0, |e| e.modify_index);
                if current != *expected {
                    return Ok(false);
                }
                (
                    existing.and_then(|e| e.session.clone()),
                    existing.map_or(0, |e| e.lock_index),
                )
            }
            SetMode::Acquire(session) => {
                // Consul checks the lock-delay before anything else (its pre-apply step).
                if self.lock_delayed(&key) {
                    return Ok(false);
                }
                if session.is_empty() {
                    return Err(StoreError::Rejected("missing session".to_owned()));
                }
                if !self.state.sessions.contains_key(session) {
                    return Err(StoreError::Rejected(format!("invalid session {session:?}")));
                }
                let lock_index = existing.map_or(0, |e| e.lock_index);
                match existing.and_then(|e| e.session.as_ref()) {
                    Some(holder) if holder == session => (Some(session.clone()), lock_index),
                    Some(_) => return Ok(false),
                    None => (Some(session.clone()), lock_index + 1),
                }
            }
            SetMode::Release(session) => {
                if session.is_empty() {
                    return Err(StoreError::Rejected("missing session".to_owned()));
                }
                match existing {
                    Some(e) if e.session.as_ref() == Some(session) => (None, e.lock_index),
                    _ => return Ok(false),
                }
            }
        };
        let entry = KvEntry {
            create_index: existing.map_or(self.index, |e| e.create_index),
            modify_index: self.index,
            key: key.clone(),
            value,
            flags,
            lock_index,
            session,
        };
        if existing.is_some_and(|old| {
            old.value == entry.value
                && old.flags == entry.flags
                && old.session == entry.session
                && old.lock_index == entry.lock_index
        }) {
            return Ok(true);
        }
        if self.state.tombstones.contains_key(&key) {
            self.put(Change::Tombstone(key.clone(), None));
        }
        self.put(Change::Kv(key, Some(entry)));
        Ok(true)
    }

    fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        let Some(existing) = self.state.kv.get(key) else {
            return true;
        };
        if cas.is_some_and(|expected| expected != existing.modify_index) {
            return false;
        }
        self.delete_entry(key);
        true
    }

    fn delete_entry(&mut self, key: &str) {
        self.put(Change::Kv(key.to_owned(), None));
        self.put(Change::Tombstone(key.to_owned(), Some(self.index)));
    }

    fn kv_delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .state
            .kv_prefix(prefix)
            .map(|e| e.key.clone())
            .collect();
        for key in keys {
            self.delete_entry(&key);
        }
    }

    /// Drops the oldest tombstones so that `keep` remain, and raises the reaped floor.
    pub(crate) fn reap_tombstones(&mut self, keep: usize) {
        let excess = self.state.tombstones.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .state
            .tombstones
            .iter()
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        by_age.sort_unstable();
        let mut floor = self.state.tables.kv_reaped;
        for (at, key) in by_age.into_iter().take(excess) {
            floor = floor.max(at);
            self.put(Change::Tombstone(key, None));
        }
        self.state.tables.kv_reaped = floor;
    }

    // ---- sessions ----

    fn session_create(&mut self, new: NewSession) -> Result<Session, StoreError> {
        if !self.state.nodes.contains_key(&new.node) {
            return Err(StoreError::Rejected("Missing node registration".to_owned()));
        }
        for check_id in new.node_checks.iter().chain(&new.service_checks) {
            match self.state.checks.get(&(new.node.clone(), check_id.clone())) {
                None => {
                    return Err(StoreError::Rejected(format!(
                        "Missing check '{check_id}' registration"
                    )));
                }
                Some(check) if check.status == CheckStatus::Critical => {
                    return Err(StoreError::Rejected(format!(
                        "Check '{check_id}' is in critical state"
                    )));
                }
                Some(_) => {}
            }
        }
        let id = loop {
            let id = uuid::Uuid::new_v4().to_string();
            if !self.state.sessions.contains_key(&id) {
                break id;
            }
        };
        let session = Session {
            id: id.clone(),
            name: new.name,
            node: new.node,
            node_checks: new.node_checks,
            service_checks: new.service_checks,
            lock_delay: new.lock_delay,
            behavior: new.behavior,
            ttl: new.ttl,
            ttl_text: new.ttl_text,
            create_index: self.index,
            modify_index: self.index,
        };
        self.put(Change::Session(id.clone(), Some(session.clone())));
        if let Some(ttl) = session.ttl {
            self.effects
                .push(TimerEffect::Deadline(id, Some(self.now + ttl * 2)));
        }
        Ok(session)
    }

    fn session_renew(&mut self, id: &str) -> Option<Session> {
        let session = self.state.sessions.get(id)?.clone();
        if let Some(ttl) = session.ttl {
            self.effects.push(TimerEffect::Deadline(
                id.to_owned(),
                Some(self.now + ttl * 2),
            ));
        }
        Some(session)
    }

    /// A TTL ran out: the session ends as if destroyed. The deadline is cleared even if the
    /// session is already gone, so it is not due again.
    pub(crate) fn session_expire(&mut self, id: &str) {
        tracing::debug!(session = id, "session ttl expired");
        self.session_end(id);
        self.effects
            .push(TimerEffect::Deadline(id.to_owned(), None));
    }

    /// Ends a session: its locks are released or deleted per Behavior, each with a lock-delay.
    fn session_end(&mut self, id: &str) {
        let Some(session) = self.state.sessions.get(id).cloned() else {
            return;
        };
        let keys: Vec<String> = self
            .state
            .locks
            .get(id)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let Some(entry) = self.state.kv.get(&key).cloned() else {
                continue;
            };
            match session.behavior {
                Behavior::Release => {
                    let released = KvEntry {
                        session: None,
                        modify_index: self.index,
                        ..entry
                    };
                    self.put(Change::Kv(key.clone(), Some(released)));
                }
                Behavior::Delete => self.delete_entry(&key),
            }
            if !session.lock_delay.is_zero() {
                self.effects.push(TimerEffect::LockDelay(
                    key,
                    Some(self.now + session.lock_delay),
                ));
            }
        }
        self.put(Change::Session(id.to_owned(), None));
        self.effects
            .push(TimerEffect::Deadline(id.to_owned(), None));
    }

    /// Ends every session that depends on `check_id` of `node`.
    fn end_sessions_for_check(&mut self, node: &str, check_id: &str) {
        let ids: Vec<String> = self
            .state
            .sessions
            .values()
            .filter(|s| {
                s.node == node
                    && (s.node_checks.iter().any(|c| c == check_id)
                        || s.service_checks.iter().any(|c| c == check_id))
            })
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.session_end(&id);
        }
    }

    // ---- transactions ----

    fn txn(&mut self, ops: Vec<TxnOp>) -> TxnOutcome {
        let refused: Vec<(usize, String)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| self.txn_precheck(op).err().map(|what| (i, what)))
            .collect();
        if !refused.is_empty() {
            return TxnOutcome::RolledBack(refused);
        }
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match self.txn_op(op) {
                Ok(entries) => results.extend(entries),
                Err(what) => errors.push((i, what)),
            }
        }
        if errors.is_empty() {
            TxnOutcome::Applied(results)
        } else {
            self.rollback();
            TxnOutcome::RolledBack(errors)
        }
    }

    /// Consul's checks before a transaction runs at all (`kvsPreApply`): every verb but
    /// `delete-tree` needs a key, and `lock` is refused inside a lock-delay.
    fn txn_precheck(&self, op: &TxnOp) -> Result<(), String> {
        if op.key.is_empty() && op.verb != "delete-tree" {
            return Err("Must provide key".to_owned());
        }
        if op.verb == "lock" && self.lock_delayed(&op.key) {
            return Err(format!("failed to lock key {:?} due to lock delay", op.key));
        }
        Ok(())
    }

    fn txn_op(&mut self, op: TxnOp) -> Result<Vec<KvEntry>, String> {
        let key = op.key;
        let missing = |key: &str| format!("key {key:?} doesn't exist");
        match op.verb.as_str() {
            "set" => {
                self.kv_set(key.clone(), op.value, op.flags, SetMode::Plain)
                    .map_err(|e| e.to_string())?;
                Ok(self.stripped(&key))
            }
            "cas" => match self.kv_set(key.clone(), op.value, op.flags, SetMode::Cas(op.index)) {
                Ok(true) => Ok(self.stripped(&key)),
                Ok(false) => Err(format!("failed to set key {key:?}, index is stale")),
                Err(err) => Err(err.to_string()),
            },
            "lock" => match self.kv_set(
                key.clone(),
                op.value,
                op.flags,
                SetMode::Acquire(op.session),
            ) {
                Ok(true) => Ok(self.stripped(&key)),
                Ok(false) => Err(format!("failed to lock key {key:?}, lock is already held")),
                Err(err) => Err(err.to_string()),
            },
            "unlock" => match self.kv_set(
                key.clone(),
                op.value,
                op.flags,
                SetMode::Release(op.session),
            ) {
                Ok(true) => Ok(self.stripped(&key)),
                Ok(false) => Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
                Err(err) => Err(err.to_string()),
            },
            "get" => self
                .state
                .kv
                .get(&key)
                .map(|e| vec![e.clone()])
                .ok_or_else(|| missing(&key)),
            "get-or-empty" => Ok(vec![self.state.kv.get(&key).cloned().unwrap_or_else(
                || KvEntry {
                    key,
                    value: Bytes::new(),
                    flags: 0,
                    create_index: 0,
                    modify_index: 0,
                    lock_index: 0,
                    session: None,
                },
            )]),
            "get-tree" => Ok(self.state.kv_prefix(&key).cloned().collect()),
            "check-index" => match self.state.kv.get(&key) {
                None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                Some(e) if e.modify_index != op.index => Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {}",
                    e.modify_index, op.index
                )),
                Some(_) => Ok(self.stripped(&key)),
            },
            "check-session" => match self.state.kv.get(&key) {
                None => Err(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(e) if e.session.as_deref().unwrap_or("") != op.session => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    e.session.as_deref().unwrap_or(""),
                    op.session
                )),
                Some(_) => Ok(self.stripped(&key)),
            },
            "check-not-exists" => match self.state.kv.get(&key) {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            "delete" => {
                self.kv_delete(&key, None);
                Ok(Vec::new())
            }
            "delete-tree" => {
                self.kv_delete_tree(&key);
                Ok(Vec::new())
            }
            "delete-cas" => {
                if self.kv_delete(&key, Some(op.index)) {
                    Ok(Vec::new())
                } else {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
            }
            other => Err(format!("unknown KV verb {other:?}")),
        }
    }

    /// The entry now stored at `key`, without its value (what Consul returns for writes).
    fn stripped(&self, key: &str) -> Vec<KvEntry> {
        self.state
            .kv
            .get(key)
            .map(|e| KvEntry {
                value: Bytes::new(),
                ..e.clone()
            })
            .into_iter()
            .collect()
    }

    // ---- catalog ----

    fn catalog_register(&mut self, registration: Registration) -> Result<(), StoreError> {
        let Registration {
            node,
            service,
            checks,
            skip_node_update,
        } = registration;
        let name = node.name.clone();
        let existing = self.state.nodes.get(&name).cloned();
        if !(skip_node_update && existing.is_some()) {
            let mut node = node;
            node.create_index = existing.as_ref().map_or(self.index, |n| n.create_index);
            node.modify_index = existing.as_ref().map_or(self.index, |n| n.modify_index);
            if existing.as_ref() != Some(&node) {
                node.modify_index = self.index;
                self.put(Change::Node(name.clone(), Some(node)));
            }
        }
        if let Some(mut service) = service {
            service.node = name.clone();
            let key = (name.clone(), service.id.clone());
            let existing = self.state.services.get(&key);
            service.create_index = existing.map_or(self.index, |s| s.create_index);
            service.modify_index = existing.map_or(self.index, |s| s.modify_index);
            if existing != Some(&service) {
                service.modify_index = self.index;
                self.put(Change::Service(key, Some(service)));
            }
        }
        for mut check in checks {
            check.node = name.clone();
            if !check.service_id.is_empty() {
                let Some(service) = self
                    .state
                    .services
                    .get(&(name.clone(), check.service_id.clone()))
                else {
                    return Err(StoreError::Rejected(format!(
                        "Unknown service ID '{}' for check ID '{}'",
                        check.service_id, check.id
                    )));
                };
                check.service_name = service.name.clone();
                check.service_tags = service.tags.clone();
            }
            let key = (name.clone(), check.id.clone());
            let existing = self.state.checks.get(&key);
            check.create_index = existing.map_or(self.index, |c| c.create_index);
            check.modify_index = existing.map_or(self.index, |c| c.modify_index);
            if existing != Some(&check) {
                check.modify_index = self.index;
                let critical = check.status == CheckStatus::Critical;
                self.put(Change::Check(key, Some(check.clone())));
                if critical {
                    self.end_sessions_for_check(&name, &check.id);
                }
            }
        }
        Ok(())
    }

    fn catalog_deregister(&mut self, node: &str, service_id: Option<&str>, check_id: Option<&str>) {
        if let Some(check_id) = check_id {
            self.remove_check(node, check_id);
            return;
        }
        if let Some(service_id) = service_id {
            self.remove_service(node, service_id);
            return;
        }
        let services: Vec<String> = self
            .state
            .node_services(node)
            .map(|s| s.id.clone())
            .collect();
        for id in services {
            self.remove_service(node, &id);
        }
        let checks: Vec<String> = self.state.node_checks(node).map(|c| c.id.clone()).collect();
        for id in checks {
            self.remove_check(node, &id);
        }
        let sessions: Vec<String> = self
            .state
            .sessions
            .values()
            .filter(|s| s.node == node)
            .map(|s| s.id.clone())
            .collect();
        for id in sessions {
            self.session_end(&id);
        }
        if self.state.nodes.contains_key(node) {
            self.put(Change::Node(node.to_owned(), None));
        }
    }

    fn remove_service(&mut self, node: &str, service_id: &str) {
        let checks: Vec<String> = self
            .state
            .node_checks(node)
            .filter(|c| c.service_id == service_id)
            .map(|c| c.id.clone())
            .collect();
        for id in checks {
            self.remove_check(node, &id);
        }
        let key = (node.to_owned(), service_id.to_owned());
        if self.state.services.contains_key(&key) {
            self.put(Change::Service(key, None));
        }
    }

    fn remove_check(&mut self, node: &str, check_id: &str) {
        let key = (node.to_owned(), check_id.to_owned());
        if self.state.checks.contains_key(&key) {
            self.put(Change::Check(key, None));
            self.end_sessions_for_check(node, check_id);
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
                op("delete", "a"),
                op("set", "b"),
                op("get", "missing"),
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
