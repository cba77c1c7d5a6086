//! Hinted handoff: writes kept for a peer that could not be reached, delivered when it is back.
//!
//! A hint is persisted in the AP store's hint queue for that peer, with the wall time it was
//! made. Each peer's queue is bounded in count ([`super::ReplicaOptions::hints_per_peer_max`])
//! and in encoded bytes ([`super::ReplicaOptions::hints_bytes_max`]); a write over either bound
//! is not hinted (counted in `hints_dropped_full`) and left to anti-entropy, so nothing is lost.
//! Delivery sends the hints in sequence order, in pushes of at most [`AP_BATCH_BYTES_MAX`] (so a
//! batch of large values stays under the peer message limit); hints older than the hint lifetime are dropped
//! instead (counted in `hints_dropped_expired`), so a hint can never outlive the tombstone
//! horizon and resurrect a collected delete.
//!
//! A batch is taken from the queue ([`Replica::take_hints`]) before it is sent and removed only
//! once the peer stored it ([`Replica::send_hints`]), so the caller (the repair loop) can keep
//! more than one batch to a peer in flight.
//!
//! CAVEATS: batches in flight together may be stored in any order and a failed one is sent
//! again in a later round; merges are last-writer-wins, so neither matters.

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
        match self.take_hints(peer, batch, None)? {
            Some(taken) => self.send_hints(peer, taken).await,
            None => Ok(0),
        }
    }

    /// The next batch of `peer`'s hints after sequence number `after` (from the oldest when
    /// `None`): at most `batch` hints and [`AP_BATCH_BYTES_MAX`] bytes. Hints past the hint
    /// lifetime are dropped here (counted), so a batch may carry no entries; `None` when no
    /// hint is left after `after`. The hints stay queued until [`Self::send_hints`] delivers
    /// them, so a batch may be taken while earlier ones are still in flight.
    pub fn take_hints(&self, peer: u64, batch: usize, after: Option<u64>) -> Result<Option<HintBatch>, Error> {
        let hints = self.store.hints_within(peer, after, batch, AP_BATCH_BYTES_MAX)?;
        let Some(last) = hints.last().map(|(seq, _)| *seq) else {
            return Ok(None);
        };
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
        let (seqs, entries) = fresh.into_iter().map(|(seq, hint)| (seq, hint.entry)).unzip();
        Ok(Some(HintBatch { last, seqs, entries }))
    }

    /// Pushes a batch [`Self::take_hints`] took and removes its hints once `peer` stored them;
    /// returns how many were delivered. A failed push leaves them queued for the next round.
    pub async fn send_hints(&self, peer: u64, batch: HintBatch) -> Result<usize, PeerError> {
        if batch.entries.is_empty() {
            return Ok(0);
        }
        match self.call_peer(peer, Request::Push(batch.entries)).await? {
            Response::Pushed => {
                self.store.remove_hints(peer, &batch.seqs)?;
                self.stats
                    .hints_delivered
                    .fetch_add(batch.seqs.len() as u64, Ordering::Relaxed);
                Ok(batch.seqs.len())
            }
            other => Err(PeerError::unexpected(peer, "push", &other)),
        }
    }
}

impl<T: Transport> Replica<T> {
    /// Marks `peer` as receiving this node's hint backlog until the returned guard is dropped.
    /// Meanwhile the peer's anti-entropy exchanges with this node are deferred
    /// ([`Self::is_delivering_hints`]).
    pub fn delivering_hints(&self, peer: u64) -> HintDelivery<'_> {
        self.hint_deliveries
            .lock()
            .expect("hint delivery lock is never poisoned")
            .insert(peer);
        HintDelivery {
            deliveries: &self.hint_deliveries,
            peer,
        }
    }

    /// Whether this node is delivering a hint backlog to `peer` now. The peer's anti-entropy
    /// with this node would fetch many of the keys the hints bring, so it is deferred until the
    /// delivery ends (it covers the hints queued when it began) or fails.
    pub fn is_delivering_hints(&self, peer: u64) -> bool {
        self.hint_deliveries
            .lock()
            .expect("hint delivery lock is never poisoned")
            .contains(&peer)
    }
}

/// A hint backlog being delivered to one peer ([`Replica::delivering_hints`]).
pub struct HintDelivery<'a> {
    deliveries: &'a std::sync::Mutex<std::collections::BTreeSet<u64>>,
    peer: u64,
}

impl Drop for HintDelivery<'_> {
    fn drop(&mut self) {
        self.deliveries
            .lock()
            .expect("hint delivery lock is never poisoned")
            .remove(&self.peer);
    }
}

/// Hints taken from a peer's queue for one push ([`Replica::take_hints`]).
pub struct HintBatch {
    /// The sequence number of the last hint read (the next batch starts after it), whether it
    /// is in this batch or was dropped as expired.
    pub last: u64,
    seqs: Vec<u64>,
    entries: Vec<Entry>,
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
    fn batches_taken_one_after_another_cover_the_queue_and_a_failed_one_stays_queued() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            for key in ["a", "b", "c"] {
                kit.put(1, key, "v").await;
            }
            let one = kit.node(1);
            let first = one.take_hints(2, 2, None).unwrap().expect("a first batch");
            let second = one.take_hints(2, 2, Some(first.last)).unwrap().expect("a second batch");
            assert!(
                one.take_hints(2, 2, Some(second.last)).unwrap().is_none(),
                "two batches took the whole queue"
            );
            assert_eq!(one.store.hint_count(2), 3, "taking removes nothing");
            kit.up(2);
            assert_eq!(
                one.send_hints(2, second).await.unwrap(),
                1,
                "the later batch lands first"
            );
            kit.down(2);
            let err = one.send_hints(2, first).await.unwrap_err();
            assert!(matches!(err, PeerError::Unreachable { peer: 2, .. }), "{err:?}");
            assert_eq!(one.store.hint_count(2), 2, "the failed batch is still queued");
            kit.up(2);
            assert_eq!(one.deliver_hints(2, 10).await.unwrap(), 2, "and goes out later");
            for key in ["a", "b", "c"] {
                assert_eq!(kit.value(2, key).as_deref(), Some("v"), "{key}");
            }
            assert_eq!(one.store.hint_count(2), 0);
        });
    }

    #[test]
    fn a_delivery_is_announced_only_while_its_guard_lives() {
        run(async {
            let kit = Kit::new(3, Default::default());
            let one = kit.node(1);
            let delivering = one.delivering_hints(2);
            assert!(one.is_delivering_hints(2));
            assert!(!one.is_delivering_hints(3), "only to the peer it names");
            drop(delivering);
            assert!(!one.is_delivering_hints(2));
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
