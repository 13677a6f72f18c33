//! Durable rows in a redb file: one write transaction per commit group, fsynced before the
//! writer acknowledges anything.
//!
//! Damage is looked for at open, the only time the file is read (everything is loaded into
//! memory then; requests never read the file). What redb 4 guarantees: every page carries an
//! xxh3 checksum, but normal reads do not verify them; a plain open trusts a file shut down
//! cleanly (and may panic on one altered outside redb), and after an unclean shutdown redb
//! repairs the file from its last durable commit. So the store opens with redb's
//! `set_check_integrity_on_open`: every page checksum of the committed trees is verified at
//! each open, a flipped byte in a stored value fails the open with `StorageError::Corrupted`
//! instead of being served, and a repair after a crash is logged. The checksums detect
//! accidental damage, not deliberate tampering.
//!
//! A missing or empty `registry.redb` in a directory that says a store existed there (the
//! `registry.created` marker written after the first open, or an `acl.json`) is refused: redb
//! would silently start an empty store in it.

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::StoreError;
use super::state::{Change, KvEntry, NodeKey, State, TableIndexes};

const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const TOMBSTONES: TableDefinition<'_, &str, u64> = TableDefinition::new("tombstones");
const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
const CHECKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checks");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Written next to `registry.redb` once it exists: from then on a missing or empty file is
/// damage, not a fresh start.
const CREATED_MARKER: &str = "registry.created";

/// Meta row holding the global index.
const META_INDEX: &str = "index";
/// Meta row holding the per-table indexes (JSON).
const META_TABLES: &str = "tables";

/// The redb file behind a store.
pub(crate) struct Disk {
    db: Database,
    /// Tests only: while set, every commit fails before it writes anything.
    #[cfg(test)]
    pub(crate) fail_commits: std::sync::atomic::AtomicBool,
}

