//! The Raft log on the write-ahead log (`storage::wal`): entries, vote, committed and purged ids.
//!
//! RECORDS. Every change is one WAL record, a kind byte and its body: an entry (with its index,
//! so the tracker need not decode it), truncate-from, purge-up-to, vote, committed. Opening the
//! store replays the records in order; the result is the log as it was after the last record
//! that reached the disk, which includes everything ever acknowledged.
//!
//! DURABILITY. `append` queues its entries and returns; openraft's `LogFlushed` callback fires
//! after the `fdatasync` that covers them, so a follower answers only for entries on its disk.
//! The leader's own appends are the exception below. `save_vote`, `truncate` and `purge` return
//! only after their sync. `save_committed` rides along with the next sync (losing it only means
//! the node re-learns the commit index). Concurrent appends, votes and purges share syncs (group
//! commit in `storage::wal::writer`); the append path has no other disk cost.
//!
//! EARLY ACKS. openraft 0.9 waits for the leader's own append to be flushed before it sends the
//! entries to followers, which makes the leader's sync and the follower's sync one after the
//! other on every write. As etcd does, the leader writes in parallel with replication instead:
//! an append is acknowledged to openraft as soon as it is queued when (a) the stored vote is
//! committed and names this node, (b) every entry was proposed by this node in that term, (c)
//! no entry changes the membership, and (d) in every config of the latest membership a quorum
//! needs at least two voters. The leader then counts itself at once, but the Raft network holds
//! every successful AppendEntries answer of a follower until [`OwnAppends`] says the leader's
//! own copy of every entry up to the answer's last index is on disk. A commit needs a quorum,
//! which by (d) includes a follower whose answer was held that way, so every committed entry is
//! still on the disks of a majority, the leader's included, before anyone hears OK. If the
//! leader's sync fails, the answers stay held and nothing it early-acknowledged commits.
//!
//! MEMORY INDEX. The unpurged entries themselves are kept in memory (a `BTreeMap` by index),
//! so reads never touch the disk and entries still being written are readable for replication.
//! openraft bounds that tail: it snapshots every `SNAPSHOT_EVERY_ENTRIES` entries and keeps
//! `LOG_ENTRIES_KEPT_AFTER_SNAPSHOT` below it, and the purge drops the rest.
//!
//! SEGMENTS. Each new segment starts with the current vote, committed and purged records, so an
//! older segment is needed only for its entries; once every entry in it is purged, the writer
//! deletes it (after the sync that made the purge durable).
//!
//! CAVEATS
//!
//! - Memory holds the unpurged tail: about 600 entries between snapshots, so 600 values of up
//!   to 1 MiB in the worst case. A disk-backed index for large entries would lift that.
//! - A data dir whose Raft log is in sled (capkv before the WAL) is refused with a clear error,
//!   not migrated.
//! - A segment that still holds one unpurged entry is kept whole.
// openraft's StorageError is large; its traits fix the error type, so helpers share it.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, RaftLogReader, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use tokio::sync::watch;

use super::{NodeId, TypeConfig};
use crate::error::Error;
use crate::storage::codec::{decode, encode};
use crate::storage::wal::disk::{Disk, RealDisk};
use crate::storage::wal::writer::{Done, Tracker, Writer};
use crate::storage::wal::{Wal, WalOptions, RECORD_BYTES_MAX};

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

fn vote_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_vote(openraft::AnyError::error(e.to_string())).into()
}

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + body.len());
    bytes.push(kind);
    bytes.extend_from_slice(body);
    bytes
}

fn entry_record(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut bytes = vec![ENTRY];
    bytes.extend_from_slice(&entry.log_id.index.to_le_bytes());
    bytes.extend_from_slice(&encode(entry));
    bytes
}

/// The index in an entry or truncate record, without decoding the rest.
fn record_index(body: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("a record is too short for its index")?;
    Ok(u64::from_le_bytes(bytes))
}

/// The log as the records describe it: what replaying them yields.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RaftLog {
    pub entries: BTreeMap<u64, Entry<TypeConfig>>,
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub purged: Option<LogId<NodeId>>,
}

impl RaftLog {
    pub fn append(&mut self, entry: Entry<TypeConfig>) {
        self.entries.insert(entry.log_id.index, entry);
    }

    pub fn truncate(&mut self, from: u64) {
        self.entries.split_off(&from);
    }

