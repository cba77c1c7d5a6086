//! openraft's network over the peer gRPC service, through the fault filter.
//!
//! Each openraft RPC is serialized with bincode into a `RaftMessage` that also names the group
//! and the sender (so the receiver can apply the fault filter too). The answer carries the
//! receiver's `Result`, so remote Raft errors come back typed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::{NodeId, TypeConfig, GROUP_ID};
use crate::fault::FaultFilter;
use crate::limits::GRPC_MESSAGE_BYTES_MAX;
use crate::net::peer_channel;
use crate::proto::peer_client::PeerClient;
use crate::proto::RaftMessage;
use crate::storage::codec::{decode, encode};

/// Backoff after a peer was unreachable; short, so replication resumes soon after a heal.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Creates one connection per peer; channels are shared across the replication streams.
#[derive(Clone)]
pub struct Network {
    self_id: NodeId,
    fault: Arc<FaultFilter>,
    channels: Arc<Mutex<HashMap<NodeId, Channel>>>,
}

impl Network {
    pub fn new(self_id: NodeId, fault: Arc<FaultFilter>) -> Self {
        Self {
            self_id,
            fault,
            channels: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        let channel = {
            let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
            match channels.get(&target) {
                Some(c) => Ok(c.clone()),
                None => peer_channel(&node.addr).map_err(|e| e.to_string()).inspect(|c| {
                    channels.insert(target, c.clone());
                }),
            }
        };
        PeerConnection {
            self_id: self.self_id,
            target,
            fault: self.fault.clone(),
            channel,
        }
    }
}

pub struct PeerConnection {
    self_id: NodeId,
    target: NodeId,
    fault: Arc<FaultFilter>,
    channel: Result<Channel, String>,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
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
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let message = RaftMessage {
            group_id: GROUP_ID,
            from: self.self_id,
            payload: encode(req).into(),
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

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