impl Disk {
    /// Opens (or creates) `<dir>/registry.redb` and loads everything it holds.
    pub(crate) fn open(dir: &Path) -> Result<(Self, State), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join("registry.redb");
        let marker = dir.join(CREATED_MARKER);
        let file_empty = std::fs::metadata(&file).map_or(true, |m| m.len() == 0);
        if file_empty {
            let witness = [marker.clone(), dir.join("acl.json")]
                .into_iter()
                .find(|p| p.exists());
            if let Some(witness) = witness {
                return Err(StoreError::Missing {
                    path: file,
                    witness,
                });
            }
        }
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .set_repair_callback(|_| {
                tracing::warn!(
                    "registry.redb was not shut down cleanly; checking and repairing it"
                );
            })
            .create(&file)
            .map_err(|source| StoreError::Open {
                path: file.clone(),
                source: source.into(),
            })?;
        if !marker.exists() {
            berth_kit::fs::write_atomic(&marker, b"registry.redb is the store of this directory\n")
                .map_err(|source| StoreError::DataDir {
                    path: marker.clone(),
                    source,
                })?;
        }
        let disk = Self {
            db,
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
        };
        disk.create_tables()?;
        let state = disk.load()?;
        Ok((disk, state))
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(storage)?;
        tx.open_table(KV).map_err(storage)?;
        tx.open_table(TOMBSTONES).map_err(storage)?;
        tx.open_table(SESSIONS).map_err(storage)?;
        tx.open_table(NODES).map_err(storage)?;
        tx.open_table(SERVICES).map_err(storage)?;
        tx.open_table(CHECKS).map_err(storage)?;
        tx.open_table(META).map_err(storage)?;
        tx.commit().map_err(storage)
    }

    fn load(&self) -> Result<State, StoreError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let mut state = State::default();
        let meta = tx.open_table(META).map_err(storage)?;
        if let Some(raw) = meta.get(META_INDEX).map_err(storage)? {
            state.index = decode_u64(raw.value())?;
        }
        if let Some(raw) = meta.get(META_TABLES).map_err(storage)? {
            state.tables = decode_json::<TableIndexes>(raw.value())?;
        }
        let index = state.index;
        for row in tx
            .open_table(KV)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let entry = decode_kv(key.value(), value.value())?;
            state.apply(Change::Kv(entry.key.clone(), Some(entry)), index);
        }
        for row in tx
            .open_table(TOMBSTONES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, at) = row.map_err(storage)?;
            state.tombstones.insert(key.value().to_owned(), at.value());
        }
        for row in tx
            .open_table(SESSIONS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            state
                .sessions
                .insert(key.value().to_owned(), decode_json(value.value())?);
        }
        for row in tx
            .open_table(NODES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            state
                .nodes
                .insert(key.value().to_owned(), decode_json(value.value())?);
        }
        for row in tx
            .open_table(SERVICES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            state
                .services
                .insert(split_node_key(key.value())?, decode_json(value.value())?);
        }
        for row in tx
            .open_table(CHECKS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            state
                .checks
                .insert(split_node_key(key.value())?, decode_json(value.value())?);
        }
        // Loading went through `apply`, which stamps table indexes; restore the stored ones.
        if let Some(raw) = meta.get(META_TABLES).map_err(storage)? {
            state.tables = decode_json::<TableIndexes>(raw.value())?;
        }
        Ok(state)
    }

    /// Writes `changes` and the new indexes in one durable transaction.
    pub(crate) fn commit(
        &self,
        changes: &[Change],
        index: u64,
        tables: &TableIndexes,
    ) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(corrupt("injected commit failure"));
        }
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut kv = tx.open_table(KV).map_err(storage)?;
            let mut tombstones = tx.open_table(TOMBSTONES).map_err(storage)?;
            let mut sessions = tx.open_table(SESSIONS).map_err(storage)?;
            let mut nodes = tx.open_table(NODES).map_err(storage)?;
            let mut services = tx.open_table(SERVICES).map_err(storage)?;
            let mut checks = tx.open_table(CHECKS).map_err(storage)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            for change in changes {
                match change {
                    Change::Kv(key, Some(entry)) => {
                        kv.insert(key.as_str(), encode_kv(entry).as_slice())
                            .map_err(storage)?;
                    }
                    Change::Kv(key, None) => {
                        kv.remove(key.as_str()).map_err(storage)?;
                    }
                    Change::Tombstone(key, Some(at)) => {
                        tombstones.insert(key.as_str(), *at).map_err(storage)?;
                    }
                    Change::Tombstone(key, None) => {
                        tombstones.remove(key.as_str()).map_err(storage)?;
                    }
                    Change::Session(id, Some(session)) => {
                        sessions
                            .insert(id.as_str(), encode_json(session)?.as_slice())
                            .map_err(storage)?;
                    }
                    Change::Session(id, None) => {
                        sessions.remove(id.as_str()).map_err(storage)?;
                    }
                    Change::Node(name, Some(node)) => {
                        nodes
                            .insert(name.as_str(), encode_json(node)?.as_slice())
                            .map_err(storage)?;
                    }
                    Change::Node(name, None) => {
                        nodes.remove(name.as_str()).map_err(storage)?;
                    }
                    Change::Service(key, service) => {
                        let key = join_node_key(key);
                        match service {
                            Some(s) => services
                                .insert(key.as_str(), encode_json(s)?.as_slice())
                                .map_err(storage)?,
                            None => services.remove(key.as_str()).map_err(storage)?,
                        };
                    }
                    Change::Check(key, check) => {
                        let key = join_node_key(key);
                        match check {
                            Some(c) => checks
                                .insert(key.as_str(), encode_json(c)?.as_slice())
                                .map_err(storage)?,
                            None => checks.remove(key.as_str()).map_err(storage)?,
                        };
                    }
                }
            }
            meta.insert(META_INDEX, index.to_be_bytes().as_slice())
                .map_err(storage)?;
            meta.insert(META_TABLES, encode_json(tables)?.as_slice())
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }
}

