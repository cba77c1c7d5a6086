//! The public `Keyspaces` service: create, list and describe keyspaces.
//!
//! Definitions are cluster metadata on the CP path ([`crate::cp::keyspaces`]); describing an
//! ap keyspace counts its keys in this node's AP replica.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::cp::command::CreateKeyspace;
use crate::cp::keyspaces::keyspace_info;
use crate::error::Error;
use crate::keyspace::validate_name;
use crate::mode::Mode;
use crate::net::keyspaces_client;
use crate::node::Node;
use crate::observe::metrics::record_request;
use crate::proto;
use crate::request::Ctx;

pub struct KeyspacesService {
    node: Arc<Node>,
}

impl KeyspacesService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn create(&self, ctx: &Ctx, req: proto::CreateKeyspaceRequest) -> Result<proto::KeyspaceInfo, Error> {
        validate_name(&req.name)?;
        let mode = match req.mode() {
            proto::Mode::Cp => Mode::Cp,
            proto::Mode::Ap => Mode::Ap,
            proto::Mode::Unspecified => return Err(Error::InvalidInput("give the keyspace a mode: cp or ap".into())),
        };
        let create = CreateKeyspace {
            name: req.name.clone(),
            mode,
        };
        self.node.cp().create_keyspace(ctx, create, req).await
    }

    async fn list(&self, ctx: &Ctx, req: proto::ListKeyspacesRequest) -> Result<proto::ListKeyspacesResponse, Error> {
        let call = |c, r| async move { keyspaces_client(c).list(r).await };
        if let Some(answer) = self.node.cp().linearize_metadata(ctx, req, call).await? {
            return Ok(answer);
        }
        let defs = self.node.cp().local_keyspaces()?;
        Ok(proto::ListKeyspacesResponse {
            keyspaces: defs.iter().map(|d| keyspace_info(d, 0)).collect(),
        })
    }

    async fn describe(&self, ctx: &Ctx, req: proto::DescribeKeyspaceRequest) -> Result<proto::KeyspaceInfo, Error> {
        validate_name(&req.name)?;
        let name = req.name.clone();
        let call = |c, r| async move { keyspaces_client(c).describe(r).await };
        // The definition is linearizable; the key count is always this node's own replica's.
        // Keyspaces are never dropped or changed, so an ap keyspace this node already knows is
        // described from its own copy when no leader can be reached: like its data, it stays
        // available on every side of a partition.
        let forwarded = match self.node.cp().linearize_metadata(ctx, req, call).await {
            Ok(forwarded) => forwarded,
            Err(Error::NoQuorum(why)) => match self.node.local_keyspace(&name)? {
                Some(def) if def.mode == Mode::Ap => None,
                _ => return Err(Error::NoQuorum(why)),
            },
            Err(e) => return Err(e),
        };
        let Some(def) = self.node.local_keyspace(&name)? else {
            return forwarded.ok_or(Error::UnknownKeyspace(name));
        };
        let keys = match def.mode {
            Mode::Cp => self.node.cp().reader().count(&name),
            Mode::Ap => self.node.ap().count(&name)?,
        };
        Ok(keyspace_info(&def, keys as u64))
    }
}

#[tonic::async_trait]
impl proto::keyspaces_server::Keyspaces for KeyspacesService {
    async fn create(
        &self,
        request: Request<proto::CreateKeyspaceRequest>,
    ) -> Result<Response<proto::KeyspaceInfo>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        let result = self.create(&ctx, request.into_inner()).await;
        let name = result.as_ref().map_or("unknown", |info| info.name.as_str());
        record_request(name, "meta", "create_keyspace", &result, ctx.started.elapsed());
        result.map(Response::new).map_err(Status::from)
    }

    async fn list(
        &self,
        request: Request<proto::ListKeyspacesRequest>,
    ) -> Result<Response<proto::ListKeyspacesResponse>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        Ok(Response::new(self.list(&ctx, request.into_inner()).await?))
    }

    async fn describe(
        &self,
        request: Request<proto::DescribeKeyspaceRequest>,
    ) -> Result<Response<proto::KeyspaceInfo>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        Ok(Response::new(self.describe(&ctx, request.into_inner()).await?))
    }
}
