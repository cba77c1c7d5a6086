//! The CP state machine on sled, and a read handle for serving reads.
//!
//! Applying a batch of entries builds every change in an overlay (so later entries of the batch
//! see earlier ones), then writes the data, the membership and, last, the applied log id with
//! plain sled inserts (see DURABILITY for why a crash in between is safe). A snapshot is a file
//! holding the state machine as of one applied index, written copy-on-write while applies go
//! on; installing one loads it into a fresh tree and switches to it atomically
//! ([`super::snapshot`]).
//!
//! Applies and snapshot installs hold the apply gate; a backup export holds it too while it copies
//! keyspaces ([`SmReader::copy_keyspaces`]), so the copy shows exactly one applied index.
//!
//! DURABILITY. Applying does not sync: the Raft log (`log_store.rs`) holds every applied entry,
//! and after a crash openraft re-applies from the last applied id sled kept. An apply first
//! stores its whole write set under `keys::APPLYING`, then the writes one by one, the applied id
//! last. sled recovers its log in order after a crash, so a crash in the middle leaves the write
//! set and a prefix of its writes, never a write without it; [`StateMachineStore::open`] then
//! writes the set again (the writes are plain values, so writing them twice is harmless) before
//! openraft reads the applied id. Re-applying the entry itself instead would be wrong: a
//! compare-and-swap or transaction would see its own half-written effects. A sled batch would
//! make the writes atomic without the write set, but each batch makes sled write out its
//! buffer twice and wake its I/O threads, which cost about a fifth of a write's latency. An
//! apply whose write set is over [`WRITE_SET_BYTES_MAX`] (large values) is still one batch.
//!
//! CAVEAT (sled, large records). sled writes a log record of more than about 128 KiB (a large
//! value, or a tree node rewritten whole that holds several large values) to a file of its own
//! and syncs neither the file nor its directory; capkv syncs them only when it flushes for a
//! snapshot. After a power cut (a process crash is not enough: the page cache survives it)
//! shortly after such a record, sled may come back without that file but with later records,
//! and the replica then holds older values for the keys it covered. Small values in small
//! nodes are not affected.
//!
//! The log may drop entries only behind a snapshot, so building and installing a snapshot end
//! with a [`Flusher::flush`], which fsyncs sled's files, and the snapshot file is fsynced before
//! it is named current: the snapshot and the state machine it covers are on stable storage
//! before openraft purges the log behind them.
// openraft's StorageError is large; its traits fix the error type, so helpers share it.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::apply::{apply, State};
use super::command::{Answer, Applied, StoredValue};
use super::keys;
use super::session::{ClientId, Kept, Session, Sessions};
use super::snapshot::{load_snapshot, write_snapshot, Capture, SnapshotDir};
use super::{NodeId, TypeConfig};
use crate::error::Error;
use crate::keyspace::KeyspaceDef;
use crate::limits::PageBudget;
use crate::storage::codec::{decode, encode};
use crate::storage::Flusher;

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// Keys of the `snapshot` tree: the current snapshot (metadata and file), and the name of the
/// tree that holds the state machine.
const CURRENT_SNAPSHOT: &[u8] = b"current_file";
const CURRENT_TREE: &[u8] = b"tree";
/// The snapshot of capkv before snapshot files: metadata and data in one sled value.
const LEGACY_SNAPSHOT: &[u8] = b"current";
/// The state machine's first tree; installed snapshots make `sm.1`, `sm.2`, ...
const FIRST_TREE: &str = "sm";
/// How long an old state machine tree is kept after a snapshot replaced it, so that reads
/// already running on it finish.
const OLD_TREE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn sm_read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snapshot_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

/// The current snapshot: its metadata and its file in the snapshot directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    file: String,
}

/// The snapshot format before snapshot files, converted at start-up.
#[derive(serde::Serialize, serde::Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

pub struct StateMachineStore {
    flusher: Flusher,
    /// The tree applies write (also in `shared`, for readers).
    sm: sled::Tree,
    shared: Arc<RwLock<sled::Tree>>,
    /// The current snapshot and the current tree's name.
    snapshots: sled::Tree,
    dir: Arc<SnapshotDir>,
    capture: Capture,
    /// Held while a snapshot is written; an install waits for it.
    building: Arc<tokio::sync::Mutex<()>>,
    /// Incremented by every install: a builder whose capture began before one has nothing
    /// left to copy (its tree was replaced) and serves the installed snapshot instead.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// The file openraft is writing a received snapshot into.
    receiving: Option<String>,
    snapshot_seq: u64,
    /// Held while a batch is applied or a snapshot installed, and while a backup copies a
    /// keyspace: the copy then sees no half-applied state and one applied index.
    apply_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Tests only: the next apply stops after this many of its writes, as a crash would.
    cut_after_writes: Option<usize>,
}

