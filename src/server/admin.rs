//! The public admin services: keyspaces, cluster status and fault injection.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::forward::{forward, Effect};
use super::RequestCtx;
use crate::cp::{Command, Outcome};
use crate::error::Error;
use crate::keyspace::{validate_name, KeyspaceDef, Mode};
use crate::node::{Node, Route};
use crate::observe::metrics::record_request;
use crate::proto::{self, keyspaces_client::KeyspacesClient};

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
        let forwarded = self.linearize(&ctx, req, call).await?;
        // The definition is linearizable; the key count is always this node's own replica's.
        let Some(def) = self.node.local_keyspace(&name)? else {
            return match forwarded {
                Some(answer) => Ok(Response::new(answer)),
                None => Err(Error::UnknownKeyspace(name).into()),
            };
        };
        let keys = match def.mode {
            Mode::Cp => self.node.reader.count(&name),
            Mode::Ap => self.node.ap.store.count(&name)?,
        };
        Ok(Response::new(info(&def, keys as u64)))
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
