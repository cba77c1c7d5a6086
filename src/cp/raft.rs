//! Starting the Raft group of a node: its timing options, its storage, and bootstrap.
//!
//! BOOTSTRAP: the cluster is defined by `--peers`. When the node with the lowest id starts with
//! an empty log it initializes the group with every peer as a voter; the others wait to hear
//! from a leader. A node with data rejoins from its own log and vote.
//!
//! A node started with `--join` never bootstraps: it is added by the cluster
//! (`super::members`) and finds its membership in the log.
//!
//! Caveats: bootstrap trusts `--peers` to be the same on every node of a new cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::{BasicNode, Config, SnapshotPolicy};

use super::log_store::LogStore;
use super::network::Network;
use super::state_machine::{SmReader, StateMachineStore};
use super::{NodeId, Raft};
use crate::error::Error;
use crate::fault::FaultFilter;
use crate::limits::{RAFT_PAYLOAD_ENTRIES_MAX, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_EVERY_ENTRIES};
use crate::storage::Flusher;

/// Entries kept in the log below the latest snapshot, so a briefly lagging follower catches up
/// from the log; one further behind gets the snapshot.
const LOG_ENTRIES_KEPT_AFTER_SNAPSHOT: u64 = 100;

/// Timing of the Raft group.
///
/// FAILOVER: openraft 0.9 derives a leader lease from `election_timeout_ms_max`: a follower
/// that heard from its leader waits the lease plus a random election timeout before it
/// campaigns (checked on ticks of 1.5 heartbeats), and a voter refuses to vote while its lease
/// on the old leader runs. With the defaults that is 0.6 s + 0.4..0.6 s + up to 0.3 s when the
/// leader is only cut off. When its process is gone (connections refused), the election
/// watchdog campaigns as soon as the voters' leases ran out, about 0.8..1.0 s after the leader's
/// last answer (`cp::watchdog`), and the first write commits a round trip after the vote.
///
/// The heartbeat interval is also openraft's AppendEntries timeout (it cannot be set apart): a
/// 1 MiB entry must be sent and made durable on a follower within it, also on a loaded
/// machine, so it stays at 200 ms. The election timeout only needs to exceed two heartbeats: a
/// follower campaigns after 1.0 s or more without one (five missed heartbeats).
#[derive(Clone, Debug)]
pub struct RaftOptions {
    /// openraft also uses this as the AppendEntries timeout.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    /// Also openraft's leader lease (see above).
    pub election_timeout_ms_max: u64,
    /// Exactly-once sessions idle for longer than this expire ([`super::session`]).
    pub session_ttl_ms: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            election_timeout_ms_min: 400,
            election_timeout_ms_max: 600,
            session_ttl_ms: 10 * 60 * 1000,
        }
    }
}

impl RaftOptions {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidInput(why));
        if self.heartbeat_interval_ms < 10 {
            return bad(format!(
                "the heartbeat interval ({} ms) must be at least 10 ms",
                self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms_min < 2 * self.heartbeat_interval_ms {
            return bad(format!(
                "the minimum election timeout ({} ms) must be at least two heartbeat intervals ({} ms)",
                self.election_timeout_ms_min,
                2 * self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms_max <= self.election_timeout_ms_min {
            return bad(format!(
                "the maximum election timeout ({} ms) must exceed the minimum ({} ms)",
                self.election_timeout_ms_max, self.election_timeout_ms_min
            ));
        }
        Ok(())
    }

    fn config(&self) -> Result<Config, Error> {
        let config = Config {
            cluster_name: "capkv".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_ms_min,
            election_timeout_max: self.election_timeout_ms_max,
            install_snapshot_timeout: 10_000,
            max_payload_entries: RAFT_PAYLOAD_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: LOG_ENTRIES_KEPT_AFTER_SNAPSHOT,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::InvalidInput(format!("invalid Raft configuration: {e}")))
    }

    /// How long a leader may go without a majority's acknowledgement before it refuses writes:
    /// twice the voters' lease on it (after one lease they may elect another leader), so that a
    /// loaded machine that delays a few acknowledgements does not make a healthy leader refuse.
    pub fn check_quorum_ms(&self) -> u64 {
        2 * self.election_timeout_ms_max
    }
}

/// The pieces of a started Raft group.
pub struct Started {
    pub raft: Raft,
    pub reader: SmReader,
    pub log: LogStore,
}

/// Opens the Raft log (`<data-dir>/wal`) and the state machine (in `flusher`'s database) and
/// starts openraft.
pub async fn start(
    id: NodeId,
    options: &RaftOptions,
    flusher: &Flusher,
    fault: Arc<FaultFilter>,
) -> Result<Started, Error> {
    let config = Arc::new(options.config()?);
    let data_dir = flusher
        .data_dir()
        .ok_or_else(|| Error::Internal("the Raft log needs a data dir; this database was opened without one".into()))?;
    super::log_store::refuse_sled_log(flusher.db(), data_dir)?;
    // Recovery reads every segment: off the async worker threads.
    let wal_dir = data_dir.join("wal");
    let log = tokio::task::spawn_blocking(move || LogStore::open(&wal_dir))
        .await
        .map_err(|e| Error::Internal(format!("opening the Raft log panicked: {e}")))??;
    let sm = StateMachineStore::open(flusher)?;
    let reader = sm.reader();
    let (_, applied_membership) = reader.applied()?;
    log.ack_own_appends_early(id, &applied_membership);
    let network = Network::new(id, fault, log.own_appends());
    let raft = Raft::new(id, config, network, log.clone(), sm)
        .await
        .map_err(|e| Error::Internal(format!("cannot start Raft: {e}")))?;
    Ok(Started { raft, reader, log })
}

/// Initializes a fresh cluster from the lowest-id node; a no-op everywhere else.
pub async fn bootstrap_if_fresh(raft: &Raft, id: NodeId, peers: &BTreeMap<NodeId, String>) -> Result<(), Error> {
    let lowest = *peers.keys().next().expect("peers include this node");
    if id != lowest {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: BTreeMap<NodeId, BasicNode> = peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
    tracing::info!(?members, "fresh cluster: initializing the Raft group");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Internal(format!("cannot initialize the cluster: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_relations_are_checked() {
        assert!(RaftOptions::default().validate().is_ok());
        let o = RaftOptions {
            heartbeat_interval_ms: 250,
            ..Default::default()
        };
        assert!(o.validate().is_err(), "election timeout below two heartbeats");
        let o = RaftOptions {
            election_timeout_ms_max: 400,
            ..Default::default()
        };
        assert!(o.validate().is_err(), "max not above min");
    }
}
