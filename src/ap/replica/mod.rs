//! The AP replication protocol of one node, one concern per file:
//!
//! - [`protocol`]: the four peer messages and the [`Transport`] that carries them;
//! - [`write`](mod@write): a coordinated write (stamp, store, push, count acks);
//! - [`push`]: the per-peer queues that batch coordinated writes into pushes;
//! - [`hints`]: hinted handoff for peers a write could not reach;
//! - [`anti_entropy`]: digest exchange and bucket repair;
//! - [`quorum_read`]: majority reads with read repair;
//! - [`tombstones`]: collecting deletes every replica holds;
//! - [`inbound`]: serving the messages other replicas send.
//!
//! This file holds the [`Replica`] they share: its store, transport, hybrid logical clock,
//! options and counters. The periodic driver (when to deliver hints, run anti-entropy, collect
//! tombstones) is [`crate::ap::repair`].
//!
//! The transport and the clock are injected ([`Transport`], the `wall` function, and the node's
//! [`ClockSkew`] from fault injection), so the same code runs between real nodes over gRPC and
//! between in-memory nodes in tests (the test kit and the seeded simulation).
//!
//! WRITE PATH: the coordinator stamps the write with its HLC, merges it into its own store,
//! flushes, and then pushes it to every peer (batched with other writes to that peer). A peer that liveness says is unreachable, or that
//! does not answer the push, gets a hint instead: a persisted copy delivered when it is back.
//! With `acks = N` the coordinator answers only once N replicas (itself included) stored the
//! write; it refuses up front (nothing written) when fewer than N replicas are reachable, and
//! answers "outcome unknown" when they are reachable but do not confirm in time.
//!
//! ANTI-ENTROPY: each round a node compares per-keyspace hash trees with a few random peers,
//! root first and then only the subtrees that differ, and exchanges the entries of differing
//! leaves both ways, in pages bounded by bytes; both sides merge by LWW. A node defers its
//! exchanges with a peer while that peer delivers a hint backlog to it.
//!
//! TOMBSTONES are collected only below a horizon every replica acknowledged through the digest
//! exchanges (so every replica holds them), and only when older than the hint lifetime; a node
//! never takes back a version older than its horizon for a key it collected.
//!
//! CLOCK BOUND: the replica's clock never runs more than `max_clock_offset_ms` ahead of its
//! wall clock. An injected skew (`capkv fault clock`) is clamped to the bound, every timestamp a
//! peer sends is checked against it before anything is merged (a message with one beyond it is
//! refused whole, counted and logged), and a write is refused while the clock itself is beyond
//! it (e.g. after a restart on data a wrong clock stamped).
//!
//! CAVEATS: every node holds every key (no partitioning of the key space); hints older than their lifetime are dropped (counted) and left to
//! anti-entropy.

pub mod anti_entropy;
pub mod hints;
pub mod inbound;
pub mod protocol;
pub mod push;
pub mod quorum_read;
pub mod tombstones;
pub mod write;

#[cfg(test)]
pub(crate) mod testkit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::hlc::{check_bound, Hlc, Timestamp};
use super::store::ApStore;
use crate::error::Error;
use crate::fault::ClockSkew;

pub use anti_entropy::{Exchange, FETCH_BUCKETS_MAX};
pub use protocol::{PeerError, Request, Response, Transport, Unreachable};

/// Tunables of the AP path, checked by [`ReplicaOptions::validate`].
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub anti_entropy_interval_ms: u64,
    /// Peers contacted per anti-entropy round.
    pub anti_entropy_fanout: usize,
    pub push_timeout_ms: u64,
    /// Hints kept per unreachable peer; further writes for it are not hinted (counted, and left
    /// to anti-entropy).
    pub hints_per_peer_max: usize,
    /// Encoded bytes of hints kept per unreachable peer; further writes for it are not hinted
    /// (counted, and left to anti-entropy).
    pub hints_bytes_max: u64,
    /// Hints older than this are dropped at delivery (counted, and left to anti-entropy).
    pub hint_lifetime_ms: u64,
    /// Tombstones younger than this are never collected; must exceed the hint lifetime by
    /// more than the clock bound (hint age and tombstone age are read on different clocks).
    pub tombstone_gc_after_ms: u64,
    /// How far ahead of this node's wall clock a timestamp may be: remote timestamps beyond it
    /// are refused, and an injected clock offset beyond it is clamped to it.
    pub max_clock_offset_ms: u64,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            anti_entropy_interval_ms: 1000,
            anti_entropy_fanout: 2,
            push_timeout_ms: 1000,
            hints_per_peer_max: 100_000,
            hints_bytes_max: crate::limits::HINTS_BYTES_PER_PEER_DEFAULT,
            hint_lifetime_ms: 3 * 3600 * 1000,
            tombstone_gc_after_ms: 4 * 3600 * 1000,
            max_clock_offset_ms: 500,
        }
    }
}

