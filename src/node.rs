//! A capkv node: storage, the Raft group, the gRPC and HTTP servers, and the request paths.
//!
//! REQUEST PATH OF A CP OPERATION
//!
//! 1. The service checks the input (limits, names) and the keyspace's mode from local metadata.
//! 2. [`Node::route`] decides where the operation runs: here when this node leads (after the
//!    check-quorum test), at the leader when one is known and reachable (forwarded once, never
//!    again), or nowhere (`no quorum`) when no leader shows up within about one election.
//! 3. Writes go through `client_write`; reads pass `ensure_linearizable` (ReadIndex) first.
//!    A write that was proposed but not confirmed before the deadline answers "outcome unknown".
//!
//! Caveats: the check-quorum test relies on openraft's `millis_since_quorum_ack`; in the window
//! between losing the majority and noticing it (one election timeout), new writes are proposed
//! and then answer "outcome unknown" rather than "no quorum".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use tonic::transport::{Channel, Endpoint};

use crate::ap::replica::{Replica, ReplicaOptions};
use crate::ap::store::ApStore;
use crate::ap::transport::GrpcTransport;
use crate::cp::raft_node::{self, RaftOptions};
use crate::cp::{Command, NodeId, Outcome, Raft};
use crate::error::Error;
use crate::fault::FaultFilter;
use crate::keyspace::KeyspaceDef;
use crate::liveness::{Liveness, PeerState};
use crate::storage::{LogStore, SmReader};

/// How long a forwarded request's connection to the leader may take to open.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a request that waits for a leader looks again.
const ROUTE_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Everything `capkv node` is started with.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Every member's gRPC address, this node included.
    pub peers: BTreeMap<NodeId, String>,
    pub fault_injection: bool,
    pub raft: RaftOptions,
    pub ap: ReplicaOptions,
}

impl NodeOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidInput("node ids start at 1; --id 0 is not allowed".into()));
        }
        if !self.peers.contains_key(&self.id) {
            return Err(Error::InvalidInput(format!(
                "--peers must include this node (--id {}), e.g. --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
                self.id
            )));
        }
        if self.listen == self.http {
            return Err(Error::InvalidInput(format!(
                "--listen and --http are both {}; give them different ports",
                self.listen
            )));
        }
        self.raft.validate()?;
        self.ap.validate()
    }
}

/// Parses `--peers 1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, Error> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let bad = || {
            Error::InvalidInput(format!(
                "'{part}' in --peers is not ID=HOST:PORT (e.g. 1=127.0.0.1:7001)"
            ))
        };
        let (id, addr) = part.trim().split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.parse().map_err(|_| bad())?;
        if id == 0 || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(bad());
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(Error::InvalidInput(format!("node {id} appears twice in --peers")));
        }
    }
    if peers.is_empty() {
        return Err(Error::InvalidInput(
            "--peers is empty; list every member as ID=HOST:PORT".into(),
        ));
    }
    Ok(peers)
}

/// Where a CP operation runs.
pub enum Route {
    Local,
    Forward { leader: NodeId, channel: Channel },
}

/// A running node's shared state, used by every service.
pub struct Node {
    pub id: NodeId,
    pub options: NodeOptions,
    pub raft: Raft,
    pub reader: SmReader,
    pub log: LogStore,
    pub db: sled::Db,
    pub flusher: crate::storage::Flusher,
    pub fault: Arc<FaultFilter>,
    /// The AP replica of this node.
    pub ap: Arc<Replica<GrpcTransport>>,
    /// Which peers this node hears from; also gates elections (see [`crate::liveness`]).
    pub liveness: Arc<Mutex<Liveness>>,
    pub started: Instant,
    forward_channels: Mutex<HashMap<NodeId, Channel>>,
}

