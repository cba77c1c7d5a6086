//! `cluster up|down|status`, the command-line side. The local launcher itself lives in
//! [`crate::cluster`] and knows nothing of the CLI; `status` asks every endpoint for its own
//! view and renders the answers side by side.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{table, View};
use super::ClientOverrides;
use crate::client::Client;
use crate::cluster;
use crate::error::Error;
use crate::proto;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Start a local cluster of N nodes on 127.0.0.1 and wait until it is healthy.
    Up(cluster::UpArgs),
    /// Stop a cluster started with `cluster up --detach`.
    Down {
        #[arg(long, default_value = "./capkv-data")]
        data_dir: PathBuf,
    },
    /// Show every node's role, term, indexes and health.
    Status,
}

/// `cluster status -o json`: every endpoint's answer, and the leader they agree on (0: none).
#[derive(Debug, Serialize)]
pub struct ClusterStatusView {
    pub nodes: Vec<NodeStatusView>,
    pub leader_id: u64,
    #[serde(skip)]
    pub leaders: BTreeSet<u64>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatusView {
    /// null when the endpoint did not answer.
    pub id: Option<u64>,
    pub address: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub raft: Option<RaftView>,
    pub health: String,
}

#[derive(Debug, Serialize)]
pub struct RaftView {
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Serialize)]
pub struct PeerView {
    pub id: u64,
    pub state: String,
    pub last_heard_ms: i64,
}

impl NodeStatusView {
    fn new(address: &str, status: Result<proto::StatusResponse, Error>) -> Self {
        match status {
            Ok(s) => Self {
                id: Some(s.node_id),
                address: address.into(),
                reachable: true,
                error: None,
                health: s.health,
                raft: Some(RaftView {
                    role: s.role,
                    term: s.term,
                    leader_id: s.leader_id,
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    last_log_index: s.last_log_index,
                    snapshot_index: s.snapshot_index,
                    peers: s
                        .peers
                        .into_iter()
                        .map(|p| PeerView {
                            id: p.id,
                            state: p.state,
                            last_heard_ms: p.last_heard_ms,
                        })
                        .collect(),
                }),
            },
            Err(e) => Self {
                id: None,
                address: address.into(),
                reachable: false,
                error: Some(e.to_string()),
                raft: None,
                health: "unreachable".into(),
            },
        }
    }
}

impl ClusterStatusView {
    fn new(nodes: Vec<NodeStatusView>) -> Self {
        let leaders: BTreeSet<u64> = nodes
            .iter()
            .filter_map(|n| n.raft.as_ref().map(|r| r.leader_id))
            .filter(|&id| id != 0)
            .collect();
        let leader_id = match leaders.len() {
            1 => *leaders.first().expect("one leader"),
            _ => 0,
        };
        Self {
            nodes,
            leader_id,
            leaders,
        }
    }
}

impl View for ClusterStatusView {
    fn text(&self, _hex: bool) -> String {
        let mut t = table(&[
            "ID",
            "ADDRESS",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "HEALTH",
            "PEERS ALIVE",
        ]);
        for n in &self.nodes {
            let id = n.id.map_or("?".into(), |id| id.to_string());
            match &n.raft {
                Some(r) => t.add_row(vec![
                    id,
                    n.address.clone(),
                    r.role.clone(),
                    r.term.to_string(),
                    if r.leader_id == 0 {
                        "none".into()
                    } else {
                        r.leader_id.to_string()
                    },
                    r.commit_index.to_string(),
                    r.applied_index.to_string(),
                    n.health.clone(),
                    peers_text(&r.peers),
                ]),
                None => {
                    let mut row = vec![id, n.address.clone(), "unreachable".into()];
                    row.extend(["-"; 4].map(String::from));
                    row.extend(["unreachable".to_string(), "-".to_string()]);
                    t.add_row(row)
                }
            };
        }
        let summary = match self.leaders.len() {
            0 => "no leader known: the cluster cannot serve cp requests".to_string(),
            1 => format!("leader: node {}", self.leader_id),
            _ => format!(
                "nodes disagree on the leader ({:?}): an election or a partition is in progress",
                self.leaders
            ),
        };
        format!("{t}\n{summary}")
    }
}

