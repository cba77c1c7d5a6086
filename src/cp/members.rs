//! Membership at run time: list, add and remove members of the Raft group, at the leader.
//!
//! ADD is two steps, like Raft's §4.2.1 catch-up rule: the node joins as a learner and the
//! leader waits until its replication to it matches the log within [`LEARNER_LAG_ENTRIES_MAX`]
//! entries (caught up by log or snapshot; openraft's blocking `add_learner` would accept 5000
//! behind, even a node that never answered); then one joint-consensus change makes it a voter. The call returns when the new
//! configuration is committed, so the node votes from then on. A learner left behind by an
//! add that ran out of time is promoted by running the same add again.
//!
//! REMOVE is one joint-consensus change that drops the node entirely (not kept as a learner).
//! Removing the leader works: openraft keeps it leading until the change is committed and
//! applied, then it steps down and the remaining voters elect a successor.
//!
//! Both are forwarded to the leader like writes ([`super::forward`]). What each request would
//! do is decided first by the pure [`plan_add`] and [`plan_remove`], so a request that cannot
//! work (an id that is a member, a stranger, the last voter) is refused before anything is
//! proposed (exit 5).
//!
//! Caveats: one change at a time (a second one while the first runs is refused: retry it);
//! an add that times out leaves the node as a learner, which does not vote but receives the
//! log; a removed node is not told to stop: stop it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use super::forward::Effect;
use super::path::Cp;
use super::NodeId;
use crate::error::Error;
use crate::proto::{self, cluster_client::ClusterClient};
use crate::request::Ctx;

/// The membership as [`plan_add`] and [`plan_remove`] see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSet {
    /// Every member's address, voters and learners.
    pub nodes: BTreeMap<NodeId, String>,
    pub voters: BTreeSet<NodeId>,
}

/// What an add does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddPlan {
    /// A new node: add it as a learner, wait until it caught up, make it a voter.
    LearnThenPromote,
    /// A learner at the same address (an earlier add ran out of time): make it a voter.
    Promote,
}

/// What a remove does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovePlan {
    Voter,
    Learner,
}

/// Decides what adding node `id` at `address` does, or why it is refused.
pub fn plan_add(set: &MemberSet, id: NodeId, address: &str) -> Result<AddPlan, Error> {
    if id == 0 {
        return Err(Error::InvalidInput("node ids start at 1; cannot add node 0".into()));
    }
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(Error::InvalidInput(format!(
            "'{address}' is not HOST:PORT; give the new node's peer address (its --peer-listen, or --listen without one)"
        )));
    }
    if let Some((other, _)) = set
        .nodes
        .iter()
        .find(|(other, a)| a.as_str() == address && **other != id)
    {
        return Err(Error::InvalidInput(format!(
            "{address} is already the address of node {other}; each member needs an address of its own"
        )));
    }
    match set.nodes.get(&id) {
        None => Ok(AddPlan::LearnThenPromote),
        Some(known) if known == address && !set.voters.contains(&id) => Ok(AddPlan::Promote),
        Some(known) => Err(Error::InvalidInput(format!(
            "node {id} is already a member ({}, at {known}); remove it first (`capkv member remove {id}`) or pick another id",
            if set.voters.contains(&id) { "a voter" } else { "a learner" }
        ))),
    }
}

/// Decides what removing node `id` does, or why it is refused.
pub fn plan_remove(set: &MemberSet, id: NodeId) -> Result<RemovePlan, Error> {
    if !set.nodes.contains_key(&id) {
        let members: Vec<String> = set.nodes.keys().map(|m| m.to_string()).collect();
        return Err(Error::InvalidInput(format!(
            "node {id} is not a member (members: {}); nothing to remove",
            members.join(", ")
        )));
    }
    if !set.voters.contains(&id) {
        return Ok(RemovePlan::Learner);
    }
    if set.voters.len() == 1 {
        return Err(Error::InvalidInput(format!(
            "node {id} is the last voter; a cluster without voters cannot decide anything, so it cannot be removed"
        )));
    }
    Ok(RemovePlan::Voter)
}

impl Cp {
    /// The replicated membership as this node knows it.
    pub fn member_set(&self) -> MemberSet {
        let metrics = self.metrics();
        let config = metrics.membership_config.membership();
        MemberSet {
            nodes: config.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
            voters: config.voter_ids().collect(),
        }
    }

