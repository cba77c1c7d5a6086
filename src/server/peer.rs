//! The internal peer service: openraft's RPCs, liveness pings, the ap protocol and the
//! fault-injection control plane.
//!
//! Every message a peer sends names its sender (`from`). Before anything else looks at a message,
//! [`check_sender`] refuses a sender that is not another member of this cluster, so a forged
//! ping cannot mark an unknown id alive and random ids cannot grow per-peer state; a Raft
//! message must also agree with the node its openraft request names ([`check_raft_sender`]),
//! and an InstallSnapshot chunk must end within [`SNAPSHOT_BYTES_MAX`] ([`check_snapshot_chunk`])
//! before openraft writes it to disk at the offset it names. A peer's clock offset and partition
//! pass the same checks as the public `Fault` service's.
//!
//! Caveats: these checks stop malformed and absurd messages, not a liar. Without peer
//! authentication (no mTLS yet) anyone who can reach the port can name a real member as the
//! sender and be believed.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::cp::{NodeId, TypeConfig, GROUP_ID};
use crate::error::Error;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::node::Node;
use crate::proto::{self, RaftMessage};
use crate::request::Ctx;
use crate::storage::codec::{decode, encode};

/// Refuses a peer message whose sender `from` is not another member of this cluster.
pub fn check_sender(from: NodeId, self_id: NodeId, members: &BTreeSet<NodeId>) -> Result<(), Error> {
    if from == self_id {
        return Err(Error::InvalidInput(format!(
            "a peer message names this node ({self_id}) as its sender; only other members send peer messages"
        )));
    }
    if !members.contains(&from) {
        return Err(Error::InvalidInput(format!(
            "node {from} is not a member of this cluster (members: {members:?}); peer messages are accepted only from members"
        )));
    }
    Ok(())
}

/// [`check_sender`], except that an empty `members` (a joining node that has no membership
/// yet) admits any sender but this node itself.
pub fn check_sender_or_joining(from: NodeId, self_id: NodeId, members: &BTreeSet<NodeId>) -> Result<(), Error> {
    if members.is_empty() && from != self_id {
        return Ok(());
    }
    check_sender(from, self_id, members)
}

/// Refuses a Raft message whose `from` differs from the node its openraft request names.
pub fn check_raft_sender(from: NodeId, named: Option<NodeId>) -> Result<(), Error> {
    match named {
        Some(named) if named != from => Err(Error::InvalidInput(format!(
            "a Raft message from node {from} carries the vote of node {named}; the sender and the vote must name the same node"
        ))),
        _ => Ok(()),
    }
}

/// Refuses an InstallSnapshot chunk of `len` bytes at `offset` that ends beyond
/// [`SNAPSHOT_BYTES_MAX`] (or beyond `u64`).
pub fn check_snapshot_chunk(offset: u64, len: usize) -> Result<(), Error> {
    let end = u64::try_from(len).ok().and_then(|len| offset.checked_add(len));
    match end {
        Some(end) if end <= SNAPSHOT_BYTES_MAX => Ok(()),
        _ => Err(Error::InvalidInput(format!(
            "a snapshot chunk of {len} bytes at offset {offset} ends beyond the snapshot limit of {SNAPSHOT_BYTES_MAX} bytes"
        ))),
    }
}

/// The certificates a peer showed on its TLS connection.
type PeerCerts = Arc<Vec<rustls_pki_types::CertificateDer<'static>>>;

/// Refuses a message from `from` over a connection whose certificate does not name node `from`
/// (peer TLS binds each member's id to its certificate).
pub fn check_certificate(cert: Option<&rustls_pki_types::CertificateDer<'_>>, from: NodeId) -> Result<(), Error> {
    match cert {
        Some(cert) if crate::tls::names_node(cert, from) => Ok(()),
        Some(_) => Err(Error::InvalidInput(format!(
            "a peer message says it comes from node {from}, but its TLS certificate does not name {}; a member speaks only for itself",
            crate::tls::node_name(from)
        ))),
        None => Err(Error::InvalidInput(
            "a peer message came without a TLS client certificate; this node's peer port demands one".into(),
        )),
    }
}

