//! Tombstone collection: a delete leaves a tombstone so that older copies of the key lose to it;
//! the tombstone may go only when no replica can bring such a copy back.
//!
//! A tombstone is collected when (1) every peer was last seen, by anti-entropy, holding exactly
//! our current digest of the tombstone's bucket (so it holds the tombstone itself), and (2) it is
//! older than [`super::ReplicaOptions::tombstone_gc_after_ms`], which exceeds the hint lifetime,
//! so no hint of an older write can still arrive and resurrect the key.
//!
//! CAVEATS: the "seen in sync" record lives in memory, so a restarted node collects nothing until
//! anti-entropy has met every peer again; a node that never meets some peer never collects.

use std::sync::atomic::Ordering;

use super::super::digest::bucket_of;
use super::{Replica, Transport};
use crate::error::Error;

impl<T: Transport> Replica<T> {
    /// Collects tombstones every peer is known to hold and that no hint can predate.
    pub fn collect_tombstones(&self, keyspace: &str) -> Result<usize, Error> {
        let now = self.wall_ms();
        let digest = self.store.digest(keyspace)?;
        let in_sync = self.in_sync.lock().expect("sync lock is never poisoned").clone();
        let mut collected = 0;
        for entry in self.store.entries(keyspace, None)? {
            if !entry.versioned.is_tombstone()
                || now.saturating_sub(entry.versioned.version.hlc.physical_ms) < self.options.tombstone_gc_after_ms
            {
                continue;
            }
            let bucket = bucket_of(&entry.key);
            let everyone_has_it = self
                .peers
                .iter()
                .all(|p| in_sync.get(&(*p, keyspace.to_string(), bucket)) == Some(&digest.0[bucket]));
            if everyone_has_it && self.store.remove_tombstone(&entry)? {
                collected += 1;
            }
        }
        self.stats
            .tombstones_collected
            .fetch_add(collected as u64, Ordering::Relaxed);
        Ok(collected)
    }
}