    /// Every member with its role and whether this node hears from it.
    pub fn member_view(&self) -> proto::MemberListResponse {
        let set = self.member_set();
        let leader = self.metrics().current_leader;
        let members = set
            .nodes
            .iter()
            .map(|(id, address)| proto::MemberInfo {
                id: *id,
                address: address.clone(),
                role: if set.voters.contains(id) { "voter" } else { "learner" }.into(),
                reachable: *id == self.id || self.reach.reachable(*id),
                leader: leader == Some(*id),
            })
            .collect();
        proto::MemberListResponse {
            members,
            answered_by: self.id,
        }
    }

    /// `member list`: the leader's view (forwarded there).
    pub async fn member_list(
        &self,
        ctx: &Ctx,
        req: proto::MemberListRequest,
    ) -> Result<proto::MemberListResponse, Error> {
        let call = |c, r| async move { ClusterClient::new(c).member_list(r).await };
        if let Some(answer) = self.at_leader(ctx, req, Effect::Read, call).await? {
            return Ok(answer);
        }
        Ok(self.member_view())
    }

    /// `member add`: learner, catch-up, voter; returns once the node votes.
    pub async fn member_add(
        &self,
        ctx: &Ctx,
        req: proto::MemberAddRequest,
    ) -> Result<proto::MemberListResponse, Error> {
        plan_add(&MemberSet::default(), req.id, &req.address)?; // input checks before forwarding
        let call = |c, r| async move { ClusterClient::new(c).member_add(r).await };
        if let Some(answer) = self.at_leader(ctx, req.clone(), Effect::Write, call).await? {
            return Ok(answer);
        }
        let (id, address) = (req.id, req.address);
        if plan_add(&self.member_set(), id, &address)? == AddPlan::LearnThenPromote {
            tracing::info!(id, %address, "adding a learner");
            // Not openraft's blocking add: it counts a learner within 5000 entries as caught up.
            let learn = self.raft.add_learner(id, BasicNode::new(&address), false);
            let step = format!("node {id} was proposed as a learner but not confirmed");
            within(ctx.remaining(), learn, &step, id).await?;
        }
        self.wait_caught_up(ctx, id).await?;
        tracing::info!(id, "promoting the learner to voter");
        let voters: BTreeSet<NodeId> = [id].into();
        let promote = self.raft.change_membership(ChangeMembers::AddVoterIds(voters), false);
        let step = format!("node {id} caught up, but its promotion to voter was not confirmed");
        within(ctx.remaining(), promote, &step, id).await?;
        Ok(self.member_view())
    }

    /// `member remove`: drops a voter or a learner; the leader may remove itself.
    pub async fn member_remove(
        &self,
        ctx: &Ctx,
        req: proto::MemberRemoveRequest,
    ) -> Result<proto::MemberListResponse, Error> {
        let call = |c, r| async move { ClusterClient::new(c).member_remove(r).await };
        if let Some(answer) = self.at_leader(ctx, req, Effect::Write, call).await? {
            return Ok(answer);
        }
        let id = req.id;
        let ids: BTreeSet<NodeId> = [id].into();
        let change = match plan_remove(&self.member_set(), id)? {
            RemovePlan::Voter => ChangeMembers::RemoveVoters(ids),
            RemovePlan::Learner => ChangeMembers::RemoveNodes(ids),
        };
        tracing::info!(id, "removing a member");
        let step = format!("the removal of node {id} was not confirmed");
        within(ctx.remaining(), self.raft.change_membership(change, false), &step, id).await?;
        Ok(self.member_view())
    }
}

impl Cp {
    /// Waits until the leader's replication to learner `id` matches its log within
    /// [`LEARNER_LAG_ENTRIES_MAX`], or the request's deadline passes (then "outcome unknown":
    /// the node stays a learner and keeps catching up).
    async fn wait_caught_up(&self, ctx: &Ctx, id: NodeId) -> Result<(), Error> {
        tracing::info!(id, "waiting until the learner caught up");
        let caught_up = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
            matched.is_some_and(|log_id| caught_up(log_id.index, m.last_log_index.unwrap_or(0)))
        };
        let waited = self
            .raft
            .wait(Some(ctx.remaining()))
            .metrics(caught_up, "the new learner to catch up")
            .await;
        waited.map(|_| ()).map_err(|_| {
            Error::OutcomeUnknown(format!(
                "node {id} is a learner but did not catch up within the timeout (is it running, at the address given?); it keeps catching up: run the same `capkv member add` again to promote it, or `capkv member remove {id}`"
            ))
        })
    }
}