/// The node an openraft request names as its sender: the candidate of a vote request, the
/// leader of an AppendEntries or InstallSnapshot.
pub trait NamedSender {
    fn named_sender(&self) -> Option<NodeId>;
}

impl NamedSender for AppendEntriesRequest<TypeConfig> {
    fn named_sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

impl NamedSender for VoteRequest<NodeId> {
    fn named_sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

impl NamedSender for InstallSnapshotRequest<TypeConfig> {
    fn named_sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Refuses a sender that is not another member, or, with peer TLS, whose certificate does
    /// not name it; then holds a message the fault filter drops: silence until the sender gives
    /// up, and never handled. A node without a membership yet (started with `--join`, waiting
    /// to be added) knows no members: it takes any other sender, since the leader that adds it
    /// is the first to write to it (with peer TLS, still only one whose certificate names it).
    async fn admit(&self, ctx: &Ctx, certs: Option<PeerCerts>, from: NodeId) -> Result<(), Status> {
        let cp = self.node.cp();
        let joining = !cp.has_membership() && !self.node.options().join.is_empty();
        let members = if joining { BTreeSet::new() } else { cp.member_ids() };
        check_sender_or_joining(from, self.node.id(), &members)?;
        if self.node.options().peer_tls.is_some() {
            check_certificate(certs.as_deref().and_then(|c| c.first()), from)?;
        }
        if !self.node.fault().allows(from, self.node.id()) {
            tokio::time::sleep(ctx.remaining()).await;
            return Err(Status::unavailable("dropped by fault injection"));
        }
        Ok(())
    }

    /// Checks group, sender and fault filter, then decodes the openraft request and checks that
    /// it names the same sender.
    async fn accept<T: DeserializeOwned + NamedSender>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        let ctx = Ctx::of(&request);
        let certs = request.peer_certs();
        let message = request.into_inner();
        if message.group_id != GROUP_ID {
            return Err(Status::invalid_argument(format!(
                "unknown Raft group {}",
                message.group_id
            )));
        }
        self.admit(&ctx, certs, message.from).await?;
        let rpc: T =
            decode(&message.payload).map_err(|e| Status::invalid_argument(format!("bad Raft message: {e}")))?;
        check_raft_sender(message.from, rpc.named_sender())?;
        Ok(rpc)
    }

