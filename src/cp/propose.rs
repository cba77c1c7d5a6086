//! Proposing a command on the leader, and the read barrier of linearizable reads.
//!
//! [`Cp::propose`] takes a typed proposal (`Put`, `Cas`, ...), appends it to the Raft log on this
//! node (which must lead; concurrent proposals share entries, see [`super::batch`]), waits until it is committed and applied, and returns the proposal's
//! own answer type. A proposal that was sent but not confirmed before the deadline may still be
//! applied: it answers "outcome unknown", and so does one whose Raft stopped with a fatal error
//! or that lost the leadership after taking it (the entry may be on other nodes' logs, and a
//! later leader may commit it; see [`write_error`]). A proposal the
//! state machine refused (unknown keyspace, not a cp keyspace) changed nothing and says why.
//! A read whose barrier meets a stopped Raft changed nothing: "no quorum", try another node.
//!
//! [`Cp::read_barrier`] is ReadIndex through openraft's `ensure_linearizable()`, one confirmation
//! per batch of concurrent reads ([`super::read_index`]): after it, the local state machine
//! reflects every write acknowledged before the read began.
//!
//! Caveats: the negative-control build `unsafe-local-reads` skips the read barrier on purpose,
//! so the Jepsen-style suite can prove it catches stale reads.

use std::time::Instant;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use super::command::{Applied, Command, Proposal, Refusal};
use super::path::Cp;
use super::session::{Once, RequestId};
use super::{NodeId, Raft};
use crate::error::Error;

impl Cp {
    /// Proposes on this node, which must lead, and waits for the proposal's answer. With a
    /// request id the command is applied at most once per id ([`super::session`]).
    pub async fn propose<P: Proposal>(
        &self,
        proposal: P,
        id: Option<RequestId>,
        deadline: Instant,
    ) -> Result<P::Answer, Error> {
        let command = match id {
            None => proposal.into(),
            Some(id) => Command::Once(Once {
                id,
                at_ms: wall_clock_ms(),
                session_ttl_ms: self.options.session_ttl_ms,
                command: Box::new(proposal.into()),
            }),
        };
        let op = command.op_name();
        let budget = deadline.saturating_duration_since(Instant::now());
        let proposed = async {
            // A stopped batcher means a stopped Raft group: nothing was proposed.
            (self.writes.propose(command).await).unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
        };
        let applied = match tokio::time::timeout(budget, proposed).await {
            Err(_) => {
                return Err(Error::OutcomeUnknown(format!(
                    "node {} proposed the {op} but no majority confirmed it within {} ms; it may still be applied",
                    self.id,
                    budget.as_millis()
                )))
            }
            Ok(Ok(applied)) => applied,
            Ok(Err(e)) => return Err(write_error(self.id, op, e)),
        };
        let answer = applied.map_err(|refusal| refusal_error(refusal, op))?;
        Ok(P::answer(answer).unwrap_or_else(|| panic!("the state machine answered a {op} with another kind")))
    }

    /// Makes the local state machine linearizable for a read that starts now (ReadIndex,
    /// batched with concurrent reads: see [`super::read_index`]).
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), Error> {
        if cfg!(feature = "unsafe-local-reads") {
            // Negative control: a deliberately broken build that skips ReadIndex.
            return Ok(());
        }
        self.reads.confirm(self.id, deadline).await
    }
}

/// This node's wall clock in ms since the epoch (the real one: fault injection's clock skew is
/// for ap timestamps), for session expiry.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The error of proposing one entry, shared by every write in it.
pub(super) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>;

/// Proposes one entry (a command, or a batch of them) and returns what applying it gave.
pub(super) async fn propose_entry(raft: &Raft, command: Command) -> Result<Applied, WriteError> {
    raft.client_write(command).await.map(|response| response.data)
}

/// One leadership confirmation for a batch of reads: ReadIndex through openraft's
/// `ensure_linearizable()`, bounded by `deadline`.
pub(super) async fn confirm_leadership(raft: &Raft, id: NodeId, deadline: Instant) -> Result<(), Error> {
    let budget = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(budget, raft.ensure_linearizable()).await {
        Err(_) => Err(Error::NoQuorum(format!(
            "node {id} could not confirm its leadership with a majority within {} ms",
            budget.as_millis()
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(Error::NoQuorum(format!(
            "node {id} lost the leadership while confirming a read; retry"
        ))),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(Error::NoQuorum(format!(
            "node {id} could not confirm its leadership: {q}"
        ))),
        Ok(Err(RaftError::Fatal(fatal))) => Err(Error::NoQuorum(format!(
            "node {id}'s Raft stopped ({fatal}) while confirming a read; nothing was changed, retry on another node"
        ))),
    }
}

/// The error of a proposal that openraft took and then failed.
///
/// Both failures may follow an append to this node's log, so the write may still be applied:
/// "lost the leadership" comes both from a leader deposed before it appended (nothing happened)
/// and from one whose uncommitted entry a new leader truncated, while another node may still
/// hold a copy that a later leader commits; openraft reports the two alike. A fatal error
/// (storage failure, stopped core) may strike after the append and replication.
fn write_error(id: NodeId, op: &str, error: WriteError) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::OutcomeUnknown(format!(
            "node {id} lost the leadership before the {op} was committed (leader now: {}); it may still be applied if another node kept a copy",
            f.leader_id.map_or("unknown".into(), |l| format!("node {l}"))
        )),
        RaftError::Fatal(fatal) => Error::OutcomeUnknown(format!(
            "node {id}'s Raft stopped ({fatal}) after it took the {op}; it may still be applied by the next leader"
        )),
        RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_)) => {
            Error::Internal(format!("Raft refused the {op}: {e}"))
        }
    }
}

/// The error a client gets for a proposal the state machine refused (nothing was changed).
fn refusal_error(refusal: Refusal, op: &str) -> Error {
    match refusal {
        Refusal::UnknownKeyspace(name) => Error::UnknownKeyspace(name),
        Refusal::WrongMode { keyspace, .. } => Error::Refused(format!(
            "keyspace '{keyspace}' is ap and the leader only just learned of it; retry the {op}"
        )),
        Refusal::RequestTooOld { id, oldest } => Error::OutcomeUnknown(format!(
            "the {op} with request id {id} is older than every answer kept for its client (the oldest kept is sequence {oldest}); it may or may not have been applied, read the keys to find out"
        )),
        Refusal::AnswerNotKept { id, revision } => Error::AlreadyExists(format!(
            "the {op} with request id {id} was already applied at revision {revision}; its answer was too large to keep, so read the keys for the result"
        )),
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::{Fatal, ForwardToLeader};

    use super::*;

    #[test]
    fn a_proposal_that_openraft_took_and_failed_may_have_been_applied() {
        let deposed = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::empty()));
        let e = write_error(1, "put", deposed);
        assert_eq!(e.exit_code(), 4, "{e}");
        for fatal in [Fatal::Stopped, Fatal::Panicked] {
            let e = write_error(1, "put", RaftError::Fatal(fatal));
            assert_eq!(e.exit_code(), 4, "{e}");
            assert!(e.to_string().contains("may still be applied"), "{e}");
        }
    }
}