/// How far behind the leader's log a learner may be and still count as caught up: close
/// enough that it gets the rest within a heartbeat or two, so promoting it does not leave the
/// new configuration waiting on a voter that is far behind. (openraft's own check allows 5000.)
pub const LEARNER_LAG_ENTRIES_MAX: u64 = 64;

/// Has a learner whose log matches the leader's up to `matched` caught up with `last`?
pub fn caught_up(matched: u64, last: u64) -> bool {
    matched.saturating_add(LEARNER_LAG_ENTRIES_MAX) >= last
}

type ChangeResult = Result<
    openraft::raft::ClientWriteResponse<super::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
>;

/// Runs one membership change with the time left, classifying its failure: refused before
/// anything was proposed (exit 3), or proposed and not confirmed (exit 4).
async fn within(
    remaining: Duration,
    change: impl std::future::Future<Output = ChangeResult>,
    step: &str,
    id: NodeId,
) -> Result<(), Error> {
    match tokio::time::timeout(remaining, change).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(change_error(e, step, id)),
        Err(_) => Err(Error::OutcomeUnknown(format!(
            "{step} within the timeout; it may still complete: check with `capkv member list`, and run `capkv member add {id} ADDRESS` again to finish an add (or a longer --timeout)"
        ))),
    }
}

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>, step: &str, id: NodeId) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NoQuorum(format!(
            "this node stopped leading before the membership change was proposed (leader now: {}); nothing changed, retry",
            f.leader_id.map_or("unknown".into(), |l| format!("node {l}"))
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))) => {
            Error::Refused(
                "another membership change is in progress; nothing changed, retry once it completes".into(),
            )
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(other)) => {
            Error::InvalidInput(format!("the membership change for node {id} was refused: {other}"))
        }
        RaftError::Fatal(fatal) => Error::OutcomeUnknown(format!("{step}: Raft stopped ({fatal})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> MemberSet {
        MemberSet {
            nodes: (1..=3).map(|id| (id, format!("127.0.0.1:700{id}"))).collect(),
            voters: [1, 2, 3].into(),
        }
    }

    #[test]
    fn adds_are_planned_or_refused_with_a_reason() {
        let mut set = three();
        assert_eq!(plan_add(&set, 4, "127.0.0.1:7004").unwrap(), AddPlan::LearnThenPromote);
        let refused = [
            (0, "127.0.0.1:7004", "node ids start at 1"),
            (4, "127.0.0.1", "is not HOST:PORT"),
            (4, ":7004", "is not HOST:PORT"),
            (4, "127.0.0.1:7002", "already the address of node 2"),
            (2, "127.0.0.1:7002", "node 2 is already a member (a voter"),
        ];
        for (id, address, why) in refused {
            let e = plan_add(&set, id, address).unwrap_err();
            assert_eq!(e.exit_code(), 5, "{e}");
            assert!(e.to_string().contains(why), "{id} {address}: {e}");
        }
        set.nodes.insert(4, "127.0.0.1:7004".into());
        assert_eq!(
            plan_add(&set, 4, "127.0.0.1:7004").unwrap(),
            AddPlan::Promote,
            "a learner left by a timed-out add"
        );
        let e = plan_add(&set, 4, "127.0.0.1:7005").unwrap_err();
        assert!(e.to_string().contains("(a learner, at 127.0.0.1:7004)"), "{e}");
    }

    #[test]
    fn a_learner_is_caught_up_within_the_lag_bound() {
        assert!(caught_up(100, 100));
        assert!(caught_up(100 - LEARNER_LAG_ENTRIES_MAX, 100));
        assert!(!caught_up(99 - LEARNER_LAG_ENTRIES_MAX, 100));
        assert!(!caught_up(0, 5000), "openraft would call this caught up");
    }

    #[test]
    fn removes_are_planned_or_refused_with_a_reason() {
        let mut set = three();
        assert_eq!(plan_remove(&set, 1).unwrap(), RemovePlan::Voter);
        let e = plan_remove(&set, 9).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(
            e.to_string().contains("node 9 is not a member (members: 1, 2, 3)"),
            "{e}"
        );
        set.nodes.insert(4, "127.0.0.1:7004".into());
        assert_eq!(plan_remove(&set, 4).unwrap(), RemovePlan::Learner);
        let single = MemberSet {
            nodes: [(1, "a:1".to_string()), (2, "b:2".to_string())].into(),
            voters: [1].into(),
        };
        let e = plan_remove(&single, 1).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(e.to_string().contains("last voter"), "{e}");
        assert_eq!(plan_remove(&single, 2).unwrap(), RemovePlan::Learner);
    }
}
