//! The registry's state store: an in-memory copy for reads, a redb file for durability, and one
//! writer task that group-commits every change.
//!
//! Invariants:
//! - Only the writer task changes state. It applies a batch of queued commands to its private
//!   working copy (each command sees the ones before it), writes all their row changes and the
//!   new index in one fsynced redb transaction, and only then publishes the changes to the shared
//!   read copy, wakes watchers and answers the callers. Readers never see uncommitted data.
//! - Every command that changes something gets its own index (`index + 1`); the index only grows
//!   and is stored in the same transaction as the rows it counts.
//! - Session TTL clocks and lock-delays live in memory (as in Consul); after a restart TTL clocks
//!   start again from zero.

mod disk;
mod ops;
pub(crate) mod state;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::disk::Disk;
pub(crate) use self::ops::{
    NewSession, Registration, SetMode, TxnItem, TxnOp, TxnOutcome, TxnResult,
};
use self::state::{Session, State, Topic};

/// Most commands handled in one commit group.
const MAX_BATCH: usize = 512;
/// Tombstones kept before the oldest half is reaped (Consul reaps them on a timer instead).
const TOMBSTONE_LIMIT: usize = 100_000;
/// How long session expiries wait before they are tried again after a failed commit.
const COMMIT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Store failures. `Rejected` carries Consul's own text for a refused command.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory says a store existed, but its file is gone or empty.
    #[error(
        "{path} is missing or empty but {witness} says a store existed here; restore the file from a backup, or remove the directory's contents to start an empty store"
    )]
    Missing { path: PathBuf, witness: PathBuf },
    /// The store file cannot be opened: damaged (a failed integrity check) or unreadable.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("storage failure: {0}")]
    Storage(#[source] redb::Error),
    #[error("corrupt stored row: {0}")]
    Corrupt(String),
    #[error("store is shut down")]
    Closed,
    #[error("{0}")]
    Rejected(String),
}

/// A change to make, as the writer receives it.
#[derive(Debug)]
pub(crate) enum Command {
    KvSet {
        key: String,
        value: Bytes,
        flags: u64,
        mode: SetMode,
    },
    KvDelete {
        key: String,
        cas: Option<u64>,
    },
    KvDeleteTree {
        prefix: String,
    },
    SessionCreate(NewSession),
    SessionDestroy(String),
    SessionRenew(String),
    Txn(Vec<TxnItem>),
    CatalogRegister(Box<Registration>),
    CatalogDeregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
}

/// What a command produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    Bool(bool),
    Session(Option<Session>),
    Txn(TxnOutcome),
    Done,
}

/// A caller's reply channel with the result to send once the batch is durable.
type Reply = (
    oneshot::Sender<Result<Outcome, StoreError>>,
    Result<Outcome, StoreError>,
);

struct Request {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

struct Shared {
    state: RwLock<State>,
    topics: HashMap<Topic, watch::Sender<u64>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    /// Tests only: the disk, to make its commits fail.
    #[cfg(test)]
    disk: Option<Arc<Disk>>,
}

impl Store {
    /// Opens the store (`data_dir: None` keeps everything in memory) and starts its writer,
    /// which stops when `shutdown` is cancelled.
    pub(crate) fn open(
        data_dir: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), StoreError> {
        let (disk, state) = match data_dir {
            Some(dir) => {
                let (disk, state) = Disk::open(&dir)?;
                (Some(Arc::new(disk)), state)
            }
            None => (None, State::default()),
        };
        let topics = Topic::ALL
            .iter()
            .map(|t| (*t, watch::Sender::new(state.index)))
            .collect();
        let shared = Arc::new(Shared {
            state: RwLock::new(state.clone()),
            topics,
        });
        let (tx, rx) = mpsc::channel(4096);
        let mut timers = ops::Timers::default();
        let now = Instant::now();
        for session in state.sessions.values() {
            if let Some(ttl) = session.ttl {
                timers.apply(
                    ops::TimerEffect::Deadline(session.id.clone(), Some(now + ttl * 2)),
                    now,
                );
            }
        }
        let store = Self {
            shared: shared.clone(),
            tx,
            #[cfg(test)]
            disk: disk.clone(),
        };
        let writer = Writer {
            working: state,
            shared,
            disk,
            rx,
            timers,
        };
        let handle = tokio::spawn(writer.run(shutdown));
        Ok((store, handle))
    }

