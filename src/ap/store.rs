//! AP data and hints on sled, beside the CP trees of the same database.
//!
//! `ap_data` maps `<keyspace>\0<key>` to a [`Versioned`] value or tombstone. Every change is a
//! last-writer-wins merge under the store's one lock, so concurrent writers and replicators
//! never lose the newer version. `ap_hints` holds writes for peers that could not be reached, keyed by
//! (peer, sequence), bounded per peer by count and by encoded bytes.
//!
//! Beside the data, kept in step by every merge and tombstone collection so that repair costs
//! what replicas differ by: in memory, each keyspace's hash tree, live key count and the keys of
//! each tree leaf (so repair reads only differing leaves), all built by one streaming scan the
//! first time a process uses the keyspace (see [`super::digest`]); on disk, `ap_tombstones` (so
//! collection reads only the deletes) and `ap_meta` (each keyspace's tombstone floor, and
//! whether its tombstone index is complete: data written before the index existed is indexed on
//! that first scan).
//!
//! The leaf index lives in memory, like etcd's key index, because on disk it was a third sled
//! insert for every new key: while a healed replica took in 100,000 keys, sled's inserts were
//! most of its CPU. It costs a few tens of bytes per key, no more than sled's pages and page
//! table for the same index did (`scripts/ap-scale.sh` prints a node's memory at 1,000,000 keys).
//!
//! CAVEATS: every change to `ap_data` must go through [`ApStore::merge_many`] (or `merge`) or
//! [`ApStore::remove_tombstone`], or the tree and indexes no longer match the data (until the
//! process restarts and rebuilds the tree). Merges take the tree lock, so they are serialized per
//! node.
//!
//! Every failure here is this node's own disk or a corrupt record, and surfaces as
//! [`Error::Storage`] through `?` (sled and codec errors convert with `From`), never as a
//! network error.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::digest::{bucket_of, HashTree};
use super::hlc::Timestamp;
use super::version::{merge_into, Versioned};
use crate::error::Error;
use crate::storage::codec::{decode, encode};

/// One AP write as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub keyspace: String,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub versioned: Versioned,
}

/// A write kept for a peer that could not be reached, and when it was hinted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hint {
    pub entry: Entry,
    pub created_ms: u64,
}

#[derive(Clone)]
pub struct ApStore {
    flusher: crate::storage::Flusher,
    data: sled::Tree,
    hints: sled::Tree,
    /// keyspace -> the tombstone-collection floor (u64 ms, big-endian); see `replica::tombstones`.
    /// Also `\0tombstones-indexed\0<keyspace>`: the tombstone index of that keyspace is complete.
    meta: sled::Tree,
    /// `<keyspace>\0<key>` of every tombstone, so collection reads only tombstones.
    tombstones: sled::Tree,
    /// The hash tree and live key count of each keyspace, built on first use and kept in step
    /// by every change.
    trees: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Kept>>>,
    /// Hints queued per peer (count and encoded bytes), counted from disk once and kept in step
    /// after that, so the bound check on every hinted write does not scan the queue.
    hint_counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, HintQueue>>>,
}

/// What is kept in memory per keyspace, beside the data: its hash tree, its live keys and the
/// keys of each leaf.
#[derive(Default)]
struct Kept {
    tree: HashTree,
    /// Keys holding a value (not a tombstone), so a count reads no data.
    live: u64,
    /// The [`leaf_cursor`] of every stored key (values and tombstones), so repair reads only the
    /// leaves that differ, in leaf order.
    leaves: BTreeSet<Box<[u8]>>,
}

/// Leaf cursors [`ApStore::leaf_page`] takes from the index per turn of the tree lock, so a
/// page of a large leaf range does not hold up merges while it reads values (a few in tests, so
/// they cross many turns).
const LEAF_CURSORS_PER_LOCK: usize = if cfg!(test) { 3 } else { 1024 };

impl Kept {
    /// Up to `limit` leaf cursors in `buckets`, in order, after `after` and up to `upto`
    /// (inclusive); fewer than `limit` means there are no more.
    fn leaf_cursors(
        &self,
        buckets: &BTreeSet<usize>,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Box<[u8]>> {
        use std::ops::Bound;
        let mut out = Vec::new();
        for bucket in buckets {
            let prefix = (*bucket as u16).to_be_bytes();
            let next = (*bucket as u16).checked_add(1).map(u16::to_be_bytes);
            let end = match &next {
                Some(next) => Bound::Excluded(&next[..]),
                None => Bound::Unbounded, // the last bucket
            };
            let start = match after {
                Some(after) if after >= &prefix[..] => Bound::Excluded(after),
                _ => Bound::Included(&prefix[..]),
            };
            if let (Bound::Excluded(start), Some(next)) = (start, &next) {
                if start >= &next[..] {
                    continue; // the cursor is past this bucket
                }
            }
            for cursor in self.leaves.range::<[u8], _>((start, end)) {
                if upto.is_some_and(|u| &cursor[..] > u) || out.len() == limit {
                    return out;
                }
                out.push(cursor.clone());
            }
        }
        out
    }
}

/// 1 for a stored value, 0 for a tombstone or nothing.
fn live(v: Option<&Versioned>) -> u64 {
    u64::from(v.is_some_and(|v| !v.is_tombstone()))
}

/// The size of one peer's hint queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintQueue {
    pub count: usize,
    pub bytes: u64,
}