    fn answer<T: Serialize>(&self, result: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage {
            group_id: GROUP_ID,
            from: self.node.id(),
            payload: encode(result).into(),
        }))
    }
}

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.accept(request).await?;
        let result = self.node.cp().raft().append_entries(rpc).await;
        self.answer(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.accept(request).await?;
        let result = self.node.cp().raft().vote(rpc).await;
        self.answer(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.accept(request).await?;
        // openraft seeks to the chunk's offset in the file it receives into and writes there.
        check_snapshot_chunk(rpc.offset, rpc.data.len())?;
        let result = self.node.cp().raft().install_snapshot(rpc).await;
        self.answer(&result)
    }

    async fn ping(&self, request: Request<proto::PingRequest>) -> Result<Response<proto::PingResponse>, Status> {
        let ctx = Ctx::of(&request);
        let certs = request.peer_certs();
        let from = request.into_inner().from;
        self.admit(&ctx, certs, from).await?;
        self.node.reach().heard_from(from);
        Ok(Response::new(proto::PingResponse {
            node_id: self.node.id(),
            term: self.node.cp().metrics().current_term,
        }))
    }

    async fn ap(&self, request: Request<proto::ApMessage>) -> Result<Response<proto::ApMessage>, Status> {
        let ctx = Ctx::of(&request);
        let certs = request.peer_certs();
        let message = request.into_inner();
        self.admit(&ctx, certs, message.from).await?;
        let ap_request: crate::ap::replica::Request =
            decode(&message.payload).map_err(|e| Status::invalid_argument(format!("bad AP message: {e}")))?;
        let response = self.node.ap().replica().handle(message.from, ap_request).await?;
        Ok(Response::new(proto::ApMessage {
            from: self.node.id(),
            payload: encode(&response).into(),
        }))
    }

    async fn set_clock_offset(
        &self,
        request: Request<proto::ClockRequest>,
    ) -> Result<Response<proto::NodeFaultState>, Status> {
        self.node.fault().set_clock_offset(request.into_inner().offset_ms)?;
        Ok(Response::new(super::fault::local_state(&self.node)))
    }

    async fn get_fault_state(
        &self,
        _request: Request<proto::FaultStatusRequest>,
    ) -> Result<Response<proto::NodeFaultState>, Status> {
        Ok(Response::new(super::fault::local_state(&self.node)))
    }

    async fn set_partition(
        &self,
        request: Request<proto::SetPartitionRequest>,
    ) -> Result<Response<proto::SetPartitionResponse>, Status> {
        let request = request.into_inner();
        let groups = request
            .groups
            .into_iter()
            .map(|g| g.nodes.into_iter().collect())
            .collect::<Vec<_>>();
        // The same check as the public Fault service's; empty heals.
        if !groups.is_empty() {
            crate::fault::validate_partition(&groups, &self.node.cp().member_ids())?;
        }
        tracing::warn!(
            from = request.from,
            ?groups,
            "fault injection: partition set by a peer (empty = healed)"
        );
        self.node.fault().set(groups)?;
        if request.reset_clock {
            self.node.fault().set_clock_offset(0)?;
        }
        Ok(Response::new(proto::SetPartitionResponse {
            node_id: self.node.id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};

    use super::*;

    fn members() -> BTreeSet<NodeId> {
        [1, 2, 3].into_iter().collect()
    }

    #[test]
    fn only_other_members_may_send() {
        assert!(check_sender(2, 1, &members()).is_ok());
        assert!(check_sender(3, 1, &members()).is_ok());
        let own = check_sender(1, 1, &members()).unwrap_err();
        assert!(own.to_string().contains("this node (1)"), "{own}");
        for stranger in [0, 4, 99, u64::MAX] {
            let err = check_sender(stranger, 1, &members()).unwrap_err();
            assert_eq!(err.exit_code(), 5, "{err}");
            assert!(
                err.to_string().contains(&format!("node {stranger} is not a member")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_joining_node_without_membership_takes_any_other_sender() {
        let none = BTreeSet::new();
        assert!(check_sender_or_joining(7, 4, &none).is_ok(), "the leader adding it");
        assert!(check_sender_or_joining(4, 4, &none).is_err(), "never itself");
        assert!(check_sender_or_joining(2, 1, &members()).is_ok());
        assert!(
            check_sender_or_joining(9, 1, &members()).is_err(),
            "once it has a membership, strangers are refused again"
        );
    }

    #[test]
    fn a_raft_message_must_name_its_sender() {
        let vote = VoteRequest::new(Vote::new(7, 2), None);
        assert!(check_raft_sender(2, vote.named_sender()).is_ok());
        let err = check_raft_sender(3, vote.named_sender()).unwrap_err();
        assert!(
            err.to_string().contains("from node 3 carries the vote of node 2"),
            "{err}"
        );

        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(7, 3),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(7, 3), 10)),
            entries: vec![],
            leader_commit: None,
        };
        assert_eq!(append.named_sender(), Some(3));
        assert!(check_raft_sender(3, append.named_sender()).is_ok());
        assert!(check_raft_sender(1, append.named_sender()).is_err());

        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(9, 1),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
        };
        assert_eq!(snapshot.named_sender(), Some(1));
        assert!(check_raft_sender(2, snapshot.named_sender()).is_err());
        assert!(
            check_raft_sender(2, None).is_ok(),
            "nothing named, nothing to disagree with"
        );
    }

    #[test]
    fn snapshot_chunks_end_within_the_limit() {
        assert!(check_snapshot_chunk(0, 1024 * 1024).is_ok());
        assert!(check_snapshot_chunk(SNAPSHOT_BYTES_MAX - 10, 10).is_ok());
        assert!(check_snapshot_chunk(SNAPSHOT_BYTES_MAX, 0).is_ok());
        assert!(check_snapshot_chunk(SNAPSHOT_BYTES_MAX - 10, 11).is_err());
        assert!(check_snapshot_chunk(SNAPSHOT_BYTES_MAX + 1, 0).is_err());
        let err = check_snapshot_chunk(u64::MAX, 1).unwrap_err();
        assert!(err.to_string().contains("ends beyond the snapshot limit"), "{err}");
        assert_eq!(err.exit_code(), 5);
    }
}