impl StateMachineStore {
    pub fn open(flusher: &Flusher) -> Result<Self, Error> {
        let db = flusher.db();
        let snapshots = db.open_tree("snapshot")?;
        let tree_name = match snapshots.get(CURRENT_TREE)? {
            Some(name) => String::from_utf8_lossy(&name).into_owned(),
            None => FIRST_TREE.to_string(),
        };
        // Trees of installs that did not finish, and old trees whose drop was cut short.
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with("sm.") && name != tree_name {
                db.drop_tree(name.as_bytes())?;
            }
        }
        let sm = db.open_tree(tree_name.as_bytes())?;
        if let Some(finished) = finish_interrupted_apply(&sm)? {
            tracing::info!(index = finished.index, "finished an apply that a crash cut short");
        }
        let dir = Arc::new(SnapshotDir::open(flusher.data_dir())?);
        let store = Self {
            flusher: flusher.clone(),
            shared: Arc::new(RwLock::new(sm.clone())),
            sm,
            snapshots,
            dir,
            capture: Capture::default(),
            building: Default::default(),
            generation: Default::default(),
            receiving: None,
            snapshot_seq: 0,
            apply_gate: Default::default(),
            cut_after_writes: None,
        };
        store.convert_legacy_snapshot()?;
        let current = store.current()?.map(|c| c.file);
        store
            .dir
            .remove_all_but(&current.iter().map(String::as_str).collect::<Vec<_>>());
        Ok(store)
    }

    /// A snapshot stored the old way (in one sled value) becomes a snapshot file.
    fn convert_legacy_snapshot(&self) -> Result<(), Error> {
        let Some(bytes) = self.snapshots.get(LEGACY_SNAPSHOT)? else {
            return Ok(());
        };
        let legacy: LegacySnapshot = decode(&bytes)?;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = decode(&legacy.data)?;
        let name = self.dir.temp_name("converted");
        super::snapshot::write_file(&self.dir.path(&name), |out, io| {
            pairs.iter().try_for_each(|(k, v)| out.push(k, v).map_err(io))
        })?;
        let final_name = format!("snapshot-{}.bin", legacy.meta.snapshot_id);
        self.dir.publish(&name, &final_name)?;
        let mut batch = sled::Batch::default();
        batch.insert(
            CURRENT_SNAPSHOT,
            encode(&CurrentSnapshot {
                meta: legacy.meta,
                file: final_name,
            }),
        );
        batch.remove(LEGACY_SNAPSHOT);
        self.snapshots.apply_batch(batch)?;
        Ok(())
    }

    fn current(&self) -> Result<Option<CurrentSnapshot>, Error> {
        match self.snapshots.get(CURRENT_SNAPSHOT)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A handle for reading the state machine from request handlers.
    pub fn reader(&self) -> SmReader {
        SmReader {
            sm: self.shared.clone(),
            apply_gate: self.apply_gate.clone(),
        }
    }

    fn read_applied(&self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        read_applied(&self.sm).map_err(sm_read_err)
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
    /// No session is idler than this, when known (see `Sessions::idle_floor`); lives for one
    /// apply call, so each batch reads the idle order at most once while nothing expires.
    idle_floor: Option<u64>,
    /// Session records this batch read or changed, decoded once each; written to `pending` once,
    /// by [`Overlay::settle_sessions`], however many of the batch's writes came from one client.
    sessions: std::cell::RefCell<HashMap<ClientId, CachedSession>>,
    /// Keyspace definitions this batch looked up (`None`: no such keyspace), so a batch of
    /// writes to one keyspace reads and decodes its definition once.
    keyspaces: std::cell::RefCell<HashMap<String, Option<KeyspaceDef>>>,
}

/// Answers whose encoding is at most this long are kept in their session's record; a larger
/// one (up to `session::ANSWER_BYTES_KEPT_MAX`) under its own key, so a record stays small
/// enough to rewrite once per batch.
const INLINE_ANSWER_BYTES: usize = 64;

/// One client's session as the tree keeps it under `keys::session_record`: when it was last
/// active and the answers kept for its latest sequence numbers.
///
/// A session used to be a `keys::legacy_session` record of sequence numbers with every answer
/// under its own `keys::kept` key; such a session reads as a record whose answers are all kept
/// apart, and the batch that next changes it rewrites it in this form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    last_ms: u64,
    /// (sequence, its answer; `None`: the answer is under `keys::kept(client, sequence)`).
    answers: Vec<(u64, Option<Kept>)>,
}

impl SessionRecord {
    fn session(&self) -> Session {
        Session {
            last_ms: self.last_ms,
            sequences: self.answers.iter().map(|(sequence, _)| *sequence).collect(),
        }
    }
}

#[derive(Debug)]
struct CachedSession {
    /// `None`: the session is gone.
    record: Option<SessionRecord>,
    /// Whether the tree holds the session in the legacy form, to be removed when written.
    legacy: bool,
    /// Whether this batch changed the record (only changed records are written back).
    changed: bool,
}