/// How large one peer's hint queue may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintBound {
    pub count: usize,
    pub bytes: u64,
}

fn data_key(keyspace: &str, key: &[u8]) -> Vec<u8> {
    [keyspace.as_bytes(), b"\0", key].concat()
}

/// Where a key sorts in the leaf index: its bucket (big-endian), then the key. Repair pages
/// through differing leaves in this order.
pub fn leaf_cursor(key: &[u8]) -> Vec<u8> {
    [&(bucket_of(key) as u16).to_be_bytes()[..], key].concat()
}

fn indexed_marker(keyspace: &str) -> Vec<u8> {
    [b"\0tombstones-indexed\0", keyspace.as_bytes()].concat()
}

/// What capkv before the in-memory leaf index kept on disk: the tree `ap_leaves`, and in `ap_meta`
/// a marker per keyspace saying that tree and the tombstone index were complete.
const OLD_LEAF_TREE: &str = "ap_leaves";
const OLD_INDEXED_PREFIX: &[u8] = b"\0indexed\0";

fn hint_key(peer: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&peer.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Keys with their versions, and whether more keys match.
pub type Page = (Vec<(Vec<u8>, Versioned)>, bool);

impl ApStore {
    pub fn open(flusher: &crate::storage::Flusher) -> Result<Self, Error> {
        let db = flusher.db();
        let meta = db.open_tree("ap_meta")?;
        // The on-disk leaf index of earlier builds is rebuilt in memory now. Its markers go
        // first, so a node that crashes here, or an earlier build started on this data again,
        // rebuilds that index instead of trusting a half-dropped one.
        let mut removed = false;
        for kv in meta.scan_prefix(OLD_INDEXED_PREFIX) {
            let (key, _) = kv?;
            meta.remove(key)?;
            removed = true;
        }
        if removed {
            meta.flush()?;
        }
        db.drop_tree(OLD_LEAF_TREE)?;
        Ok(Self {
            flusher: flusher.clone(),
            data: db.open_tree("ap_data")?,
            hints: db.open_tree("ap_hints")?,
            meta,
            tombstones: db.open_tree("ap_tombstones")?,
            trees: Default::default(),
            hint_counts: Default::default(),
        })
    }

    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<Versioned>, Error> {
        match self.data.get(data_key(keyspace, key))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Merges `entry` into the store; returns true when it changed what is stored.
    pub fn merge(&self, entry: &Entry) -> Result<bool, Error> {
        Ok(self.merge_many([entry])? > 0)
    }

    /// Merges `entries` (in any order, a key may repeat) by last-writer-wins; returns how many
    /// keys changed. Keeps each keyspace's hash tree, live count and indexes in step, under the
    /// tree lock, which every change to the data takes, so no merge can race another.
    ///
    /// Per key, a new tombstone's mark is written before the data, and a replaced tombstone's
    /// mark is removed after it. sled recovers its log in order after a crash, so recovered
    /// tombstones always have their marks; the worst a crash leaves is a stale mark (collection
    /// skips it). Plain inserts, not sled batches: a batch takes sled's global write lock and
    /// stalls every other reader and writer.
    pub fn merge_many<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) -> Result<usize, Error> {
        use std::collections::btree_map::Entry as Slot;
        let mut trees = self.trees.lock().expect("tree lock is never poisoned");
        // data key -> (what was stored before this batch, the winner so far)
        let mut changes: std::collections::BTreeMap<Vec<u8>, (Option<Versioned>, Versioned, &'a Entry)> =
            Default::default();
        for entry in entries {
            let key = data_key(&entry.keyspace, &entry.key);
            match changes.entry(key) {
                Slot::Occupied(mut slot) => {
                    if let Some(winner) = merge_into(Some(&slot.get().1), &entry.versioned) {
                        let change = slot.get_mut();
                        change.1 = winner;
                        change.2 = entry;
                    }
                }
                Slot::Vacant(slot) => {
                    let stored: Option<Versioned> = self.data.get(slot.key())?.map(|b| decode(&b)).transpose()?;
                    if let Some(winner) = merge_into(stored.as_ref(), &entry.versioned) {
                        slot.insert((stored, winner, entry));
                    }
                }
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        for (key, (stored, winner, entry)) in &changes {
            if winner.is_tombstone() {
                self.tombstones.insert(key.as_slice(), &[])?;
            }
            self.data.insert(key.as_slice(), encode(winner))?;
            // Kept in step key by key, so a failed write later in the batch leaves the tree
            // true to what did reach the data.
            if let Some(kept) = trees.get_mut(&entry.keyspace) {
                kept.tree.update(&entry.key, stored.as_ref(), Some(winner));
                kept.live = (kept.live + live(Some(winner))).saturating_sub(live(stored.as_ref()));
                if stored.is_none() {
                    kept.leaves.insert(leaf_cursor(&entry.key).into());
                }
            }
            if !winner.is_tombstone() && stored.as_ref().is_some_and(Versioned::is_tombstone) {
                self.tombstones.remove(key.as_slice())?;
            }
        }
        Ok(changes.len())
    }

    /// Runs `f` on what is kept of `keyspace`, built by one scan on first use (which also
    /// completes the tombstone index of data written before it existed). The scan streams: one
    /// entry of the data in memory at a time, whatever the keyspace holds.
    fn with_kept<R>(&self, keyspace: &str, f: impl FnOnce(&Kept) -> R) -> Result<R, Error> {
        let mut trees = self.trees.lock().expect("tree lock is never poisoned");
        if !trees.contains_key(keyspace) {
            let index = self.meta.get(indexed_marker(keyspace))?.is_none();
            let prefix = data_key(keyspace, b"");
            let mut kept = Kept::default();
            for kv in self.data.scan_prefix(&prefix) {
                let (key, value) = kv?;
                let user_key = &key[prefix.len()..];
                let versioned: Versioned = decode(&value)?;
                if index && versioned.is_tombstone() {
                    self.tombstones.insert(&key, &[])?;
                }
                kept.tree.update(user_key, None, Some(&versioned));
                kept.live += live(Some(&versioned));
                kept.leaves.insert(leaf_cursor(user_key).into());
            }
            if index {
                self.meta.insert(indexed_marker(keyspace), &[])?;
            }
            trees.insert(keyspace.to_string(), kept);
        }
        Ok(f(&trees[keyspace]))
    }

    fn with_tree<R>(&self, keyspace: &str, f: impl FnOnce(&HashTree) -> R) -> Result<R, Error> {
        self.with_kept(keyspace, |kept| f(&kept.tree))
    }

    /// The root hash of `keyspace`'s tree (equal roots: equal contents).
    pub fn tree_root(&self, keyspace: &str) -> Result<u64, Error> {
        self.with_tree(keyspace, |t| t.root())
    }

    /// The hashes of `nodes` at `level` of `keyspace`'s tree; `None` if one does not exist.
    pub fn tree_hashes(&self, keyspace: &str, level: usize, nodes: &[u32]) -> Result<Option<Vec<u64>>, Error> {
        self.with_tree(keyspace, |t| t.hashes(level, nodes))
    }

    /// Entries of the leaves `buckets`, in leaf-index order ([`leaf_cursor`]) after the cursor
    /// `after` and up to `upto` (inclusive; unbounded when `None`), until `max_bytes` of
    /// encoded keys and values (the first entry always fits). Reads only those leaves. Returns
    /// the entries and the cursor of the last one when the page ended early.
    pub fn leaf_page(
        &self,
        keyspace: &str,
        buckets: &BTreeSet<usize>,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>), Error> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let mut from: Option<Box<[u8]>> = after.map(Into::into);
        loop {
            let cursors = self.with_kept(keyspace, |kept| {
                kept.leaf_cursors(buckets, from.as_deref(), upto, LEAF_CURSORS_PER_LOCK)
            })?;
            let more = cursors.len() == LEAF_CURSORS_PER_LOCK;
            for cursor in &cursors {
                let key = &cursor[2..];
                let Some(value) = self.data.get(data_key(keyspace, key))? else {
                    continue; // collected after the index was read
                };
                let size = key.len() + value.len();
                if !out.is_empty() && bytes + size > max_bytes {
                    let last = out.last().map(|e: &Entry| leaf_cursor(&e.key));
                    return Ok((out, last));
                }
                bytes += size;
                out.push(Entry {
                    keyspace: keyspace.to_string(),
                    key: key.to_vec(),
                    versioned: decode(&value)?,
                });
            }
            match cursors.into_iter().next_back() {
                Some(last) if more => from = Some(last),
                _ => return Ok((out, None)),
            }
        }
    }

    /// Flushes to disk; AP writes are acknowledged only after this.
    pub async fn flush(&self) -> Result<(), Error> {
        self.flusher
            .flush()
            .await
            .map_err(|e| Error::Storage(format!("flushing the AP store to disk failed: {e}")))
    }

    /// Up to `limit` live (non-tombstone) keys with `prefix`, after `start_after`, and at most a
    /// page of bytes ([`crate::limits::PageBudget`]).
    pub fn scan(&self, keyspace: &str, prefix: &[u8], start_after: &[u8], limit: usize) -> Result<Page, Error> {
        let range_prefix = data_key(keyspace, prefix);
        let start = if start_after.is_empty() {
            std::ops::Bound::Included(range_prefix.clone())
        } else {
            std::ops::Bound::Excluded(data_key(keyspace, start_after))
        };
        let skip = keyspace.len() + 1;
        let mut items = Vec::new();
        let mut page = crate::limits::PageBudget::new(limit);
        for kv in self.data.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
            let (key, value) = kv?;
            if !key.starts_with(&range_prefix) {
                break;
            }
            let versioned: Versioned = decode(&value)?;
            if versioned.is_tombstone() {
                continue;
            }
            if !page.take(key.len() + value.len()) {
                return Ok((items, true));
            }
            items.push((key[skip..].to_vec(), versioned));
        }
        Ok((items, false))
    }

    /// Every tombstone of a keyspace (read through the tombstone index, not the data).
    pub fn tombstones(&self, keyspace: &str) -> Result<Vec<Entry>, Error> {
        self.with_tree(keyspace, |_| ())?; // the tombstone index is complete
        let prefix = data_key(keyspace, b"");
        let mut out = Vec::new();
        for kv in self.tombstones.scan_prefix(&prefix) {
            let (key, _) = kv?;
            // A mark whose key now holds a value (a crash between the two writes) is skipped.
            let Some(value) = self.data.get(&key)? else { continue };
            let versioned: Versioned = decode(&value)?;
            if versioned.is_tombstone() {
                out.push(Entry {
                    keyspace: keyspace.to_string(),
                    key: key[prefix.len()..].to_vec(),
                    versioned,
                });
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries (and about `bytes_max` bytes, at least one entry) of a keyspace after
    /// `start_after` (from the start when empty), in key order, tombstones included, and whether
    /// more follow. Backups page through this.
    pub fn export_page(
        &self,
        keyspace: &str,
        start_after: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let prefix = data_key(keyspace, b"");
        let start = if start_after.is_empty() {
            std::ops::Bound::Included(prefix.clone())
        } else {
            std::ops::Bound::Excluded(data_key(keyspace, start_after))
        };
        let (mut out, mut bytes) = (Vec::new(), 0);
        for kv in self.data.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
            let (key, value) = kv?;
            if !key.starts_with(&prefix) {
                return Ok((out, false));
            }
            if out.len() == limit || (!out.is_empty() && bytes + value.len() > bytes_max) {
                return Ok((out, true));
            }
            bytes += key.len() + value.len();
            out.push(Entry {
                keyspace: keyspace.to_string(),
                key: key[prefix.len()..].to_vec(),
                versioned: decode(&value)?,
            });
        }
        Ok((out, false))
    }

    /// Every entry of a keyspace, tombstones included, optionally only in some buckets.
    pub fn entries(&self, keyspace: &str, buckets: Option<&BTreeSet<usize>>) -> Result<Vec<Entry>, Error> {
        let prefix = data_key(keyspace, b"");
        let mut out = Vec::new();
        for kv in self.data.scan_prefix(&prefix) {
            let (key, value) = kv?;
            let user_key = &key[prefix.len()..];
            if buckets.is_some_and(|b| !b.contains(&bucket_of(user_key))) {
                continue;
            }
            out.push(Entry {
                keyspace: keyspace.to_string(),
                key: user_key.to_vec(),
                versioned: decode(&value)?,
            });
        }
        Ok(out)
    }

    /// Live keys in a keyspace on this replica (kept beside the tree: no data is read).
    pub fn count(&self, keyspace: &str) -> Result<usize, Error> {
        self.with_kept(keyspace, |kept| kept.live as usize)
    }

    /// The floor below which versions of keys this node does not hold are refused (0: none).
    pub fn horizon_floor(&self, keyspace: &str) -> Result<u64, Error> {
        match self.meta.get(keyspace.as_bytes())? {
            Some(bytes) => Ok(u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                Error::Storage(format!(
                    "the tombstone horizon of keyspace '{keyspace}' is corrupt ({} bytes, expected 8)",
                    bytes.len()
                ))
            })?)),
            None => Ok(0),
        }
    }

    /// Raises the floor of `keyspace` to `floor` (never lowers it) and makes it durable.
    pub fn raise_horizon_floor(&self, keyspace: &str, floor: u64) -> Result<(), Error> {
        if floor > self.horizon_floor(keyspace)? {
            self.meta.insert(keyspace.as_bytes(), &floor.to_be_bytes())?;
            self.meta.flush()?;
        }
        Ok(())
    }

    /// Removes a tombstone if it is still the stored version (tombstone collection).
    pub fn remove_tombstone(&self, entry: &Entry) -> Result<bool, Error> {
        let key = data_key(&entry.keyspace, &entry.key);
        let expected = encode(&entry.versioned);
        let mut trees = self.trees.lock().expect("tree lock is never poisoned");
        if self
            .data
            .compare_and_swap(&key, Some(expected), None::<Vec<u8>>)?
            .is_err()
        {
            return Ok(false);
        }
        self.tombstones.remove(&key)?;
        if let Some(kept) = trees.get_mut(&entry.keyspace) {
            kept.tree.update(&entry.key, Some(&entry.versioned), None);
            kept.live = kept.live.saturating_sub(live(Some(&entry.versioned)));
            kept.leaves.remove(&leaf_cursor(&entry.key)[..]);
        }
        Ok(true)
    }

    /// The largest timestamp stored, so a restarted node's clock starts after its own writes.
    pub fn max_timestamp(&self) -> Result<Timestamp, Error> {
        let mut max = Timestamp::default();
        for kv in self.data.iter() {
            let (_, value) = kv?;
            let v: Versioned = decode(&value)?;
            max = max.max(v.version.hlc);
        }
        Ok(max)
    }

    /// Stores a hint for `peer`; false when the peer's queue would pass `bound` in count or
    /// bytes (the hint is dropped).
    pub fn add_hint(&self, peer: u64, hint: &Hint, bound: HintBound) -> Result<bool, Error> {
        let encoded = encode(hint);
        self.with_hint_queue(peer, |queue| {
            if queue.count >= bound.count || queue.bytes.saturating_add(encoded.len() as u64) > bound.bytes {
                return Ok(false);
            }
            let seq = self.flusher.db().generate_id()?;
            queue.bytes += encoded.len() as u64;
            self.hints.insert(hint_key(peer, seq), encoded)?;
            queue.count += 1;
            Ok(true)
        })
    }

    /// Up to `limit` hints for `peer`, oldest first, with their sequence numbers.
    pub fn hints(&self, peer: u64, limit: usize) -> Result<Vec<(u64, Hint)>, Error> {
        self.hints_within(peer, None, limit, usize::MAX)
    }

    /// Up to `limit` hints for `peer` with sequence numbers after `after` (all when `None`),
    /// oldest first, until `max_bytes` encoded (the first hint always fits), with their
    /// sequence numbers.
    pub fn hints_within(
        &self,
        peer: u64,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Hint)>, Error> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let start = match after {
            Some(seq) if seq == u64::MAX => return Ok(out),
            Some(seq) => hint_key(peer, seq + 1),
            None => hint_key(peer, 0),
        };
        for kv in self.hints.range(start..).take(limit) {
            let (key, value) = kv?;
            if !key.starts_with(&peer.to_be_bytes()) {
                break;
            }
            if !out.is_empty() && bytes.saturating_add(value.len()) > max_bytes {
                break;
            }
            bytes += value.len();
            let seq = u64::from_be_bytes(key[8..16].try_into().expect("hint keys are 16 bytes"));
            out.push((seq, decode(&value)?));
        }
        Ok(out)
    }

    /// The sequence number of the newest hint queued for `peer`, if any.
    pub fn last_hint_seq(&self, peer: u64) -> Result<Option<u64>, Error> {
        match self
            .hints
            .range(hint_key(peer, 0)..=hint_key(peer, u64::MAX))
            .next_back()
        {
            Some(kv) => {
                let (key, _) = kv?;
                Ok(Some(u64::from_be_bytes(
                    key[8..16].try_into().expect("hint keys are 16 bytes"),
                )))
            }
            None => Ok(None),
        }
    }

    pub fn remove_hints(&self, peer: u64, seqs: &[u64]) -> Result<(), Error> {
        self.with_hint_queue(peer, |queue| {
            // One removal per hint, which also says how large it was (a hint already gone, say
            // dropped meanwhile, counts nothing).
            let (mut removed, mut bytes) = (0usize, 0u64);
            for seq in seqs {
                if let Some(value) = self.hints.remove(hint_key(peer, *seq))? {
                    removed += 1;
                    bytes += value.len() as u64;
                }
            }
            queue.count = queue.count.saturating_sub(removed);
            queue.bytes = queue.bytes.saturating_sub(bytes);
            Ok(())
        })
    }

    /// Removes every hint queued for `peer` (it left the membership); returns how many.
    pub fn drop_hints(&self, peer: u64) -> Result<usize, Error> {
        self.with_hint_queue(peer, |queue| {
            let mut batch = sled::Batch::default();
            let mut removed = 0usize;
            for kv in self.hints.scan_prefix(peer.to_be_bytes()) {
                let (key, _) = kv?;
                batch.remove(key);
                removed += 1;
            }
            self.hints.apply_batch(batch)?;
            *queue = HintQueue::default();
            Ok(removed)
        })
    }

    pub fn hint_count(&self, peer: u64) -> usize {
        self.with_hint_queue(peer, |queue| queue.count)
    }

    /// The count and encoded bytes of `peer`'s hint queue.
    pub fn hint_queue(&self, peer: u64) -> HintQueue {
        self.with_hint_queue(peer, |queue| *queue)
    }

    /// Runs `f` on the peer's hint queue size (counted from disk on first use), under its lock.
    fn with_hint_queue<R>(&self, peer: u64, f: impl FnOnce(&mut HintQueue) -> R) -> R {
        let mut counts = self.hint_counts.lock().expect("hint count lock is never poisoned");
        let queue = counts.entry(peer).or_insert_with(|| {
            let mut queue = HintQueue::default();
            for (_, value) in self.hints.scan_prefix(peer.to_be_bytes()).flatten() {
                queue.count += 1;
                queue.bytes += value.len() as u64;
            }
            queue
        });
        f(queue)
    }
}

