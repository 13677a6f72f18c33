//! Transactions: every op checked first, then applied all or nothing.

use bytes::Bytes;

use super::{Registration, SetMode, Tx, TxnItem, TxnOp, TxnOutcome, TxnResult};
use crate::store::state::{Check, KvEntry, Node, Service};

impl Tx<'_> {
    pub(super) fn txn(&mut self, ops: Vec<TxnItem>) -> TxnOutcome {
        let refused: Vec<(usize, String)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                TxnItem::Kv(op) => self.txn_precheck(op).err().map(|what| (i, what)),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            return TxnOutcome::RolledBack(refused);
        }
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let done = match op {
                TxnItem::Kv(op) => self
                    .txn_op(op)
                    .map(|entries| entries.into_iter().map(TxnResult::Kv).collect()),
                TxnItem::Node { verb, node } => self.txn_node(&verb, node),
                TxnItem::Service {
                    verb,
                    node,
                    service,
                } => self.txn_service(&verb, node, service),
                TxnItem::Check { verb, check } => self.txn_check(&verb, check),
            };
            match done {
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
    pub(super) fn txn_precheck(&self, op: &TxnOp) -> Result<(), String> {
        if op.key.is_empty() && op.verb != "delete-tree" {
            return Err("Must provide key".to_owned());
        }
        if op.verb == "lock" && self.lock_delayed(&op.key) {
            return Err(format!("failed to lock key {:?} due to lock delay", op.key));
        }
        Ok(())
    }

    pub(super) fn txn_op(&mut self, op: TxnOp) -> Result<Vec<KvEntry>, String> {
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
    pub(super) fn stripped(&self, key: &str) -> Vec<KvEntry> {
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

    /// Consul's node verbs (`txnNode`): `cas` needs the stored `ModifyIndex` (0: absent).
    fn txn_node(&mut self, verb: &str, node: Node) -> Result<Vec<TxnResult>, String> {
        let name = node.name.clone();
        let node_id = node.id.clone();
        let current = |tx: &Self| -> Option<Node> {
            if node_id.is_empty() {
                tx.state.nodes.get(&name).cloned()
            } else {
                tx.state.nodes.values().find(|n| n.id == node_id).cloned()
            }
        };
        match verb {
            "get" => current(self)
                .map(|n| vec![TxnResult::Node(n)])
                .ok_or_else(|| format!("node {name:?} doesn't exist")),
            "set" | "cas" => {
                if verb == "cas"
                    && !cas_matches(current(self).map(|n| n.modify_index), node.modify_index)
                {
                    return Err(format!("failed to set node {name:?}, index is stale"));
                }
                self.txn_register(Registration {
                    node,
                    ..Registration::default()
                })?;
                Ok(current(self).map(TxnResult::Node).into_iter().collect())
            }
            "delete" => {
                self.catalog_deregister(&name, None, None);
                Ok(Vec::new())
            }
            "delete-cas" => {
                match self.state.nodes.get(&name).map(|n| n.modify_index) {
                    Some(index) if index != node.modify_index => {
                        return Err(format!("failed to delete node {name:?}, index is stale"));
                    }
                    Some(_) => self.catalog_deregister(&name, None, None),
                    None => {}
                }
                Ok(Vec::new())
            }
            other => Err(format!("unknown Node verb {other:?}")),
        }
    }

    /// Consul's service verbs (`txnService`), on the service `service.id` of `node`.
    fn txn_service(
        &mut self,
        verb: &str,
        node: String,
        mut service: Service,
    ) -> Result<Vec<TxnResult>, String> {
        if service.id.is_empty() {
            service.id = service.name.clone();
        }
        let key = (node.clone(), service.id.clone());
        let id = service.id.clone();
        let stored = |tx: &Self| tx.state.services.get(&key).cloned();
        match verb {
            "get" => stored(self)
                .map(|s| vec![TxnResult::Service(s)])
                .ok_or_else(|| format!("service {id:?} on node {node:?} doesn't exist")),
            "set" | "cas" => {
                if verb == "cas"
                    && !cas_matches(stored(self).map(|s| s.modify_index), service.modify_index)
                {
                    return Err(format!(
                        "failed to set service {id:?} on node {node:?}, index is stale"
                    ));
                }
                let Some(existing) = self.state.nodes.get(&node).cloned() else {
                    return Err("Missing node registration".to_owned());
                };
                self.txn_register(Registration {
                    node: existing,
                    service: Some(service),
                    checks: Vec::new(),
                    skip_node_update: true,
                })?;
                Ok(stored(self).map(TxnResult::Service).into_iter().collect())
            }
            "delete" => {
                self.remove_service(&node, &id);
                Ok(Vec::new())
            }
            "delete-cas" => {
                match stored(self).map(|s| s.modify_index) {
                    Some(index) if index != service.modify_index => {
                        return Err(format!(
                            "failed to delete service {id:?} on node {node:?}, index is stale"
                        ));
                    }
                    Some(_) => self.remove_service(&node, &id),
                    None => {}
                }
                Ok(Vec::new())
            }
            other => Err(format!("unknown Service verb {other:?}")),
        }
    }

    /// Consul's check verbs (`txnCheck`), on the check `check.id` of `check.node`.
    fn txn_check(&mut self, verb: &str, check: Check) -> Result<Vec<TxnResult>, String> {
        let key = (check.node.clone(), check.id.clone());
        let (node, id) = key.clone();
        let stored = |tx: &Self| tx.state.checks.get(&key).cloned();
        match verb {
            "get" => stored(self)
                .map(|c| vec![TxnResult::Check(c)])
                .ok_or_else(|| format!("check {id:?} on node {node:?} doesn't exist")),
            "set" | "cas" => {
                if verb == "cas"
                    && !cas_matches(stored(self).map(|c| c.modify_index), check.modify_index)
                {
                    return Err(format!(
                        "failed to set check {id:?} on node {node:?}, index is stale"
                    ));
                }
                let Some(existing) = self.state.nodes.get(&node).cloned() else {
                    return Err("Missing node registration".to_owned());
                };
                if !check.service_id.is_empty()
                    && !self
                        .state
                        .services
                        .contains_key(&(node.clone(), check.service_id.clone()))
                {
                    return Err("Missing service registration".to_owned());
                }
                self.txn_register(Registration {
                    node: existing,
                    service: None,
                    checks: vec![check],
                    skip_node_update: true,
                })?;
                Ok(stored(self).map(TxnResult::Check).into_iter().collect())
            }
            "delete" => {
                self.remove_check(&node, &id);
                Ok(Vec::new())
            }
            "delete-cas" => {
                match stored(self).map(|c| c.modify_index) {
                    Some(index) if index != check.modify_index => {
                        return Err(format!(
                            "failed to delete check {id:?} on node {node:?}, index is stale"
                        ));
                    }
                    Some(_) => self.remove_check(&node, &id),
                    None => {}
                }
                Ok(Vec::new())
            }
            other => Err(format!("unknown Check verb {other:?}")),
        }
    }

    fn txn_register(&mut self, registration: Registration) -> Result<(), String> {
        self.catalog_register(registration)
            .map_err(|e| e.to_string())
    }
}

/// Consul's CAS rule for catalog entries: index 0 writes only what is absent, any other index
/// only over the entry stored with that `ModifyIndex`.
fn cas_matches(stored: Option<u64>, index: u64) -> bool {
    match stored {
        None => index == 0,
        Some(current) => index != 0 && current == index,
    }
}
