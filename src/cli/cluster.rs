//! `cluster up|down|status`, the command-line side: the launcher itself lives in
//! [`crate::cluster`] and returns typed results that are rendered here.

use std::path::PathBuf;

use clap::Subcommand;

use super::output::{table, View};
use crate::cluster::{self, ClusterStatus, PeerStatus};

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

impl View for ClusterStatus {
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
            match &n.raft {
                Some(r) => t.add_row(vec![
                    n.id.map_or("?".into(), |id| id.to_string()),
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
                None => t.add_row(vec![
                    "?".into(),
                    n.address.clone(),
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "unreachable".into(),
                    "-".into(),
                ]),
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
fn peers_text(peers: &[PeerStatus]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeStatus, RaftStatus};

    #[test]
    fn status_renders_reachable_and_unreachable_nodes() {
        let status = ClusterStatus {
            nodes: vec![
                NodeStatus {
                    id: Some(1),
                    address: "127.0.0.1:7001".into(),
                    reachable: true,
                    error: None,
                    raft: Some(RaftStatus {
                        role: "leader".into(),
                        term: 2,
                        leader_id: 1,
                        commit_index: 5,
                        applied_index: 5,
                        last_log_index: 5,
                        snapshot_index: 0,
                        peers: vec![PeerStatus {
                            id: 2,
                            state: "down".into(),
                            last_heard_ms: 900,
                        }],
                    }),
                    health: "degraded".into(),
                },
                NodeStatus {
                    id: None,
                    address: "127.0.0.1:7002".into(),
                    reachable: false,
                    error: Some("refused".into()),
                    raft: None,
                    health: "unreachable".into(),
                },
            ],
            leader_id: 1,
            leaders: vec![1],
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["nodes"][0]["role"], "leader");
        assert_eq!(json["nodes"][0]["peers"][0]["state"], "down");
        assert_eq!(json["nodes"][1]["id"], serde_json::Value::Null);
        assert_eq!(json["nodes"][1]["error"], "refused");
        assert_eq!(json["leader_id"], 1);
        let text = status.text(false);
        assert!(text.contains("2:down"), "{text}");
        assert!(text.ends_with("leader: node 1"), "{text}");
    }
}