    /// Tests only: makes every disk commit fail (`true`) or work again.
    #[cfg(test)]
    pub(crate) fn fail_commits(&self, fail: bool) {
        if let Some(disk) = &self.disk {
            disk.fail_commits
                .store(fail, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Runs `f` on the committed state under a briefly held read lock.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self
            .shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// A receiver that changes whenever a commit touches `topic`.
    pub(crate) fn subscribe(&self, topic: Topic) -> watch::Receiver<u64> {
        self.shared.topics[&topic].subscribe()
    }

    /// Sends a command to the writer and waits until it is durable.
    pub(crate) async fn execute(&self, command: Command) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { command, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn kv_set(
        &self,
        key: String,
        value: Bytes,
        flags: u64,
        mode: SetMode,
    ) -> Result<bool, StoreError> {
        expect_bool(
            self.execute(Command::KvSet {
                key,
                value,
                flags,
                mode,
            })
            .await?,
        )
    }

    pub(crate) async fn kv_delete(
        &self,
        key: String,
        cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        expect_bool(self.execute(Command::KvDelete { key, cas }).await?)
    }

    pub(crate) async fn kv_delete_tree(&self, prefix: String) -> Result<(), StoreError> {
        self.execute(Command::KvDeleteTree { prefix })
            .await
            .map(drop)
    }

    pub(crate) async fn session_create(&self, new: NewSession) -> Result<Session, StoreError> {
        match self.execute(Command::SessionCreate(new)).await? {
            Outcome::Session(Some(session)) => Ok(session),
            other => Err(unexpected(&other)),
        }
    }

    pub(crate) async fn session_destroy(&self, id: String) -> Result<(), StoreError> {
        self.execute(Command::SessionDestroy(id)).await.map(drop)
    }

    pub(crate) async fn session_renew(&self, id: String) -> Result<Option<Session>, StoreError> {
        match self.execute(Command::SessionRenew(id)).await? {
            Outcome::Session(session) => Ok(session),
            other => Err(unexpected(&other)),
        }
    }

    pub(crate) async fn txn(&self, ops: Vec<TxnItem>) -> Result<TxnOutcome, StoreError> {
        match self.execute(Command::Txn(ops)).await? {
            Outcome::Txn(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    pub(crate) async fn catalog_register(
        &self,
        registration: Registration,
    ) -> Result<(), StoreError> {
        self.execute(Command::CatalogRegister(Box::new(registration)))
            .await
            .map(drop)
    }

    pub(crate) async fn catalog_deregister(
        &self,
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.execute(Command::CatalogDeregister {
            node,
            service_id,
            check_id,
        })
        .await
        .map(drop)
    }
}

fn expect_bool(outcome: Outcome) -> Result<bool, StoreError> {
    match outcome {
        Outcome::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(outcome: &Outcome) -> StoreError {
    StoreError::Corrupt(format!("unexpected command outcome {outcome:?}"))
}

/// The single writer: owns the working copy, the disk and the in-memory timers.
struct Writer {
    working: State,
    shared: Arc<Shared>,
    disk: Option<Arc<Disk>>,
    rx: mpsc::Receiver<Request>,
    timers: ops::Timers,
}

impl Writer {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut batch: Vec<Request> = Vec::new();
        loop {
            let next_deadline = self.timers.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.rx.recv() => match received {
                    Some(request) => batch.push(request),
                    None => break,
                },
                () = sleep_until_opt(next_deadline) => {}
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.process(std::mem::take(&mut batch)).await;
        }
    }

    async fn process(&mut self, batch: Vec<Request>) {
        let now = Instant::now();
        let mut changes = Vec::new();
        // Clock changes of the kept commands, applied at once so later commands of the batch
        // see them; undone with `timer_undo` if the batch does not commit.
        let mut timer_undo = Vec::new();
        for id in self.timers.due_sessions(now) {
            let mut tx = ops::Tx::new(&mut self.working, &self.timers, now);
            tx.session_expire(&id);
            let (rows, effects) = tx.finish(true);
            changes.extend(rows);
            self.apply_effects(effects, now, &mut timer_undo);
        }
        let mut replies = Vec::with_capacity(batch.len());
        for request in batch {
            let mut tx = ops::Tx::new(&mut self.working, &self.timers, now);
            let result = tx.execute(request.command);
            let (rows, effects) = tx.finish(result.is_ok());
            changes.extend(rows);
            self.apply_effects(effects, now, &mut timer_undo);
            replies.push((request.reply, result));
        }
        if self.working.tombstones.len() > TOMBSTONE_LIMIT {
            let mut tx = ops::Tx::new(&mut self.working, &self.timers, now);
            tx.reap_tombstones(TOMBSTONE_LIMIT / 2);
            let (rows, effects) = tx.finish(true);
            changes.extend(rows);
            self.apply_effects(effects, now, &mut timer_undo);
        }
        if changes.is_empty() {
            reply_all(replies);
            return;
        }
        let index = self.working.index;
        let tables = self.working.tables;
        if let Some(disk) = &self.disk {
            let disk = disk.clone();
            let rows = std::mem::take(&mut changes);
            let written = tokio::task::spawn_blocking(move || {
                disk.commit(&rows, index, &tables).map(|()| rows)
            })
            .await;
            match written {
                Ok(Ok(rows)) => changes = rows,
                Ok(Err(err)) => return self.abort(replies, timer_undo, err),
                Err(join) => {
                    return self.abort(
                        replies,
                        timer_undo,
                        StoreError::Corrupt(format!("commit task failed: {join}")),
                    );
                }
            }
        }
        self.publish(changes, index, tables);
        reply_all(replies);
    }

    fn apply_effects(
        &mut self,
        effects: Vec<ops::TimerEffect>,
        now: Instant,
        undo: &mut Vec<ops::TimerEffect>,
    ) {
        for effect in effects {
            undo.push(self.timers.apply(effect, now));
        }
    }

    /// A commit failed: nothing of the batch happened. Rebuild the working copy from the
    /// committed one, put the clocks back as they were, and fail every caller. Expiries that
    /// were due are tried again after [`COMMIT_RETRY`], not in a tight loop.
    fn abort(&mut self, replies: Vec<Reply>, timer_undo: Vec<ops::TimerEffect>, err: StoreError) {
        tracing::error!(cause = %err, "registry commit failed; batch rolled back");
        self.working = self
            .shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = Instant::now();
        for effect in timer_undo.into_iter().rev() {
            self.timers.apply(effect, now);
        }
        self.timers.postpone_due(now, now + COMMIT_RETRY);
        let text = err.to_string();
        for (reply, _) in replies {
            let _ = reply.send(Err(StoreError::Corrupt(text.clone())));
        }
    }

    fn publish(&self, changes: Vec<state::Change>, index: u64, tables: state::TableIndexes) {
        let mut touched: HashSet<Topic> = HashSet::new();
        {
            let mut shared = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            for change in changes {
                touched.insert(change.topic());
                shared.apply(change, index);
            }
            shared.index = index;
            shared.tables = tables;
        }
        for topic in Topic::ALL {
            if touched.contains(&topic) {
                self.shared.topics[&topic].send_replace(index);
            }
        }
    }
}

fn reply_all(replies: Vec<Reply>) {
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::state::{Behavior, Check, CheckStatus, Node};
    use super::*;

    /// A store on disk (its commits can be made to fail) with node `n1` and a passing
    /// `serfHealth` check, so sessions can be created.
    async fn open_on_disk() -> (Store, tempfile::TempDir, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let (store, _writer) = Store::open(Some(dir.path().to_owned()), stop.clone()).unwrap();
        let registration = Registration {
            node: Node {
                name: "n1".into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            checks: vec![Check {
                id: "serfHealth".into(),
                status: CheckStatus::Passing,
                ..Check::default()
            }],
            ..Registration::default()
        };
        store.catalog_register(registration).await.unwrap();
        (store, dir, stop)
    }

    fn session(ttl: Option<Duration>, lock_delay: Duration) -> NewSession {
        NewSession {
            name: String::new(),
            node: "n1".into(),
            node_checks: vec!["serfHealth".into()],
            service_checks: Vec::new(),
            lock_delay,
            behavior: Behavior::Release,
            ttl,
            ttl_text: String::new(),
        }
    }

    async fn lock(store: &Store, key: &str, mode: SetMode) -> bool {
        store
            .kv_set(key.into(), Bytes::new(), 0, mode)
            .await
            .unwrap()
    }

    /// Every command queued before this one has been committed once it is answered.
    async fn settle(store: &Store) {
        store.session_renew("none".into()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_leaves_session_clocks_as_they_were() {
        let (store, _dir, _stop) = open_on_disk().await;
        let holder = store
            .session_create(session(
                Some(Duration::from_secs(10)),
                Duration::from_secs(30),
            ))
            .await
            .unwrap()
            .id;
        assert!(lock(&store, "leader", SetMode::Acquire(holder.clone())).await);

        store.fail_commits(true);
        assert!(store.session_destroy(holder.clone()).await.is_err());
        store.fail_commits(false);

        // The destroy never happened: the holder still holds the lock, and its explicit release
        // starts no lock-delay.
        assert!(lock(&store, "leader", SetMode::Release(holder.clone())).await);
        let other = store
            .session_create(session(None, Duration::ZERO))
            .await
            .unwrap()
            .id;
        assert!(lock(&store, "leader", SetMode::Acquire(other.clone())).await);
        assert!(lock(&store, "leader", SetMode::Release(other)).await);
        // The TTL clock of the holder still runs: 2 x TTL after its creation it expires.
        assert!(lock(&store, "leader", SetMode::Acquire(holder.clone())).await);
        tokio::time::sleep(Duration::from_secs(21)).await;
        settle(&store).await;
        store.read(|state| {
            assert!(!state.sessions.contains_key(&holder));
            assert_eq!(state.kv["leader"].session, None);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_whose_commit_fails_is_tried_again() {
        let (store, _dir, _stop) = open_on_disk().await;
        let id = store
            .session_create(session(Some(Duration::from_secs(10)), Duration::ZERO))
            .await
            .unwrap()
            .id;
        store.fail_commits(true);
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(store.read(|state| state.sessions.contains_key(&id)));
        store.fail_commits(false);
        tokio::time::sleep(COMMIT_RETRY * 2).await;
        settle(&store).await;
        assert!(store.read(|state| !state.sessions.contains_key(&id)));
    }
}