    pub fn purge(&mut self, upto: LogId<NodeId>) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        if self.purged.is_none_or(|p| p.index < upto.index) {
            self.purged = Some(upto);
        }
    }

    /// Replays one record.
    fn replay(&mut self, payload: &[u8]) -> Result<(), String> {
        let (kind, body) = payload.split_first().ok_or("an empty record")?;
        let bad = |e: crate::storage::codec::CodecError| format!("a record of kind {kind} does not decode: {e}");
        match *kind {
            ENTRY => self.append(decode(body.get(8..).ok_or("an entry record is cut short")?).map_err(bad)?),
            TRUNCATE => self.truncate(record_index(body)?),
            PURGE => self.purge(decode(body).map_err(bad)?),
            VOTE => self.vote = Some(decode(body).map_err(bad)?),
            COMMITTED => self.committed = decode(body).map_err(bad)?,
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }

    /// Checks that the entries follow the purge point without gaps.
    fn check(&self) -> Result<(), String> {
        let mut expected = self.purged.map(|p| p.index + 1);
        for index in self.entries.keys() {
            if expected.is_some_and(|e| e != *index) {
                return Err(format!(
                    "the log has a gap: entry {index} follows entry {}",
                    expected.unwrap_or(1) - 1
                ));
            }
            expected = Some(index + 1);
        }
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries.values().next_back().map(|e| e.log_id).or(self.purged)
    }
}

/// What the WAL writer needs to know about the records (see SEGMENTS above).
#[derive(Default)]
struct SegmentTracker {
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purge: Option<Vec<u8>>,
    purged_index: Option<u64>,
    /// Highest entry index written to each segment that has entries.
    last_index: BTreeMap<u64, u64>,
}

impl Tracker for SegmentTracker {
    fn observe(&mut self, segment: u64, payload: &[u8]) {
        match payload.first() {
            Some(&ENTRY) => {
                let index = record_index(&payload[1..]).expect("entry records carry their index");
                let last = self.last_index.entry(segment).or_default();
                *last = (*last).max(index);
            }
            Some(&VOTE) => self.vote = Some(payload.to_vec()),
            Some(&COMMITTED) => self.committed = Some(payload.to_vec()),
            Some(&PURGE) => {
                let upto: LogId<NodeId> = decode(&payload[1..]).expect("purge records decode");
                if self.purged_index.is_none_or(|p| p < upto.index) {
                    self.purged_index = Some(upto.index);
                    self.purge = Some(payload.to_vec());
                }
            }
            _ => {}
        }
    }

    fn head(&self) -> Vec<Vec<u8>> {
        [&self.vote, &self.committed, &self.purge]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn disposable(&self, segment: u64) -> bool {
        match self.last_index.get(&segment) {
            None => true,
            Some(last) => self.purged_index.is_some_and(|p| *last <= p),
        }
    }

    fn forget(&mut self, segment: u64) {
        self.last_index.remove(&segment);
    }
}

/// Whether every quorum of `membership` needs a voter besides any one node: then no node alone,
/// the leader included, can commit (condition (d) of EARLY ACKS).
fn quorum_needs_two(membership: &Membership<NodeId, BasicNode>) -> bool {
    membership.get_joint_config().iter().all(|voters| voters.len() >= 2)
}

/// What decides whether an append is the leader's own and may be acknowledged early.
#[derive(Default)]
struct Leading {
    /// This node's id, once the node turned early acknowledgement on.
    node: Option<NodeId>,
    /// For each membership entry still in the log, and the newest one purged or applied: its
    /// index and whether its quorums need two voters. The last one is the membership in effect,
    /// but for one a follower learns from an installed snapshot; missing that is safe, since a
    /// config in which this node alone is a quorum commits only with this node's own answer, so
    /// it passes through this log.
    memberships: BTreeMap<u64, bool>,
}

impl Leading {
    fn observe(&mut self, entry: &Entry<TypeConfig>) {
        if let EntryPayload::Membership(m) = &entry.payload {
            self.memberships.insert(entry.log_id.index, quorum_needs_two(m));
        }
    }

    fn truncate(&mut self, from: u64) {
        self.memberships.split_off(&from);
    }

    /// Drops memberships that a newer one at or below `upto` replaced.
    fn purge(&mut self, upto: u64) {
        let above = self.memberships.split_off(&(upto + 1));
        let newest = self.memberships.pop_last();
        self.memberships = above;
        self.memberships.extend(newest);
    }

