//! The AP repair loop: the periodic driver of hinted handoff, anti-entropy and tombstone
//! collection.
//!
//! Every [`super::replica::ReplicaOptions::anti_entropy_interval_ms`], and at once when a peer
//! that was unreachable comes back, one [`Repair::round`]:
//!
//! 1. delivers the queued hints of every reachable peer (all peers at once, and a peer that
//!    comes back meanwhile joins within [`RETURN_CHECK`]), [`HINT_BATCH`] per message and
//!    [`HINT_BATCHES_IN_FLIGHT`] messages at a time, up to the newest hint queued when its
//!    delivery began, or until a delivery fails (meanwhile that peer defers its anti-entropy with
//!    this node, which would fetch many of the same keys);
//! 2. runs one anti-entropy exchange per ap keyspace with up to `anti_entropy_fanout` reachable
//!    peers, chosen at random;
//! 3. every [`ROUNDS_PER_TOMBSTONE_COLLECTION`] rounds, collects the tombstones every replica holds.
//!
//! It also measures how long replicas stayed apart: from the first round that found a difference
//! (or an unreachable peer) to the next round that found every peer reachable and in sync.
//!
//! The mechanisms live in [`super::replica`]; this module only decides when they run, and takes
//! the keyspace list, reachability and randomness as parameters so a round can be unit-tested.
//!
//! CAVEATS: hint delivery and anti-entropy run one after another in the same task, so a long
//! hint backlog delays the next anti-entropy exchange; a round's peers are random, so a single
//! round proves nothing about peers it did not pick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::replica::{PeerError, Replica, Transport};
use crate::error::Error;

/// Hints sent to a peer in one message (also bounded by bytes: [`crate::limits::AP_BATCH_BYTES_MAX`]).
pub const HINT_BATCH: usize = 4096;
/// Hint batches to one peer in flight at once.
pub const HINT_BATCHES_IN_FLIGHT: usize = 2;
/// Anti-entropy rounds between two tombstone collections.
pub const ROUNDS_PER_TOMBSTONE_COLLECTION: u64 = 30;

/// What one repair round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Hints delivered to peers this round.
    pub hints_delivered: usize,
    /// Peers anti-entropy ran with.
    pub peers_compared: Vec<u64>,
    /// Every peer was reachable and every compared peer held the same keyspaces.
    pub in_sync: bool,
    /// Set on the round that ended a divergence: how long the replicas had been apart.
    pub converged_after: Option<Duration>,
    /// Tombstones collected (only on collection rounds).
    pub tombstones_collected: usize,
}

/// The state of the repair loop of one replica.
pub struct Repair<T: Transport> {
    replica: Arc<Replica<T>>,
    rounds: u64,
    diverged_since: Option<Instant>,
}

impl<T: Transport> Repair<T> {
    pub fn new(replica: Arc<Replica<T>>) -> Self {
        Self {
            replica,
            rounds: 0,
            diverged_since: None,
        }
    }

    /// One repair round over `keyspaces`, with the peers `reachable` says may be reached.
    pub async fn round(
        &mut self,
        keyspaces: &[String],
        reachable: impl Fn(u64) -> bool,
        rng: &mut impl Rng,
    ) -> RoundReport {
        self.rounds += 1;
        let replica = &self.replica;
        let mut report = RoundReport {
            hints_delivered: self.deliver_hints_to_reachable(&reachable).await,
            ..RoundReport::default()
        };
        // Who is reachable after the hints (a long delivery may have seen peers come and go).
        let alive: Vec<u64> = replica.peers().iter().copied().filter(|p| reachable(*p)).collect();
        if keyspaces.is_empty() {
            return report;
        }
        report.peers_compared = alive
            .choose_multiple(rng, replica.options.anti_entropy_fanout)
            .copied()
            .collect();
        report.in_sync =
            replica.anti_entropy_round(&report.peers_compared, keyspaces).await && alive.len() == replica.peers().len();
        match (report.in_sync, self.diverged_since) {
            (false, None) => self.diverged_since = Some(Instant::now()),
            (true, Some(since)) => {
                report.converged_after = Some(since.elapsed());
                self.diverged_since = None;
            }
            _ => {}
        }
        if self.rounds % ROUNDS_PER_TOMBSTONE_COLLECTION == 0 {
            report.tombstones_collected = self.collect_tombstones(keyspaces);
        }
        report
    }

