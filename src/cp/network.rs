//! openraft's network over the peer gRPC service, through the fault filter.
//!
//! Each openraft RPC is serialized with bincode into a `RaftMessage` that also names the group
//! and the sender (so the receiver can apply the fault filter too). The answer carries the
//! receiver's `Result`, so remote Raft errors come back typed.
//!
//! Message sizes: an AppendEntries batch is capped by count (openraft's `max_payload_entries`)
//! and here by bytes ([`RAFT_MESSAGE_BYTES_MAX`]): a batch over it, or one the transport refuses
//! as too large, is answered with openraft's `PayloadTooLarge`, so openraft retries with fewer
//! entries instead of resending the same batch forever. A batch that does not complete within
//! the soft deadline of openraft's AppendEntries timeout (one heartbeat interval) is split the
//! same way. Snapshot chunks are sized by openraft's
//! `snapshot_max_chunk_size`, far below the peer message limit.
//!
//! Held answers: a follower's successful AppendEntries answer reaches openraft only once the
//! leader's own copy of the entries it answers for is on disk ([`OwnAppends`]; see EARLY ACKS in
//! `super::log_store`), so a commit never counts a leader copy that a power cut could lose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::Code;

use super::log_store::OwnAppends;
use super::{NodeId, TypeConfig, GROUP_ID};
use crate::fault::FaultFilter;
use crate::limits::RAFT_MESSAGE_BYTES_MAX;
use crate::net::{peer_channel, peer_client};
use crate::proto::RaftMessage;
use crate::storage::codec::{decode, encode};

/// Backoff after a peer was unreachable; short, so replication resumes soon after a heal.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Creates one connection per peer; channels are shared across the replication streams.
#[derive(Clone)]
pub struct Network {
    self_id: NodeId,
    fault: Arc<FaultFilter>,
    own: Arc<OwnAppends>,
    /// Keyed by id and address: a member removed and added again elsewhere gets a new channel.
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
}

impl Network {
    pub fn new(self_id: NodeId, fault: Arc<FaultFilter>, own: Arc<OwnAppends>) -> Self {
        Self {
            self_id,
            fault,
            own,
            channels: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        let channel = {
            let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
            let key = (target, node.addr.clone());
            match channels.get(&key) {
                Some(c) => Ok(c.clone()),
                None => peer_channel(&node.addr).map_err(|e| e.to_string()).inspect(|c| {
                    channels.insert(key, c.clone());
                }),
            }
        };
        PeerConnection {
            self_id: self.self_id,
            target,
            fault: self.fault.clone(),
            own: self.own.clone(),
            channel,
        }
    }
}

pub struct PeerConnection {
    self_id: NodeId,
    target: NodeId,
    fault: Arc<FaultFilter>,
    own: Arc<OwnAppends>,
    channel: Result<Channel, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    /// Sends one encoded openraft request and decodes the peer's typed answer.
    async fn call<Resp, E>(
        &self,
        rpc: Rpc,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if !self.fault.allows(self.self_id, self.target) {
            // Silence, as with a cut cable: the message is lost and the caller hears nothing.
            tokio::time::sleep(ttl).await;
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "partitioned by fault injection",
            ))));
        }
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let mut client = peer_client(channel);
        let message = RaftMessage {
            group_id: GROUP_ID,
            from: self.self_id,
            payload: payload.into(),
        };
        let mut request = tonic::Request::new(message);
        request.set_timeout(ttl);
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let response = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if rpc == Rpc::AppendEntries && too_large(&status) => {
                // openraft keeps this hint for a while and sends one entry per message meanwhile.
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1)));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    status.message().to_string(),
                ))))
            }
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    "peer did not answer in time",
                ))))
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&response.payload).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl PeerConnection {
    /// Waits until this leader's own copy of every entry up to `index` is on disk (see the
    /// module docs); an unreachable error when that does not happen within `ttl`, so openraft
    /// asks again rather than count the answer.
    async fn hold_until_own_copy_durable(
        &self,
        index: u64,
        ttl: Duration,
    ) -> Result<(), RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let started = Instant::now();
        let unreachable = |why: String| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)));
        match tokio::time::timeout(ttl, self.own.durable_through(index)).await {
            Ok(Ok(())) => {
                metrics::histogram!("capkv_raft_answer_held_seconds").record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err(why)) => Err(unreachable(why)),
            Err(_) => Err(unreachable(format!(
                "this leader's own copy of the log up to entry {index} did not reach its disk in time"
            ))),
        }
    }
}

