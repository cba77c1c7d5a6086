//! The public admin services: keyspaces, cluster status and fault injection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::forward::{forward, Effect};
use super::RequestCtx;
use crate::cp::{Command, Outcome};
use crate::error::Error;
use crate::fault::validate_partition;
use crate::keyspace::{validate_name, KeyspaceDef, Mode};
use crate::node::{Node, Route};
use crate::observe::metrics::record_request;
use crate::proto::{self, keyspaces_client::KeyspacesClient};

/// How long telling one peer about a new partition may take.
const SET_PARTITION_TIMEOUT: Duration = Duration::from_secs(2);

fn mode_to_proto(mode: Mode) -> proto::Mode {
    match mode {
        Mode::Cp => proto::Mode::Cp,
        Mode::Ap => proto::Mode::Ap,
    }
}

fn info(def: &KeyspaceDef, keys: u64) -> proto::KeyspaceInfo {
    proto::KeyspaceInfo {
        name: def.name.clone(),
        mode: mode_to_proto(def.mode) as i32,
        created_revision: def.created_revision,
        keys,
    }
}

pub struct KeyspacesService {
    node: Arc<Node>,
}

impl KeyspacesService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Linearizes a metadata read: `Ok(None)` means read the local replica now.
    async fn linearize<Req, Resp, F, Fut>(&self, ctx: &RequestCtx, message: Req, call: F) -> Result<Option<Resp>, Error>
    where
        F: FnOnce(tonic::transport::Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        match self.node.route(ctx.deadline, ctx.forwarded_from).await? {
            Route::Forward { leader, channel } => Ok(Some(
                forward(&self.node, ctx, leader, channel, message, Effect::Read, call).await?,
            )),
            Route::Local => self.node.read_barrier(ctx.deadline).await.map(|_| None),
        }
    }

    async fn create(&self, ctx: RequestCtx, req: proto::CreateKeyspaceRequest) -> Result<proto::KeyspaceInfo, Error> {
        validate_name(&req.name)?;
        let mode = match req.mode() {
            proto::Mode::Cp => Mode::Cp,
            proto::Mode::Ap => Mode::Ap,
            proto::Mode::Unspecified => return Err(Error::InvalidInput("give the keyspace a mode: cp or ap".into())),
        };
        let command = Command::CreateKeyspace {
            name: req.name.clone(),
            mode,
        };
        let outcome = match self.node.route(ctx.deadline, ctx.forwarded_from).await? {
            Route::Forward { leader, channel } => {
                let call = |c, r| async move { KeyspacesClient::new(c).create(r).await };
                return forward(&self.node, &ctx, leader, channel, req, Effect::Write, call).await;
            }
            Route::Local => self.node.write(command, ctx.deadline).await?,
        };
        match outcome {
            Outcome::KeyspaceCreated(def) => Ok(info(&def, 0)),
            Outcome::KeyspaceExists(def) => Err(Error::AlreadyExists(format!(
                "keyspace '{}' already exists (mode {})",
                def.name, def.mode
            ))),
            other => Err(Error::Internal(format!(
                "unexpected outcome of a keyspace creation: {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl proto::keyspaces_server::Keyspaces for KeyspacesService {
    async fn create(
        &self,
        request: Request<proto::CreateKeyspaceRequest>,
    ) -> Result<Response<proto::KeyspaceInfo>, Status> {
        let ctx = RequestCtx::of(&request);
        ctx.admit(&self.node).await?;
        let req = request.into_inner();
        let name = req.name.clone();
        let result = self.create(ctx, req).await;
        record_request(&name, "meta", "create_keyspace", &result, ctx.started.elapsed());
        result.map(Response::new).map_err(Status::from)
    }

    async fn list(
        &self,
        request: Request<proto::ListKeyspacesRequest>,
    ) -> Result<Response<proto::ListKeyspacesResponse>, Status> {
        let ctx = RequestCtx::of(&request);
        ctx.admit(&self.node).await?;
        let req = request.into_inner();
        let call = |c, r| async move { KeyspacesClient::new(c).list(r).await };
        if let Some(answer) = self.linearize(&ctx, req, call).await? {
            return Ok(Response::new(answer));
        }
        let defs = self.node.reader.keyspaces().map_err(Error::Internal)?;
        Ok(Response::new(proto::ListKeyspacesResponse {
            keyspaces: defs.iter().map(|d| info(d, 0)).collect(),
        }))
    }

    async fn describe(
        &self,
        request: Request<proto::DescribeKeyspaceRequest>,
    ) -> Result<Response<proto::KeyspaceInfo>, Status> {
        let ctx = RequestCtx::of(&request);
        ctx.admit(&self.node).await?;
        let req = request.into_inner();
        validate_name(&req.name)?;
        let name = req.name.clone();
        let call = |c, r| async move { KeyspacesClient::new(c).describe(r).await };
        if let Some(answer) = self.linearize(&ctx, req, call).await? {
            return Ok(Response::new(answer));
        }
        let def = self
            .node
            .local_keyspace(&name)?
            .ok_or_else(|| Error::UnknownKeyspace(name.clone()))?;
        Ok(Response::new(info(&def, self.node.reader.count(&name) as u64)))
    }
}

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for ClusterService {
    async fn status(&self, _request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(crate::observe::health::status(&self.node)))
    }
}

pub struct FaultService {
    node: Arc<Node>,
}

impl FaultService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Sets the partition here, then tells every other member over the unfiltered control path.
    async fn apply(&self, groups: Vec<BTreeSet<u64>>) -> Result<proto::FaultStatusResponse, Error> {
        self.node.fault.set(groups.clone())?;
        tracing::warn!(?groups, "fault injection: partition set (empty = healed)");
        let wire: Vec<proto::Group> = groups
            .iter()
            .map(|g| proto::Group {
                nodes: g.iter().copied().collect(),
            })
            .collect();
        let mut tasks = Vec::new();
        for (id, addr) in self.node.members() {
            if id == self.node.id {
                continue;
            }
            let request = proto::SetPartitionRequest {
                from: self.node.id,
                groups: wire.clone(),
            };
            tasks.push(tokio::spawn(tell_peer(id, addr, request)));
        }
        let mut nodes = vec![proto::NodeFaultState {
            node_id: self.node.id,
            reached: true,
            groups: wire.clone(),
            error: String::new(),
        }];
        for task in tasks {
            let mut state = task
                .await
                .map_err(|e| Error::Internal(format!("a fault broadcast task failed: {e}")))?;
            if state.reached {
                state.groups = wire.clone();
            }
            nodes.push(state);
        }
        Ok(proto::FaultStatusResponse {
            enabled: true,
            groups: wire,
            nodes,
        })
    }

    fn local_status(&self) -> proto::FaultStatusResponse {
        let groups = self
            .node
            .fault
            .groups()
            .iter()
            .map(|g| proto::Group {
                nodes: g.iter().copied().collect(),
            })
            .collect();
        proto::FaultStatusResponse {
            enabled: self.node.fault.enabled(),
            groups,
            nodes: Vec::new(),
        }
    }
}

async fn tell_peer(id: u64, addr: String, request: proto::SetPartitionRequest) -> proto::NodeFaultState {
    let result = async {
        let channel = crate::cp::network::peer_channel(&addr)?;
        let mut request = Request::new(request);
        request.set_timeout(SET_PARTITION_TIMEOUT);
        let mut client = proto::peer_client::PeerClient::new(channel);
        let call = client.set_partition(request);
        match tokio::time::timeout(SET_PARTITION_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("no answer in time".to_string()),
        }
    }
    .await;
    proto::NodeFaultState {
        node_id: id,
        reached: result.is_ok(),
        groups: Vec::new(),
        error: result.err().unwrap_or_default(),
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
        validate_partition(&groups, &self.node.member_ids())?;
        Ok(Response::new(self.apply(groups).await?))
    }

    async fn heal(
        &self,
        _request: Request<proto::HealRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        Ok(Response::new(self.apply(Vec::new()).await?))
    }

    async fn status(
        &self,
        _request: Request<proto::FaultStatusRequest>,
    ) -> Result<Response<proto::FaultStatusResponse>, Status> {
        Ok(Response::new(self.local_status()))
    }
}
