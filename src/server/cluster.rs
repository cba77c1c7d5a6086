//! The public `Cluster` service: the answering node's own view of itself and its peers, and
//! membership changes (forwarded to the leader, see [`crate::cp::members`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::proto;
use crate::request::Ctx;

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

    async fn member_list(
        &self,
        request: Request<proto::MemberListRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        Ok(Response::new(
            self.node.cp().member_list(&ctx, request.into_inner()).await?,
        ))
    }

    async fn member_add(
        &self,
        request: Request<proto::MemberAddRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        Ok(Response::new(
            self.node.cp().member_add(&ctx, request.into_inner()).await?,
        ))
    }

    async fn member_remove(
        &self,
        request: Request<proto::MemberRemoveRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        let ctx = Ctx::of(&request);
        super::admit(&self.node, &ctx).await?;
        Ok(Response::new(
            self.node.cp().member_remove(&ctx, request.into_inner()).await?,
        ))
    }
}