/// "2 3" when all peers are alive; otherwise each peer with its state ("2 3:down").
fn peers_text(peers: &[PeerView]) -> String {
    let parts: Vec<String> = peers
        .iter()
        .map(|p| {
            if p.state == "alive" {
                p.id.to_string()
            } else {
                format!("{}:{}", p.id, p.state)
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// How long `cluster status` waits for the member list: without a leader there is none, and
/// the endpoints' own views should not wait for an election.
const MEMBER_LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `capkv cluster status`: every endpoint's own view, and that of every other member the
/// cluster knows (asked at its peer address, which serves the public API too); fails only when
/// no endpoint answered.
pub async fn status(client: &Client) -> Result<ClusterStatusView, Error> {
    let mut nodes = Vec::new();
    let mut reasons = Vec::new();
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        let status = client.status_of(index).await;
        if let Err(e) = &status {
            reasons.push(e.to_string());
        }
        nodes.push(NodeStatusView::new(endpoint, status));
    }
    if nodes.iter().all(|n| !n.reachable) {
        return Err(Error::Unreachable(format!("no node answered: {}", reasons.join("; "))));
    }
    nodes.extend(other_members(client, &nodes).await);
    Ok(ClusterStatusView::new(nodes))
}

/// The status of each member that none of the endpoints is (by id), asked at its address.
async fn other_members(client: &Client, answered: &[NodeStatusView]) -> Vec<NodeStatusView> {
    let Ok(asker) = Client::new(client.endpoints().to_vec(), MEMBER_LIST_TIMEOUT.min(client.timeout())) else {
        return Vec::new();
    };
    let Ok(list) = asker.member_list().await else {
        return Vec::new(); // no leader: the endpoints' own views are all there is
    };
    let known: BTreeSet<u64> = answered.iter().filter_map(|n| n.id).collect();
    let others: Vec<String> = list
        .members
        .into_iter()
        .filter(|m| !known.contains(&m.id))
        .map(|m| m.address)
        .collect();
    let Ok(extra) = Client::new(others.clone(), client.timeout()) else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for (index, address) in others.iter().enumerate() {
        nodes.push(NodeStatusView::new(address, extra.status_of(index).await));
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leader: u64) -> proto::StatusResponse {
        proto::StatusResponse {
            node_id: 1,
            role: "leader".into(),
            term: 2,
            leader_id: leader,
            commit_index: 5,
            applied_index: 5,
            last_log_index: 5,
            health: "degraded".into(),
            peers: vec![proto::PeerLiveness {
                id: 2,
                state: "down".into(),
                last_heard_ms: 900,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_renders_reachable_and_unreachable_nodes() {
        let view = ClusterStatusView::new(vec![
            NodeStatusView::new("127.0.0.1:7001", Ok(status(1))),
            NodeStatusView::new("127.0.0.1:7002", Err(Error::Unreachable("refused".into()))),
        ]);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["nodes"][0]["role"], "leader");
        assert_eq!(json["nodes"][0]["reachable"], true);
        assert_eq!(json["nodes"][0]["peers"][0]["state"], "down");
        assert!(json["nodes"][0].get("error").is_none());
        assert_eq!(json["nodes"][1]["id"], serde_json::Value::Null);
        assert_eq!(json["nodes"][1]["health"], "unreachable");
        assert!(json["nodes"][1]["error"].as_str().unwrap().contains("refused"));
        assert!(json["nodes"][1].get("role").is_none());
        assert_eq!(json["leader_id"], 1);
        let text = view.text(false);
        assert!(text.contains("2:down"), "{text}");
        assert!(text.ends_with("leader: node 1"), "{text}");
    }

    #[test]
    fn disagreeing_nodes_have_no_leader() {
        let mut other = status(2);
        other.node_id = 2;
        let view = ClusterStatusView::new(vec![
            NodeStatusView::new("a", Ok(status(1))),
            NodeStatusView::new("b", Ok(other)),
        ]);
        assert_eq!(view.leader_id, 0);
        assert!(view.text(false).contains("nodes disagree on the leader"));
    }
}
