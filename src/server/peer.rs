//! The internal peer service: openraft's RPCs and the fault-injection control plane.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::cp::GROUP_ID;
use crate::node::Node;
use crate::proto::{self, RaftMessage};
use crate::request::Ctx;
use crate::storage::codec::{decode, encode};

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Checks group and fault filter, then decodes the openraft request.
    async fn accept<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        let ctx = Ctx::of(&request);
        let message = request.into_inner();
        if message.group_id != GROUP_ID {
            return Err(Status::invalid_argument(format!(
                "unknown Raft group {}",
                message.group_id
            )));
        }
        if !self.node.fault().allows(message.from, self.node.id()) {
            // Silence: hold the request until the sender gives up, and never handle it.
            tokio::time::sleep(ctx.remaining()).await;
            return Err(Status::unavailable("dropped by fault injection"));
        }
        decode(&message.payload).map_err(|e| Status::invalid_argument(format!("bad Raft message: {e}")))
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
        let rpc = self.accept(request).await?;
        let result = self.node.cp().raft().install_snapshot(rpc).await;
        self.answer(&result)
    }

    async fn ping(&self, request: Request<proto::PingRequest>) -> Result<Response<proto::PingResponse>, Status> {
        let ctx = Ctx::of(&request);
        let from = request.into_inner().from;
        if !self.node.fault().allows(from, self.node.id()) {
            tokio::time::sleep(ctx.remaining()).await;
            return Err(Status::unavailable("dropped by fault injection"));
        }
        self.node.reach().heard_from(from);
        Ok(Response::new(proto::PingResponse {
            node_id: self.node.id(),
            term: self.node.cp().metrics().current_term,
        }))
    }

    async fn ap(&self, request: Request<proto::ApMessage>) -> Result<Response<proto::ApMessage>, Status> {
        let ctx = Ctx::of(&request);
        let message = request.into_inner();
        if !self.node.fault().allows(message.from, self.node.id()) {
            tokio::time::sleep(ctx.remaining()).await;
            return Err(Status::unavailable("dropped by fault injection"));
        }
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
