//! The AP implementation of the data operations: served by whichever node the client reached,
//! from its own replica, without Raft.
//!
//! A put or delete is stamped, stored durably and acknowledged here (with `acks = N`, once N
//! replicas stored it), then spreads by push, hints and anti-entropy ([`super::replica`]). A read
//! returns this replica's value, or with `--consistency quorum` the newest of a majority.
//! Compare-and-swap, transactions and linearizable reads need consensus, so this path refuses
//! them with a sentence that names the cp mode.
//!
//! Caveats: `delete`'s `deleted` answers whether *this* replica held a value; another replica
//! may have held one that this one had not seen yet.

use std::time::Instant;

use super::path::Ap;
use super::version::{Version, Versioned};
use crate::error::Error;
use crate::kv::KvPath;
use crate::limits::scan_page_items;
use crate::mode::Mode;
use crate::proto::{self, Consistency};
use crate::request::Ctx;

/// The refusal of an operation an ap keyspace cannot offer.
pub fn mode_refuses(op: &str, keyspace: &str) -> Error {
    Error::ModeRefuses {
        op: op.to_string(),
        keyspace: keyspace.to_string(),
        mode: Mode::Ap,
        needs: Mode::Cp,
    }
}

pub fn version_to_proto(v: Version) -> proto::Version {
    proto::Version {
        physical_ms: v.hlc.physical_ms,
        logical: v.hlc.logical,
        node_id: v.node,
    }
}

fn to_kv(key: Vec<u8>, v: &Versioned) -> proto::KeyValue {
    proto::KeyValue {
        key,
        value: v.value.clone().unwrap_or_default(),
        ap_version: Some(version_to_proto(v.version)),
        ..Default::default()
    }
}

/// Replicas that must store a write before it is acknowledged (0 on the wire means 1).
fn acks(requested: u32) -> usize {
    requested.max(1) as usize
}

impl Ap {
    /// Stores a value (`Some`) or a tombstone (`None`) with `acks` replicas confirming.
    async fn write(
        &self,
        ctx: &Ctx,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        acks_requested: u32,
    ) -> Result<Versioned, Error> {
        let deadline = ctx.deadline.max(Instant::now());
        self.replica
            .write(
                keyspace,
                key,
                value,
                acks(acks_requested),
                |p| self.reach.reachable(p),
                deadline,
            )
            .await
    }
}

impl KvPath for Ap {
    async fn get(&self, ctx: &Ctx, req: proto::GetRequest) -> Result<proto::GetResponse, Error> {
        let found = match req.consistency() {
            Consistency::Linearizable => return Err(mode_refuses("a linearizable read", &req.keyspace)),
            Consistency::Quorum => {
                self.replica
                    .read_quorum(&req.keyspace, &req.key, |p| self.reach.reachable(p), ctx.deadline)
                    .await?
            }
            Consistency::Default | Consistency::Serializable => self.replica.store.get(&req.keyspace, &req.key)?,
        };
        let live = found.filter(|v| !v.is_tombstone());
        Ok(proto::GetResponse {
            found: live.is_some(),
            kv: live.map(|v| to_kv(req.key, &v)),
            served_by: self.replica.id,
        })
    }

    async fn put(&self, ctx: &Ctx, req: proto::PutRequest) -> Result<proto::PutResponse, Error> {
        let written = self
            .write(ctx, &req.keyspace, &req.key, Some(req.value), req.acks)
            .await?;
        Ok(proto::PutResponse {
            revision: 0,
            had_previous: false,
            version: Some(version_to_proto(written.version)),
        })
    }

    async fn delete(&self, ctx: &Ctx, req: proto::DeleteRequest) -> Result<proto::DeleteResponse, Error> {
        let existed = self
            .replica
            .store
            .get(&req.keyspace, &req.key)?
            .is_some_and(|v| !v.is_tombstone());
        let written = self.write(ctx, &req.keyspace, &req.key, None, req.acks).await?;
        Ok(proto::DeleteResponse {
            deleted: existed,
            revision: 0,
            version: Some(version_to_proto(written.version)),
        })
    }

    async fn scan(&self, _ctx: &Ctx, req: proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
        match req.consistency() {
            Consistency::Linearizable => return Err(mode_refuses("a linearizable scan", &req.keyspace)),
            Consistency::Quorum => {
                return Err(Error::InvalidInput(
                    "scan --consistency quorum is not offered on ap keyspaces; a scan reads the local replica".into(),
                ))
            }
            Consistency::Default | Consistency::Serializable => {}
        }
        let limit = scan_page_items(req.limit);
        let (items, more) = self
            .replica
            .store
            .scan(&req.keyspace, &req.prefix, &req.start_after, limit)?;
        Ok(proto::ScanResponse {
            items: items.into_iter().map(|(k, v)| to_kv(k, &v)).collect(),
            more,
        })
    }

    async fn cas(&self, _ctx: &Ctx, req: proto::CasRequest) -> Result<proto::CasResponse, Error> {
        Err(mode_refuses("compare-and-swap", &req.keyspace))
    }

    async fn txn(&self, _ctx: &Ctx, req: proto::TxnRequest) -> Result<proto::TxnResponse, Error> {
        Err(mode_refuses("a transaction", &req.keyspace))
    }
}
