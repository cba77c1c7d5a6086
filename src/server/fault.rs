//! The public `Fault` service: partitions and clock offsets, set on every node.
//!
//! The node that receives a fault command applies it and tells every other member over the
//! peer control plane, which the fault filter never drops (so `fault heal` always gets through).
//! The answer says which nodes were reached; a node that was not keeps its previous state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::fault::{validate_clock_offset, validate_partition};
use crate::node::Node;
use crate::proto::{self, peer_client::PeerClient};

/// How long telling one peer about a fault may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct FaultService {
    node: Arc<Node>,
}

fn wire(groups: &[BTreeSet<u64>]) -> Vec<proto::Group> {
    groups
        .iter()
        .map(|g| proto::Group {
            nodes: g.iter().copied().collect(),
        })
        .collect()
}

/// This node's own fault state.
pub fn local_state(node: &Node) -> proto::NodeFaultState {
    proto::NodeFaultState {
        node_id: node.id(),
        reached: true,
        groups: wire(&node.fault().groups()),
        error: String::new(),
        clock_offset_ms: node.fault().clock().offset_ms(),
    }
}

/// Runs one control call against a peer and reports its state (or why it was not reached).
async fn control<F, Fut>(node_id: u64, addr: String, call: F) -> proto::NodeFaultState
where
    F: FnOnce(PeerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<proto::NodeFaultState>, Status>>,
{
    let unreached = |error: String| proto::NodeFaultState {
        node_id,
        reached: false,
        error,
        ..Default::default()
    };
    let channel = match crate::net::peer_channel(&addr) {
        Ok(c) => c,
        Err(e) => return unreached(e.to_string()),
    };
    match tokio::time::timeout(CONTROL_TIMEOUT, call(PeerClient::new(channel))).await {
        Ok(Ok(state)) => state.into_inner(),
        Ok(Err(status)) => unreached(status.message().to_string()),
        Err(_) => unreached("no answer in time".into()),
    }
}

impl FaultService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn peers(&self) -> Vec<(u64, String)> {
        self.node
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.node.id())
            .collect()
    }

    /// Sets the partition here and on every other member; `reset_clock` also clears offsets.
    async fn set_everywhere(
        &self,
        groups: Vec<BTreeSet<u64>>,
        reset_clock: bool,
    ) -> Result<proto::FaultStatusResponse, Error> {
        self.node.fault().set(groups.clone())?;
        if reset_clock {
            self.node.fault().set_clock_offset(0)?;
        }
        tracing::warn!(?groups, reset_clock, "fault injection: partition set (empty = healed)");
        let tasks: Vec<_> = self
            .peers()
            .into_iter()
            .map(|(id, addr)| {
                let request = proto::SetPartitionRequest {
                    from: self.node.id(),
                    groups: wire(&groups),
                    reset_clock,
                };
                tokio::spawn(control(id, addr, move |mut c| async move {
                    c.set_partition(request).await?;
                    c.get_fault_state(proto::FaultStatusRequest {}).await
                }))
            })
            .collect();
        self.gather(tasks).await
    }

    async fn gather(
        &self,
        tasks: Vec<tokio::task::JoinHandle<proto::NodeFaultState>>,
    ) -> Result<proto::FaultStatusResponse, Error> {
        let mut nodes = vec![local_state(&self.node)];
        for task in tasks {
            nodes.push(
                task.await
                    .map_err(|e| Error::Internal(format!("a fault control task failed: {e}")))?,
            );
        }
        nodes.sort_by_key(|n| n.node_id);
        Ok(proto::FaultStatusResponse {
            enabled: self.node.fault().enabled(),
            groups: wire(&self.node.fault().groups()),
            nodes,
        })
    }
}

#[tonic::async_trait]
impl proto::fault_server::Fault for FaultService {
    async fn partition(
        &self,
        request: Request<proto::PartitionRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        let groups: Vec<BTreeSet<u64>> = request
            .into_inner()
            .groups
            .into_iter()
            .map(|g| g.nodes.into_iter().collect())
            .collect();
        validate_partition(&groups, &self.node.cp().member_ids())?;
        Ok(Response::new(self.set_everywhere(groups, false).await?))
    }

    async fn heal(
        &self,
        _request: Request<proto::HealRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        Ok(Response::new(self.set_everywhere(Vec::new(), true).await?))
    }

    async fn status(
        &self,
        _request: Request<proto::FaultStatusRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        let tasks = self
            .peers()
            .into_iter()
            .map(|(id, addr)| {
                tokio::spawn(control(id, addr, |mut c| async move {
                    c.get_fault_state(proto::FaultStatusRequest {}).await
                }))
            })
            .collect();
        Ok(Response::new(self.gather(tasks).await?))
    }

    async fn clock(
        &self,
        request: Request<proto::ClockRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        let request = request.into_inner();
        // Checked here too, before any peer is told, so the caller learns of a bad offset at once.
        validate_clock_offset(request.offset_ms)?;
        let members = self.node.members();
        let Some(addr) = members.get(&request.node_id).cloned() else {
            return Err(
                Error::InvalidInput(format!("node {} is not a member of this cluster", request.node_id)).into(),
            );
        };
        if !self.node.fault().enabled() {
            return Err(Error::Refused(
                "fault injection is off on this node; start nodes with --fault-injection".into(),
            )
            .into());
        }
        if request.node_id == self.node.id() {
            self.node.fault().set_clock_offset(request.offset_ms)?;
        } else {
            let state = control(request.node_id, addr, move |mut c| async move {
                c.set_clock_offset(request).await
            })
            .await;
            if !state.reached {
                return Err(
                    Error::Unreachable(format!("node {} could not be told: {}", state.node_id, state.error)).into(),
                );
            }
        }
        tracing::warn!(
            node = request.node_id,
            offset_ms = request.offset_ms,
            "fault injection: clock offset set"
        );
        self.status(Request::new(proto::FaultStatusRequest {})).await
    }
}
