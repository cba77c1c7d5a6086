//! The AP replication protocol of one node, one concern per file:
//!
//! - [`protocol`]: the four peer messages and the [`Transport`] that carries them;
//! - [`write`](mod@write): a coordinated write (stamp, store, push, count acks);
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
//! flushes, and then pushes it to every peer. A peer that liveness says is unreachable, or that
//! does not answer the push, gets a hint instead: a persisted copy delivered when it is back.
//! With `acks = N` the coordinator answers only once N replicas (itself included) stored the
//! write; it refuses up front (nothing written) when fewer than N replicas are reachable, and
//! answers "outcome unknown" when they are reachable but do not confirm in time.
//!
//! ANTI-ENTROPY: each round a node compares per-keyspace bucket digests with a few random peers
//! and exchanges the entries of differing buckets both ways; both sides merge by LWW.
//!
//! TOMBSTONES are collected only when every peer was last seen holding exactly the same bucket
//! (so it holds the tombstone), and only when the tombstone is older than the hint lifetime (so
//! no hint of an older write can still arrive and resurrect the key).
//!
//! CAVEATS: every node holds every key (no partitioning of the key space); a digest round scans
//! the keyspace locally; hints older than their lifetime are dropped (counted) and left to
//! anti-entropy.

pub mod anti_entropy;
pub mod hints;
pub mod inbound;
pub mod protocol;
pub mod quorum_read;
pub mod tombstones;
pub mod write;

#[cfg(test)]
pub(crate) mod testkit;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::hlc::{Hlc, Timestamp};
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
    /// Hints older than this are dropped at delivery (counted, and left to anti-entropy).
    pub hint_lifetime_ms: u64,
    /// Tombstones younger than this are never collected; must exceed the hint lifetime.
    pub tombstone_gc_after_ms: u64,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            anti_entropy_interval_ms: 1000,
            anti_entropy_fanout: 2,
            push_timeout_ms: 1000,
            hints_per_peer_max: 100_000,
            hint_lifetime_ms: 3 * 3600 * 1000,
            tombstone_gc_after_ms: 4 * 3600 * 1000,
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
        if self.tombstone_gc_after_ms <= self.hint_lifetime_ms {
            return bad(format!(
                "tombstones ({} ms) must outlive hints ({} ms), or a late hint could resurrect a deleted key",
                self.tombstone_gc_after_ms, self.hint_lifetime_ms
            ));
        }
        Ok(())
    }
}

/// Counters of the AP path (exported as metrics by the node).
#[derive(Debug, Default)]
pub struct Stats {
    pub pushes_applied: AtomicU64,
    pub keys_repaired: AtomicU64,
    pub anti_entropy_rounds: AtomicU64,
    pub hints_stored: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub hints_dropped_full: AtomicU64,
    pub hints_dropped_expired: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub read_repairs: AtomicU64,
    /// Wall ms at which the last anti-entropy round found every contacted peer in sync.
    pub last_in_sync_ms: AtomicU64,
}

pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Replica<T: Transport> {
    pub id: u64,
    peers: Vec<u64>,
    pub store: ApStore,
    transport: T,
    clock: Mutex<Hlc>,
    wall: WallClock,
    /// Injected clock skew (fault injection), added to `wall`.
    skew: Arc<ClockSkew>,
    pub options: ReplicaOptions,
    pub stats: Stats,
    /// For (peer, keyspace, bucket): our bucket digest when the peer was last seen equal.
    in_sync: Mutex<HashMap<(u64, String, usize), u64>>,
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
            peers,
            store,
            transport,
            clock: Mutex::new(clock),
            wall,
            skew,
            options,
            stats: Stats::default(),
            in_sync: Mutex::new(HashMap::new()),
        })
    }

    pub fn peers(&self) -> &[u64] {
        &self.peers
    }

    /// The node's wall clock in ms, including any injected skew.
    pub fn wall_ms(&self) -> u64 {
        self.skew.apply((self.wall)())
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

    fn tick(&self) -> Timestamp {
        let wall = self.wall_ms();
        self.clock.lock().expect("clock lock is never poisoned").now(wall)
    }

    fn observe(&self, t: Timestamp) {
        let wall = self.wall_ms();
        self.clock
            .lock()
            .expect("clock lock is never poisoned")
            .observe(t, wall);
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
        ];
        for (options, expected) in cases {
            let err = options.validate().unwrap_err();
            assert_eq!(err.exit_code(), 5, "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn an_injected_clock_skew_stamps_writes_and_decides_last_writer_wins() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.skew(2).set(60_000);
            assert_eq!(
                (kit.node(2).wall_ms(), kit.node(2).clock_offset_ms()),
                (EPOCH_MS + 60_000, 60_000)
            );
            kit.down(1);
            let skewed = kit.put(2, "bob", "from the future").await;
            assert_eq!(skewed.version.hlc.physical_ms, EPOCH_MS + 60_000);
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