fn storage(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(err.into())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn decode_u64(raw: &[u8]) -> Result<u64, StoreError> {
    raw.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("meta index"))
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn decode_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn join_node_key((node, id): &NodeKey) -> String {
    format!("{node}\u{0}{id}")
}

fn split_node_key(raw: &str) -> Result<NodeKey, StoreError> {
    raw.split_once('\u{0}')
        .map(|(n, i)| (n.to_owned(), i.to_owned()))
        .ok_or_else(|| corrupt("node key"))
}

/// KV rows: four big-endian u64 (flags, create, modify, lock index), a u32 session length, the
/// session id, then the value bytes.
fn encode_kv(entry: &KvEntry) -> Vec<u8> {
    let session = entry.session.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(36 + session.len() + entry.value.len());
    for n in [
        entry.flags,
        entry.create_index,
        entry.modify_index,
        entry.lock_index,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&u32::try_from(session.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KvEntry, StoreError> {
    let bad = || corrupt("kv row");
    let word = |i: usize| -> Result<u64, StoreError> {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(bad)
    };
    let session_len = raw
        .get(32..36)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(bad)?;
    let session_end = 36 + session_len as usize;
    let session =
        std::str::from_utf8(raw.get(36..session_end).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(KvEntry {
        key: key.to_owned(),
        flags: word(0)?,
        create_index: word(1)?,
        modify_index: word(2)?,
        lock_index: word(3)?,
        session: Some(session.to_owned()).filter(|s| !s.is_empty()),
        value: Bytes::copy_from_slice(&raw[session_end..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_rows_round_trip() {
        let entry = KvEntry {
            key: "a/b".into(),
            value: Bytes::from_static(b"hello"),
            flags: 42,
            create_index: 3,
            modify_index: 9,
            lock_index: 2,
            session: Some("s1".into()),
        };
        assert_eq!(decode_kv("a/b", &encode_kv(&entry)).unwrap(), entry);
        let plain = KvEntry {
            session: None,
            value: Bytes::new(),
            ..entry
        };
        assert_eq!(decode_kv("a/b", &encode_kv(&plain)).unwrap(), plain);
        assert!(decode_kv("x", b"short").is_err());
    }

    fn write_value(dir: &Path, key: &str, value: &'static [u8]) {
        let (disk, _) = Disk::open(dir).unwrap();
        let entry = KvEntry {
            key: key.into(),
            value: Bytes::from_static(value),
            flags: 0,
            create_index: 2,
            modify_index: 2,
            lock_index: 0,
            session: None,
        };
        disk.commit(
            &[Change::Kv(key.into(), Some(entry))],
            2,
            &TableIndexes::default(),
        )
        .unwrap();
    }

    /// Issue 14, finding 9: a zero-length `registry.redb` started silently as an empty store
    /// while the tokens in `acl.json` still loaded.
    #[test]
    fn empty_or_missing_store_file_is_refused_where_a_store_existed() {
        let dir = tempfile::tempdir().unwrap();
        write_value(dir.path(), "k", b"v");
        let file = dir.path().join("registry.redb");
        std::fs::write(&file, b"").unwrap();
        let err = Disk::open(dir.path()).err().map(|e| e.to_string());
        let err = err.expect("an emptied store file must be refused");
        assert!(
            err.contains("registry.redb") && err.contains(CREATED_MARKER),
            "{err}"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            Disk::open(dir.path()),
            Err(StoreError::Missing { .. })
        ));
        // A directory from before the marker: `acl.json` is the witness.
        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("acl.json"), b"{}").unwrap();
        std::fs::write(old.path().join("registry.redb"), b"").unwrap();
        assert!(matches!(
            Disk::open(old.path()),
            Err(StoreError::Missing { .. })
        ));
        // A fresh directory still starts, and then reopens.
        let fresh = tempfile::tempdir().unwrap();
        drop(Disk::open(fresh.path()).unwrap());
        assert!(fresh.path().join(CREATED_MARKER).exists());
        let (_, state) = Disk::open(fresh.path()).unwrap();
        assert!(state.kv.is_empty());
    }

    /// Issue 14, finding 9: a flipped byte in a stored value was served as is.
    #[test]
    fn flipped_byte_in_a_stored_value_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let value: &'static [u8] = b"precious-value-0123456789-precious-value";
        write_value(dir.path(), "k", value);
        let file = dir.path().join("registry.redb");
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes
            .windows(value.len())
            .rposition(|w| w == value)
            .expect("the value is stored as is");
        bytes[at + 3] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        match Disk::open(dir.path()) {
            Err(err) => {
                let text = err.to_string();
                assert!(text.to_lowercase().contains("corrupt"), "{text}");
            }
            Ok((_, state)) => {
                let served = state.kv.get("k").map(|e| e.value.clone());
                panic!("damaged store opened; serves {served:?}");
            }
        }
    }
}
