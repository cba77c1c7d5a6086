//! An in-process cluster of replicas for unit tests: real replica code and real (temporary)
//! sled stores, wired by an in-memory transport instead of sockets, with a hand-driven wall clock.
//!
//! Unlike the seeded simulation (`ap::sim_test`), nothing here is random and nothing is delayed:
//! a message to a node that is up is handled at once, a message to a node that is down fails at
//! once with [`Unreachable`]. Each test sets up exactly the divergence it wants to check:
//! [`Kit::down`] a node, write while it is down (hints are queued but not delivered until the
//! test says so), [`Kit::up`] it again, then drive one mechanism and look at the stores.
//!
//! Like gRPC between real nodes, the kit refuses a message over the peer message limit (and
//! records the largest it carried), so tests show that batches stay bounded by bytes.
//!
//! CAVEATS: the kit has no timeouts, drops or reordering; those live in the simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::super::store::ApStore;
use super::super::version::Versioned;
use super::{Replica, ReplicaOptions, Request, Response, Transport, Unreachable};
use crate::error::Error;
use crate::fault::ClockSkew;
use crate::limits::PEER_MESSAGE_BYTES_MAX;
use crate::storage::codec::encode;

pub const KEYSPACE: &str = "carts";

/// Where the kit's wall clock starts (a realistic epoch in ms).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

#[derive(Default)]
struct Net {
    nodes: RwLock<BTreeMap<u64, Arc<Replica<KitTransport>>>>,
    down: RwLock<BTreeSet<u64>>,
    /// Nodes that answer every request with this message instead of handling it.
    forged: RwLock<BTreeMap<u64, Response>>,
    /// The largest encoded message (request or answer) the network carried.
    largest_message: AtomicUsize,
    /// Requests the network carried.
    requests: AtomicUsize,
}

impl Net {
    /// Refuses a message over the peer message limit, as gRPC does, and records its size.
    fn carry<M: serde::Serialize>(&self, message: &M, to: u64) -> Result<(), Unreachable> {
        let size = encode(message).len();
        self.largest_message.fetch_max(size, Ordering::SeqCst);
        if size > PEER_MESSAGE_BYTES_MAX {
            return Err(Unreachable(format!(
                "a message of {size} bytes to node {to} is over the peer message limit ({PEER_MESSAGE_BYTES_MAX})"
            )));
        }
        Ok(())
    }
}

/// The in-memory transport of one kit node.
pub struct KitTransport {
    from: u64,
    /// Weak: the network holds the replicas, which hold their transports, so a strong handle
    /// here would keep every replica (and its sled database) alive after the test.
    net: std::sync::Weak<Net>,
}

impl Transport for KitTransport {
    async fn call(&self, to: u64, request: Request, _timeout: Duration) -> Result<Response, Unreachable> {
        let net = self
            .net
            .upgrade()
            .ok_or_else(|| Unreachable("the test kit is gone".into()))?;
        let down = net.down.read().unwrap().clone();
        if down.contains(&to) || down.contains(&self.from) {
            return Err(Unreachable(format!("node {to} is down in the test kit")));
        }
        if let Some(forged) = net.forged.read().unwrap().get(&to).cloned() {
            return Ok(forged);
        }
        let target = net.nodes.read().unwrap().get(&to).cloned();
        let target = target.ok_or_else(|| Unreachable(format!("node {to} is not in the test kit")))?;
        net.carry(&request, to)?;
        net.requests.fetch_add(1, Ordering::SeqCst);
        let answer = target
            .handle(self.from, request)
            .await
            .map_err(|e| Unreachable(format!("node {to} answered with an error: {e}")))?;
        net.carry(&answer, self.from)?;
        Ok(answer)
    }
}

/// Replicas 1..=n sharing one in-memory network and one wall clock.
pub struct Kit {
    net: Arc<Net>,
    wall_ms: Arc<AtomicU64>,
    skews: BTreeMap<u64, Arc<ClockSkew>>,
}

/// A store on a temporary sled database ([`crate::storage::temporary_db`]).
pub fn temp_store() -> ApStore {
    ApStore::open(&crate::storage::Flusher::new(crate::storage::temporary_db())).expect("the AP store opens")
}