    /// Conditions (a) to (d) of EARLY ACKS for `entries` appended to `log`.
    fn may_ack_early(&self, log: &RaftLog, entries: &[Entry<TypeConfig>]) -> bool {
        let (Some(node), Some(vote)) = (self.node, log.vote) else {
            return false;
        };
        let own = |e: &Entry<TypeConfig>| {
            e.log_id.leader_id.term == vote.leader_id.term
                && e.log_id.leader_id.node_id == node
                && !matches!(e.payload, EntryPayload::Membership(_))
        };
        vote.is_committed()
            && vote.leader_id.node_id == node
            && !entries.is_empty()
            && entries.iter().all(own)
            && self
                .memberships
                .last_key_value()
                .is_some_and(|(_, needs_two)| *needs_two)
    }
}

/// The leader's appends acknowledged to openraft before their sync (see EARLY ACKS), until the
/// sync that covers them.
pub struct OwnAppends {
    state: Mutex<OwnState>,
    /// Bumped on every change, to wake the answers waiting in [`Self::durable_through`].
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct OwnState {
    /// First index of each early-acknowledged batch not yet synced, with a count (a batch may
    /// start at the index of an earlier one that a later term truncated).
    unsynced: BTreeMap<u64, usize>,
    /// Why a sync failed: the batches it covered stay unsynced for good.
    failed: Option<String>,
}

impl OwnAppends {
    fn new() -> Self {
        Self {
            state: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, OwnState> {
        self.state.lock().expect("the own-appends lock is never poisoned")
    }

    fn begin(&self, first: u64) {
        *self.state().unsynced.entry(first).or_default() += 1;
    }

    fn end(&self, first: u64, outcome: io::Result<()>) {
        {
            let mut state = self.state();
            match outcome {
                Ok(()) => {
                    if let Some(count) = state.unsynced.get_mut(&first) {
                        *count -= 1;
                        if *count == 0 {
                            state.unsynced.remove(&first);
                        }
                    }
                }
                Err(e) => {
                    state.failed.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Returns once every entry at or below `index` that this node acknowledged early is on its
    /// disk; an error when the sync of one of them failed (then it never will be).
    pub async fn durable_through(&self, index: u64) -> Result<(), String> {
        // Every AppendEntries answer passes here and almost never waits: subscribe to changes
        // only when it has to, and check again after subscribing so no change is missed.
        let mut changes: Option<watch::Receiver<u64>> = None;
        loop {
            {
                let state = self.state();
                if state.unsynced.range(..=index).next().is_none() {
                    return Ok(());
                }
                if let Some(why) = &state.failed {
                    return Err(format!("this leader could not write its own copy of the log: {why}"));
                }
            }
            match &mut changes {
                None => changes = Some(self.changed.subscribe()),
                // The sender lives in `self`, so this only waits.
                Some(changes) => {
                    let _ = changes.changed().await;
                }
            }
        }
    }
}

struct Shared {
    log: Mutex<RaftLog>,
    leading: Mutex<Leading>,
    own: Arc<OwnAppends>,
    writer: Writer,
}

/// The Raft log store; clones share the log (openraft's reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (or creates) the log in the directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let disk = RealDisk::open(dir)
            .map_err(|e| Error::Storage(format!("cannot open the Raft log directory {}: {e}", dir.display())))?;
        Self::open_on(Arc::new(disk), WalOptions::default())
    }

    /// Opens the log on any disk (tests use a simulated one).
    pub(crate) fn open_on(disk: Arc<dyn Disk>, options: WalOptions) -> Result<Self, Error> {
        let mut log = RaftLog::default();
        let mut tracker = SegmentTracker::default();
        let wal = Wal::open(disk, options, |segment, payload| {
            tracker.observe(segment, payload);
            log.replay(payload)
        })
        .map_err(|e| Error::Storage(format!("cannot recover the Raft log: {e}")))?;
        log.check()
            .map_err(|e| Error::Storage(format!("the recovered Raft log is inconsistent: {e}")))?;
        let writer = Writer::start(wal, tracker)
            .map_err(|e| Error::Storage(format!("cannot start the Raft log writer: {e}")))?;
        let mut leading = Leading::default();
        log.entries.values().for_each(|e| leading.observe(e));
        Ok(Self {
            shared: Arc::new(Shared {
                log: Mutex::new(log),
                leading: Mutex::new(leading),
                own: Arc::new(OwnAppends::new()),
                writer,
            }),
        })
    }

    /// Lets node `node` acknowledge its own appends as leader before their sync (see EARLY
    /// ACKS). `applied` is the state machine's membership, in effect when the log no longer
    /// holds a membership entry. The Raft network must hold follower answers on
    /// [`Self::own_appends`].
    pub fn ack_own_appends_early(&self, node: NodeId, applied: &StoredMembership<NodeId, BasicNode>) {
        let mut leading = self.leading();
        leading.node = Some(node);
        let index = applied.log_id().map_or(0, |l| l.index);
        leading
            .memberships
            .entry(index)
            .or_insert_with(|| quorum_needs_two(applied.membership()));
    }

    /// The leader's appends not yet on disk, for the Raft network to wait on.
    pub fn own_appends(&self) -> Arc<OwnAppends> {
        self.shared.own.clone()
    }

    fn leading(&self) -> MutexGuard<'_, Leading> {
        self.shared.leading.lock().expect("the leading lock is never poisoned")
    }

    fn log(&self) -> MutexGuard<'_, RaftLog> {
        self.shared.log.lock().expect("the Raft log lock is never poisoned")
    }

    /// Number of entries currently held (for metrics).
    pub fn len(&self) -> usize {
        self.log().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log().entries.is_empty()
    }

    /// The commit index last saved by `save_committed` (0 when none).
    pub fn committed_index(&self) -> u64 {
        self.log().committed.map_or(0, |l| l.index)
    }

    /// A copy of the log as this store holds it (tests compare it with a model).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> RaftLog {
        self.log().clone()
    }

    /// Appends entries; `done` hears when they are durable, or at once when they are this
    /// leader's own (see EARLY ACKS). The order of calls is the order on disk.
    pub(crate) async fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        done: Done,
    ) -> Result<(), Error> {
        let entries: Vec<_> = entries.into_iter().collect();
        let records: Vec<Vec<u8>> = entries.iter().map(entry_record).collect();
        if let Some(big) = records.iter().find(|r| r.len() > RECORD_BYTES_MAX) {
            return Err(Error::InvalidInput(format!(
                "a Raft entry of {} bytes is over the log's record limit of {RECORD_BYTES_MAX} bytes",
                big.len()
            )));
        }
        let early = {
            let mut log = self.log();
            let mut leading = self.leading();
            let early = leading.may_ack_early(&log, &entries).then(|| entries[0].log_id.index);
            for entry in entries {
                leading.observe(&entry);
                log.append(entry);
            }
            // Registered before the lock is released, so no answer can miss it.
            if let Some(first) = early {
                self.shared.own.begin(first);
            }
            early
        };
        match early {
            None => self.shared.writer.submit(records, Some(done)).await,
            Some(first) => {
                let own = self.shared.own.clone();
                let synced: Done = Box::new(move |outcome| own.end(first, outcome));
                self.shared.writer.submit(records, Some(synced)).await;
                metrics::counter!("capkv_raft_appends_acked_before_sync_total").increment(1);
                done(Ok(()));
            }
        }
        Ok(())
    }