    /// Delivers the hints of every reachable peer at once (a backlog for one peer does not hold
    /// up the others), each until its queue is drained or its delivery fails; returns how many
    /// were delivered. A peer that becomes reachable meanwhile joins within [`RETURN_CHECK`]
    /// (liveness may see two returning peers a moment apart), instead of waiting for the next
    /// round behind the other backlogs.
    async fn deliver_hints_to_reachable(&self, reachable: &impl Fn(u64) -> bool) -> usize {
        use futures::stream::{FuturesUnordered, StreamExt};
        let (mut delivered, mut started) = (0, std::collections::BTreeSet::new());
        let mut deliveries = FuturesUnordered::new();
        loop {
            for peer in self.replica.peers() {
                if reachable(peer) && self.replica.store.hint_count(peer) > 0 && started.insert(peer) {
                    deliveries.push(self.deliver_all_hints(peer));
                }
            }
            if deliveries.is_empty() {
                return delivered;
            }
            tokio::select! {
                Some(n) = deliveries.next() => delivered += n,
                _ = tokio::time::sleep(RETURN_CHECK) => {}
            }
        }
    }

    /// Delivers `peer`'s hints up to the newest one queued now ([`Self::deliver_hints_through`]).
    async fn deliver_all_hints(&self, peer: u64) -> usize {
        match self.replica.store.last_hint_seq(peer) {
            Ok(Some(end)) => self.deliver_hints_through(peer, end).await,
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(peer, "cannot read the hint queue for node {peer}: {e}");
                0
            }
        }
    }

    /// Delivers `peer`'s hints batch by batch, [`HINT_BATCHES_IN_FLIGHT`] at a time, through the
    /// batch that holds sequence number `end`, or until a delivery fails. The next batch is read
    /// while the peer merges the ones before it, so neither side waits for the other. Hints
    /// queued after `end` wait for the next round: a queue that keeps growing (writes still
    /// hinted for the peer) cannot keep the delivery, and the peer's deferred anti-entropy with
    /// this node, going forever.
    async fn deliver_hints_through(&self, peer: u64, end: u64) -> usize {
        use futures::stream::{FuturesUnordered, StreamExt};
        let replica = &self.replica;
        let (mut delivered, mut after, mut more) = (0, None, true);
        let mut in_flight = FuturesUnordered::new();
        // While a backlog is in flight, the peer's anti-entropy with us waits for it.
        let mut _delivering = None;
        loop {
            while more && in_flight.len() < HINT_BATCHES_IN_FLIGHT {
                match replica.take_hints(peer, HINT_BATCH, after) {
                    Ok(Some(batch)) => {
                        _delivering.get_or_insert_with(|| replica.delivering_hints(peer));
                        more = batch.last < end;
                        after = Some(batch.last);
                        in_flight.push(replica.send_hints(peer, batch));
                    }
                    Ok(None) => more = false,
                    Err(e) => {
                        tracing::error!(peer, "hint delivery to node {peer} stopped: {e}");
                        more = false;
                    }
                }
            }
            match in_flight.next().await {
                Some(Ok(n)) => delivered += n,
                Some(Err(e)) => {
                    match e {
                        PeerError::Local(_) => tracing::error!(peer, "hint delivery to node {peer} stopped: {e}"),
                        // A peer that answers, but not as this build expects (another build?).
                        PeerError::UnexpectedAnswer { .. } => {
                            tracing::warn!(peer, "hint delivery to node {peer} stopped: {e}")
                        }
                        PeerError::Unreachable { .. } => {
                            tracing::debug!(peer, "hint delivery to node {peer} stopped: {e}")
                        }
                    }
                    // The batches already in flight finish; their hints stay queued if they fail.
                    more = false;
                }
                None => return delivered,
            }
        }
    }

    fn collect_tombstones(&self, keyspaces: &[String]) -> usize {
        let mut collected = 0;
        for keyspace in keyspaces {
            match self.replica.collect_tombstones(keyspace) {
                Ok(n) => collected += n,
                Err(e) => tracing::warn!(keyspace, "tombstone collection failed: {e}"),
            }
        }
        collected
    }
}

/// Builds the hash tree of every ap keyspace once, on a blocking thread (one scan each), so
/// the first rounds do not scan the data on an async worker. Later keyspaces start empty.
async fn build_trees<T: Transport>(replica: &Arc<Replica<T>>, keyspaces: &impl Fn() -> Result<Vec<String>, Error>) {
    let names = match keyspaces() {
        Ok(names) => names,
        Err(e) => return tracing::error!("cannot read the keyspace list: {e}"),
    };
    let store = replica.store.clone();
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        for keyspace in &names {
            if let Err(e) = store.tree_root(keyspace) {
                tracing::error!(keyspace, "cannot build the hash tree: {e}");
            }
        }
        names.len()
    })
    .await;
    match built {
        Ok(n) => tracing::info!("built the hash trees of {n} ap keyspaces in {:?}", started.elapsed()),
        Err(e) => tracing::error!("building the hash trees failed: {e}"),
    }
}

