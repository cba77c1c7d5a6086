//! The CP state machine on sled, and a read handle for serving reads.
//!
//! Applying a batch of entries builds every change in an overlay (so later entries of the batch
//! see earlier ones), then writes the data, the last applied log id and the membership in one
//! atomic sled batch. A snapshot is a point-in-time copy of the whole `sm` tree taken between two
//! applies; installing one replaces the tree's contents in one atomic batch.
//!
//! Applies and snapshot installs hold the apply gate; a backup export holds it too while it copies
//! keyspaces ([`SmReader::copy_keyspaces`]), so the copy shows exactly one applied index.
//!
//! DURABILITY. Applying does not sync: the Raft log (`log_store.rs`) holds every applied entry,
//! and after a crash openraft re-applies from the last applied id sled kept. The log may drop
//! entries only behind a snapshot, so building and installing a snapshot end with a
//! [`Flusher::flush`], which fsyncs sled's files: the snapshot and the state machine it covers
//! are on stable storage before openraft purges the log behind them.
// openraft's StorageError is large; its traits fix the error type, so helpers share it.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use super::apply::{apply, State};
use super::command::{Answer, Applied, StoredValue};
use super::keys;
use super::{NodeId, TypeConfig};
use crate::error::Error;
use crate::keyspace::KeyspaceDef;
use crate::limits::PageBudget;
use crate::storage::codec::{decode, encode};
use crate::storage::Flusher;

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

const CURRENT_SNAPSHOT: &[u8] = b"current";

fn sm_read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snapshot_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

/// The stored form of a snapshot: its metadata and the encoded `sm` tree.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

pub struct StateMachineStore {
    flusher: Flusher,
    sm: sled::Tree,
    snapshots: sled::Tree,
    snapshot_seq: u64,
    /// Held while a batch is applied or a snapshot installed, and while a backup copies a
    /// keyspace: the copy then sees no half-applied state and one applied index.
    apply_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    pub fn open(flusher: &Flusher) -> Result<Self, sled::Error> {
        let db = flusher.db();
        Ok(Self {
            flusher: flusher.clone(),
            sm: db.open_tree("sm")?,
            snapshots: db.open_tree("snapshot")?,
            snapshot_seq: 0,
            apply_gate: Default::default(),
        })
    }

    /// A handle for reading the state machine from request handlers.
    pub fn reader(&self) -> SmReader {
        SmReader {
            sm: self.sm.clone(),
            apply_gate: self.apply_gate.clone(),
        }
    }

    fn read_applied(&self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        read_applied(&self.sm).map_err(sm_read_err)
    }

    fn store_snapshot(&self, stored: &StoredSnapshot) -> StorageResult<()> {
        self.snapshots
            .insert(CURRENT_SNAPSHOT, encode(stored))
            .map_err(snapshot_err)?;
        Ok(())
    }
}

