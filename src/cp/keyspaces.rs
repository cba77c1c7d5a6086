//! Keyspace definitions: cluster metadata, replicated through Raft for both modes.
//!
//! Creating a keyspace is a proposal like any write (it needs a quorum, even for an ap
//! keyspace); listing and describing read the metadata linearizably, like a default cp read.
//! AP operations never wait on this path: a node serves an ap keyspace from its own replica of
//! the metadata ([`Cp::local_keyspace`]).
//!
//! Caveats: keyspaces cannot be dropped or renamed yet.

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::command::CreateKeyspace;
use super::forward::Effect;
use super::path::Cp;
use crate::error::Error;
use crate::keyspace::KeyspaceDef;
use crate::mode::Mode;
use crate::net::keyspaces_client;
use crate::proto::{self, Consistency};
use crate::request::Ctx;

impl Cp {
    /// Creates a keyspace; an existing one of the same name is refused ("already exists").
    pub async fn create_keyspace(
        &self,
        ctx: &Ctx,
        create: CreateKeyspace,
        req: proto::CreateKeyspaceRequest,
    ) -> Result<proto::KeyspaceInfo, Error> {
        let call = |c, r| async move { keyspaces_client(c).create(r).await };
        if let Some(answer) = self.at_leader(ctx, req, Effect::Write, call).await? {
            return Ok(answer);
        }
        let answer = self.propose(create, None, ctx.deadline).await?;
        if !answer.created {
            return Err(Error::AlreadyExists(format!(
                "keyspace '{}' already exists (mode {})",
                answer.def.name, answer.def.mode
            )));
        }
        Ok(keyspace_info(&answer.def, 0))
    }

    /// Makes a metadata read linearizable here, or forwards it: `Ok(None)` means read locally.
    pub async fn linearize_metadata<Req, Resp, F, Fut>(
        &self,
        ctx: &Ctx,
        message: Req,
        call: F,
    ) -> Result<Option<Resp>, Error>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.linearize_or_forward(ctx, Consistency::Linearizable, message, call)
            .await
    }
}

/// A keyspace definition as the API shows it, with the key count of the answering replica.
pub fn keyspace_info(def: &KeyspaceDef, keys: u64) -> proto::KeyspaceInfo {
    let mode = match def.mode {
        Mode::Cp => proto::Mode::Cp,
        Mode::Ap => proto::Mode::Ap,
    };
    proto::KeyspaceInfo {
        name: def.name.clone(),
        mode: mode as i32,
        created_revision: def.created_revision,
        keys,
    }
}