impl<'a> Overlay<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
            idle_floor: None,
            sessions: Default::default(),
            keyspaces: Default::default(),
        }
    }

    /// `client`'s session as the tree holds it (in either form), and whether in the legacy one.
    fn stored_session(&self, client: &ClientId) -> CachedSession {
        if let Some(bytes) = self.read(&keys::session_record(client)) {
            let record = decode(&bytes).expect("session records decode");
            return CachedSession {
                record: Some(record),
                legacy: false,
                changed: false,
            };
        }
        let legacy: Option<Session> = self
            .read(&keys::legacy_session(client))
            .map(|b| decode(&b).expect("sessions decode"));
        CachedSession {
            legacy: legacy.is_some(),
            changed: false,
            record: legacy.map(|session| SessionRecord {
                last_ms: session.last_ms,
                answers: session.sequences.into_iter().map(|s| (s, None)).collect(),
            }),
        }
    }

    /// Runs `f` on `client`'s session record as this batch sees it, read from the tree (and
    /// decoded) at most once per batch.
    fn with_session_record<R>(&self, client: &ClientId, f: impl FnOnce(Option<&SessionRecord>) -> R) -> R {
        if !self.sessions.borrow().contains_key(client) {
            let stored = self.stored_session(client);
            self.sessions.borrow_mut().insert(*client, stored);
        }
        f(self.sessions.borrow()[client].record.as_ref())
    }

    /// `client`'s session record, to change.
    fn session_record_mut(&mut self, client: &ClientId) -> &mut Option<SessionRecord> {
        if !self.sessions.get_mut().contains_key(client) {
            let stored = self.stored_session(client);
            self.sessions.get_mut().insert(*client, stored);
        }
        let cached = self.sessions.get_mut().get_mut(client).expect("inserted above");
        cached.changed = true;
        &mut cached.record
    }

    /// Moves the changed session records into `pending`; the overlay's reads still see them.
    fn settle_sessions(&mut self) {
        for (client, cached) in self.sessions.get_mut().drain() {
            if !cached.changed {
                continue;
            }
            let record = cached.record.map(|r| encode(&r));
            self.pending.insert(keys::session_record(&client), record);
            if cached.legacy {
                self.pending.insert(keys::legacy_session(&client), None);
            }
        }
    }

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

    /// Up to `limit` keys under `prefix`, in order, as the batch so far sees them.
    fn first_keys(&self, prefix: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let mut keys = std::collections::BTreeSet::new();
        let pending = self
            .pending
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix));
        keys.extend(pending.filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()).take(limit));
        let stored = self
            .tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.expect("the sm tree is readable while applying").to_vec())
            .filter(|k| !matches!(self.pending.get(k), Some(None)))
            .take(limit);
        keys.extend(stored);
        keys.into_iter().take(limit).collect()
    }
}

/// One write of an apply: a key and its new value (`None`: remove the key).
type Write = (Vec<u8>, Option<Vec<u8>>);

/// Largest sum of an apply's keys and values that is stored as a write set ahead of its writes
/// (see DURABILITY); the stored set adds a few bytes per write. sled puts a log record of more
/// than a quarter of its 512 KiB segment in a file of its own, which it does not sync, and at
/// recovery skips a record whose file is missing while keeping the records after it; only a
/// smaller set is sure to come back whenever a write after it does. A larger apply is written
/// as one sled batch, as every apply was before.
const WRITE_SET_BYTES_MAX: usize = 64 * 1024;

/// Writes one apply's `writes` (the applied id last) so that a crash leaves it finished or
/// finishable (see DURABILITY): a set of at most [`WRITE_SET_BYTES_MAX`] is stored first and
/// written in order after it; a larger one is one sled batch, all or nothing (`cut_after` does
/// not apply to it). Counted in `capkv_cp_applies_total` by path.
fn write_apply(
    sm: &sled::Tree,
    last_applied: LogId<NodeId>,
    writes: Vec<Write>,
    cut_after: Option<usize>,
) -> Result<(), Error> {
    let bytes: usize = writes
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let in_order = bytes <= WRITE_SET_BYTES_MAX;
    metrics::counter!("capkv_cp_applies_total", "writes" => if in_order { "in_order" } else { "batch" }).increment(1);
    if !in_order {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        return Ok(sm.apply_batch(batch)?);
    }
    // Encoded only here: a large apply never copies its values into a set it will not store.
    sm.insert(keys::APPLYING, encode(&(last_applied, &writes)))?;
    write_in_order(sm, writes, cut_after)
}

/// Writes `writes` in their order. `cut_after` (tests only) stops after that many, as a crash
/// would.
fn write_in_order(sm: &sled::Tree, writes: Vec<Write>, cut_after: Option<usize>) -> Result<(), Error> {
    for (done, (key, value)) in writes.into_iter().enumerate() {
        if cut_after == Some(done) {
            return Err(Error::Internal(format!("the apply was cut short after {done} writes")));
        }
        match value {
            Some(value) => sm.insert(key, value)?,
            None => sm.remove(key)?,
        };
    }
    Ok(())
}

/// Finishes an apply that a crash cut short (see DURABILITY): when the stored write set is newer
/// than the applied id, writes it again, the applied id last. Returns the log id it finished.
fn finish_interrupted_apply(sm: &sled::Tree) -> Result<Option<LogId<NodeId>>, Error> {
    let Some(bytes) = sm.get(keys::APPLYING)? else {
        return Ok(None);
    };
    let (log_id, writes): (LogId<NodeId>, Vec<Write>) = decode(&bytes)?;
    let applied: Option<LogId<NodeId>> = match sm.get(keys::APPLIED)? {
        Some(bytes) => decode(&bytes)?,
        None => None,
    };
    if applied.is_some_and(|applied| applied.index >= log_id.index) {
        return Ok(None);
    }
    write_in_order(sm, writes, None)?;
    Ok(Some(log_id))
}

impl State for Overlay<'_> {
    fn keyspace(&self, name: &str) -> Option<KeyspaceDef> {
        if let Some(def) = self.keyspaces.borrow().get(name) {
            return def.clone();
        }
        let def: Option<KeyspaceDef> = self
            .read(&keys::keyspace(name))
            .map(|b| decode(&b).expect("keyspace definitions decode"));
        self.keyspaces.borrow_mut().insert(name.to_string(), def.clone());
        def
    }
    fn get(&self, keyspace: &str, key: &[u8]) -> Option<StoredValue> {
        self.read(&keys::data(keyspace, key))
            .map(|b| decode(&b).expect("stored values decode"))
    }
    fn put_keyspace(&mut self, def: KeyspaceDef) {
        self.pending.insert(keys::keyspace(&def.name), Some(encode(&def)));
        self.keyspaces.get_mut().insert(def.name.clone(), Some(def.clone()));
    }
    fn put(&mut self, keyspace: &str, key: &[u8], value: StoredValue) {
        self.pending.insert(keys::data(keyspace, key), Some(encode(&value)));
    }
    fn delete(&mut self, keyspace: &str, key: &[u8]) {
        self.pending.insert(keys::data(keyspace, key), None);
    }
}

