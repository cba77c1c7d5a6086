//! Tombstone collection: a delete leaves a tombstone so that older copies of the key lose to it;
//! the tombstone may go only when no replica can bring such a copy back.
//!
//! THE HORIZON. Each replica records, per keyspace and peer, when an anti-entropy exchange last
//! found the two holding exactly the same keyspace (`synced_at`, its own wall clock). Its
//! *acknowledged horizon* is the earliest of those over all peers, less a margin of twice the
//! clock bound: every version it stamped or stored before that time was then held (or beaten by
//! a newer version) by every peer. Each digest exchange carries the sender's acknowledged horizon,
//! and a replica's *collection horizon* is the minimum of its own and the latest one heard from
//! every peer. A version older than the collection horizon is therefore on every replica, and:
//!
//! - a tombstone is collected only when it is older than the collection horizon (and older than
//!   [`super::ReplicaOptions::tombstone_gc_after_ms`], which exceeds the hint lifetime);
//! - after collecting, the replica keeps the horizon it collected at as a *floor* (persisted), and
//!   never accepts a version older than the floor for a key it does not hold: that key can only
//!   be one it collected, so the version is a collected tombstone (or something it beat) coming
//!   back from a peer that has not collected yet. Such versions are skipped and counted
//!   (`stale_refused`), and the peer collects on its own once its horizon passes.
//!
//! A replica partitioned away keeps every other replica's horizon where it was, so nothing it may
//! still hold an older copy of is collected anywhere until it has been in sync again.
//!
//! Collection reads only the keyspace's tombstones (through the store's tombstone index), so
//! its cost follows the number of deletes, not the number of keys.
//!
//! CAVEATS: the sync times live in memory, so a restarted node collects nothing until
//! anti-entropy has met every peer again; a node that never meets some peer never collects, and
//! one node that stays away holds back collection on all. Horizons are wall-clock times of
//! different nodes, which the clock bound keeps within the margin.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Replica, Transport};
use crate::error::Error;

/// What a replica knows about horizons, per keyspace.
#[derive(Debug, Default)]
pub(super) struct Horizons {
    /// (peer, keyspace) -> wall ms of the last exchange that found the keyspace equal.
    synced_at: HashMap<(u64, String), u64>,
    /// (peer, keyspace) -> the latest acknowledged horizon the peer sent.
    acked: HashMap<(u64, String), u64>,
}

impl<T: Transport> Replica<T> {
    /// Records one digest exchange with `peer`: whether the keyspace was equal, and the peer's
    /// acknowledged horizon.
    pub(super) fn note_exchange(&self, peer: u64, keyspace: &str, equal: bool, their_horizon: u64) {
        let now = self.wall_ms();
        let mut horizons = self.horizons.lock().expect("horizon lock is never poisoned");
        let key = (peer, keyspace.to_string());
        if equal {
            let at = horizons.synced_at.entry(key.clone()).or_default();
            *at = (*at).max(now);
        }
        let acked = horizons.acked.entry(key).or_default();
        *acked = (*acked).max(their_horizon);
    }

    /// This replica's acknowledged horizon of `keyspace` (0 until it was in sync with every peer).
    pub fn acknowledged_horizon(&self, keyspace: &str) -> u64 {
        let horizons = self.horizons.lock().expect("horizon lock is never poisoned");
        self.own_horizon(&horizons, keyspace)
    }

    fn own_horizon(&self, horizons: &Horizons, keyspace: &str) -> u64 {
        let margin = self.options.max_clock_offset_ms.saturating_mul(2);
        let earliest = self
            .peers()
            .iter()
            .map(|p| {
                horizons
                    .synced_at
                    .get(&(*p, keyspace.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or_else(|| self.wall_ms());
        earliest.saturating_sub(margin)
    }

    /// The collection horizon of `keyspace`: the minimum acknowledged horizon of all replicas.
    pub fn collection_horizon(&self, keyspace: &str) -> u64 {
        let horizons = self.horizons.lock().expect("horizon lock is never poisoned");
        let peers = self.peers();
        let theirs = peers
            .iter()
            .map(|p| horizons.acked.get(&(*p, keyspace.to_string())).copied().unwrap_or(0));
        theirs.fold(self.own_horizon(&horizons, keyspace), u64::min)
    }

    /// Collects tombstones older than the collection horizon and than the tombstone age.
    pub fn collect_tombstones(&self, keyspace: &str) -> Result<usize, Error> {
        let now = self.wall_ms();
        let horizon = self.collection_horizon(keyspace);
        if horizon == 0 || now < self.options.tombstone_gc_after_ms {
            return Ok(0);
        }
        let aged = now - self.options.tombstone_gc_after_ms;
        // The floor first: from now on nothing below it comes back, even during the collection.
        self.store.raise_horizon_floor(keyspace, horizon)?;
        let mut collected = 0;
        for entry in self.store.tombstones(keyspace)? {
            let physical_ms = entry.versioned.version.hlc.physical_ms;
            if entry.versioned.is_tombstone()
                && physical_ms < horizon
                && physical_ms <= aged
                && self.store.remove_tombstone(&entry)?
            {
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
            assert_eq!(
                kit.node(1).collect_tombstones(KEYSPACE).unwrap(),
                0,
                "old enough, but the replicas were last seen in sync before the margin passed"
            );
            sync_everyone(&kit, &[1, 2]).await;
            sync_everyone(&kit, &[1, 2]).await;
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
