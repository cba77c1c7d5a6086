//! [`Cp`]: the CP path of one node, as the services and the node see it.
//!
//! It owns the Raft group (openraft with capkv's log store, state machine and network), a read
//! handle on the state machine, and what routing needs: the node's view of which peers it can
//! reach, the member addresses, and one reusable connection per leader for forwarding. Its
//! behaviour is spread over files by concern, each an `impl Cp` block: [`super::route`],
//! [`super::propose`], [`super::kv`], [`super::keyspaces`].
//!
//! Caveats: members come from the replicated membership; before the group has one (a fresh
//! node waiting for bootstrap), from `--peers` (a node started with `--join`: itself only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use openraft::RaftMetrics;
use tonic::transport::Channel;

use super::batch::WriteBatcher;
use super::log_store::LogStore;
use super::propose::{confirm_leadership, propose_entry, WriteError};
use super::raft::{self, RaftOptions};
use super::read_index::ReadBatcher;
use super::state_machine::SmReader;
use super::{NodeId, Raft};
use crate::error::Error;
use crate::keyspace::KeyspaceDef;
use crate::liveness::Reach;
use crate::storage::Flusher;

/// The CP path of a node.
pub struct Cp {
    pub(super) id: NodeId,
    pub(super) raft: Raft,
    pub(super) reader: SmReader,
    pub(super) log: LogStore,
    pub(super) options: RaftOptions,
    pub(super) reach: Reach,
    /// Member addresses from `--peers`, used until the replicated membership exists.
    pub(super) peers: BTreeMap<NodeId, String>,
    /// One lazily connecting channel per leader (and its address), reused by every forwarded
    /// request.
    pub(super) forward_channels: Mutex<HashMap<(NodeId, String), Channel>>,
    /// Linearizable reads, confirmed in batches.
    pub(super) reads: ReadBatcher,
    /// Writes, proposed in batches.
    pub(super) writes: WriteBatcher<WriteError>,
}

impl Cp {
    /// Opens the Raft storage on `flusher`'s database and starts the group.
    pub async fn start(
        id: NodeId,
        options: RaftOptions,
        flusher: &Flusher,
        reach: Reach,
        peers: BTreeMap<NodeId, String>,
    ) -> Result<Cp, Error> {
        let started = raft::start(id, &options, flusher, reach.fault().clone()).await?;
        let raft = started.raft.clone();
        let reads = ReadBatcher::start(move |deadline| {
            let raft = raft.clone();
            async move { confirm_leadership(&raft, id, deadline).await }
        });
        let raft = started.raft.clone();
        let writes = WriteBatcher::start(move |command| {
            let raft = raft.clone();
            async move { propose_entry(&raft, command).await }
        });
        Ok(Cp {
            id,
            reads,
            writes,
            raft: started.raft,
            reader: started.reader,
            log: started.log,
            options,
            reach,
            peers,
            forward_channels: Mutex::new(HashMap::new()),
        })
    }

    /// Initializes a fresh cluster when this is the lowest-id member; a no-op otherwise.
    pub async fn bootstrap_if_fresh(&self) -> Result<(), Error> {
        raft::bootstrap_if_fresh(&self.raft, self.id, &self.peers).await
    }

    /// Starts the election watchdog (see [`super::watchdog`]).
    pub fn spawn_watchdog(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(super::watchdog::run(
            self.raft.clone(),
            self.options.clone(),
            self.reach.clone(),
        ))
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("Raft did not shut down cleanly: {e}");
        }
    }

    /// The Raft instance, for the peer service that feeds it RPCs.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn options(&self) -> &RaftOptions {
        &self.options
    }

    pub fn reader(&self) -> &SmReader {
        &self.reader
    }

    /// Raft entries currently held in the log (for metrics).
    pub fn log_entries(&self) -> usize {
        self.log.len()
    }

    /// The commit index this node persisted last (learned from the leader).
    pub fn persisted_commit_index(&self) -> u64 {
        self.log.committed_index()
    }

    /// Whether this node leads now (a look at openraft's metrics without copying them).
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, openraft::BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Member ids and addresses from the replicated membership (or `--peers` before it exists).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let members: BTreeMap<NodeId, String> = self
            .metrics()
            .membership_config
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        if members.is_empty() {
            self.peers.clone()
        } else {
            members
        }
    }

    pub fn member_ids(&self) -> BTreeSet<NodeId> {
        self.members().keys().copied().collect()
    }

    /// Has this node's Raft group a membership yet? A node started with `--join` has none
    /// until the leader's first messages reach it.
    pub fn has_membership(&self) -> bool {
        self.metrics().membership_config.nodes().next().is_some()
    }

    /// The voters of the replicated membership (empty before it exists).
    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.metrics().membership_config.membership().voter_ids().collect()
    }

    /// The keyspace definition from this node's replica of the metadata (may lag the leader).
    pub fn local_keyspace(&self, name: &str) -> Result<Option<KeyspaceDef>, Error> {
        self.reader.keyspace(name)
    }

    /// Every keyspace definition in this node's replica of the metadata.
    pub fn local_keyspaces(&self) -> Result<Vec<KeyspaceDef>, Error> {
        self.reader.keyspaces()
    }
}
