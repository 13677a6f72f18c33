//! Transactions: every op checked first, then applied all or nothing.

use bytes::Bytes;

use super::{SetMode, Tx, TxnOp, TxnOutcome};
use crate::store::state::KvEntry;

impl Tx<'_> {
    pub(super) fn txn(&mut self, ops: Vec<TxnOp>) -> TxnOutcome {
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
}
