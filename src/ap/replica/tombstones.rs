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
//! Replicas collect independently: one that collects a tombstone before its peers do gets it
//! back from them by anti-entropy, and collects it again on a later pass.

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::testkit::{run, short_horizons, Kit, KEYSPACE};

    async fn sync_everyone(kit: &Kit, ids: &[u64]) {
        let keyspaces = vec![KEYSPACE.to_string()];
        for id in ids {
            let peers: Vec<u64> = ids.iter().copied().filter(|p| p != id).collect();
            kit.node(*id).anti_entropy_round(&peers, &keyspaces).await;
        }
    }

    #[test]
    fn tombstones_are_collected_only_when_every_replica_has_them() {
        run(async {
            let kit = Kit::new(3, short_horizons());
            kit.write(1, "x", Some("1"), 3).await.unwrap();
            kit.down(3);
            kit.write(1, "x", None, 2).await.unwrap();
            kit.advance(short_horizons().tombstone_gc_after_ms + 1);
            sync_everyone(&kit, &[1, 2]).await;
            assert_eq!(kit.node(1).collect_tombstones(KEYSPACE).unwrap(), 0, "node 3 lacks it");
            assert_eq!(kit.stored(1, "x"), Some(None), "the tombstone stays");

            kit.up(3);
            sync_everyone(&kit, &[1, 2, 3]).await;
            sync_everyone(&kit, &[1, 2, 3]).await;
            assert_eq!(kit.stored(3, "x"), Some(None), "node 3 got the delete");
            for id in 1..=3 {
                assert_eq!(kit.node(id).collect_tombstones(KEYSPACE).unwrap(), 1, "node {id}");
                assert_eq!(kit.stored(id, "x"), None);
            }
            sync_everyone(&kit, &[1, 2, 3]).await;
            assert_eq!(kit.stored(3, "x"), None, "the old value did not come back");
            assert_eq!(kit.node(1).stats.tombstones_collected.load(Relaxed), 1);
        });
    }

    #[test]
    fn young_tombstones_are_kept_even_when_everyone_has_them() {
        run(async {
            let kit = Kit::new(2, short_horizons());
            kit.write(1, "x", None, 2).await.unwrap();
            sync_everyone(&kit, &[1, 2]).await;
            assert_eq!(kit.node(1).collect_tombstones(KEYSPACE).unwrap(), 0);
            kit.advance(short_horizons().tombstone_gc_after_ms);
            for id in [1, 2] {
                assert_eq!(kit.node(id).collect_tombstones(KEYSPACE).unwrap(), 1, "node {id}");
            }
            kit.write(1, "y", Some("live"), 2).await.unwrap();
            kit.advance(short_horizons().tombstone_gc_after_ms);
            sync_everyone(&kit, &[1, 2]).await;
            for id in [1, 2] {
                assert_eq!(
                    kit.node(id).collect_tombstones(KEYSPACE).unwrap(),
                    0,
                    "live values are never collected"
                );
                assert_eq!(kit.value(id, "y").as_deref(), Some("live"));
            }
        });
    }
}
