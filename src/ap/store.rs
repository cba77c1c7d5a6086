//! AP data and hints on sled, beside the CP trees of the same database.
//!
//! `ap_data` maps `<keyspace>\0<key>` to a [`Versioned`] value or tombstone. Every change is a
//! merge (compare-and-swap on the key), so concurrent writers and replicators never lose the
//! newer version. `ap_hints` holds writes for peers that could not be reached, keyed by
//! (peer, sequence), bounded per peer.
//!
//! Every failure here is this node's own disk or a corrupt record, and surfaces as
//! [`Error::Storage`] through `?` (sled and codec errors convert with `From`), never as a
//! network error.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::digest::{bucket_of, Digest};
use super::hlc::Timestamp;
use super::version::{merge_into, Versioned};
use crate::error::Error;
use crate::storage::codec::{decode, encode};

/// One AP write as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub keyspace: String,
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
    /// Hints queued per peer, counted from disk once and kept in step after that, so the bound
    /// check on every hinted write does not scan the queue.
    hint_counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, usize>>>,
}

fn data_key(keyspace: &str, key: &[u8]) -> Vec<u8> {
    [keyspace.as_bytes(), b"\0", key].concat()
}

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
        Ok(Self {
            flusher: flusher.clone(),
            data: db.open_tree("ap_data")?,
            hints: db.open_tree("ap_hints")?,
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
        let key = data_key(&entry.keyspace, &entry.key);
        loop {
            let current = self.data.get(&key)?;
            let stored: Option<Versioned> = current.as_ref().map(|b| decode(b)).transpose()?;
            let Some(winner) = merge_into(stored.as_ref(), &entry.versioned) else {
                return Ok(false);
            };
            match self.data.compare_and_swap(&key, current, Some(encode(&winner)))? {
                Ok(()) => return Ok(true),
                Err(_) => continue, // raced with another merge of this key: merge again
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

    /// The digests of a keyspace (a local scan; only the digests travel).
    pub fn digest(&self, keyspace: &str) -> Result<Digest, Error> {
        let entries = self.entries(keyspace, None)?;
        Ok(Digest::of(entries.iter().map(|e| (e.key.as_slice(), &e.versioned))))
    }

    /// Live keys in a keyspace on this replica.
    pub fn count(&self, keyspace: &str) -> Result<usize, Error> {
        Ok(self
            .entries(keyspace, None)?
            .iter()
            .filter(|e| !e.versioned.is_tombstone())
            .count())
    }

    /// Removes a tombstone if it is still the stored version (tombstone collection).
    pub fn remove_tombstone(&self, entry: &Entry) -> Result<bool, Error> {
        let key = data_key(&entry.keyspace, &entry.key);
        let expected = encode(&entry.versioned);
        Ok(self
            .data
            .compare_and_swap(&key, Some(expected), None::<Vec<u8>>)?
            .is_ok())
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

    /// Stores a hint for `peer`; false when the peer's queue is full (the hint is dropped).
    pub fn add_hint(&self, peer: u64, hint: &Hint, per_peer_max: usize) -> Result<bool, Error> {
        self.with_hint_count(peer, |count| {
            if *count >= per_peer_max {
                return Ok(false);
            }
            let seq = self.flusher.db().generate_id()?;
            self.hints.insert(hint_key(peer, seq), encode(hint))?;
            *count += 1;
            Ok(true)
        })
    }

    /// Up to `limit` hints for `peer`, oldest first, with their sequence numbers.
    pub fn hints(&self, peer: u64, limit: usize) -> Result<Vec<(u64, Hint)>, Error> {
        let mut out = Vec::new();
        for kv in self.hints.scan_prefix(peer.to_be_bytes()).take(limit) {
            let (key, value) = kv?;
            let seq = u64::from_be_bytes(key[8..16].try_into().expect("hint keys are 16 bytes"));
            out.push((seq, decode(&value)?));
        }
        Ok(out)
    }

    pub fn remove_hints(&self, peer: u64, seqs: &[u64]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(&hint_key(peer, *seq));
        }
        self.with_hint_count(peer, |count| {
            self.hints.apply_batch(batch)?;
            *count = count.saturating_sub(seqs.len());
            Ok(())
        })
    }

    pub fn hint_count(&self, peer: u64) -> usize {
        self.with_hint_count(peer, |count| *count)
    }

    /// Runs `f` on the peer's hint count (counted from disk on first use), under its lock.
    fn with_hint_count<R>(&self, peer: u64, f: impl FnOnce(&mut usize) -> R) -> R {
        let mut counts = self.hint_counts.lock().expect("hint count lock is never poisoned");
        let count = counts
            .entry(peer)
            .or_insert_with(|| self.hints.scan_prefix(peer.to_be_bytes()).count());
        f(count)
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
        let db = sled::Config::new().temporary(true).open().unwrap();
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
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = ApStore::open(&crate::storage::Flusher::new(db.clone())).unwrap();
        for n in 0..3 {
            assert!(store.add_hint(2, &hint(n), 3).unwrap(), "hint {n} fits");
        }
        assert!(
            !store.add_hint(2, &hint(9), 3).unwrap(),
            "the fourth hint is over the bound"
        );
        assert!(store.add_hint(3, &hint(0), 3).unwrap(), "each peer has its own queue");
        let queued = store.hints(2, 2).unwrap();
        store
            .remove_hints(2, &queued.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.hint_count(2), 1);
        let reopened = ApStore::open(&crate::storage::Flusher::new(db)).unwrap();
        assert_eq!(
            (reopened.hint_count(2), reopened.hint_count(3)),
            (1, 1),
            "counts come back from disk"
        );
    }
}
