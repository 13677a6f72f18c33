//! Session writes: create, renew, expire and end (releasing or deleting the keys held).

use super::{NewSession, TimerEffect, Tx};
use crate::store::StoreError;
use crate::store::state::{Behavior, Change, CheckStatus, KvEntry, Session};

impl Tx<'_> {
    pub(super) fn session_create(&mut self, new: NewSession) -> Result<Session, StoreError> {
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

    pub(super) fn session_renew(&mut self, id: &str) -> Option<Session> {
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
    pub(super) fn session_end(&mut self, id: &str) {
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
    pub(super) fn end_sessions_for_check(&mut self, node: &str, check_id: &str) {
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
}
