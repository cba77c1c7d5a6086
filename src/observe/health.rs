//! Health of a node: storage works, a leader is known, the replica keeps up.
//!
//! `ok`: storage works and a leader is known with the local replica caught up;
//! `degraded`: a leader is known but this replica lags it, or a scheduled backup is overdue;
//! `failing`: no leader known, or storage does not work. `/health` answers 200 unless failing.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde::Serialize;

use crate::node::Node;
use crate::proto;

/// Applied entries a replica may trail its last log entry by and still count as caught up.
const APPLY_LAG_ENTRIES_MAX: u64 = 1000;

#[derive(Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub storage: Check,
    pub raft: Check,
    pub memory_rss_bytes: Option<u64>,
    pub storage_bytes: u64,
    pub fault_injection: bool,
    pub partition: Vec<Vec<u64>>,
    pub peers: Vec<PeerReport>,
    /// Scheduled backups (absent without `--backup-every`): not ok when one is overdue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Check>,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub id: u64,
    pub state: &'static str,
    pub last_heard_ms: Option<u64>,
}

/// Liveness of every peer as this node sees it.
pub fn peer_liveness(node: &Node) -> Vec<PeerReport> {
    let now = std::time::Instant::now();
    node.reach().with_liveness(|liveness| {
        liveness
            .peers()
            .map(|id| PeerReport {
                id,
                state: liveness.state(id, now).as_str(),
                last_heard_ms: liveness.silence(id, now).map(|d| d.as_millis() as u64),
            })
            .collect()
    })
}

impl HealthReport {
    pub fn serving(&self) -> bool {
        self.status != "failing"
    }
}

pub fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn storage_check(node: &Node) -> Check {
    match node.probe_storage() {
        Ok(()) => Check {
            ok: true,
            detail: "read and write work".into(),
        },
        Err(e) => Check {
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// The commit index as far as this node knows it (persisted by the log store).
pub fn commit_index(node: &Node) -> u64 {
    let m = node.cp().metrics();
    // A leader's commit index is at least what it has applied; followers learn it from the leader.
    m.last_applied
        .map_or(0, |l| l.index)
        .max(node.cp().persisted_commit_index())
}

fn memory_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub fn report(node: &Node) -> HealthReport {
    let m = node.cp().metrics();
    let storage = storage_check(node);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    let raft = match m.current_leader {
        None => Check {
            ok: false,
            detail: format!("no leader known in term {}", m.current_term),
        },
        Some(leader) if leader != node.id() && node.cp().leader_silence(leader).is_some() => Check {
            ok: false,
            detail: format!("the leader, node {leader}, has not been heard from lately: it is unreachable"),
        },
        Some(leader) if leader == node.id() && node.cp().check_quorum(&m).is_err() => Check {
            ok: false,
            detail: "this node leads but no majority has acknowledged it lately".into(),
        },
        Some(leader) if last_log.saturating_sub(applied) > APPLY_LAG_ENTRIES_MAX => Check {
            ok: true,
            detail: format!("leader is node {leader}; this replica lags: applied {applied} of {last_log}"),
        },
        Some(leader) => Check {
            ok: true,
            detail: format!("leader is node {leader}; applied {applied}"),
        },
    };
    let backup =
        crate::backup::schedule::health(m.current_leader == Some(node.id())).map(|(ok, detail)| Check { ok, detail });
    let overdue = backup.as_ref().is_some_and(|b| !b.ok);
    let lagging = last_log.saturating_sub(applied) > APPLY_LAG_ENTRIES_MAX || overdue;
    let status = match (storage.ok && raft.ok, lagging) {
        (false, _) => "failing",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    HealthReport {
        status,
        node_id: node.id(),
        role: role(m.state).to_string(),
        term: m.current_term,
        leader_id: m.current_leader,
        storage,
        raft,
        memory_rss_bytes: memory_rss_bytes(),
        storage_bytes: node.storage_bytes(),
        fault_injection: node.fault().enabled(),
        partition: node
            .fault()
            .groups()
            .into_iter()
            .map(|g| g.into_iter().collect())
            .collect(),
        peers: peer_liveness(node),
        backup,
    }
}

/// The node's own view, for `capkv cluster status`.
pub fn status(node: &Node) -> proto::StatusResponse {
    let m = node.cp().metrics();
    let health = report(node);
    proto::StatusResponse {
        node_id: node.id(),
        address: node.address(),
        http_address: node.options().http.to_string(),
        role: role(m.state).to_string(),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        commit_index: commit_index(node),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        health: health.status.to_string(),
        members: node
            .members()
            .into_iter()
            .map(|(id, address)| proto::Member { id, address })
            .collect(),
        millis_since_quorum_ack: m.millis_since_quorum_ack.map_or(-1, |ms| ms as i64),
        fault_injection: node.fault().enabled(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        peers: peer_liveness(node)
            .into_iter()
            .map(|p| proto::PeerLiveness {
                id: p.id,
                state: p.state.to_string(),
                last_heard_ms: p.last_heard_ms.map_or(-1, |ms| ms as i64),
            })
            .collect(),
    }
}

/// Keeps grpc.health.v1 in step with the node's health: SERVING unless failing.
pub async fn run_grpc_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    loop {
        let status = if report(&node).serving() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        for service in ["", "capkv.v1.Kv", "capkv.v1.Keyspaces", "capkv.v1.Cluster"] {
            reporter.set_service_status(service, status).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
