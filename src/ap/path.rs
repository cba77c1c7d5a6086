//! [`Ap`]: the AP path of one node, as the services and the node see it.
//!
//! It owns this node's replica (store, clock, replication protocol over the peer gRPC
//! transport) and the node's view of which peers it can reach right now, which decides whom a
//! write is pushed to and whom it is hinted for. Request handling is in [`super::kv`].
//!
//! Caveats: every node replicates every ap keyspace to every member (voters and learners of
//! the Raft membership, or `--peers` before it exists).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::replica::{Replica, ReplicaOptions};
use super::store::ApStore;
use super::transport::GrpcTransport;
use crate::error::Error;
use crate::liveness::Reach;
use crate::storage::Flusher;

/// The AP path of a node.
pub struct Ap {
    pub(super) replica: Arc<Replica<GrpcTransport>>,
    pub(super) reach: Reach,
}

impl Ap {
    /// Opens the AP store on `flusher`'s database and the replica over gRPC to `peers`.
    pub fn open(
        id: u64,
        peers: &BTreeMap<u64, String>,
        flusher: &Flusher,
        reach: Reach,
        options: ReplicaOptions,
    ) -> Result<Ap, Error> {
        let store = ApStore::open(flusher)?;
        let transport = GrpcTransport::new(id, peers, reach.fault().clone());
        let peer_ids = peers.keys().copied().collect();
        let skew = reach.fault().clock().clone();
        let replica = Replica::new(id, peer_ids, store, transport, Arc::new(wall_clock_ms), skew, options)?;
        Ok(Ap {
            replica: Arc::new(replica),
            reach,
        })
    }

    /// Follows a membership change: `members` (addresses by id, this node may be among them)
    /// become the replicas writes go to, and a removed member's hints are dropped.
    pub fn set_members(&self, members: &BTreeMap<u64, String>) -> Result<(), Error> {
        self.replica.transport().set_peers(members);
        self.replica.set_peers(members.keys().copied())
    }

    pub fn replica(&self) -> &Arc<Replica<GrpcTransport>> {
        &self.replica
    }

    /// May an AP message to `peer` get through now? (liveness says alive, no known partition)
    pub fn reachable(&self, peer: u64) -> bool {
        self.reach.reachable(peer)
    }

    /// Live (non-deleted) keys of `keyspace` in this node's replica.
    pub fn count(&self, keyspace: &str) -> Result<usize, Error> {
        self.replica.store.count(keyspace)
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
