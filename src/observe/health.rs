//! Health of a node: storage works, a leader is known, the replica keeps up.
//!
//! `ok`: storage works and a leader is known with the local replica caught up;
//! `degraded`: a leader is known but this replica lags it, or a scheduled backup is overdue;
//! `failing`: no leader known, or storage does not work. `/health` answers 200 unless failing.
//!
//! PROBES: two verdicts for orchestrators, each a [`Check`]:
//! - [`livez`]: the process runs and its storage answers a write and a read. It never depends
//!   on the network, so a liveness probe does not restart the minority side of a partition
//!   (restarting it would not help, and would throw away its ap writes' chance to be repaired).
//! - [`readyz`]: this node can serve requests of a keyspace's mode. For cp: storage works, a
//!   leader is known and reachable, and this replica is caught up (not lagging by more than
//!   [`APPLY_LAG_ENTRIES_MAX`]). For ap: storage works (a node serves ap keyspaces from its own
//!   replica through any partition). Without a keyspace, the node is judged by the modes it
//!   serves: cp when it knows a cp keyspace or none at all (creating a keyspace needs Raft),
//!   ap when every keyspace it knows is ap.
//!
//! Caveats: readiness is judged per node and per mode, not per key; a node that knows of no
//! keyspace yet (metadata still replicating) is judged as cp.

use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use serde::Serialize;

use crate::error::Error;
use crate::mode::Mode;
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

/// Entries this replica has yet to apply, when it trails its last log entry by too many.
fn apply_lag(m: &RaftMetrics<u64, openraft::BasicNode>) -> Option<(u64, u64)> {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    (last_log.saturating_sub(applied) > APPLY_LAG_ENTRIES_MAX).then_some((applied, last_log))
}

