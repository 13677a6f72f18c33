//! Everything the master keeps or reads in the registry, through the Consul-compatible client
//! only (so a real Consul works unchanged): instance records at `berth/instances/{id}`, the
//! seed-compatible `instance/{id}/ip`, the per-instance lock at `berth/locks/{id}` and the
//! `berth-worker` services with their health.
//!
//! Every write of an instance's keys is fenced by its lock: a `/v1/txn` whose first operation is
//! a `check-session` of the lock key, so a master whose lock session ended (TTL expiry, a
//! registry outage, an operator invalidating it) cannot overwrite what the next holder wrote.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_consul::client::{
    Behavior, Client, ClientError, PutOptions, SessionRequest, TxnError, TxnOp,
};
use berth_model::ValidName;
pub use berth_model::keys::is_worker_registration;
use berth_model::keys::{
    META_CAPACITY, META_INSTANCES, META_VERSION, RECORD_PREFIX, WORKER_SERVICE,
    instance_record_key, instance_tree_prefix, lock_key, seed_ip_key,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::placement::WorkerInfo;
use crate::record::InstanceRecord;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("registry: {0}")]
    Registry(#[from] ClientError),
    #[error("record {key} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("registry refused to write {0}")]
    Refused(String),
    #[error(
        "lost the lock of instance {id} (its registry session ended) before {step}; \
         the operation stopped there"
    )]
    LockLost { id: String, step: String },
}