impl Sessions for Overlay<'_> {
    fn session(&self, client: &ClientId) -> Option<Session> {
        self.with_session_record(client, |r| r.map(SessionRecord::session))
    }
    fn put_session(&mut self, client: &ClientId, before: Option<&Session>, after: Option<&Session>) {
        if let Some(before) = before {
            self.pending.insert(keys::idle(before.last_ms, client), None);
        }
        if let Some(after) = after {
            self.pending.insert(keys::idle(after.last_ms, client), Some(Vec::new()));
            if let Some(floor) = &mut self.idle_floor {
                *floor = (*floor).min(after.last_ms);
            }
        }
        let record = self.session_record_mut(client);
        match after {
            Some(after) => {
                let record = record.get_or_insert_with(SessionRecord::default);
                record.last_ms = after.last_ms;
                debug_assert_eq!(
                    record
                        .session()
                        .sequences
                        .iter()
                        .collect::<std::collections::BTreeSet<_>>(),
                    after.sequences.iter().collect(),
                    "the answers kept are those of the session's sequences"
                );
            }
            None => *record = None,
        }
    }
    fn kept(&self, client: &ClientId, sequence: u64) -> Option<Kept> {
        let found = self.with_session_record(client, |r| {
            r?.answers
                .iter()
                .find(|(s, _)| *s == sequence)
                .map(|(_, inline)| inline.clone())
        });
        match found? {
            Some(inline) => Some(inline),
            None => self
                .read(&keys::kept(client, sequence))
                .map(|b| decode(&b).expect("kept answers decode")),
        }
    }
    fn put_kept(&mut self, client: &ClientId, sequence: u64, kept: Option<Kept>) {
        let mut apart = None;
        let record = self.session_record_mut(client);
        let mut was_apart = false;
        if let Some(record) = record.as_mut() {
            if let Some(at) = record.answers.iter().position(|(s, _)| *s == sequence) {
                was_apart = record.answers.remove(at).1.is_none();
            }
        }
        if let Some(kept) = kept {
            let bytes = encode(&kept);
            let record = record.get_or_insert_with(SessionRecord::default);
            if bytes.len() <= INLINE_ANSWER_BYTES {
                record.answers.push((sequence, Some(kept)));
            } else {
                record.answers.push((sequence, None));
                apart = Some(bytes);
            }
        }
        if apart.is_some() || was_apart {
            self.pending.insert(keys::kept(client, sequence), apart);
        }
    }
    fn idlest(&self, limit: usize) -> Vec<(u64, ClientId)> {
        self.first_keys(keys::IDLE_PREFIX, limit)
            .iter()
            .filter_map(|k| keys::parse_idle(k))
            .collect()
    }
    fn idle_floor(&self) -> Option<u64> {
        self.idle_floor
    }
    fn set_idle_floor(&mut self, floor: u64) {
        self.idle_floor = Some(floor);
    }
    fn table_meta(&self) -> (u64, u64) {
        self.read(keys::SESSIONS_META)
            .map_or((0, 0), |b| decode(&b).expect("the session table's meta decodes"))
    }
    fn put_table_meta(&mut self, sessions: u64, clock_ms: u64) {
        self.pending
            .insert(keys::SESSIONS_META.to_vec(), Some(encode(&(sessions, clock_ms))));
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
        let mut overlay = Overlay::new(&self.sm);
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
        overlay.settle_sessions();
        // A snapshot being written keeps the values these keys have now.
        let changed =
            overlay
                .pending
                .keys()
                .map(Vec::as_slice)
                .chain([keys::APPLIED, keys::MEMBERSHIP, keys::APPLYING]);
        self.capture.record(&self.sm, changed).map_err(sm_write_err)?;
        let mut writes: Vec<Write> = overlay.pending.into_iter().collect();
        if let Some(membership) = membership {
            writes.push((keys::MEMBERSHIP.to_vec(), Some(encode(&membership))));
        }
        writes.push((keys::APPLIED.to_vec(), Some(encode(&Some(last_applied)))));
        write_apply(&self.sm, last_applied, writes, self.cut_after_writes.take()).map_err(sm_write_err)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Between two applies: this is the point in time the snapshot shows.
        self.capture.start();
        let applied = self.read_applied();
        self.snapshot_seq += 1;
        SnapshotBuilder {
            tree: self.sm.clone(),
            capture: self.capture.clone(),
            applied,
            snapshots: self.snapshots.clone(),
            dir: self.dir.clone(),
            flusher: self.flusher.clone(),
            seq: self.snapshot_seq,
            building: self.building.clone(),
            generation: self.generation.clone(),
            started_at: self.generation.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let name = self.dir.temp_name("receiving");
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.path(&name))
            .await
            .map_err(snapshot_err)?;
        if let Some(old) = self.receiving.replace(name) {
            let _ = std::fs::remove_file(self.dir.path(&old));
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        tracing::info!(last_log_id = ?meta.last_log_id, "installing a snapshot from the leader");
        let gate = self.apply_gate.clone();
        let _installing = gate.lock().await;
        // A snapshot being written finishes first; one whose builder exists but has not started
        // will find the generation moved on and serve the installed snapshot.
        let _no_build = self.building.clone().lock_owned().await;
        self.capture.stop();
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The data may come from any file openraft hands over (normally the one received):
        // read it from the start, and keep a copy as the snapshot this node serves from now on.
        let mut data = *snapshot;
        tokio::io::AsyncSeekExt::seek(&mut data, std::io::SeekFrom::Start(0))
            .await
            .map_err(snapshot_err)?;
        let data = data.into_std().await;
        let copy = self.dir.temp_name("installing");

        // Load into a fresh tree; the current one serves until the switch.
        let db = self.flusher.db().clone();
        let tree_name = next_tree_name(&db);
        let copy_path = self.dir.path(&copy);
        let name = tree_name.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<sled::Tree, Error> {
            let tree = db.open_tree(name.as_bytes())?;
            tree.clear()?;
            if let Err(e) = load_snapshot(&tree, data, &copy_path) {
                drop(tree);
                let _ = db.drop_tree(name.as_bytes());
                return Err(e);
            }
            Ok(tree)
        })
        .await
        .map_err(snapshot_err)?;
        self.receiving = None;
        let tree = match loaded {
            Ok(tree) => tree,
            Err(e) => {
                let _ = std::fs::remove_file(self.dir.path(&copy));
                return Err(snapshot_err(e));
            }
        };
        let file = format!("snapshot-{}.bin", meta.snapshot_id);
        self.dir.publish(&copy, &file).map_err(snapshot_err)?;
        self.flusher.flush().await.map_err(snapshot_err)?;

        // The switch: one batch names the new tree and the new snapshot.
        let mut batch = sled::Batch::default();
        batch.insert(CURRENT_TREE, tree_name.as_bytes());
        batch.insert(
            CURRENT_SNAPSHOT,
            encode(&CurrentSnapshot {
                meta: meta.clone(),
                file: file.clone(),
            }),
        );
        self.snapshots.apply_batch(batch).map_err(sm_write_err)?;
        self.flusher.flush().await.map_err(snapshot_err)?;
        let old = std::mem::replace(&mut self.sm, tree.clone());
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = tree;
        self.dir.remove_all_but(&[&file]);
        drop_later(self.flusher.db().clone(), old);
        metrics::counter!("capkv_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(current) = self.current().map_err(sm_read_err)? else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(self.dir.path(&current.file))
            .await
            .map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// A tree name no tree has: `sm.N` with N one more than the largest.
fn next_tree_name(db: &sled::Db) -> String {
    let largest = db
        .tree_names()
        .iter()
        .filter_map(|n| std::str::from_utf8(n).ok()?.strip_prefix("sm.")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("sm.{}", largest + 1)
}

/// Drops a replaced state machine tree once reads that started on it are done.
fn drop_later(db: sled::Db, old: sled::Tree) {
    let name = old.name();
    drop(old);
    tokio::spawn(async move {
        tokio::time::sleep(OLD_TREE_GRACE).await;
        let dropped = tokio::task::spawn_blocking(move || db.drop_tree(&name)).await;
        if let Ok(Err(e)) = dropped {
            tracing::warn!(error = %e, "cannot drop a replaced state machine tree; it is dropped at the next start");
        }
    });
}

/// Writes a snapshot from the point in time its capture began; applies go on meanwhile.
pub struct SnapshotBuilder {
    tree: sled::Tree,
    capture: Capture,
    /// The applied log id and membership when the capture began.
    applied: StorageResult<(Option<LogId<NodeId>>, Membership)>,
    snapshots: sled::Tree,
    dir: Arc<SnapshotDir>,
    flusher: Flusher,
    seq: u64,
    building: Arc<tokio::sync::Mutex<()>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// The generation when the capture began.
    started_at: u64,
}

impl SnapshotBuilder {
    async fn installed(&self) -> StorageResult<Snapshot<TypeConfig>> {
        let bytes = self
            .snapshots
            .get(CURRENT_SNAPSHOT)
            .map_err(sm_read_err)?
            .ok_or_else(|| sm_read_err("a snapshot was installed but none is recorded as current"))?;
        let current: CurrentSnapshot = decode(&bytes).map_err(sm_read_err)?;
        let file = tokio::fs::File::open(self.dir.path(&current.file))
            .await
            .map_err(sm_read_err)?;
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let _building = self.building.clone().lock_owned().await;
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != self.started_at {
            // A snapshot was installed since the capture began: that one is newer than anything
            // this builder could write.
            return self.installed().await;
        }
        let (last_log_id, last_membership) = match &self.applied {
            Ok(applied) => applied.clone(),
            Err(e) => {
                self.capture.stop();
                return Err(e.clone());
            }
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
        let name = self.dir.temp_name("building");
        let (tree, capture, path) = (self.tree.clone(), self.capture.clone(), self.dir.path(&name));
        let written = tokio::task::spawn_blocking(move || write_snapshot(&tree, &capture, &path))
            .await
            .map_err(snapshot_err)?;
        if let Err(e) = written {
            let _ = std::fs::remove_file(self.dir.path(&name));
            return Err(snapshot_err(e));
        }
        let file = format!("snapshot-{}.bin", meta.snapshot_id);
        self.dir.publish(&name, &file).map_err(snapshot_err)?;
        self.snapshots
            .insert(
                CURRENT_SNAPSHOT,
                encode(&CurrentSnapshot {
                    meta: meta.clone(),
                    file: file.clone(),
                }),
            )
            .map_err(snapshot_err)?;
        self.flusher.flush().await.map_err(snapshot_err)?;
        self.dir.remove_all_but(&[&file]);
        metrics::counter!("capkv_raft_snapshots_built_total").increment(1);
        let data = tokio::fs::File::open(self.dir.path(&file))
            .await
            .map_err(snapshot_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
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
    /// The current state machine tree (a snapshot install replaces it).
    sm: Arc<RwLock<sled::Tree>>,
    apply_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SmReader {
    fn tree(&self) -> sled::Tree {
        self.sm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn keyspace(&self, name: &str) -> Result<Option<KeyspaceDef>, Error> {
        match self.tree().get(keys::keyspace(name))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn keyspaces(&self) -> Result<Vec<KeyspaceDef>, Error> {
        self.tree()
            .scan_prefix(keys::keyspaces_prefix())
            .map(|kv| Ok(decode(&kv?.1)?))
            .collect()
    }

    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<StoredValue>, Error> {
        match self.tree().get(keys::data(keyspace, key))? {
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
        for kv in self.tree().range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
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
        self.tree().scan_prefix(keys::data_prefix(keyspace, b"")).count()
    }

    /// Hands every key of each keyspace to `sink`, in key order, with no apply in between, and
    /// returns the applied log index the copy shows (and the sink). Applies wait meanwhile
    /// (they are not lost), so the sink should be quick: a backup writes to a local spool file.
    /// The copy runs on a blocking thread.
    pub async fn copy_keyspaces<S: CopySink>(&self, keyspaces: Vec<String>, mut sink: S) -> Result<(u64, S), Error> {
        let no_applies = self.apply_gate.clone().lock_owned().await;
        let sm = self.tree();
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
        read_applied(&self.tree())
    }
}

/// A normal entry of term 1 at `index`, for the tests below.
#[cfg(test)]
fn entry(index: u64, command: super::command::Command) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

#[cfg(test)]
mod copy_tests {
    use std::sync::mpsc;

    use super::*;
    use crate::cp::command::{Command, CreateKeyspace, Put};

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
        let db = crate::storage::temporary_db();
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

#[cfg(test)]
mod crash_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cp::command::{Cas, Command, Compare, CompareOp, CompareTarget, CreateKeyspace, Put, Txn, TxnOp};
    use crate::cp::session::{Once, RequestId};

    /// Writes whose outcome depends on what they find, so re-applying one over its own
    /// half-written effects would go wrong: swaps, a transaction that moves a value between
    /// two keys, and exactly-once puts (a replay answers from the session instead of writing).
    fn command() -> impl Strategy<Value = Command> {
        let key = || prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let value = || prop::sample::select(vec![b"0".to_vec(), b"1".to_vec()]);
        prop_oneof![
            (key(), value()).prop_map(|(key, value)| Command::Put(Put {
                keyspace: "bank".into(),
                key,
                value
            })),
            (key(), prop::option::of(value()), value()).prop_map(|(key, expected, new_value)| Command::Cas(Cas {
                keyspace: "bank".into(),
                key,
                expected,
                new_value
            })),
            (key(), key(), value()).prop_map(|(from, to, value)| Command::Txn(Txn {
                keyspace: "bank".into(),
                compares: vec![Compare {
                    key: from.clone(),
                    target: CompareTarget::Value(value.clone()),
                    op: CompareOp::Equal,
                }],
                success: vec![TxnOp::Delete { key: from }, TxnOp::Put { key: to, value }],
                failure: vec![],
            })),
            (0u8..3, 0u64..4, value()).prop_map(|(client, sequence, value)| Command::Once(Once {
                id: RequestId {
                    client: [client; 16],
                    sequence,
                },
                at_ms: 1000,
                session_ttl_ms: 60_000,
                command: Box::new(Command::Put(Put {
                    keyspace: "bank".into(),
                    key: vec![client],
                    value,
                })),
            })),
        ]
    }

    /// Everything the state machine holds but the write set of its latest apply.
    fn contents(sm: &StateMachineStore) -> Vec<(sled::IVec, sled::IVec)> {
        sm.sm
            .iter()
            .map(Result::unwrap)
            .filter(|(k, _)| k != keys::APPLYING)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A crash in the middle of an apply keeps the write set and a prefix of the writes
        /// (sled recovers its log in order). Reopening finishes that apply, openraft re-applies
        /// what follows, and the state machine ends exactly where one that never crashed does.
        #[test]
        fn an_apply_cut_short_is_finished_when_the_store_reopens(
            commands in prop::collection::vec(command(), 1..40),
            split in prop::collection::vec(1usize..5, 1..40),
            crash_at in 0usize..40,
            writes_kept in 0usize..10,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let create = Command::CreateKeyspace(CreateKeyspace { name: "bank".into(), mode: crate::mode::Mode::Cp });
            let entries: Vec<_> = std::iter::once(create).chain(commands).enumerate()
                .map(|(i, c)| entry(i as u64 + 1, c)).collect();
            let mut chunks = Vec::new();
            let mut rest = entries.as_slice();
            for n in split.iter().cycle() {
                if rest.is_empty() { break; }
                let (chunk, tail) = rest.split_at((*n).min(rest.len()));
                chunks.push(chunk.to_vec());
                rest = tail;
            }
            let open = || {
                let db = crate::storage::temporary_db();
                let flusher = crate::storage::Flusher::new(db);
                (StateMachineStore::open(&flusher).unwrap(), flusher)
            };

            let (mut reference, _) = open();
            for chunk in &chunks {
                runtime.block_on(reference.apply(chunk.clone())).unwrap();
            }

            let (mut sm, flusher) = open();
            let crash_at = crash_at % chunks.len();
            for (i, chunk) in chunks.iter().enumerate() {
                if i != crash_at {
                    runtime.block_on(sm.apply(chunk.clone())).unwrap();
                    continue;
                }
                sm.cut_after_writes = Some(writes_kept);
                if runtime.block_on(sm.apply(chunk.clone())).is_ok() {
                    continue; // the apply had no more writes than were kept
                }
                drop(sm);
                sm = StateMachineStore::open(&flusher).unwrap();
                // As openraft does at start-up: apply what is committed after the applied id.
                let applied = sm.read_applied().unwrap().0.map(|id| id.index);
                prop_assert_eq!(applied, chunk.last().map(|e| e.log_id.index), "the cut apply was finished");
                let unapplied: Vec<_> = chunk.iter().filter(|e| Some(e.log_id.index) > applied).cloned().collect();
                if !unapplied.is_empty() {
                    runtime.block_on(sm.apply(unapplied)).unwrap();
                }
            }
            prop_assert_eq!(contents(&sm), contents(&reference));
        }
    }

    /// A store on a fresh database (its flusher, to reopen it) that has applied the keyspace
    /// `bank` at index 1 and `put_k(first)` at index 2.
    fn bank_with_k(first: Vec<u8>) -> (tokio::runtime::Runtime, crate::storage::Flusher, StateMachineStore) {
        let db = crate::storage::temporary_db();
        let flusher = crate::storage::Flusher::new(db);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut sm = StateMachineStore::open(&flusher).unwrap();
        let create = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: crate::mode::Mode::Cp,
        });
        runtime
            .block_on(sm.apply(vec![entry(1, create), entry(2, put_k(first))]))
            .unwrap();
        (runtime, flusher, sm)
    }

    fn put_k(value: Vec<u8>) -> Command {
        Command::Put(Put {
            keyspace: "bank".into(),
            key: b"k".to_vec(),
            value,
        })
    }

    #[test]
    fn a_large_apply_is_one_sled_batch_and_leaves_the_stored_write_set_alone() {
        let (runtime, flusher, mut sm) = bank_with_k(b"small".to_vec());
        let small_set = sm.sm.get(keys::APPLYING).unwrap().unwrap();
        let large = vec![7; WRITE_SET_BYTES_MAX + 1];
        sm.cut_after_writes = Some(0); // a batch is all or nothing: no cut in the middle
        runtime
            .block_on(sm.apply(vec![entry(3, put_k(large.clone()))]))
            .unwrap();
        assert_eq!(
            sm.sm.get(keys::APPLYING).unwrap().unwrap(),
            small_set,
            "no large set is stored"
        );
        drop(sm);
        let sm = StateMachineStore::open(&flusher).unwrap();
        assert_eq!(sm.reader().get("bank", b"k").unwrap().map(|v| v.value), Some(large));
        assert_eq!(sm.read_applied().unwrap().0.map(|id| id.index), Some(3));
    }

    #[test]
    fn a_write_set_older_than_the_applied_id_is_left_alone() {
        let (runtime, flusher, mut sm) = bank_with_k(b"old".to_vec());
        let stale = sm.sm.get(keys::APPLYING).unwrap().unwrap();
        runtime
            .block_on(sm.apply(vec![entry(3, put_k(b"new".to_vec()))]))
            .unwrap();
        // A write set of an earlier apply (as a snapshot taken between applies may hold).
        sm.sm.insert(keys::APPLYING, stale).unwrap();
        drop(sm);
        let sm = StateMachineStore::open(&flusher).unwrap();
        assert_eq!(
            sm.reader().get("bank", b"k").unwrap().map(|v| v.value),
            Some(b"new".to_vec())
        );
        assert_eq!(sm.read_applied().unwrap().0.map(|id| id.index), Some(3));
    }
}

#[cfg(test)]
mod session_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cp::apply::MemState;
    use crate::cp::command::{Command, CreateKeyspace, Put};
    use crate::cp::session::{Once, RequestId};

    fn once(client: u8, sequence: u64, at_ms: u64) -> Command {
        Command::Once(Once {
            id: RequestId {
                client: [client; 16],
                sequence,
            },
            at_ms,
            session_ttl_ms: 50,
            command: Box::new(Command::Put(Put {
                keyspace: "bank".into(),
                key: vec![client],
                value: sequence.to_be_bytes().to_vec(),
            })),
        })
    }

    fn open_bank() -> (tokio::runtime::Runtime, StateMachineStore) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let db = crate::storage::temporary_db();
        let mut sm = StateMachineStore::open(&crate::storage::Flusher::new(db)).unwrap();
        let create = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: crate::mode::Mode::Cp,
        });
        runtime.block_on(sm.apply(vec![entry(1, create)])).unwrap();
        (runtime, sm)
    }

    /// A swap on client 7's key whose answer carries the (large) value it found.
    fn big_swap(sequence: u64, at_ms: u64) -> Command {
        Command::Once(Once {
            id: RequestId {
                client: [7; 16],
                sequence,
            },
            at_ms,
            session_ttl_ms: 60_000,
            command: Box::new(Command::Cas(crate::cp::command::Cas {
                keyspace: "bank".into(),
                key: vec![7],
                expected: Some(vec![1; 100]),
                new_value: vec![2; 100],
            })),
        })
    }

    fn keys_under(sm: &StateMachineStore, prefix: &[u8]) -> usize {
        sm.sm.scan_prefix(prefix).count()
    }

    #[test]
    fn small_answers_live_in_the_session_record_and_large_ones_apart_until_dropped() {
        let (runtime, mut sm) = open_bank();
        let put = Command::Once(Once {
            id: RequestId {
                client: [7; 16],
                sequence: 1,
            },
            at_ms: 1000,
            session_ttl_ms: 60_000,
            command: Box::new(Command::Put(Put {
                keyspace: "bank".into(),
                key: vec![7],
                value: vec![1; 100],
            })),
        });
        runtime.block_on(sm.apply(vec![entry(2, put)])).unwrap();
        assert_eq!(keys_under(&sm, b"c/"), 1, "one record for the client");
        assert_eq!(keys_under(&sm, b"r/"), 0, "a put's answer is kept in the record");
        assert_eq!(keys_under(&sm, b"s/"), 0);

        let first = runtime.block_on(sm.apply(vec![entry(3, big_swap(2, 1001))])).unwrap();
        assert_eq!(keys_under(&sm, b"r/"), 1, "the swap's answer holds a 100-byte value");
        let replay = runtime.block_on(sm.apply(vec![entry(4, big_swap(2, 1002))])).unwrap();
        assert_eq!(replay, first, "the replay answers from the answer kept apart");

        // ANSWERS_PER_CLIENT later writes drop both answers, the one kept apart included.
        let later: Vec<_> = (0..crate::cp::session::ANSWERS_PER_CLIENT as u64)
            .map(|i| entry(5 + i, once(7, 100 + i, 1003)))
            .collect();
        runtime.block_on(sm.apply(later)).unwrap();
        assert_eq!(keys_under(&sm, b"r/"), 0, "the dropped answer's key went with it");
        let too_old = runtime.block_on(sm.apply(vec![entry(200, big_swap(2, 1004))])).unwrap();
        assert!(
            matches!(&too_old[0], Err(crate::cp::command::Refusal::RequestTooOld { .. })),
            "{too_old:?}"
        );
    }

    #[test]
    fn a_session_stored_in_the_legacy_form_replays_and_is_rewritten_on_its_next_write() {
        let (runtime, mut sm) = open_bank();
        let first = runtime.block_on(sm.apply(vec![entry(2, once(3, 1, 1000))])).unwrap();
        // Turn the client's record into what capkv wrote before records held answers.
        let client = [3u8; 16];
        let record: SessionRecord = decode(&sm.sm.get(keys::session_record(&client)).unwrap().unwrap()).unwrap();
        sm.sm.remove(keys::session_record(&client)).unwrap();
        sm.sm
            .insert(keys::legacy_session(&client), encode(&record.session()))
            .unwrap();
        for (sequence, kept) in &record.answers {
            sm.sm
                .insert(keys::kept(&client, *sequence), encode(kept.as_ref().unwrap()))
                .unwrap();
        }

        let replay = runtime.block_on(sm.apply(vec![entry(3, once(3, 1, 1001))])).unwrap();
        assert_eq!(replay, first, "a legacy session's answer is found");
        assert_eq!(keys_under(&sm, b"s/"), 1, "a replay changes nothing");
        let next = runtime.block_on(sm.apply(vec![entry(4, once(3, 2, 1002))])).unwrap();
        assert!(next[0].is_ok(), "{next:?}");
        assert_eq!(keys_under(&sm, b"s/"), 0, "the next write rewrote the legacy record");
        assert_eq!(keys_under(&sm, b"c/"), 1);
        let again = runtime.block_on(sm.apply(vec![entry(5, once(3, 1, 1003))])).unwrap();
        assert_eq!(again, first, "the legacy answer, still kept apart, replays");
        assert_eq!(
            sm.sm
                .get(keys::session_record(&client))
                .unwrap()
                .map(|b| decode::<SessionRecord>(&b).unwrap().answers.len()),
            Some(2)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The sled state machine keeps the session table as the in-memory model does, whether
        /// a session's records are still pending in the same apply call or already stored:
        /// same answers (replays included), same sessions after expiry.
        #[test]
        fn sled_sessions_follow_the_model(
            writes in prop::collection::vec((0u8..4, 0u64..6, 0u64..40), 1..60),
            split in prop::collection::vec(1usize..6, 1..60),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let db = crate::storage::temporary_db();
            let mut sm = StateMachineStore::open(&crate::storage::Flusher::new(db)).unwrap();
            let mut model = MemState::default();
            let create = Command::CreateKeyspace(CreateKeyspace { name: "bank".into(), mode: crate::mode::Mode::Cp });
            let mut entries = vec![entry(1, create)];
            let mut now = 1000;
            for (i, (client, sequence, step)) in writes.into_iter().enumerate() {
                now += step;
                entries.push(entry(i as u64 + 2, once(client, sequence, now)));
            }
            let mut expected = Vec::new();
            for e in &entries {
                let EntryPayload::Normal(c) = &e.payload else { unreachable!() };
                expected.push(crate::cp::apply::apply(c, e.log_id.index, &mut model));
            }
            let mut got = Vec::new();
            let mut rest = entries.as_slice();
            let mut sizes = split.into_iter().cycle();
            while !rest.is_empty() {
                let n = sizes.next().unwrap().min(rest.len());
                let (now_apply, later) = rest.split_at(n);
                got.extend(runtime.block_on(sm.apply(now_apply.to_vec())).unwrap());
                rest = later;
            }
            prop_assert_eq!(got, expected);
            let overlay = Overlay::new(&sm.sm);
            let stored: Vec<_> = overlay.idlest(usize::MAX);
            let modelled: Vec<_> = model.idle.iter().copied().collect();
            prop_assert_eq!(stored, modelled);
            prop_assert_eq!(overlay.table_meta(), model.table_meta());
        }
    }
}