/// Is a leader known, reachable, and (when it is this node) acknowledged by a majority?
fn raft_check(node: &Node, m: &RaftMetrics<u64, openraft::BasicNode>) -> Check {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    match m.current_leader {
        None => Check {
            ok: false,
            detail: format!("no leader known in term {}", m.current_term),
        },
        Some(leader) if leader != node.id() && node.cp().leader_silence(leader).is_some() => Check {
            ok: false,
            detail: format!("the leader, node {leader}, has not been heard from lately: it is unreachable"),
        },
        Some(leader) if leader == node.id() && node.cp().check_quorum(m).is_err() => Check {
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
    }
}

pub fn report(node: &Node) -> HealthReport {
    let m = node.cp().metrics();
    let storage = storage_check(node);
    let raft = raft_check(node, &m);
    let backup =
        crate::backup::schedule::health(m.current_leader == Some(node.id())).map(|(ok, detail)| Check { ok, detail });
    let overdue = backup.as_ref().is_some_and(|b| !b.ok);
    let lagging = apply_lag(&m).is_some() || overdue;
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

/// The liveness probe: the process answers and its storage works. Never the network.
pub fn livez(node: &Node) -> Check {
    storage_check(node)
}

/// The readiness probe for `keyspace`'s mode, or for the modes this node serves (see PROBES).
/// An unknown keyspace is an error (the probe is misconfigured, not the node unready).
pub fn readyz(node: &Node, keyspace: Option<&str>) -> Result<Check, Error> {
    let mode = match keyspace {
        Some(name) => {
            crate::keyspace::validate_name(name)?;
            node.local_keyspace(name)?
                .ok_or_else(|| Error::UnknownKeyspace(name.to_string()))?
                .mode
        }
        None => served_mode(&node.cp().local_keyspaces()?),
    };
    let m = node.cp().metrics();
    let raft = match apply_lag(&m) {
        Some((applied, last_log)) => Check {
            ok: false,
            detail: format!("this replica is catching up: applied {applied} of {last_log}"),
        },
        None => raft_check(node, &m),
    };
    Ok(readiness(mode, storage_check(node), raft))
}

/// The mode a node is judged by when the probe names no keyspace: ap only when every keyspace
/// it knows is ap (and it knows at least one).
fn served_mode(keyspaces: &[crate::keyspace::KeyspaceDef]) -> Mode {
    if !keyspaces.is_empty() && keyspaces.iter().all(|k| k.mode == Mode::Ap) {
        Mode::Ap
    } else {
        Mode::Cp
    }
}

/// Readiness from the checks: storage always; for cp also Raft (leader known, caught up).
fn readiness(mode: Mode, storage: Check, raft: Check) -> Check {
    if !storage.ok {
        return Check {
            ok: false,
            detail: format!("storage: {}", storage.detail),
        };
    }
    match mode {
        Mode::Ap => Check {
            ok: true,
            detail: "serves ap keyspaces from its own replica".into(),
        },
        Mode::Cp if raft.ok => Check {
            ok: true,
            detail: format!("serves cp keyspaces: {}", raft.detail),
        },
        Mode::Cp => Check {
            ok: false,
            detail: format!("cannot serve cp keyspaces: {}", raft.detail),
        },
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

/// How often the gRPC health service re-reads the node's Raft verdict (in memory, cheap).
const GRPC_HEALTH_EVERY: Duration = Duration::from_millis(500);
/// How often it writes a storage probe while storage works. A probe is a sled write that the
/// flusher then syncs: every half second on each node was a steady disk write at idle.
const STORAGE_PROBE_EVERY: Duration = Duration::from_secs(5);

/// Keeps grpc.health.v1 in step with the node's health: SERVING unless failing (the verdict of
/// [`report`], computed from its two checks alone). A Raft change shows within
/// [`GRPC_HEALTH_EVERY`], a storage failure within [`STORAGE_PROBE_EVERY`]; failing storage is
/// probed at every turn, so its recovery shows as fast as a Raft change. Statuses are written
/// only when they change, so watchers wake for changes only.
pub async fn run_grpc_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut storage_probed: Option<(std::time::Instant, bool)> = None;
    let mut reported = None;
    loop {
        let storage_ok = match storage_probed {
            Some((at, true)) if at.elapsed() < STORAGE_PROBE_EVERY => true,
            _ => {
                let ok = storage_check(&node).ok;
                storage_probed = Some((std::time::Instant::now(), ok));
                ok
            }
        };
        let status = if storage_ok && raft_check(&node, &node.cp().metrics()).ok {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if reported != Some(status) {
            for service in ["", "capkv.v1.Kv", "capkv.v1.Keyspaces", "capkv.v1.Cluster"] {
                reporter.set_service_status(service, status).await;
            }
            reported = Some(status);
        }
        tokio::time::sleep(GRPC_HEALTH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::KeyspaceDef;

    fn check(ok: bool) -> Check {
        Check {
            ok,
            detail: if ok { "fine" } else { "broken" }.into(),
        }
    }

    #[test]
    fn ap_readiness_ignores_raft_and_cp_needs_it() {
        assert!(
            readiness(Mode::Ap, check(true), check(false)).ok,
            "ap serves through a partition"
        );
        assert!(!readiness(Mode::Cp, check(true), check(false)).ok);
        assert!(readiness(Mode::Cp, check(true), check(true)).ok);
        for mode in [Mode::Ap, Mode::Cp] {
            let r = readiness(mode, check(false), check(true));
            assert!(!r.ok && r.detail.starts_with("storage"), "{r:?}");
        }
    }

    #[test]
    fn a_node_is_judged_ap_only_when_all_it_serves_is_ap() {
        let def = |name: &str, mode| KeyspaceDef {
            name: name.into(),
            mode,
            created_revision: 1,
        };
        assert_eq!(served_mode(&[]), Mode::Cp, "no keyspace yet: creating one needs Raft");
        assert_eq!(served_mode(&[def("a", Mode::Ap), def("b", Mode::Ap)]), Mode::Ap);
        assert_eq!(served_mode(&[def("a", Mode::Ap), def("b", Mode::Cp)]), Mode::Cp);
    }
}