impl ReplicaOptions {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidInput(s));
        if self.anti_entropy_interval_ms < 10 {
            return bad("the anti-entropy interval must be at least 10 ms".into());
        }
        if self.anti_entropy_fanout == 0 {
            return bad("the anti-entropy fan-out must be at least 1".into());
        }
        if self.max_clock_offset_ms == 0 || self.max_clock_offset_ms > MAX_CLOCK_OFFSET_MS_LIMIT {
            return bad(format!(
                "--max-clock-offset-ms {} is out of range: give 1 to {MAX_CLOCK_OFFSET_MS_LIMIT} ms (the default is 500)",
                self.max_clock_offset_ms
            ));
        }
        if self.tombstone_gc_after_ms <= self.hint_lifetime_ms.saturating_add(self.max_clock_offset_ms) {
            return bad(format!(
                "tombstones ({} ms) must outlive hints ({} ms) by more than the clock bound ({} ms), or a late hint could resurrect a deleted key",
                self.tombstone_gc_after_ms, self.hint_lifetime_ms, self.max_clock_offset_ms
            ));
        }
        Ok(())
    }
}

/// The largest clock bound accepted: one minute. Beyond that the bound protects nothing.
pub const MAX_CLOCK_OFFSET_MS_LIMIT: u64 = 60_000;

/// Counters of the AP path (exported as metrics by the node).
#[derive(Debug, Default)]
pub struct Stats {
    pub pushes_applied: AtomicU64,
    pub keys_repaired: AtomicU64,
    pub anti_entropy_rounds: AtomicU64,
    /// Exchanges stopped because the peer was delivering its hint backlog to this node.
    pub anti_entropy_deferred: AtomicU64,
    pub hints_stored: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub hints_dropped_full: AtomicU64,
    pub hints_dropped_expired: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub read_repairs: AtomicU64,
    /// Messages (or quorum-read answers) refused for a timestamp beyond the clock bound.
    pub clock_refusals: AtomicU64,
    /// Incoming versions of keys this node collected, older than its floor, skipped.
    pub stale_refused: AtomicU64,
    /// Wall ms at which the last anti-entropy round found every contacted peer in sync.
    pub last_in_sync_ms: AtomicU64,
}

pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Replica<T: Transport> {
    pub id: u64,
    /// The other members, replaced when the membership changes ([`Replica::set_peers`]).
    peers: RwLock<Vec<u64>>,
    pub store: ApStore,
    transport: T,
    clock: Mutex<Hlc>,
    wall: WallClock,
    /// Injected clock skew (fault injection), added to `wall`.
    skew: Arc<ClockSkew>,
    pub options: ReplicaOptions,
    pub stats: Stats,
    /// When each peer was last seen equal, and the horizons peers acknowledged.
    horizons: Mutex<tombstones::Horizons>,
    /// One push queue per peer ([`push`]).
    pushers: push::Pushers,
    /// Peers this node is delivering a hint backlog to now ([`hints`]).
    hint_deliveries: Mutex<std::collections::BTreeSet<u64>>,
}

impl<T: Transport> Replica<T> {
    pub fn new(
        id: u64,
        peers: Vec<u64>,
        store: ApStore,
        transport: T,
        wall: WallClock,
        skew: Arc<ClockSkew>,
        options: ReplicaOptions,
    ) -> Result<Self, Error> {
        options.validate()?;
        let clock = Hlc::starting_after(store.max_timestamp()?);
        let peers = peers.into_iter().filter(|p| *p != id).collect();
        Ok(Self {
            id,
            peers: RwLock::new(peers),
            store,
            transport,
            clock: Mutex::new(clock),
            wall,
            skew,
            options,
            stats: Stats::default(),
            horizons: Mutex::new(tombstones::Horizons::default()),
            pushers: push::Pushers::default(),
            hint_deliveries: Mutex::default(),
        })
    }

    /// The other members, as of now.
    pub fn peers(&self) -> Vec<u64> {
        self.peers.read().expect("peer list lock is never poisoned").clone()
    }

