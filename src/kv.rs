//! The data operations every keyspace mode implements: one trait, two implementations.
//!
//! The public `Kv` service (`server/kv.rs`) checks a request's input, looks up the keyspace's
//! mode in the node's local metadata, and hands the request to the CP implementation
//! (`cp/kv.rs`: Raft, linearizable) or the AP implementation (`ap/kv.rs`: any node, last writer
//! wins). Both answer the same requests with the same responses, so clients do not care which
//! path served them; an operation a mode cannot offer (compare-and-swap on `ap`) is refused by
//! that mode's implementation with [`Error::ModeRefuses`].
//!
//! Input limits (key, value, name sizes) are checked once, before dispatch; implementations may
//! assume them.

use std::future::Future;

use crate::error::Error;
use crate::proto;
use crate::request::Ctx;

/// The data operations of one mode.
pub trait KvPath {
    fn get(&self, ctx: &Ctx, req: proto::GetRequest) -> impl Future<Output = Result<proto::GetResponse, Error>> + Send;
    fn put(&self, ctx: &Ctx, req: proto::PutRequest) -> impl Future<Output = Result<proto::PutResponse, Error>> + Send;
    fn delete(
        &self,
        ctx: &Ctx,
        req: proto::DeleteRequest,
    ) -> impl Future<Output = Result<proto::DeleteResponse, Error>> + Send;
    fn scan(
        &self,
        ctx: &Ctx,
        req: proto::ScanRequest,
    ) -> impl Future<Output = Result<proto::ScanResponse, Error>> + Send;
    fn cas(&self, ctx: &Ctx, req: proto::CasRequest) -> impl Future<Output = Result<proto::CasResponse, Error>> + Send;
    fn txn(&self, ctx: &Ctx, req: proto::TxnRequest) -> impl Future<Output = Result<proto::TxnResponse, Error>> + Send;
}
