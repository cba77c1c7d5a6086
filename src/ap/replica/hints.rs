//! Hinted handoff: writes kept for a peer that could not be reached, delivered when it is back.
//!
//! A hint is persisted in the AP store's hint queue for that peer, with the wall time it was
//! made. Each peer's queue is bounded in count ([`super::ReplicaOptions::hints_per_peer_max`])
//! and in encoded bytes ([`super::ReplicaOptions::hints_bytes_max`]); a write over either bound
//! is not hinted (counted in `hints_dropped_full`) and left to anti-entropy, so nothing is lost.
//! Delivery sends the oldest hints in one push of at most [`AP_BATCH_BYTES_MAX`] (so a batch of
//! large values stays under the peer message limit); hints older than the hint lifetime are dropped
//! instead (counted in `hints_dropped_expired`), so a hint can never outlive the tombstone
//! horizon and resurrect a collected delete.
//!
//! CAVEATS: delivery is in queue order, one batch per call,
//! and the caller (the repair loop) decides when to call it.

use std::sync::atomic::Ordering;

use super::super::store::{Entry, Hint, HintBound};
use super::{PeerError, Replica, Request, Response, Transport};
use crate::error::Error;
use crate::limits::AP_BATCH_BYTES_MAX;

impl<T: Transport> Replica<T> {
    /// Queues `entry` for `peer`, unless the peer's queue is full (then counts the drop).
    pub(super) fn hint(&self, peer: u64, entry: &Entry) -> Result<(), Error> {
        if cfg!(feature = "no-anti-entropy") {
            return Ok(()); // negative control: a write a peer missed stays missed
        }
        let hint = Hint {
            entry: entry.clone(),
            created_ms: self.wall_ms(),
        };
        let bound = HintBound {
            count: self.options.hints_per_peer_max,
            bytes: self.options.hints_bytes_max,
        };
        if self.store.add_hint(peer, &hint, bound)? {
            self.stats.hints_stored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.hints_dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Delivers one batch of stored hints to `peer`, at most `batch` hints and
    /// [`AP_BATCH_BYTES_MAX`] bytes; returns how many were delivered.
    pub async fn deliver_hints(&self, peer: u64, batch: usize) -> Result<usize, PeerError> {
        let hints = self.store.hints_within(peer, batch, AP_BATCH_BYTES_MAX)?;
        if hints.is_empty() {
            return Ok(0);
        }
        let now = self.wall_ms();
        let (fresh, expired): (Vec<_>, Vec<_>) = hints
            .into_iter()
            .partition(|(_, h)| now.saturating_sub(h.created_ms) <= self.options.hint_lifetime_ms);
        if !expired.is_empty() {
            self.stats
                .hints_dropped_expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            self.store
                .remove_hints(peer, &expired.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let entries = fresh.iter().map(|(_, h)| h.entry.clone()).collect();
        match self.call_peer(peer, Request::Push(entries)).await? {
            Response::Pushed => {
                self.store
                    .remove_hints(peer, &fresh.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
                self.stats
                    .hints_delivered
                    .fetch_add(fresh.len() as u64, Ordering::Relaxed);
                Ok(fresh.len())
            }
            other => Err(PeerError::unexpected(peer, "push", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::testkit::{run, short_horizons, Kit, KEYSPACE};
    use super::super::{PeerError, ReplicaOptions};
    use crate::error::Error;

    #[test]
    fn hints_queue_for_an_unreachable_peer_and_drain_when_it_returns() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.down(3);
            kit.put(1, "bob", "book").await;
            kit.put(1, "ann", "pen").await;
            let one = kit.node(1);
            assert_eq!(one.store.hint_count(3), 2);
            assert_eq!(one.stats.hints_stored.load(Relaxed), 2);
            assert_eq!(kit.value(3, "bob"), None);

            let err = one.deliver_hints(3, 10).await.unwrap_err();
            assert!(matches!(err, PeerError::Unreachable { peer: 3, .. }), "{err:?}");
            assert_eq!(one.store.hint_count(3), 2, "a failed delivery keeps the hints");

            kit.up(3);
            assert_eq!(one.deliver_hints(3, 1).await.unwrap(), 1, "one batch of one");
            assert_eq!(one.deliver_hints(3, 10).await.unwrap(), 1);
            assert_eq!(one.deliver_hints(3, 10).await.unwrap(), 0, "the queue is drained");
            assert_eq!(kit.value(3, "bob").as_deref(), Some("book"));
            assert_eq!(kit.value(3, "ann").as_deref(), Some("pen"));
            assert_eq!(
                (one.store.hint_count(3), one.stats.hints_delivered.load(Relaxed)),
                (0, 2)
            );
        });
    }

    #[test]
    fn a_peer_that_leaves_the_membership_takes_its_hints_along_and_a_new_one_gets_writes() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.down(3);
            kit.put(1, "bob", "book").await;
            let one = kit.node(1);
            assert_eq!(one.store.hint_count(3), 1);
            one.set_peers([1, 2]).unwrap();
            assert_eq!(one.peers(), vec![2]);
            assert_eq!(one.store.hint_count(3), 0, "nobody would deliver them");
            assert_eq!(one.stats.hints_dropped_expired.load(Relaxed), 1, "and they are counted");
            kit.put(1, "ann", "pen").await;
            assert_eq!(one.store.hint_count(3), 0, "no new hints for a non-member");
            one.set_peers([1, 2, 3]).unwrap();
            kit.up(3);
            kit.write(1, "cat", Some("hat"), 3)
                .await
                .expect("all three replicas acknowledge");
            assert_eq!(
                kit.value(3, "cat").as_deref(),
                Some("hat"),
                "a member again gets pushes"
            );
        });
    }

    #[test]
    fn the_hint_queue_is_bounded_per_peer_and_drops_are_counted() {
        run(async {
            let bounded = ReplicaOptions {
                hints_per_peer_max: 2,
                ..Default::default()
            };
            let kit = Kit::new(3, bounded);
            kit.down(2);
            kit.down(3);
            for i in 0..3 {
                kit.put(1, &format!("k{i}"), "v").await;
            }
            let one = kit.node(1);
            assert_eq!((one.store.hint_count(2), one.store.hint_count(3)), (2, 2));
            assert_eq!(one.stats.hints_stored.load(Relaxed), 4);
            assert_eq!(
                one.stats.hints_dropped_full.load(Relaxed),
                2,
                "one per peer over the bound"
            );
        });
    }

    #[test]
    fn the_hint_queue_is_bounded_by_bytes_and_anti_entropy_repairs_what_did_not_fit() {
        run(async {
            let bounded = ReplicaOptions {
                hints_bytes_max: 3 * 1024 + 1024,
                ..Default::default()
            };
            let kit = Kit::new(2, bounded);
            kit.down(2);
            let value = "v".repeat(1024);
            for i in 0..5 {
                kit.put(1, &format!("k{i}"), &value).await;
            }
            let one = kit.node(1);
            let queue = one.store.hint_queue(2);
            assert_eq!(queue.count, 3, "three 1 KiB hints fit in 4 KiB: {queue:?}");
            assert!(queue.bytes <= 4 * 1024, "{queue:?}");
            assert_eq!(one.stats.hints_dropped_full.load(Relaxed), 2);
            kit.up(2);
            assert_eq!(one.deliver_hints(2, 100).await.unwrap(), 3);
            assert_eq!(kit.value(2, "k4"), None, "not hinted");
            one.anti_entropy(2, KEYSPACE).await.unwrap();
            for i in 0..5 {
                assert_eq!(kit.value(2, &format!("k{i}")).as_deref(), Some(value.as_str()), "k{i}");
            }
        });
    }

    #[test]
    fn hints_past_their_lifetime_are_dropped_not_delivered() {
        run(async {
            let kit = Kit::new(2, short_horizons());
            kit.down(2);
            kit.put(1, "bob", "book").await;
            kit.advance(short_horizons().hint_lifetime_ms + 1);
            kit.up(2);
            let one = kit.node(1);
            assert_eq!(one.deliver_hints(2, 10).await.unwrap(), 0);
            assert_eq!(kit.value(2, "bob"), None, "left to anti-entropy");
            assert_eq!(one.store.hint_count(2), 0);
            assert_eq!(one.stats.hints_dropped_expired.load(Relaxed), 1);
        });
    }

    #[test]
    fn a_corrupt_hint_queue_is_a_storage_error_not_an_unreachable_peer() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            kit.put(1, "bob", "book").await;
            kit.up(2);
            kit.node(1).store.corrupt_hints(2);
            let err = kit.node(1).deliver_hints(2, 10).await.unwrap_err();
            assert!(matches!(err, PeerError::Local(Error::Storage(_))), "{err:?}");
            assert!(!err.to_string().contains("unreachable"), "{err}");

            kit.node(2).store.corrupt_value(KEYSPACE, b"anything");
            let err = kit.node(2).anti_entropy(1, KEYSPACE).await.unwrap_err();
            assert!(matches!(err, PeerError::Local(Error::Storage(_))), "{err:?}");
        });
    }
}