/// How instance locks behave.
#[derive(Debug, Clone, Copy)]
pub struct LockSettings {
    /// Session TTL; the session is renewed every third of it while held.
    pub ttl: Duration,
    /// Lock delay after a holder's session is invalidated.
    pub lock_delay: Duration,
    /// How long an operation waits for a busy lock before answering 409.
    pub wait: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(1),
            wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Records {
    client: Client,
    lock: LockSettings,
    /// Name written into lock sessions and lock values, for operators.
    holder: String,
}

impl Records {
    pub fn new(client: Client, lock: LockSettings, holder: String) -> Self {
        Self {
            client,
            lock,
            holder,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    #[tracing::instrument(skip_all, fields(%id), err)]
    pub async fn get(&self, id: &ValidName) -> Result<Option<InstanceRecord>, RecordsError> {
        let key = instance_record_key(id);
        match self.client.kv_get(&key).await? {
            None => Ok(None),
            Some(pair) => serde_json::from_slice(&pair.value)
                .map(Some)
                .map_err(|source| RecordsError::Corrupt { key, source }),
        }
    }

    /// Writes the record, only while `lock` (the instance's) is still held.
    #[tracing::instrument(skip_all, fields(id = %record.id, state = %record.state), err)]
    pub async fn put(
        &self,
        lock: &InstanceLock,
        record: &InstanceRecord,
    ) -> Result<(), RecordsError> {
        let id =
            ValidName::parse("id", &record.id).map_err(|e| RecordsError::Refused(e.to_string()))?;
        let key = instance_record_key(&id);
        let value = serde_json::to_vec(record).expect("records always serialise");
        self.fenced(
            lock,
            &id,
            &format!("writing {key}"),
            vec![TxnOp::Set {
                key: key.clone(),
                value,
                flags: 0,
            }],
        )
        .await
    }

    /// Fails unless `lock` is still held: for work outside the registry that must not run once
    /// another operation may have taken over; `step` names it in the error.
    pub async fn ensure_held(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        step: &str,
    ) -> Result<(), RecordsError> {
        self.fenced(lock, id, step, Vec::new()).await
    }

    /// Runs `ops` in one transaction after a `check-session` of the instance's lock key, so they
    /// apply only while `lock` is held. `step` names the write in errors.
    async fn fenced(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        step: &str,
        ops: Vec<TxnOp>,
    ) -> Result<(), RecordsError> {
        let lost = || RecordsError::LockLost {
            id: id.to_string(),
            step: step.to_owned(),
        };
        let Some(held) = lock.inner.as_ref().filter(|_| !lock.is_lost()) else {
            return Err(lost());
        };
        if held.key != lock_key(id) {
            return Err(RecordsError::Refused(format!(
                "{step} under the lock of another instance ({})",
                held.key
            )));
        }
        let mut txn = vec![TxnOp::CheckSession {
            key: held.key.clone(),
            session: held.session.clone(),
        }];
        txn.extend(ops);
        match self.client.txn(txn).await {
            Ok(_) => Ok(()),
            Err(TxnError::RolledBack(errors)) if errors.iter().any(|e| e.op_index == 0) => {
                held.mark_lost();
                tracing::error!(%id, %step, "instance lock lost; the operation stops here");
                Err(lost())
            }
            Err(TxnError::RolledBack(errors)) => Err(RecordsError::Refused(format!(
                "{step}: {}",
                TxnError::RolledBack(errors)
            ))),
            Err(TxnError::Client(err)) => Err(err.into()),
        }
    }

    /// Every record, in id order. A record that does not parse is skipped with an error log.
    pub async fn list(&self) -> Result<Vec<InstanceRecord>, RecordsError> {
        let pairs = self.client.kv_list(RECORD_PREFIX).await?;
        Ok(pairs
            .into_iter()
            .filter_map(|pair| match serde_json::from_slice(&pair.value) {
                Ok(record) => Some(record),
                Err(err) => {
                    tracing::error!(key = %pair.key, cause = %err, "skipping unreadable instance record");
                    None
                }
            })
            .collect())
    }

    /// Removes the record and the whole `instance/{id}/` tree (the seed key and anything else
    /// under it), only while `lock` is held.
    pub async fn delete(&self, lock: &InstanceLock, id: &ValidName) -> Result<(), RecordsError> {
        let key = instance_record_key(id);
        let ops = vec![
            TxnOp::DeleteTree {
                prefix: instance_tree_prefix(id),
            },
            TxnOp::Delete { key: key.clone() },
        ];
        self.fenced(lock, id, &format!("deleting {key}"), ops).await
    }

    /// Writes the seed-compatible `instance/{id}/ip` (the worker's address), only while `lock` is
    /// held.
    pub async fn put_seed_ip(
        &self,
        lock: &InstanceLock,
        id: &ValidName,
        address: &str,
    ) -> Result<(), RecordsError> {
        let key = seed_ip_key(id);
        let ops = vec![TxnOp::Set {
            key: key.clone(),
            value: address.as_bytes().to_vec(),
            flags: 0,
        }];
        self.fenced(lock, id, &format!("writing {key}"), ops).await
    }

    /// Every `berth-worker` service, healthy or not, with `placed` counted from the records that
    /// hold resources there ([`crate::placement::holds_resources`]).
    /// Only a worker's own registration counts: service id `berth-worker:<node>` on that catalog
    /// node (see [`is_worker_registration`]); any other service of that name is ignored.
    #[tracing::instrument(skip_all, err)]
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, RecordsError> {
        let entries = self.client.health_service(WORKER_SERVICE, false).await?;
        let mut workers: Vec<WorkerInfo> = entries
            .into_iter()
            .filter(|e| {
                let own = is_worker_registration(&e.node.node, &e.service.id);
                if !own {
                    tracing::debug!(
                        node = %e.node.node,
                        service_id = %e.service.id,
                        "ignoring a berth-worker service that is not a worker's own registration"
                    );
                }
                own
            })
            .map(|e| {
                let address = if e.service.address.is_empty() {
                    e.node.address.clone()
                } else {
                    e.service.address.clone()
                };
                let failing: Vec<String> = e
                    .checks
                    .iter()
                    .filter(|c| c.status != "passing")
                    .map(|c| {
                        format!(
                            "{}: {}",
                            if c.name.is_empty() {
                                &c.check_id
                            } else {
                                &c.name
                            },
                            c.status
                        )
                    })
                    .collect();
                let meta_u32 = |k: &str| e.service.meta.get(k).and_then(|v| v.parse().ok());
                WorkerInfo {
                    id: format!("{}/{}", e.node.node, e.service.id),
                    node: e.node.node.clone(),
                    service_id: e.service.id.clone(),
                    url: format!("http://{}:{}", host_for_url(&address), e.service.port),
                    address,
                    healthy: failing.is_empty(),
                    failing_checks: failing,
                    reported_instances: meta_u32(META_INSTANCES),
                    capacity: meta_u32(META_CAPACITY),
                    version: e.service.meta.get(META_VERSION).cloned(),
                    placed: 0,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut placed: HashMap<String, usize> = HashMap::new();
        for record in self.list().await? {
            if let Some(w) = &record.worker
                && crate::placement::holds_resources(&record)
            {
                *placed.entry(w.id.clone()).or_default() += 1;
            }
        }
        Ok(crate::placement::with_placed(workers, &placed))
    }

    /// Takes the instance lock, waiting up to the configured time; `None` if it stayed busy.
    #[tracing::instrument(skip_all, fields(%id), err)]
    pub async fn lock(&self, id: &ValidName) -> Result<Option<InstanceLock>, RecordsError> {
        let key = lock_key(id);
        let session = self
            .client
            .session_create(&SessionRequest {
                name: format!("berth-master lock {id} ({})", self.holder),
                ttl: Some(self.lock.ttl),
                lock_delay: Some(self.lock.lock_delay),
                behavior: Behavior::Release,
                ..SessionRequest::default()
            })
            .await?;
        let deadline = tokio::time::Instant::now() + self.lock.wait;
        let value = serde_json::json!({ "holder": self.holder, "session": session }).to_string();
        let opts = PutOptions {
            acquire: Some(session.clone()),
            ..PutOptions::default()
        };
        // Wait on the lock key with blocking queries (woken by its release), not by polling.
        let mut index = 0;
        loop {
            let acquired = match self.client.kv_put_with(&key, value.clone(), &opts).await {
                Ok(acquired) => acquired,
                Err(err) => {
                    let _ = self.client.session_destroy(&session).await;
                    return Err(err.into());
                }
            };
            if acquired {
                return Ok(Some(InstanceLock::hold(
                    self.client.clone(),
                    key,
                    session,
                    self.lock.ttl,
                )));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let _ = self.client.session_destroy(&session).await;
                return Ok(None);
            }
            let wait = (deadline - now).min(self.lock.ttl / 3);
            let (holder, next) = match self.client.kv_get_blocking(&key, index, wait).await {
                Ok(answer) => answer,
                Err(err) => {
                    let _ = self.client.session_destroy(&session).await;
                    return Err(err.into());
                }
            };
            if holder.is_none_or(|p| p.session.is_none()) || next == index {
                // Free but refused (lock delay), or the wait ran out: pause briefly.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            index = next;
            // Keep our waiting session alive through a long wait.
            let _ = self.client.session_renew(&session).await;
        }
    }
}

/// `[v6]` in URLs, a bare host otherwise.
fn host_for_url(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// A held instance lock. The session is renewed in the background until [`InstanceLock::release`]
/// (or drop, which releases in the background). Writes made under it go through
/// [`Records::put`], [`Records::put_seed_ip`] and [`Records::delete`], which refuse once it is lost.
#[derive(Debug)]
pub struct InstanceLock {
    inner: Option<Held>,
}

#[derive(Debug)]
struct Held {
    client: Client,
    key: String,
    session: String,
    stop_renew: CancellationToken,
    renew: JoinHandle<()>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl InstanceLock {
    fn hold(client: Client, key: String, session: String, ttl: Duration) -> Self {
        let stop_renew = CancellationToken::new();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renew = tokio::spawn({
            let (client, session, stop, lost) = (
                client.clone(),
                session.clone(),
                stop_renew.clone(),
                lost.clone(),
            );
            async move {
                let every = ttl / 3;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    match client.session_renew(&session).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            tracing::error!(%session, "lock session expired while held");
                            lost.store(true, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        Err(err) => tracing::warn!(cause = %err, "lock session renewal failed"),
                    }
                }
            }
        });
        Self {
            inner: Some(Held {
                client,
                key,
                session,
                stop_renew,
                renew,
                lost,
            }),
        }
    }

    /// True once the session is known to have ended while held (another master may have taken
    /// over): its renewal found it gone, or a fenced write was refused.
    pub fn is_lost(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|h| h.lost.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Deletes the lock key if still held (no lock delay, and no key left behind) and destroys
    /// the session.
    pub async fn release(mut self) {
        if let Some(held) = self.inner.take() {
            held.release().await;
        }
    }
}

impl Held {
    fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// After a lost lock: deletes the key only if nobody holds it, with `cas` on the index read,
    /// so a waiter that takes it meanwhile keeps it.
    async fn delete_if_free(&self) {
        tracing::warn!(key = %self.key, "lock no longer held at release");
        match self.client.kv_get(&self.key).await {
            Ok(Some(pair)) if pair.session.is_none() => {
                if let Err(err) = self
                    .client
                    .kv_delete_cas(&self.key, pair.modify_index)
                    .await
                {
                    tracing::warn!(key = %self.key, cause = %err, "free lock key not deleted");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(key = %self.key, cause = %err, "lock key not read"),
        }
    }

    async fn release(mut self) {
        self.stop_renew.cancel();
        let _ = (&mut self.renew).await;
        // Delete the key in the same transaction that checks we still hold it: a waiter can only
        // acquire it after that, so it is never disturbed, and no `berth/locks/{id}` outlives
        // the operation.
        let txn = vec![
            TxnOp::CheckSession {
                key: self.key.clone(),
                session: self.session.clone(),
            },
            TxnOp::Delete {
                key: self.key.clone(),
            },
        ];
        match self.client.txn(txn).await {
            Ok(_) => {}
            Err(TxnError::RolledBack(_)) => self.delete_if_free().await,
            Err(TxnError::Client(err)) => {
                tracing::warn!(key = %self.key, cause = %err, "lock delete failed; releasing it");
                let opts = PutOptions {
                    release: Some(self.session.clone()),
                    ..PutOptions::default()
                };
                if let Err(err) = self.client.kv_put_with(&self.key, Vec::new(), &opts).await {
                    tracing::warn!(key = %self.key, cause = %err, "lock release failed; the session end releases it");
                }
            }
        }
        if let Err(err) = self.client.session_destroy(&self.session).await {
            tracing::warn!(cause = %err, "lock session destroy failed; its TTL ends it");
        }
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if let Some(held) = self.inner.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(held.release());
        }
    }
}
