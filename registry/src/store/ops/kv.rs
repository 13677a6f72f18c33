//! KV writes: set (plain, cas, acquire, release, under lock-delays), delete, delete-tree, and
//! the reaping of tombstones.

use bytes::Bytes;

use super::{SetMode, Tx};
use crate::store::StoreError;
use crate::store::state::{Change, KvEntry};

impl Tx<'_> {
    pub(super) fn kv_set(
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

    pub(super) fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        let Some(existing) = self.state.kv.get(key) else {
            return true;
        };
        if cas.is_some_and(|expected| expected != existing.modify_index) {
            return false;
        }
        self.delete_entry(key);
        true
    }

    pub(super) fn delete_entry(&mut self, key: &str) {
        self.put(Change::Kv(key.to_owned(), None));
        self.put(Change::Tombstone(key.to_owned(), Some(self.index)));
    }

    pub(super) fn kv_delete_tree(&mut self, prefix: &str) {
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
}
