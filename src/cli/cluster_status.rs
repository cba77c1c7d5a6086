//! `capkv cluster status`: asks every endpoint for its own view and renders them side by side.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::json;

use super::Report;
use crate::client::Client;
use crate::error::Error;

/// `capkv cluster status`: every endpoint's own view, plus members it knows of.
pub async fn status(client: &Client) -> Result<Report, Error> {
    let mut statuses = Vec::new();
    for index in 0..client.endpoints().len() {
        statuses.push((client.endpoints()[index].clone(), client.status_of(index).await));
    }
    if statuses.iter().all(|(_, s)| s.is_err()) {
        let reasons: Vec<String> = statuses
            .iter()
            .filter_map(|(_, s)| s.as_ref().err().map(|e| e.to_string()))
            .collect();
        return Err(Error::Unreachable(format!("no node answered: {}", reasons.join("; "))));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
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
    let mut nodes = Vec::new();
    let mut leaders = std::collections::BTreeSet::new();
    for (endpoint, status) in &statuses {
        match status {
            Ok(s) => {
                if s.leader_id != 0 {
                    leaders.insert(s.leader_id);
                }
                let leader = if s.leader_id == 0 {
                    "none".to_string()
                } else {
                    s.leader_id.to_string()
                };
                t.add_row(vec![
                    s.node_id.to_string(),
                    endpoint.clone(),
                    s.role.clone(),
                    s.term.to_string(),
                    leader,
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    s.health.clone(),
                    peers_text(&s.peers),
                ]);
                nodes.push(
                    json!({"id": s.node_id, "address": endpoint, "reachable": true, "role": s.role, "term": s.term,
                    "leader_id": s.leader_id, "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index, "health": s.health,
                    "peers": s.peers.iter().map(|p| json!({"id": p.id, "state": p.state, "last_heard_ms": p.last_heard_ms})).collect::<Vec<_>>()}),
                );
            }
            Err(e) => {
                t.add_row(vec![
                    "?".into(),
                    endpoint.clone(),
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "unreachable".into(),
                    "-".into(),
                ]);
                nodes.push(json!({"id": Option::<u64>::None, "address": endpoint, "reachable": false, "error": e.to_string(), "health": "unreachable"}));
            }
        }
    }
    let leader_id = if leaders.len() == 1 {
        *leaders.iter().next().expect("one leader")
    } else {
        0
    };
    let summary = match leaders.len() {
        0 => "no leader known: the cluster cannot serve cp requests".to_string(),
        1 => format!("leader: node {leader_id}"),
        _ => format!("nodes disagree on the leader ({leaders:?}): an election or a partition is in progress"),
    };
    Ok(Report::ok(
        json!({"nodes": nodes, "leader_id": leader_id}),
        format!("{t}\n{summary}"),
    ))
}

/// "2 3" when all peers are alive; otherwise each peer with its state ("2 3:down").
fn peers_text(peers: &[crate::proto::PeerLiveness]) -> String {
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