/// Did the transport (either end) refuse the message for its size?
fn too_large(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange)
}

/// The last index a successful answer to `rpc` says the follower holds: what openraft will
/// count as matched. `None` for an answer that matches nothing.
fn matched_index(rpc: &AppendEntriesRequest<TypeConfig>, answer: &AppendEntriesResponse<NodeId>) -> Option<u64> {
    match answer {
        AppendEntriesResponse::Success => rpc
            .entries
            .last()
            .map(|e| e.log_id)
            .or(rpc.prev_log_id)
            .map(|l| l.index),
        AppendEntriesResponse::PartialSuccess(matched) => matched.map(|l| l.index),
        AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
    }
}

/// How many of `entries`, from the first, fit in [`RAFT_MESSAGE_BYTES_MAX`] (at least one: a
/// single entry is bounded by the request limits and always fits the peer message limit).
fn entries_that_fit(entries: &[openraft::Entry<TypeConfig>]) -> u64 {
    let mut bytes = 0;
    let fit = entries
        .iter()
        .take_while(|entry| {
            bytes += encode(*entry).len();
            bytes <= RAFT_MESSAGE_BYTES_MAX
        })
        .count();
    fit.max(1) as u64
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if rpc.entries.len() > 1 {
            // Sized before the whole batch is encoded: openraft may hand over 64 entries of
            // 1 MiB, and encoding them only to refuse them costs a worker thread that also
            // carries heartbeats. Too many bytes: openraft retries with as many as fit.
            let fit = entries_that_fit(&rpc.entries);
            if fit < rpc.entries.len() as u64 {
                metrics::counter!("capkv_raft_batches_split_total").increment(1);
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
            }
        }
        let payload = encode(&rpc);
        let entries = rpc.entries.len() as u64;
        let call = self.call(Rpc::AppendEntries, payload, option.hard_ttl());
        match tokio::time::timeout(option.soft_ttl(), call).await {
            Ok(Ok(answer)) => match matched_index(&rpc, &answer) {
                Some(index) => self
                    .hold_until_own_copy_durable(index, option.hard_ttl())
                    .await
                    .map(|()| answer),
                None => Ok(answer),
            },
            Ok(Err(e)) => Err(e),
            // openraft gives an AppendEntries one heartbeat interval. A batch that cannot be
            // sent and stored in that time would time out again on every retry, so ask for a
            // smaller one; the follower may have stored this one (appends are idempotent).
            Err(_) if entries > 1 => {
                metrics::counter!("capkv_raft_batches_split_total").increment(1);
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                    entries / 2,
                )))
            }
            Err(_) => Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "peer did not answer in time",
            )))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::InstallSnapshot, encode(&rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, encode(&rpc), option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn request(prev: Option<u64>, entries: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: prev.map(log_id),
            entries: entries
                .iter()
                .map(|i| Entry {
                    log_id: log_id(*i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    /// The index an answer is held for is the one openraft then counts as the follower's.
    #[test]
    fn an_answer_is_held_for_the_last_index_it_matches() {
        let success = AppendEntriesResponse::Success;
        assert_eq!(matched_index(&request(Some(4), &[5, 6, 7]), &success), Some(7));
        assert_eq!(matched_index(&request(Some(7), &[]), &success), Some(7), "a heartbeat");
        assert_eq!(matched_index(&request(None, &[]), &success), None, "an empty log");
        let partial = AppendEntriesResponse::PartialSuccess(Some(log_id(6)));
        assert_eq!(matched_index(&request(Some(4), &[5, 6, 7]), &partial), Some(6));
        assert_eq!(
            matched_index(&request(Some(4), &[5, 6, 7]), &AppendEntriesResponse::Conflict),
            None
        );
        let higher = AppendEntriesResponse::HigherVote(Vote::new(3, 2));
        assert_eq!(matched_index(&request(Some(4), &[5, 6, 7]), &higher), None);
    }
}