    pub(crate) async fn truncate_from(&self, from: u64) -> std::io::Result<()> {
        {
            let mut log = self.log();
            log.truncate(from);
            self.leading().truncate(from);
        }
        let body = from.to_le_bytes();
        self.shared.writer.write(vec![record(TRUNCATE, &body)]).await
    }

    pub(crate) async fn purge_upto(&self, upto: LogId<NodeId>) -> std::io::Result<()> {
        {
            let mut log = self.log();
            log.purge(upto);
            self.leading().purge(upto.index);
        }
        self.shared.writer.write(vec![record(PURGE, &encode(&upto))]).await
    }

    pub(crate) async fn save_vote_durably(&self, vote: &Vote<NodeId>) -> std::io::Result<()> {
        self.log().vote = Some(*vote);
        self.shared.writer.write(vec![record(VOTE, &encode(vote))]).await
    }

    pub(crate) async fn save_committed_lazily(&self, committed: Option<LogId<NodeId>>) {
        self.log().committed = committed;
        let records = vec![record(COMMITTED, &encode(&committed))];
        self.shared.writer.submit(records, None).await;
    }
}

/// Refuses a data dir whose Raft log or vote is in sled (written by capkv before the WAL):
/// starting without them could vote twice in a term or lose acknowledged entries.
pub fn refuse_sled_log(db: &sled::Db, data_dir: &Path) -> Result<(), Error> {
    let mut has_old_log = false;
    for name in db.tree_names() {
        if name.as_ref() == b"raft_log" || name.as_ref() == b"raft_meta" {
            has_old_log |= !db.open_tree(name)?.is_empty();
        }
    }
    if has_old_log {
        return Err(Error::Refused(format!(
            "the data dir {} was written by an older capkv that kept its Raft log in sled; this version keeps it \
             in {}/wal and cannot read the old one. Start this node with an empty --data-dir: it then catches \
             up from its peers (or, for a whole cluster, export the data with the old version first)",
            data_dir.display(),
            data_dir.display()
        )));
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self.log().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let log = self.log();
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.save_vote_durably(vote).await.map_err(vote_err)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.log().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.save_committed_lazily(committed).await;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.log().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let done: Done = Box::new(move |outcome| callback.log_io_completed(outcome));
        self.append_entries(entries, done).await.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.truncate_from(log_id.index).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.purge_upto(log_id).await.map_err(write_err)
    }
}

#[cfg(test)]
#[path = "log_store_test.rs"]
mod tests;