impl Node {
    pub async fn open(options: NodeOptions) -> Result<Arc<Node>, Error> {
        options.validate()?;
        let db = crate::storage::open(&options.data_dir)?;
        let flusher = crate::storage::Flusher::new(db.clone());
        let fault = Arc::new(FaultFilter::new(options.fault_injection));
        let started = raft_node::start(options.id, &options.raft, &flusher, fault.clone()).await?;
        let ap_store = ApStore::open(&flusher)?;
        let transport = GrpcTransport::new(options.id, &options.peers, fault.clone());
        let peer_ids = options.peers.keys().copied().collect();
        let ap = Replica::new(
            options.id,
            peer_ids,
            ap_store,
            transport,
            Arc::new(wall_clock_ms),
            options.ap.clone(),
        )?;
        let liveness = Arc::new(Mutex::new(Liveness::new(options.id, options.peers.keys().copied())));
        Ok(Arc::new(Node {
            id: options.id,
            liveness,
            raft: started.raft,
            reader: started.reader,
            log: started.log,
            db,
            flusher,
            fault,
            ap: Arc::new(ap),
            started: Instant::now(),
            forward_channels: Mutex::new(HashMap::new()),
            options,
        }))
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, openraft::BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Member ids and addresses from the replicated membership (or `--peers` before it exists).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let metrics = self.metrics();
        let members: BTreeMap<NodeId, String> = metrics
            .membership_config
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        if members.is_empty() {
            self.options.peers.clone()
        } else {
            members
        }
    }

    pub fn member_ids(&self) -> BTreeSet<NodeId> {
        self.members().keys().copied().collect()
    }

    /// The keyspace definition from this node's replica of the metadata (may lag the leader).
    pub fn local_keyspace(&self, name: &str) -> Result<Option<KeyspaceDef>, Error> {
        self.reader.keyspace(name).map_err(Error::Internal)
    }

    /// Fails with "no quorum" when this node leads but has not heard from a majority lately.
    pub fn check_quorum(&self, metrics: &RaftMetrics<NodeId, openraft::BasicNode>) -> Result<(), Error> {
        if metrics.membership_config.membership().voter_ids().count() <= 1 {
            return Ok(()); // a single voter is its own majority
        }
        let limit_ms = self.options.raft.check_quorum_ms();
        match metrics.millis_since_quorum_ack {
            Some(ms) if ms <= limit_ms => Ok(()),
            ms => Err(Error::NoQuorum(format!(
                "node {} leads term {} but no majority has acknowledged it for {}; it refuses until one does",
                self.id,
                metrics.current_term,
                ms.map_or("ever".to_string(), |ms| format!("{ms} ms"))
            ))),
        }
    }

    /// Decides where a CP operation runs, waiting up to about one election for a leader.
    pub async fn route(&self, deadline: Instant, forwarded_from: Option<NodeId>) -> Result<Route, Error> {
        let wait_until = deadline.min(Instant::now() + self.leader_wait());
        loop {
            match self.try_route(forwarded_from) {
                Ok(route) => return Ok(route),
                Err(e) if Instant::now() + ROUTE_POLL_INTERVAL >= wait_until => return Err(e),
                Err(_) => tokio::time::sleep(ROUTE_POLL_INTERVAL).await,
            }
        }
    }

    fn leader_wait(&self) -> Duration {
        Duration::from_millis(self.options.raft.election_timeout_ms_max)
    }

    fn try_route(&self, forwarded_from: Option<NodeId>) -> Result<Route, Error> {
        let metrics = self.metrics();
        if metrics.state == ServerState::Leader {
            self.check_quorum(&metrics)?;
            return Ok(Route::Local);
        }
        let Some(leader) = metrics.current_leader else {
            return Err(Error::NoQuorum(format!(
                "node {} knows no leader in term {}: it cannot reach a majority of the cluster",
                self.id, metrics.current_term
            )));
        };
        if let Some(from) = forwarded_from {
            return Err(Error::NoQuorum(format!(
                "node {} received a request forwarded by node {from} but is not the leader (node {leader} is); retry",
                self.id
            )));
        }
        if !self.fault.allows(self.id, leader) {
            return Err(Error::NoQuorum(format!(
                "node {} cannot reach the leader, node {leader}: the network between them is partitioned",
                self.id
            )));
        }
        if let Some(silence) = self.leader_silence(leader) {
            return Err(Error::NoQuorum(format!(
                "node {} has not heard from the leader, node {leader}, for {} ms: it cannot reach it",
                self.id,
                silence.as_millis()
            )));
        }
        Ok(Route::Forward {
            leader,
            channel: self.forward_channel(leader)?,
        })
    }