/// How often the repair loop looks for a peer that came back between rounds.
pub const RETURN_CHECK: Duration = Duration::from_millis(50);

/// Waits one anti-entropy interval, or less: a peer that comes back (was unreachable, now is
/// reachable) starts the next round at once, so a heal is repaired as soon as liveness sees it,
/// not up to an interval later.
async fn wait_for_round<T: Transport>(replica: &Replica<T>, interval: Duration, reachable: &impl Fn(u64) -> bool) {
    let until = tokio::time::Instant::now() + interval;
    let away: Vec<u64> = replica.peers().into_iter().filter(|p| !reachable(*p)).collect();
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(RETURN_CHECK.min(until - tokio::time::Instant::now())).await;
        if away.iter().any(|p| reachable(*p)) {
            return;
        }
    }
}

/// Runs repair rounds forever, one per anti-entropy interval, and one as soon as a peer comes
/// back. `keyspaces` lists the ap keyspaces now (read each round, so new keyspaces join);
/// `reachable` is the node's liveness view.
pub async fn run<T: Transport>(
    replica: Arc<Replica<T>>,
    keyspaces: impl Fn() -> Result<Vec<String>, Error>,
    reachable: impl Fn(u64) -> bool,
) {
    if cfg!(feature = "no-anti-entropy") {
        tracing::warn!("built with the no-anti-entropy negative control: ap replicas are never repaired");
        return;
    }
    let interval = Duration::from_millis(replica.options.anti_entropy_interval_ms);
    build_trees(&replica, &keyspaces).await;
    let mut repair = Repair::new(replica.clone());
    let mut rng = StdRng::from_entropy();
    loop {
        wait_for_round(&replica, interval, &reachable).await;
        let keyspaces = match keyspaces() {
            Ok(names) => names,
            Err(e) => {
                tracing::error!("cannot read the keyspace list: {e}");
                continue;
            }
        };
        let report = repair.round(&keyspaces, &reachable, &mut rng).await;
        if let Some(apart) = report.converged_after {
            ::metrics::gauge!("capkv_ap_last_convergence_seconds").set(apart.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::super::replica::testkit::{run, short_horizons, Kit, EPOCH_MS, KEYSPACE};
    use super::super::store::{Entry, Hint, HintBound};
    use super::*;

    #[test]
    fn rounds_deliver_hints_repair_measure_convergence_and_collect_tombstones() {
        run(async {
            let kit = Kit::new(3, short_horizons());
            let keyspaces = vec![KEYSPACE.to_string()];
            let mut rng = StdRng::seed_from_u64(7);
            let mut repair = Repair::new(kit.node(1));
            kit.write(1, "x", Some("1"), 3).await.unwrap();
            kit.down(3);
            kit.write(1, "x", None, 2).await.unwrap();

            let first = repair.round(&keyspaces, kit.reachable(), &mut rng).await;
            assert_eq!(first.peers_compared, vec![2]);
            assert!(!first.in_sync, "node 3 is unreachable");
            assert_eq!(first.converged_after, None);

            kit.up(3);
            let second = repair.round(&keyspaces, kit.reachable(), &mut rng).await;
            assert_eq!(second.hints_delivered, 1, "node 3's hint of the delete");
            assert_eq!(kit.stored(3, "x"), Some(None));
            assert!(second.in_sync, "{second:?}");
            assert!(second.converged_after.is_some(), "the divergence ended");

            kit.advance(short_horizons().tombstone_gc_after_ms + 1);
            // Nodes 2 and 3 run their own rounds too, so every pair is seen in sync and every
            // replica acknowledges the tombstone horizon.
            let mut others = [Repair::new(kit.node(2)), Repair::new(kit.node(3))];
            for other in &mut others {
                other.round(&keyspaces, kit.reachable(), &mut rng).await;
            }
            for round in 3..ROUNDS_PER_TOMBSTONE_COLLECTION {
                let report = repair.round(&keyspaces, kit.reachable(), &mut rng).await;
                assert_eq!(
                    report.tombstones_collected, 0,
                    "round {round} is not a collection round"
                );
            }
            let collection = repair.round(&keyspaces, kit.reachable(), &mut rng).await;
            assert_eq!(collection.tombstones_collected, 1);
            assert_eq!(kit.stored(1, "x"), None);
        });
    }

    #[test]
    fn hints_of_200_kib_values_drain_after_the_heal_in_batches_under_the_message_limit() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            let value = "v".repeat(200 * 1024);
            let keys = 200; // 40 MiB of hints: more than one peer message holds
            for i in 0..keys {
                kit.put(1, &format!("k{i:03}"), &value).await;
            }
            assert_eq!(kit.node(1).store.hint_count(2), keys);
            kit.up(2);
            let mut repair = Repair::new(kit.node(1));
            let report = repair.round(&[], kit.reachable(), &mut StdRng::seed_from_u64(1)).await;
            assert_eq!(report.hints_delivered, keys, "the queue drains in one round");
            assert_eq!(kit.node(1).store.hint_queue(2), Default::default());
            for i in [0, keys / 2, keys - 1] {
                assert_eq!(kit.value(2, &format!("k{i:03}")).as_deref(), Some(value.as_str()));
            }
            let largest = kit.largest_message();
            assert!(
                largest > 200 * 1024 && largest <= crate::limits::AP_BATCH_BYTES_MAX + 256 * 1024,
                "batches are bounded by bytes: the largest message was {largest} bytes"
            );
        });
    }

    #[test]
    fn a_peer_coming_back_starts_the_next_round_at_once() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let (one, reachable) = (kit.node(1), kit.reachable());
            let interval = Duration::from_secs(10);
            let started = tokio::time::Instant::now();
            wait_for_round(&one, Duration::from_millis(200), &reachable).await;
            assert!(
                started.elapsed() >= Duration::from_millis(200),
                "no peer away: a full interval"
            );
            kit.down(2);
            let started = tokio::time::Instant::now();
            tokio::join!(wait_for_round(&one, interval, &reachable), async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                kit.up(2);
            });
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the round starts once node 2 is back, not {interval:?} later: {:?}",
                started.elapsed()
            );
        });
    }

    #[test]
    fn a_peer_that_comes_back_during_another_peers_delivery_gets_its_hints_in_the_same_round() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.down(2);
            kit.down(3);
            for i in 0..2 * HINT_BATCH + 1 {
                kit.put(1, &format!("k{i}"), "v").await;
            }
            let one = kit.node(1);
            kit.up(2);
            let mut repair = Repair::new(one.clone());
            let mut rng = StdRng::seed_from_u64(1);
            let (report, ()) = tokio::join!(repair.round(&[], kit.reachable(), &mut rng), async {
                // Node 3 comes back once node 2's backlog is on its way.
                while one.stats.hints_delivered.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                kit.up(3);
            });
            assert_eq!(
                report.hints_delivered,
                2 * (2 * HINT_BATCH + 1),
                "both backlogs, one round"
            );
            assert_eq!((one.store.hint_count(2), one.store.hint_count(3)), (0, 0));
        });
    }

    #[test]
    fn a_delivery_ends_at_the_newest_hint_queued_when_it_began() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            let backlog = 2 * HINT_BATCH + 1;
            for i in 0..backlog {
                kit.put(1, &format!("k{i}"), "v").await;
            }
            let one = kit.node(1);
            let end = one.store.last_hint_seq(2).unwrap().expect("a backlog is queued");
            // Hinted after the delivery began (as while node 1's push queue to node 2 is full).
            let version = one.store.get(KEYSPACE, b"k0").unwrap().expect("k0 is stored");
            let late = 2 * HINT_BATCH;
            for i in 0..late {
                let hint = Hint {
                    entry: Entry {
                        keyspace: KEYSPACE.into(),
                        key: format!("late{i}").into_bytes(),
                        versioned: version.clone(),
                    },
                    created_ms: EPOCH_MS,
                };
                let bound = HintBound {
                    count: usize::MAX,
                    bytes: u64::MAX,
                };
                assert!(one.store.add_hint(2, &hint, bound).unwrap(), "hint {i} is queued");
            }
            kit.up(2);
            let delivered = Repair::new(one.clone()).deliver_hints_through(2, end).await;
            // The batch that holds the last hint of the backlog may carry late ones too.
            assert!(
                (backlog..=backlog + HINT_BATCH).contains(&delivered),
                "{delivered} hints delivered for a backlog of {backlog}"
            );
            assert_eq!(one.store.hint_count(2), backlog + late - delivered, "the rest wait");
            assert!(!one.is_delivering_hints(2), "node 2's anti-entropy with node 1 resumes");
        });
    }

    #[test]
    fn a_round_drains_a_backlog_longer_than_one_batch() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            for i in 0..HINT_BATCH + 1 {
                kit.put(1, &format!("k{i}"), "v").await;
            }
            kit.up(2);
            let mut repair = Repair::new(kit.node(1));
            let report = repair.round(&[], kit.reachable(), &mut StdRng::seed_from_u64(1)).await;
            assert_eq!(report.hints_delivered, HINT_BATCH + 1);
            assert_eq!(kit.node(1).store.hint_count(2), 0);
            assert!(report.peers_compared.is_empty(), "no keyspaces, no anti-entropy");
        });
    }
}
