//! Cluster membership and liveness: which agents exist, when each last heartbeated, and the
//! `serfHealth` check the server derives from that.
//!
//! berth replaces Serf's gossip with a plain heartbeat from each agent to the server
//! (`PUT /v1/internal/berth/heartbeat`, berth-to-berth only; nothing outside the registry uses
//! it). A member that misses heartbeats for `failure_timeout` is `failed` and its `serfHealth`
//! turns critical, which ends the sessions tied to it; a graceful leave is `left` and removes
//! the node from the catalog.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Serf member states as `/v1/agent/members` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberStatus {
    Alive = 1,
    Left = 3,
    Failed = 4,
}

/// One member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) port: u16,
    pub(crate) status: MemberStatus,
    pub(crate) last_seen: Instant,
}

/// The member table of a server (itself excluded).
#[derive(Debug)]
pub(crate) struct Members {
    inner: Mutex<BTreeMap<String, Member>>,
    pub(crate) failure_timeout: Duration,
}

/// A heartbeat or leave naming a live member with another node id: a second agent started
/// with the same node name (Serf's name conflict). Refused until that member fails or leaves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node name {name:?} is in use by a live agent at {addr} with another node ID; stop one of \
     the two agents or give this one another node name (it is let in once the other leaves or \
     fails)"
)]
pub(crate) struct NameConflict {
    pub(crate) name: String,
    pub(crate) addr: String,
}

/// What a heartbeat changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Already alive: nothing to write.
    Steady,
    /// New, returning or recovered: (re)register its node with a passing `serfHealth`.
    Revived,
}

impl Members {
    pub(crate) fn new(failure_timeout: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            failure_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Member>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat; refuses one from another node id while the member is alive.
    pub(crate) fn heartbeat(
        &self,
        name: &str,
        id: &str,
        addr: &str,
        port: u16,
        now: Instant,
    ) -> Result<Beat, NameConflict> {
        let mut members = self.lock();
        if let Some(m) = members.get(name) {
            conflict(m, id)?;
        }
        let entry = members.entry(name.to_owned()).or_insert_with(|| Member {
            name: name.to_owned(),
            id: id.to_owned(),
            addr: addr.to_owned(),
            port,
            status: MemberStatus::Failed,
            last_seen: now,
        });
        let revived = entry.status != MemberStatus::Alive || entry.addr != addr || entry.id != id;
        entry.status = MemberStatus::Alive;
        entry.last_seen = now;
        entry.addr = addr.to_owned();
        entry.id = id.to_owned();
        entry.port = port;
        Ok(if revived { Beat::Revived } else { Beat::Steady })
    }

    /// Adds a node known from the catalog (after a server restart) as alive from `now`, so it
    /// fails unless its agent heartbeats again.
    pub(crate) fn seed(&self, name: &str, id: &str, addr: &str, now: Instant) {
        self.lock()
            .entry(name.to_owned())
            .or_insert_with(|| Member {
                name: name.to_owned(),
                id: id.to_owned(),
                addr: addr.to_owned(),
                port: 0,
                status: MemberStatus::Alive,
                last_seen: now,
            });
    }

    /// Marks a member left; refuses a leave from another node id while the member is alive.
    pub(crate) fn leave(&self, name: &str, id: &str) -> Result<(), NameConflict> {
        if let Some(m) = self.lock().get_mut(name) {
            conflict(m, id)?;
            m.status = MemberStatus::Left;
        }
        Ok(())
    }

    /// Consul's force-leave: a failed or left member becomes left, or with `prune` is forgotten;
    /// a live one stays as it is (a live Serf member refutes the leave and stays). Answers the
    /// member's status before, or `None` when there is no such member.
    pub(crate) fn force_leave(&self, name: &str, prune: bool) -> Option<MemberStatus> {
        let mut members = self.lock();
        let status = members.get(name)?.status;
        if status != MemberStatus::Alive {
            if prune {
                members.remove(name);
            } else if let Some(m) = members.get_mut(name) {
                m.status = MemberStatus::Left;
            }
        }
        Some(status)
    }

    /// Alive members silent for longer than the failure timeout become failed; returns them.
    pub(crate) fn expire(&self, now: Instant) -> Vec<Member> {
        let mut failed = Vec::new();
        for m in self.lock().values_mut() {
            if m.status == MemberStatus::Alive
                && now.duration_since(m.last_seen) > self.failure_timeout
            {
                m.status = MemberStatus::Failed;
                failed.push(m.clone());
            }
        }
        failed
    }

    pub(crate) fn list(&self) -> Vec<Member> {
        self.lock().values().cloned().collect()
    }
}

fn conflict(member: &Member, id: &str) -> Result<(), NameConflict> {
    if member.status == MemberStatus::Alive && member.id != id {
        return Err(NameConflict {
            name: member.name.clone(),
            addr: member.addr.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_members_fail_and_come_back() {
        let m = Members::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            m.heartbeat("a", "id", "127.0.0.2", 8500, t0),
            Ok(Beat::Revived)
        );
        assert_eq!(
            m.heartbeat("a", "id", "127.0.0.2", 8500, t0),
            Ok(Beat::Steady)
        );
        assert!(m.expire(t0 + Duration::from_secs(10)).is_empty());
        let failed = m.expire(t0 + Duration::from_secs(11));
        assert_eq!(failed.len(), 1);
        assert_eq!(m.list()[0].status, MemberStatus::Failed);
        assert!(m.expire(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(
            m.heartbeat("a", "id", "127.0.0.2", 8500, t0 + Duration::from_secs(31)),
            Ok(Beat::Revived)
        );
        m.leave("a", "id").unwrap();
        assert_eq!(m.list()[0].status, MemberStatus::Left);
        assert!(m.expire(t0 + Duration::from_secs(100)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_node_id_is_refused_while_the_member_lives() {
        let m = Members::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            m.heartbeat("a", "one", "127.0.0.2", 1, t0),
            Ok(Beat::Revived)
        );
        let refused = m.heartbeat("a", "two", "127.0.0.3", 1, t0).unwrap_err();
        assert_eq!(
            (refused.name.as_str(), refused.addr.as_str()),
            ("a", "127.0.0.2")
        );
        assert!(m.leave("a", "two").is_err());
        assert_eq!(m.list()[0].status, MemberStatus::Alive);
        // The same agent may move; the other is let in once the first has failed.
        assert_eq!(
            m.heartbeat("a", "one", "127.0.0.4", 1, t0),
            Ok(Beat::Revived)
        );
        m.expire(t0 + Duration::from_secs(11));
        let t1 = t0 + Duration::from_secs(12);
        assert_eq!(
            m.heartbeat("a", "two", "127.0.0.3", 1, t1),
            Ok(Beat::Revived)
        );
        assert_eq!(m.list()[0].id, "two");
        // ... or has left.
        m.leave("a", "two").unwrap();
        assert_eq!(
            m.heartbeat("a", "three", "127.0.0.5", 1, t1),
            Ok(Beat::Revived)
        );
    }
}