/// Damage on purpose, so tests can show that a bad disk is reported as a storage error.
#[cfg(test)]
impl ApStore {
    /// Overwrites every hint queued for `peer` with bytes that do not decode.
    pub(crate) fn corrupt_hints(&self, peer: u64) {
        for kv in self.hints.scan_prefix(peer.to_be_bytes()) {
            let (key, _) = kv.expect("the hint tree reads");
            self.hints.insert(key, &b"\xff"[..]).expect("the hint tree writes");
        }
    }

    /// Overwrites the stored version of `key` with bytes that do not decode.
    pub(crate) fn corrupt_value(&self, keyspace: &str, key: &[u8]) {
        self.data
            .insert(data_key(keyspace, key), &b"\xff"[..])
            .expect("the data tree writes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::hlc::Timestamp;
    use crate::ap::version::Version;

    fn hint(n: u64) -> Hint {
        let versioned = Versioned {
            version: Version {
                hlc: Timestamp {
                    physical_ms: n,
                    logical: 0,
                },
                node: 1,
            },
            value: None,
        };
        Hint {
            entry: Entry {
                keyspace: "carts".into(),
                key: n.to_be_bytes().to_vec(),
                versioned,
            },
            created_ms: n,
        }
    }

    #[test]
    fn export_pages_keep_tombstones_stay_in_their_keyspace_and_resume() {
        let db = crate::storage::temporary_db();
        let store = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
        for n in 0..5u64 {
            store.merge(&hint(n).entry).unwrap(); // tombstones of keyspace "carts"
        }
        let mut other = hint(9).entry;
        other.keyspace = "cartsx".into();
        store.merge(&other).unwrap();
        let (first, more) = store.export_page("carts", b"", 3, usize::MAX).unwrap();
        assert_eq!((first.len(), more), (3, true));
        assert!(first.iter().all(|e| e.versioned.is_tombstone()));
        let (rest, more) = store.export_page("carts", &first[2].key, 3, usize::MAX).unwrap();
        assert_eq!((rest.len(), more), (2, false), "the page stops at its keyspace");
        let (one, more) = store.export_page("carts", b"", 100, 1).unwrap();
        assert_eq!((one.len(), more), (1, true), "a byte bound still returns one entry");
    }

    #[test]
    fn hint_queues_are_bounded_per_peer_and_counted_across_reopen() {
        let db = crate::storage::temporary_db();
        let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
        let three = HintBound {
            count: 3,
            bytes: u64::MAX,
        };
        for n in 0..3 {
            assert!(store.add_hint(2, &hint(n), three).unwrap(), "hint {n} fits");
        }
        assert!(
            !store.add_hint(2, &hint(9), three).unwrap(),
            "the fourth hint is over the bound"
        );
        assert!(
            store.add_hint(3, &hint(0), three).unwrap(),
            "each peer has its own queue"
        );
        let one_hint_bytes = encode(&hint(0)).len() as u64;
        assert_eq!(store.hint_queue(3).bytes, one_hint_bytes);
        let by_bytes = HintBound {
            count: 100,
            bytes: 2 * one_hint_bytes,
        };
        assert!(store.add_hint(3, &hint(1), by_bytes).unwrap());
        assert!(!store.add_hint(3, &hint(2), by_bytes).unwrap(), "over the byte bound");
        assert_eq!(
            store.hints_within(3, None, 10, 1).unwrap().len(),
            1,
            "the first hint always fits"
        );
        assert_eq!(
            store
                .hints_within(3, None, 10, 2 * one_hint_bytes as usize)
                .unwrap()
                .len(),
            2
        );
        let both: Vec<u64> = store.hints(3, 10).unwrap().iter().map(|(seq, _)| *seq).collect();
        let after_first = store.hints_within(3, Some(both[0]), 10, usize::MAX).unwrap();
        assert_eq!(
            after_first.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            vec![both[1]],
            "after a sequence number, only the later hints"
        );
        let last_of_two = store.hints(2, 10).unwrap().last().unwrap().0;
        assert!(
            store
                .hints_within(2, Some(last_of_two), 10, usize::MAX)
                .unwrap()
                .is_empty(),
            "the next peer's queue is not read as this one's"
        );
        let queued = store.hints(2, 2).unwrap();
        store
            .remove_hints(2, &queued.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.hint_count(2), 1);
        let reopened = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
        assert_eq!(
            (reopened.hint_count(2), reopened.hint_count(3)),
            (1, 2),
            "counts come back from disk"
        );
        assert_eq!(reopened.hint_queue(3).bytes, 2 * one_hint_bytes, "and so do bytes");
        let queued = reopened.hints(3, 10).unwrap();
        reopened
            .remove_hints(3, &queued.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(reopened.hint_queue(3), HintQueue::default());
    }

    #[test]
    fn pages_of_entries_end_by_bytes_and_continue_after_the_last_key() {
        let db = crate::storage::temporary_db();
        let store = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
        let all: BTreeSet<usize> = (0..crate::ap::digest::BUCKETS).collect();
        for n in 0..10u64 {
            let mut entry = hint(n).entry;
            entry.versioned.value = Some(vec![7; 1000]);
            store.merge(&entry).unwrap();
        }
        let (mut after, mut seen, mut pages) = (None::<Vec<u8>>, Vec::new(), 0);
        loop {
            let (page, end) = store.leaf_page("carts", &all, after.as_deref(), None, 2500).unwrap();
            assert!(!page.is_empty() && page.len() <= 2, "a page of {} entries", page.len());
            seen.extend(page.into_iter().map(|e| e.key));
            pages += 1;
            match end {
                Some(end) => after = Some(end),
                None => break,
            }
        }
        assert_eq!(pages, 5);
        let mut expected: Vec<Vec<u8>> = (0..10u64).map(|n| n.to_be_bytes().to_vec()).collect();
        expected.sort_by_key(|k| leaf_cursor(k));
        assert_eq!(seen, expected, "every key once, in leaf order");
        let upto = leaf_cursor(&expected[3]);
        let (page, end) = store.leaf_page("carts", &all, None, Some(&upto), usize::MAX).unwrap();
        assert_eq!((page.len(), end), (4, None), "the range ends at upto, inclusive");
        let one_leaf = BTreeSet::from([bucket_of(&expected[5])]);
        let (page, _) = store.leaf_page("carts", &one_leaf, None, None, usize::MAX).unwrap();
        assert!(
            page.iter().any(|e| e.key == expected[5]) && page.len() < 10,
            "only that leaf"
        );
        let (page, _) = store.leaf_page("carts", &all, None, None, 1).unwrap();
        assert_eq!(page.len(), 1, "the first entry always fits");
    }

    /// Every entry of `buckets` in leaf order after `after` and up to `upto`, paged by
    /// `max_bytes`.
    fn all_pages(
        store: &ApStore,
        buckets: &BTreeSet<usize>,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        max_bytes: usize,
    ) -> Vec<(Vec<u8>, Versioned)> {
        let (mut out, mut from) = (Vec::new(), after.map(<[u8]>::to_vec));
        loop {
            let (page, end) = store
                .leaf_page("carts", buckets, from.as_deref(), upto, max_bytes)
                .unwrap();
            out.extend(page.into_iter().map(|e| (e.key, e.versioned)));
            match end {
                Some(end) => from = Some(end),
                None => return out,
            }
        }
    }

    proptest::proptest! {
        /// The in-memory leaf index, kept in step by merges and collections, pages exactly what
        /// the data holds in the leaves asked for, and so does the index a restart rebuilds.
        #[test]
        fn leaf_pages_follow_merges_and_collections_and_survive_a_restart(
            changes in proptest::collection::vec((0u8..40, proptest::option::of(proptest::collection::vec(0u8..=255, 0..40)), proptest::bool::ANY), 1..80),
            bucket_picks in proptest::collection::vec(0u8..40, 0..6),
            range in proptest::option::of((0u8..40, 0u8..40)),
            max_bytes in 1usize..200,
        ) {
            let db = crate::storage::temporary_db();
            let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
            store.tree_root("carts").unwrap(); // built before the changes: kept in step from here
            let key = |n: u8| format!("k{n}").into_bytes();
            for (ms, (n, value, collect)) in changes.into_iter().enumerate() {
                let entry = Entry {
                    keyspace: "carts".into(),
                    key: key(n),
                    versioned: Versioned {
                        version: Version { hlc: Timestamp { physical_ms: ms as u64 + 1, logical: 0 }, node: 1 },
                        value,
                    },
                };
                store.merge(&entry).unwrap();
                if collect && entry.versioned.is_tombstone() {
                    store.remove_tombstone(&entry).unwrap();
                }
            }
            let buckets: BTreeSet<usize> = if bucket_picks.is_empty() {
                (0..crate::ap::digest::BUCKETS).collect()
            } else {
                bucket_picks.iter().map(|n| bucket_of(&key(*n))).collect()
            };
            let (after, upto) = match range {
                Some((a, b)) => (Some(leaf_cursor(&key(a.min(b)))), Some(leaf_cursor(&key(a.max(b))))),
                None => (None, None),
            };
            let mut expected: Vec<(Vec<u8>, Versioned)> = store
                .entries("carts", Some(&buckets))
                .unwrap()
                .into_iter()
                .filter(|e| after.as_ref().is_none_or(|a| &leaf_cursor(&e.key) > a))
                .filter(|e| upto.as_ref().is_none_or(|u| &leaf_cursor(&e.key) <= u))
                .map(|e| (e.key, e.versioned))
                .collect();
            expected.sort_by_key(|(k, _)| leaf_cursor(k));
            let kept = all_pages(&store, &buckets, after.as_deref(), upto.as_deref(), max_bytes);
            proptest::prop_assert_eq!(&kept, &expected);
            proptest::prop_assert_eq!(
                store.with_kept("carts", |kept| kept.leaves.len()).unwrap(),
                store.entries("carts", None).unwrap().len(),
                "the index holds every stored key and nothing else"
            );
            let rebuilt = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
            proptest::prop_assert_eq!(all_pages(&rebuilt, &buckets, after.as_deref(), upto.as_deref(), max_bytes), expected);
        }
    }

    #[test]
    fn the_on_disk_leaf_index_of_earlier_builds_is_dropped_and_rebuilt_in_memory() {
        let db = crate::storage::temporary_db();
        let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
        let mut deleted = hint(1).entry; // a tombstone
        deleted.key = b"gone".to_vec();
        store.merge(&deleted).unwrap();
        let mut live = hint(2).entry;
        live.versioned.value = Some(b"v".to_vec());
        store.merge(&live).unwrap();
        drop(store);
        // What an earlier build left: its leaf tree and its "indexes complete" marker, and a
        // tombstone index that lost its mark (its marker says complete, so it was trusted).
        db.open_tree(OLD_LEAF_TREE)
            .unwrap()
            .insert(b"carts\0\0\0stale", &[])
            .unwrap();
        let meta = db.open_tree("ap_meta").unwrap();
        meta.insert([OLD_INDEXED_PREFIX, b"carts"].concat(), &[]).unwrap();
        meta.remove(indexed_marker("carts")).unwrap();
        db.open_tree("ap_tombstones").unwrap().clear().unwrap();

        let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
        assert!(
            !db.tree_names().iter().any(|name| name == OLD_LEAF_TREE.as_bytes()),
            "the old leaf tree is dropped"
        );
        assert!(meta.scan_prefix(OLD_INDEXED_PREFIX).next().is_none(), "and its markers");
        let all: BTreeSet<usize> = (0..crate::ap::digest::BUCKETS).collect();
        let keys: BTreeSet<Vec<u8>> = all_pages(&store, &all, None, None, usize::MAX)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, BTreeSet::from([b"gone".to_vec(), live.key.clone()]));
        assert_eq!(
            store.tombstones("carts").unwrap(),
            vec![deleted],
            "the tombstone index is completed again on first use"
        );
    }

    #[test]
    fn the_tombstone_index_follows_deletes_overwrites_and_collection() {
        let db = crate::storage::temporary_db();
        let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
        let version = |ms: u64, value: Option<&[u8]>| Entry {
            keyspace: "carts".into(),
            key: b"x".to_vec(),
            versioned: Versioned {
                version: Version {
                    hlc: Timestamp {
                        physical_ms: ms,
                        logical: 0,
                    },
                    node: 1,
                },
                value: value.map(<[u8]>::to_vec),
            },
        };
        let keys = |store: &ApStore| -> Vec<Vec<u8>> {
            store.tombstones("carts").unwrap().into_iter().map(|e| e.key).collect()
        };
        assert_eq!(store.count("carts").unwrap(), 0);
        store.merge(&version(1, Some(b"a"))).unwrap();
        assert!(keys(&store).is_empty());
        assert_eq!(store.count("carts").unwrap(), 1, "the count follows a new value");
        store.merge(&version(2, None)).unwrap();
        assert_eq!(keys(&store), vec![b"x".to_vec()]);
        assert_eq!(store.count("carts").unwrap(), 0, "a tombstone is not live");
        store.merge(&version(1, Some(b"old"))).unwrap();
        assert_eq!(store.count("carts").unwrap(), 0, "a losing merge changes nothing");
        store.merge(&version(3, Some(b"b"))).unwrap();
        assert!(keys(&store).is_empty(), "a newer value replaced the tombstone");
        assert_eq!(store.count("carts").unwrap(), 1);
        let delete = version(4, None);
        store.merge(&delete).unwrap();
        let tree_before = store.tree_root("carts").unwrap();
        assert!(store.remove_tombstone(&delete).unwrap());
        assert!(keys(&store).is_empty());
        assert_ne!(
            store.tree_root("carts").unwrap(),
            tree_before,
            "collection updates the tree"
        );
        assert_eq!(
            store.tree_root("carts").unwrap(),
            0,
            "an empty keyspace has an empty tree"
        );
        store.merge(&version(5, None)).unwrap();
        let reopened = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
        assert_eq!(keys(&reopened), vec![b"x".to_vec()], "the index is on disk");
        assert_eq!(
            reopened.tree_root("carts").unwrap(),
            store.tree_root("carts").unwrap(),
            "rebuilt tree equals the kept one"
        );
        let mut other = version(6, Some(b"c"));
        other.key = b"y".to_vec();
        store.merge(&other).unwrap();
        let reopened = ApStore::open(&crate::storage::Flusher::new(store.flusher.db().clone())).unwrap();
        assert_eq!(
            (reopened.count("carts").unwrap(), store.count("carts").unwrap()),
            (1, 1),
            "the rebuilt count equals the kept one"
        );
    }
}
