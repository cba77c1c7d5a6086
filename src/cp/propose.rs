//! Proposing a command on the leader, and the read barrier of linearizable reads.
//!
//! [`Cp::propose`] takes a typed proposal (`Put`, `Cas`, ...), appends it to the Raft log on this
//! node (which must lead; concurrent proposals share entries, see [`super::batch`]), waits until it is committed and applied, and returns the proposal's
//! own answer type. A proposal that was sent but not confirmed before the deadline may still be
//! applied: it answers "outcome unknown". A proposal the state machine refused (unknown
//! keyspace, not a cp keyspace) changed nothing and says why.
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
use super::{NodeId, Raft};
use crate::error::Error;

impl Cp {
    /// Proposes on this node, which must lead, and waits for the proposal's answer.
    pub async fn propose<P: Proposal>(&self, proposal: P, deadline: Instant) -> Result<P::Answer, Error> {
        let command = proposal.into();
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
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(Error::NoQuorum(format!(
                    "node {} lost the leadership before the {op} was committed (leader now: {}); it was not applied",
                    self.id,
                    f.leader_id.map_or("unknown".into(), |l| format!("node {l}"))
                )))
            }
            Ok(Err(e)) => return Err(Error::Internal(format!("Raft refused the {op}: {e}"))),
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
        Ok(Err(e)) => Err(Error::Internal(format!("Raft refused the read: {e}"))),
    }
}

/// The error a client gets for a proposal the state machine refused (nothing was changed).
fn refusal_error(refusal: Refusal, op: &str) -> Error {
    match refusal {
        Refusal::UnknownKeyspace(name) => Error::UnknownKeyspace(name),
        Refusal::WrongMode { keyspace, .. } => Error::Refused(format!(
            "keyspace '{keyspace}' is ap and the leader only just learned of it; retry the {op}"
        )),
    }
}