/// Options whose hint and tombstone horizons are short enough to cross with [`Kit::advance`].
pub fn short_horizons() -> ReplicaOptions {
    ReplicaOptions {
        hint_lifetime_ms: 1_000,
        tombstone_gc_after_ms: 2_000,
        ..Default::default()
    }
}

impl Kit {
    pub fn new(n: u64, options: ReplicaOptions) -> Kit {
        let mut kit = Kit {
            net: Arc::new(Net::default()),
            wall_ms: Arc::new(AtomicU64::new(EPOCH_MS)),
            skews: BTreeMap::new(),
        };
        let ids: Vec<u64> = (1..=n).collect();
        for id in &ids {
            let wall = {
                let wall_ms = kit.wall_ms.clone();
                Arc::new(move || wall_ms.load(Ordering::SeqCst))
            };
            let transport = KitTransport {
                from: *id,
                net: Arc::downgrade(&kit.net),
            };
            let replica = Replica::new(
                *id,
                ids.clone(),
                temp_store(),
                transport,
                wall,
                kit.skews.entry(*id).or_default().clone(),
                options.clone(),
            )
            .expect("valid options");
            kit.net.nodes.write().unwrap().insert(*id, Arc::new(replica));
        }
        kit
    }

    pub fn node(&self, id: u64) -> Arc<Replica<KitTransport>> {
        self.net.nodes.read().unwrap()[&id].clone()
    }

    /// The clock skew fault of node `id` (what `capkv fault clock` sets).
    pub fn skew(&self, id: u64) -> &ClockSkew {
        &self.skews[&id]
    }

    /// Takes a node off the network: messages to and from it fail.
    pub fn down(&self, id: u64) {
        self.net.down.write().unwrap().insert(id);
    }

    pub fn up(&self, id: u64) {
        self.net.down.write().unwrap().remove(&id);
    }

    /// Makes `id` answer every message with `answer` (a peer that speaks another protocol).
    pub fn forge(&self, id: u64, answer: Response) {
        self.net.forged.write().unwrap().insert(id, answer);
    }

    /// Is `id` on the network? (the liveness view handed to writes and quorum reads)
    pub fn reachable(&self) -> impl Fn(u64) -> bool + '_ {
        |id| !self.net.down.read().unwrap().contains(&id)
    }

    /// The largest encoded message the kit's network carried so far.
    pub fn largest_message(&self) -> usize {
        self.net.largest_message.load(Ordering::SeqCst)
    }

    /// Requests the network carried so far.
    pub fn requests(&self) -> usize {
        self.net.requests.load(Ordering::SeqCst)
    }

    /// Moves every node's wall clock forward.
    pub fn advance(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Writes `value` (None: delete) on `node` with `acks`, treating down nodes as unreachable.
    pub async fn write(&self, node: u64, key: &str, value: Option<&str>, acks: usize) -> Result<Versioned, Error> {
        let value = value.map(|v| v.as_bytes().to_vec());
        self.node(node)
            .write(KEYSPACE, key.as_bytes(), value, acks, self.reachable(), far())
            .await
    }

    pub async fn put(&self, node: u64, key: &str, value: &str) -> Versioned {
        self.write(node, key, Some(value), 1)
            .await
            .expect("a local put succeeds")
    }

    /// The value `node` holds for `key` (tombstones included, as `Some(None)`).
    pub fn stored(&self, node: u64, key: &str) -> Option<Option<String>> {
        let v = self
            .node(node)
            .store
            .get(KEYSPACE, key.as_bytes())
            .expect("the store reads");
        v.map(|v| v.value.map(|b| String::from_utf8(b).expect("kit values are text")))
    }

    /// The live value `node` holds for `key`.
    pub fn value(&self, node: u64, key: &str) -> Option<String> {
        self.stored(node, key).flatten()
    }
}

/// A deadline no kit test reaches.
pub fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Runs a test body on a current-thread runtime.
pub fn run<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime starts")
        .block_on(body)
}