    /// Follows a membership change: `members` (this node may be among them) become the peers,
    /// and the hints kept for a peer that is no longer a member are dropped (counted with the
    /// expired ones), since nobody will deliver them. A new peer starts with no hints: it gets
    /// earlier writes through anti-entropy.
    pub fn set_peers(&self, members: impl IntoIterator<Item = u64>) -> Result<(), Error> {
        let next: Vec<u64> = members.into_iter().filter(|p| *p != self.id).collect();
        let previous = std::mem::replace(
            &mut *self.peers.write().expect("peer list lock is never poisoned"),
            next.clone(),
        );
        self.pushers.retain(&next);
        for gone in previous.iter().filter(|p| !next.contains(p)) {
            let dropped = self.store.drop_hints(*gone)?;
            self.stats
                .hints_dropped_expired
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::info!(
                peer = gone,
                hints_dropped = dropped,
                "node left the membership; its hints are dropped"
            );
        }
        Ok(())
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The node's wall clock in ms, including any injected skew up to the clock bound.
    pub fn wall_ms(&self) -> u64 {
        self.skew.apply_bounded((self.wall)(), self.options.max_clock_offset_ms)
    }

    /// The injected clock offset (set through [`crate::fault::FaultFilter::set_clock_offset`]).
    pub fn clock_offset_ms(&self) -> i64 {
        self.skew.offset_ms()
    }

    /// One request to `peer` with the push timeout; no answer is [`PeerError::Unreachable`].
    async fn call_peer(&self, peer: u64, request: Request) -> Result<Response, PeerError> {
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        (self.transport.call(peer, request, timeout).await).map_err(PeerError::unreachable(peer))
    }

    pub fn clock(&self) -> Hlc {
        self.clock.lock().expect("clock lock is never poisoned").clone()
    }

    /// A timestamp for a local write; refused while this node's clock is beyond the bound.
    fn tick(&self) -> Result<Timestamp, Error> {
        let wall = self.wall_ms();
        let bound = self.options.max_clock_offset_ms;
        let stamped = self
            .clock
            .lock()
            .expect("clock lock is never poisoned")
            .now(wall, bound);
        stamped.map_err(|e| {
            Error::Refused(format!(
                "node {} refuses the write: its clock already issued {}, {} ms ahead of its wall clock, beyond the {} ms bound (--max-clock-offset-ms); writes resume once the wall clock is within the bound",
                self.id, e.timestamp, e.ahead_ms, bound
            ))
        })
    }

    /// Folds the timestamps of entries from `from` into the clock, all or none: one beyond the
    /// bound refuses the whole message (counted and logged) before anything is merged.
    fn observe_all(&self, from: u64, timestamps: impl Iterator<Item = Timestamp> + Clone) -> Result<(), Error> {
        let wall = self.wall_ms();
        let bound = self.options.max_clock_offset_ms;
        if let Some(e) = timestamps.clone().find_map(|t| check_bound(t, wall, bound).err()) {
            self.stats.clock_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = from, "refused a message: {e}");
            return Err(Error::Refused(format!(
                "node {} refused a message from node {from}: {e}; is node {from}'s clock (or its data) ahead? Check its time sync",
                self.id
            )));
        }
        let mut clock = self.clock.lock().expect("clock lock is never poisoned");
        for t in timestamps {
            // Checked above against the same wall time, so this cannot be refused.
            let _ = clock.observe(t, wall, bound);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{run, Kit, EPOCH_MS, KEYSPACE};
    use super::ReplicaOptions;

    #[test]
    fn options_refuse_tombstones_that_do_not_outlive_hints() {
        assert!(ReplicaOptions::default().validate().is_ok());
        let cases = [
            (
                ReplicaOptions {
                    anti_entropy_interval_ms: 9,
                    ..Default::default()
                },
                "at least 10 ms",
            ),
            (
                ReplicaOptions {
                    anti_entropy_fanout: 0,
                    ..Default::default()
                },
                "at least 1",
            ),
            (
                ReplicaOptions {
                    hint_lifetime_ms: 5_000,
                    tombstone_gc_after_ms: 5_000,
                    ..Default::default()
                },
                "must outlive hints",
            ),
            (
                ReplicaOptions {
                    hint_lifetime_ms: 5_000,
                    tombstone_gc_after_ms: 5_500,
                    ..Default::default()
                },
                "by more than the clock bound (500 ms)",
            ),
            (
                ReplicaOptions {
                    max_clock_offset_ms: 0,
                    ..Default::default()
                },
                "--max-clock-offset-ms 0 is out of range",
            ),
        ];
        for (options, expected) in cases {
            let err = options.validate().unwrap_err();
            assert_eq!(err.exit_code(), 5, "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn an_injected_clock_skew_beyond_the_bound_is_clamped_and_drags_no_clock() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.skew(2).set(24 * 3600 * 1000);
            let written = kit.write(2, "bob", Some("skewed"), 2).await.unwrap();
            assert_eq!(written.version.hlc.physical_ms, EPOCH_MS + 500, "clamped to the bound");
            assert_eq!(kit.value(1, "bob").as_deref(), Some("skewed"), "and still replicated");
            assert!(kit.node(1).clock().last().physical_ms <= EPOCH_MS + 500);
            kit.skew(2).set(-24 * 3600 * 1000);
            assert_eq!(kit.node(2).wall_ms(), EPOCH_MS - 500);
            kit.skew(2).set(0);
            kit.advance(10);
            let later = kit.put(2, "bob", "healed").await;
            assert!(later.version > written.version);
        });
    }

    #[test]
    fn an_injected_clock_skew_stamps_writes_and_decides_last_writer_wins() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.skew(2).set(400);
            assert_eq!(
                (kit.node(2).wall_ms(), kit.node(2).clock_offset_ms()),
                (EPOCH_MS + 400, 400)
            );
            kit.down(1);
            let skewed = kit.put(2, "bob", "from the future").await;
            assert_eq!(skewed.version.hlc.physical_ms, EPOCH_MS + 400);
            kit.up(1);
            kit.down(2);
            kit.advance(10);
            kit.put(1, "bob", "really later").await;
            kit.up(2);
            kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap();
            for id in [1, 2] {
                assert_eq!(kit.value(id, "bob").as_deref(), Some("from the future"), "node {id}");
            }
            kit.skew(2).set(0);
            assert_eq!(
                kit.node(2).wall_ms(),
                EPOCH_MS + 10,
                "healing the fault restores the wall clock"
            );
        });
    }
}