    /// May an AP message to `peer` get through now? (liveness says alive, no known partition)
    pub fn ap_reachable(&self, peer: NodeId) -> bool {
        let alive = self
            .liveness
            .lock()
            .expect("liveness lock is never poisoned")
            .state(peer, Instant::now());
        alive == PeerState::Alive && self.fault.allows(self.id, peer)
    }

    /// How long the leader has been silent, when liveness no longer counts it alive.
    pub fn leader_silence(&self, leader: NodeId) -> Option<Duration> {
        let now = Instant::now();
        let liveness = self.liveness.lock().expect("liveness lock is never poisoned");
        match liveness.state(leader, now) {
            PeerState::Alive => None,
            _ => Some(liveness.silence(leader, now).unwrap_or_else(|| self.started.elapsed())),
        }
    }

    fn forward_channel(&self, leader: NodeId) -> Result<Channel, Error> {
        let mut channels = self
            .forward_channels
            .lock()
            .expect("forward channel lock is never poisoned");
        if let Some(channel) = channels.get(&leader) {
            return Ok(channel.clone());
        }
        let addr =
            self.members().get(&leader).cloned().ok_or_else(|| {
                Error::Internal(format!("the leader, node {leader}, has no address in the membership"))
            })?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Internal(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(leader, channel.clone());
        Ok(channel)
    }

    /// Proposes a command on this node, which must lead, and waits for it to be applied.
    pub async fn write(&self, command: Command, deadline: Instant) -> Result<Outcome, Error> {
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(budget, self.raft.client_write(command)).await {
            Err(_) => Err(Error::OutcomeUnknown(format!(
                "node {} proposed the write but no majority confirmed it within {} ms; it may still be applied",
                self.id,
                budget.as_millis()
            ))),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(Error::NoQuorum(format!(
                "node {} lost the leadership before the write was committed (leader now: {}); it was not applied",
                self.id,
                f.leader_id.map_or("unknown".into(), |l| format!("node {l}"))
            ))),
            Ok(Err(e)) => Err(Error::Internal(format!("Raft refused the write: {e}"))),
        }
    }

    /// Makes the local state machine linearizable for a read that starts now (ReadIndex).
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), Error> {
        if cfg!(feature = "unsafe-local-reads") {
            // Negative control: a deliberately broken build that skips ReadIndex.
            return Ok(());
        }
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(budget, self.raft.ensure_linearizable()).await {
            Err(_) => Err(Error::NoQuorum(format!(
                "node {} could not confirm its leadership with a majority within {} ms",
                self.id,
                budget.as_millis()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(Error::NoQuorum(format!(
                "node {} lost the leadership while confirming a read; retry",
                self.id
            ))),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(Error::NoQuorum(format!(
                "node {} could not confirm its leadership: {q}",
                self.id
            ))),
            Ok(Err(e)) => Err(Error::Internal(format!("Raft refused the read: {e}"))),
        }
    }
}

/// Turns an outcome that names an unknown keyspace or the wrong mode into the error.
pub fn outcome_error(outcome: &Outcome, op: &str) -> Option<Error> {
    match outcome {
        Outcome::UnknownKeyspace(name) => Some(Error::UnknownKeyspace(name.clone())),
        Outcome::WrongMode { keyspace, .. } => Some(Error::Refused(format!(
            "keyspace '{keyspace}' is ap and the leader only just learned of it; retry the {op}"
        ))),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "127.0.0.1:7002");
        for bad in [
            "",
            "1=host",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=a:1,1=b:2",
            "1:127.0.0.1:7001",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad} should be refused");
        }
    }
}
