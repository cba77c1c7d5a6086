//! `member list|add|remove`: the Raft group's membership at run time (like `etcdctl member`).
//! Every command is answered by the leader; add and remove print the membership after the
//! change.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{table, View};
use super::ClientOverrides;
use crate::client::Client;
use crate::error::Error;
use crate::proto;

#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    #[command(subcommand)]
    pub command: MemberCommand,
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members: id, peer address, voter or learner, reachable from the leader.
    List,
    /// Add node ID at its peer ADDRESS: it joins as a learner, catches up, then votes; returns
    /// once it votes (give a --timeout long enough for it to catch up).
    Add { id: u64, address: String },
    /// Remove member ID (the leader too: it steps down once the change is committed).
    Remove { id: u64 },
}

/// `member list -o json`: `{"members": [{"id", "address", "role", "reachable", "leader"}]}`.
#[derive(Debug, Serialize)]
pub struct MemberListView {
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    /// voter | learner
    pub role: String,
    /// Whether the leader hears from it (always true for the leader itself).
    pub reachable: bool,
    pub leader: bool,
}

impl From<proto::MemberListResponse> for MemberListView {
    fn from(r: proto::MemberListResponse) -> Self {
        let members = r
            .members
            .into_iter()
            .map(|m| MemberView {
                id: m.id,
                address: m.address,
                role: m.role,
                reachable: m.reachable,
                leader: m.leader,
            })
            .collect();
        Self { members }
    }
}

impl View for MemberListView {
    fn text(&self, _hex: bool) -> String {
        let mut t = table(&["ID", "ADDRESS", "ROLE", "REACHABLE", "LEADER"]);
        for m in &self.members {
            t.add_row(vec![
                m.id.to_string(),
                m.address.clone(),
                m.role.clone(),
                if m.reachable { "yes" } else { "no" }.to_string(),
                if m.leader { "*" } else { "" }.to_string(),
            ]);
        }
        t.to_string()
    }
}

pub async fn run(client: &Client, command: &MemberCommand) -> Result<MemberListView, Error> {
    let answer = match command {
        MemberCommand::List => client.member_list().await?,
        MemberCommand::Add { id, address } => client.member_add(*id, address).await?,
        MemberCommand::Remove { id } => client.member_remove(*id).await?,
    };
    Ok(answer.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_list_renders_as_json_and_table() {
        let answer = proto::MemberListResponse {
            members: vec![
                proto::MemberInfo {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    role: "voter".into(),
                    reachable: true,
                    leader: true,
                },
                proto::MemberInfo {
                    id: 4,
                    address: "127.0.0.1:7004".into(),
                    role: "learner".into(),
                    reachable: false,
                    leader: false,
                },
            ],
            answered_by: 1,
        };
        let view = MemberListView::from(answer);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"members": [
                {"id": 1, "address": "127.0.0.1:7001", "role": "voter", "reachable": true, "leader": true},
                {"id": 4, "address": "127.0.0.1:7004", "role": "learner", "reachable": false, "leader": false},
            ]})
        );
        let text = view.text(false);
        assert!(text.contains("learner"), "{text}");
        assert!(
            text.lines().any(|l| l.contains("127.0.0.1:7004") && l.contains(" no ")),
            "{text}"
        );
    }
}
