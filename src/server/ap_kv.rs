//! The data operations of ap keyspaces: served by whichever node the client reached, from its
//! own replica, without Raft. The keyspace's mode comes from the node's local metadata.

use std::time::Instant;

use super::kv::KvService;
use super::RequestCtx;
use crate::ap::version::{Version, Versioned};
use crate::error::Error;
use crate::keyspace::{validate_value, Mode};
use crate::limits::scan_page_items;
use crate::proto::{self, Consistency};

/// The refusal of an operation an ap keyspace cannot offer.
pub fn mode_refuses(op: &str, keyspace: &str) -> Error {
    Error::ModeRefuses {
        op: op.to_string(),
        keyspace: keyspace.to_string(),
        mode: Mode::Ap,
        needs: "cp".into(),
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

fn acks(requested: u32) -> usize {
    requested.max(1) as usize
}

impl KvService {
    /// Is `keyspace` an ap keyspace in this node's copy of the metadata?
    pub(super) fn is_ap(&self, keyspace: &str) -> Result<bool, Error> {
        Ok(self
            .node
            .local_keyspace(keyspace)?
            .is_some_and(|def| def.mode == Mode::Ap))
    }

    pub(super) fn refuse_ap(&self, keyspace: &str, op: &str) -> Result<(), Error> {
        match self.is_ap(keyspace)? {
            true => Err(mode_refuses(op, keyspace)),
            false => Ok(()),
        }
    }

    pub(super) async fn ap_get(&self, ctx: &RequestCtx, req: proto::GetRequest) -> Result<proto::GetResponse, Error> {
        let found = match req.consistency() {
            Consistency::Linearizable => return Err(mode_refuses("a linearizable read", &req.keyspace)),
            Consistency::Quorum => {
                let node = &self.node;
                node.ap
                    .read_quorum(&req.keyspace, &req.key, |p| node.ap_reachable(p), ctx.deadline)
                    .await?
            }
            Consistency::Default | Consistency::Serializable => self.node.ap.store.get(&req.keyspace, &req.key)?,
        };
        let live = found.filter(|v| !v.is_tombstone());
        Ok(proto::GetResponse {
            found: live.is_some(),
            kv: live.map(|v| to_kv(req.key, &v)),
            served_by: self.node.id,
        })
    }

    pub(super) fn ap_scan(&self, req: &proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
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
            .node
            .ap
            .store
            .scan(&req.keyspace, &req.prefix, &req.start_after, limit)?;
        Ok(proto::ScanResponse {
            items: items.into_iter().map(|(k, v)| to_kv(k, &v)).collect(),
            more,
        })
    }

    pub(super) async fn ap_put(&self, ctx: &RequestCtx, req: proto::PutRequest) -> Result<proto::PutResponse, Error> {
        validate_value(&req.value)?;
        let node = &self.node;
        let deadline = ctx.deadline.max(Instant::now());
        let written = node
            .ap
            .write(
                &req.keyspace,
                &req.key,
                Some(req.value),
                acks(req.acks),
                |p| node.ap_reachable(p),
                deadline,
            )
            .await?;
        Ok(proto::PutResponse {
            revision: 0,
            had_previous: false,
            version: Some(version_to_proto(written.version)),
        })
    }

    pub(super) async fn ap_delete(
        &self,
        ctx: &RequestCtx,
        req: proto::DeleteRequest,
    ) -> Result<proto::DeleteResponse, Error> {
        let node = &self.node;
        let existed = node
            .ap
            .store
            .get(&req.keyspace, &req.key)?
            .is_some_and(|v| !v.is_tombstone());
        let written = node
            .ap
            .write(
                &req.keyspace,
                &req.key,
                None,
                acks(req.acks),
                |p| node.ap_reachable(p),
                ctx.deadline,
            )
            .await?;
        Ok(proto::DeleteResponse {
            deleted: existed,
            revision: 0,
            version: Some(version_to_proto(written.version)),
        })
    }
}
