//! A capkv node: its storage, its two paths, and the state the services share.
//!
//! [`Node::open`] opens the node's database, starts the CP path (the Raft group, [`Cp`]) and
//! the AP path (the LWW replica, [`Ap`]) on it, and builds the node's view of its peers
//! ([`Reach`]: liveness plus the fault filter) that both paths consult. [`run`] is `capkv node`:
//! it binds the ports, serves the gRPC and HTTP APIs, starts the background tasks (liveness
//! pings, the election watchdog, AP repair, metrics), and stops everything in order.
//!
//! Caveats: one sled database per node holds both paths' trees (the Raft log alone lives in
//! `<data-dir>/wal`); they share one group-commit flusher.

pub mod membership;
pub mod options;
pub mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub use options::{own_peer_address, parse_peers, NodeOptions};

use crate::ap::path::Ap;
use crate::cp::path::Cp;
use crate::cp::NodeId;
use crate::error::Error;
use crate::fault::FaultFilter;
use crate::keyspace::KeyspaceDef;
use crate::liveness::{Liveness, Reach};
use crate::storage::Flusher;

/// A running node's shared state, used by every service.
pub struct Node {
    id: NodeId,
    options: NodeOptions,
    db: sled::Db,
    flusher: Flusher,
    reach: Reach,
    cp: Cp,
    ap: Ap,
    started: Instant,
}

impl Node {
    pub async fn open(options: NodeOptions) -> Result<Arc<Node>, Error> {
        options.validate()?;
        let db = crate::storage::open(&options.data_dir)?;
        let flusher = Flusher::durable(db.clone(), &options.data_dir);
        let fault = Arc::new(FaultFilter::new(options.fault_injection));
        let liveness = Liveness::new(options.id, options.peers.keys().copied());
        let reach = Reach::new(options.id, liveness, fault);
        let cp = Cp::start(
            options.id,
            options.raft.clone(),
            &flusher,
            reach.clone(),
            options.peers.clone(),
        )
        .await?;
        let ap = Ap::open(options.id, &options.peers, &flusher, reach.clone(), options.ap.clone())?;
        Ok(Arc::new(Node {
            id: options.id,
            db,
            flusher,
            reach,
            cp,
            ap,
            started: Instant::now(),
            options,
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The CP path: Raft, routing, the state machine.
    pub fn cp(&self) -> &Cp {
        &self.cp
    }

    /// The AP path: the LWW replica.
    pub fn ap(&self) -> &Ap {
        &self.ap
    }

    /// Which peers this node hears from and may send to.
    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    pub fn fault(&self) -> &Arc<FaultFilter> {
        self.reach.fault()
    }

    /// How long the node has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Member ids and addresses (the replicated membership, or `--peers` before it exists).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.cp.members()
    }

    /// Hands the replicated membership to liveness and the ap replica (see [`membership`]);
    /// a no-op while the group has none.
    pub fn apply_membership(&self) {
        let set = self.cp.member_set();
        if set.nodes.is_empty() {
            return;
        }
        tracing::info!(members = ?set.nodes, voters = ?set.voters, "membership");
        self.reach.set_members(set.nodes.keys().copied(), set.voters.clone());
        if let Err(e) = self.ap.set_members(&set.nodes) {
            tracing::error!("following the membership in the ap replica: {e}");
        }
    }

    /// This node's gRPC address as the cluster knows it.
    pub fn address(&self) -> String {
        self.options
            .peers
            .get(&self.id)
            .cloned()
            .unwrap_or_else(|| self.options.listen.to_string())
    }

    /// The keyspace definition from this node's replica of the metadata (may lag the leader).
    pub fn local_keyspace(&self, name: &str) -> Result<Option<KeyspaceDef>, Error> {
        self.cp.local_keyspace(name)
    }

    /// Bytes the node's storage takes on disk: the sled database and the Raft log's segments.
    pub fn storage_bytes(&self) -> u64 {
        let wal = std::fs::read_dir(self.options.data_dir.join("wal"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.db.size_on_disk().unwrap_or(0) + wal
    }

    /// Writes and reads back a probe record: does this node's storage work?
    pub fn probe_storage(&self) -> Result<(), Error> {
        let tree = self.db.open_tree("health")?;
        let stamp = self.started.elapsed().as_nanos().to_be_bytes();
        tree.insert("probe", &stamp[..])?;
        match tree.get("probe")? {
            Some(_) => Ok(()),
            None => Err(Error::Storage("a written probe could not be read back".into())),
        }
    }

    /// Makes everything written so far durable (used at shutdown).
    pub async fn flush(&self) -> Result<(), Error> {
        self.flusher
            .flush()
            .await
            .map_err(|e| Error::Storage(format!("the final flush failed: {e}")))
    }
}