fn read_applied(sm: &sled::Tree) -> Result<(Option<LogId<NodeId>>, Membership), Error> {
    let applied = match sm.get(keys::APPLIED)? {
        Some(bytes) => decode(&bytes)?,
        None => None,
    };
    let membership = match sm.get(keys::MEMBERSHIP)? {
        Some(bytes) => decode(&bytes)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

/// Reads through pending writes to the tree, so one batch sees its own earlier entries.
struct Overlay<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Overlay<'_> {
    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(pending) => pending.clone(),
            None => self
                .tree
                .get(key)
                .expect("the sm tree is readable while applying")
                .map(|v| v.to_vec()),
        }
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

impl State for Overlay<'_> {
    fn keyspace(&self, name: &str) -> Option<KeyspaceDef> {
        self.read(&keys::keyspace(name))
            .map(|b| decode(&b).expect("keyspace definitions decode"))
    }
    fn get(&self, keyspace: &str, key: &[u8]) -> Option<StoredValue> {
        self.read(&keys::data(keyspace, key))
            .map(|b| decode(&b).expect("stored values decode"))
    }
    fn put_keyspace(&mut self, def: KeyspaceDef) {
        self.pending.insert(keys::keyspace(&def.name), Some(encode(&def)));
    }
    fn put(&mut self, keyspace: &str, key: &[u8], value: StoredValue) {
        self.pending.insert(keys::data(keyspace, key), Some(encode(&value)));
    }
    fn delete(&mut self, keyspace: &str, key: &[u8]) {
        self.pending.insert(keys::data(keyspace, key), None);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let gate = self.apply_gate.clone();
        let _applying = gate.lock().await;
        let mut overlay = Overlay {
            tree: &self.sm,
            pending: BTreeMap::new(),
        };
        let mut outcomes = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(Answer::Done),
                EntryPayload::Normal(ref cmd) => apply(cmd, entry.log_id.index, &mut overlay),
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(entry.log_id), m));
                    Ok(Answer::Done)
                }
            };
            outcomes.push(outcome);
        }
        let Some(last_applied) = last_applied else {
            return Ok(outcomes);
        };
        let mut batch = overlay.into_batch();
        batch.insert(keys::APPLIED, encode(&Some(last_applied)));
        if let Some(membership) = membership {
            batch.insert(keys::MEMBERSHIP, encode(&membership));
        }
        self.sm.apply_batch(batch).map_err(sm_write_err)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Copy now, between two applies: this is the point in time the snapshot shows.
        let data: Vec<(Vec<u8>, Vec<u8>)> = self
            .sm
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("the sm tree is readable when a snapshot starts");
        self.snapshot_seq += 1;
        SnapshotBuilder {
            data,
            store: self.snapshots.clone(),
            flusher: self.flusher.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let gate = self.apply_gate.clone();
        let _installing = gate.lock().await;
        let data = snapshot.into_inner();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = decode(&data).map_err(snapshot_err)?;
        let mut batch = sled::Batch::default();
        for key in self.sm.iter().keys() {
            batch.remove(key.map_err(sm_read_err)?);
        }
        for (key, value) in pairs {
            batch.insert(key, value);
        }
        self.sm.apply_batch(batch).map_err(sm_write_err)?;
        self.store_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        self.flusher.flush().await.map_err(snapshot_err)?;
        metrics::counter!("capkv_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.snapshots.get(CURRENT_SNAPSHOT).map_err(sm_read_err)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode(&bytes).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// Builds a snapshot from the copy taken between two applies; the tree moves on meanwhile.
pub struct SnapshotBuilder {
    data: Vec<(Vec<u8>, Vec<u8>)>,
    store: sled::Tree,
    flusher: Flusher,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let find = |key: &[u8]| {
            self.data
                .iter()
                .find(|(k, _)| k.as_slice() == key)
                .map(|(_, v)| v.clone())
        };
        let last_log_id: Option<LogId<NodeId>> = match find(keys::APPLIED) {
            Some(bytes) => decode(&bytes).map_err(snapshot_err)?,
            None => None,
        };
        let last_membership: Membership = match find(keys::MEMBERSHIP) {
            Some(bytes) => decode(&bytes).map_err(snapshot_err)?,
            None => Membership::default(),
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("empty-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let data = encode(&self.data);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store
            .insert(CURRENT_SNAPSHOT, encode(&stored))
            .map_err(snapshot_err)?;
        self.flusher.flush().await.map_err(snapshot_err)?;
        metrics::counter!("capkv_raft_snapshots_built_total").increment(1);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Receives the keys of [`SmReader::copy_keyspaces`]: the keyspace's position in the list asked
/// for, the key and its value.
pub trait CopySink: Send + 'static {
    fn record(&mut self, keyspace: usize, key: Vec<u8>, value: StoredValue) -> Result<(), Error>;
}

/// Keys with their values, and whether more keys match.
pub type ScanPage = (Vec<(Vec<u8>, StoredValue)>, bool);

/// Reads the state machine for request handlers. Reads see the latest applied state; the
/// request path decides whether that is linearizable (after ReadIndex) or serializable.
#[derive(Clone)]
pub struct SmReader {
    sm: sled::Tree,
    apply_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SmReader {
    pub fn keyspace(&self, name: &str) -> Result<Option<KeyspaceDef>, Error> {
        match self.sm.get(keys::keyspace(name))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn keyspaces(&self) -> Result<Vec<KeyspaceDef>, Error> {
        self.sm
            .scan_prefix(keys::keyspaces_prefix())
            .map(|kv| Ok(decode(&kv?.1)?))
            .collect()
    }

    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<StoredValue>, Error> {
        match self.sm.get(keys::data(keyspace, key))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys of `keyspace` with `prefix`, strictly after `start_after` when given,
    /// and at most a page of bytes (see [`PageBudget`]). Returns the items and whether more
    /// keys match.
    pub fn scan(&self, keyspace: &str, prefix: &[u8], start_after: &[u8], limit: usize) -> Result<ScanPage, Error> {
        let range_prefix = keys::data_prefix(keyspace, prefix);
        let start = if start_after.is_empty() {
            std::ops::Bound::Included(range_prefix.clone())
        } else {
            std::ops::Bound::Excluded(keys::data(keyspace, start_after))
        };
        let mut items = Vec::new();
        let mut page = PageBudget::new(limit);
        for kv in self.sm.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
            let (key, value) = kv?;
            if !key.starts_with(&range_prefix) {
                break;
            }
            if !page.take(key.len() + value.len()) {
                return Ok((items, true));
            }
            items.push((keys::user_key(keyspace, &key).to_vec(), decode(&value)?));
        }
        Ok((items, false))
    }

    /// Number of keys the local replica holds in `keyspace`.
    pub fn count(&self, keyspace: &str) -> usize {
        self.sm.scan_prefix(keys::data_prefix(keyspace, b"")).count()
    }

    /// Hands every key of each keyspace to `sink`, in key order, with no apply in between, and
    /// returns the applied log index the copy shows (and the sink). Applies wait meanwhile
    /// (they are not lost), so the sink should be quick: a backup writes to a local spool file.
    /// The copy runs on a blocking thread.
    pub async fn copy_keyspaces<S: CopySink>(&self, keyspaces: Vec<String>, mut sink: S) -> Result<(u64, S), Error> {
        let no_applies = self.apply_gate.clone().lock_owned().await;
        let sm = self.sm.clone();
        let copy = tokio::task::spawn_blocking(move || {
            let _no_applies = no_applies;
            let index = read_applied(&sm)?.0.map_or(0, |id| id.index);
            for (i, keyspace) in keyspaces.iter().enumerate() {
                for kv in sm.scan_prefix(keys::data_prefix(keyspace, b"")) {
                    let (key, value) = kv?;
                    sink.record(i, keys::user_key(keyspace, &key).to_vec(), decode(&value)?)?;
                }
            }
            Ok((index, sink))
        });
        copy.await
            .map_err(|e| Error::Internal(format!("copying keyspaces for a backup stopped: {e}")))?
    }

    /// The applied log id and membership of the local replica.
    pub fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), Error> {
        read_applied(&self.sm)
    }
}

#[cfg(test)]
mod copy_tests {
    use std::sync::mpsc;

    use openraft::{CommittedLeaderId, Entry};

    use super::*;
    use crate::cp::command::{Command, CreateKeyspace, Put};

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn put(key: &str) -> Command {
        Command::Put(Put {
            keyspace: "bank".into(),
            key: key.into(),
            value: b"v".to_vec(),
        })
    }

    /// Sends every copied key to the test, then waits for a go-ahead before the next one.
    struct Gated {
        seen: mpsc::Sender<Vec<u8>>,
        go: mpsc::Receiver<()>,
    }

    impl CopySink for Gated {
        fn record(&mut self, _keyspace: usize, key: Vec<u8>, _value: StoredValue) -> Result<(), Error> {
            self.seen.send(key).unwrap();
            self.go.recv().unwrap();
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_shows_one_applied_index_while_applies_wait() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = StateMachineStore::open(&crate::storage::Flusher::new(db)).unwrap();
        let create = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: crate::mode::Mode::Cp,
        });
        sm.apply(vec![entry(1, create), entry(2, put("a")), entry(3, put("b"))])
            .await
            .unwrap();
        let reader = sm.reader();
        let (seen_tx, seen) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let sink = Gated {
            seen: seen_tx,
            go: go_rx,
        };
        let copy = tokio::spawn(async move { reader.copy_keyspaces(vec!["bank".into()], sink).await });
        // The copy is under way (it holds the first key): an apply now must wait for it.
        let first = tokio::task::spawn_blocking(move || seen.recv().map(|k| (k, seen)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.0, b"a");
        let apply = tokio::spawn(async move {
            sm.apply(vec![entry(4, put("c"))]).await.unwrap();
            sm
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!apply.is_finished(), "an apply ran in the middle of a copy");
        go.send(()).unwrap();
        go.send(()).unwrap();
        let (index, _) = copy.await.unwrap().unwrap();
        let rest: Vec<Vec<u8>> = first.1.try_iter().collect();
        assert_eq!(index, 3, "the copy shows the index applied when it began");
        assert_eq!(
            rest,
            [b"b".to_vec()],
            "the key applied after the copy began is not in it"
        );
        let sm = apply.await.unwrap();
        assert_eq!(sm.reader().applied().unwrap().0.map(|l| l.index), Some(4));
    }
}
