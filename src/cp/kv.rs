//! The CP implementation of the data operations: every one goes through Raft.
//!
//! Each operation has the same shape: route it ([`super::route`]); at the leader, forward the
//! client's request unchanged ([`super::forward`]); here, propose the command and turn its typed
//! answer into the response ([`super::propose`]), or, for a read, pass the read barrier and read
//! the local state machine. A serializable read skips both and reads the local replica.
//!
//! Caveats: a scan page is bounded by items ([`crate::limits::SCAN_PAGE_ITEMS_MAX`]), not bytes.

use std::future::Future;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::command::{self, Compare, CompareOp, CompareTarget, Proposal, StoredValue, TxnOp};
use super::forward::Effect;
use super::path::Cp;
use super::session::{RequestId, CLIENT_ID_BYTES};
use crate::error::Error;
use crate::kv::KvPath;
use crate::limits::scan_page_items;
use crate::mode::Mode;
use crate::net::kv_client;
use crate::proto::{self, Consistency};
use crate::request::Ctx;

/// Where an operation ran: here (with the proposal's answer) or at the leader (its response).
enum Ran<A, R> {
    Here(A),
    Leader(R),
}

impl Cp {
    /// Proposes here when this node leads, or forwards the client's request to the leader.
    async fn propose_or_forward<P, Req, Resp, F, Fut>(
        &self,
        ctx: &Ctx,
        proposal: P,
        id: Option<&proto::RequestId>,
        message: Req,
        call: F,
    ) -> Result<Ran<P::Answer, Resp>, Error>
    where
        P: Proposal,
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        match self.at_leader(ctx, message, Effect::Write, call).await? {
            Some(answer) => Ok(Ran::Leader(answer)),
            None => Ok(Ran::Here(self.propose(proposal, request_id(id)?, ctx.deadline).await?)),
        }
    }

    /// Makes a read linearizable here, or forwards it to the leader. `Ok(None)`: read locally.
    pub(super) async fn linearize_or_forward<Req, Resp, F, Fut>(
        &self,
        ctx: &Ctx,
        consistency: Consistency,
        message: Req,
        call: F,
    ) -> Result<Option<Resp>, Error>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        if consistency == Consistency::Serializable || cfg!(feature = "unsafe-local-reads") {
            return Ok(None);
        }
        match self.at_leader(ctx, message, Effect::Read, call).await? {
            Some(answer) => Ok(Some(answer)),
            None => {
                self.read_barrier(ctx.deadline).await?;
                Ok(None)
            }
        }
    }

    /// Checks that the local replica knows `keyspace` as a cp keyspace.
    fn local_cp_keyspace(&self, keyspace: &str, op: &str) -> Result<(), Error> {
        match self.local_keyspace(keyspace)? {
            None => Err(Error::UnknownKeyspace(keyspace.to_string())),
            Some(def) if def.mode == Mode::Ap => Err(Error::ModeRefuses {
                op: op.to_string(),
                keyspace: keyspace.to_string(),
                mode: Mode::Ap,
                needs: Mode::Cp,
            }),
            Some(_) => Ok(()),
        }
    }

    fn local_get(&self, keyspace: &str, key: &[u8]) -> Result<proto::GetResponse, Error> {
        self.local_cp_keyspace(keyspace, "get")?;
        let value = self.reader.get(keyspace, key)?;
        Ok(proto::GetResponse {
            found: value.is_some(),
            kv: value.map(|v| to_kv(key.to_vec(), v)),
            served_by: self.id,
        })
    }

    fn local_scan(&self, req: &proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
        self.local_cp_keyspace(&req.keyspace, "scan")?;
        let limit = scan_page_items(req.limit);
        let (items, more) = self.reader.scan(&req.keyspace, &req.prefix, &req.start_after, limit)?;
        Ok(proto::ScanResponse {
            items: items.into_iter().map(|(k, v)| to_kv(k, v)).collect(),
            more,
        })
    }
}

impl KvPath for Cp {
    async fn get(&self, ctx: &Ctx, req: proto::GetRequest) -> Result<proto::GetResponse, Error> {
        let (keyspace, key) = (req.keyspace.clone(), req.key.clone());
        let call = |c, r| async move { kv_client(c).get(r).await };
        match self.linearize_or_forward(ctx, req.consistency(), req, call).await? {
            Some(answer) => Ok(answer),
            None => self.local_get(&keyspace, &key),
        }
    }

    async fn put(&self, ctx: &Ctx, req: proto::PutRequest) -> Result<proto::PutResponse, Error> {
        let proposal = command::Put {
            keyspace: req.keyspace.clone(),
            key: req.key.clone(),
            value: req.value.clone(),
        };
        let call = |c, r| async move { kv_client(c).put(r).await };
        let id = req.request_id.clone();
        Ok(
            match self.propose_or_forward(ctx, proposal, id.as_ref(), req, call).await? {
                Ran::Leader(answer) => answer,
                Ran::Here(put) => proto::PutResponse {
                    revision: put.revision,
                    had_previous: put.had_previous,
                    version: None,
                },
            },
        )
    }

    async fn delete(&self, ctx: &Ctx, req: proto::DeleteRequest) -> Result<proto::DeleteResponse, Error> {
        let proposal = command::Delete {
            keyspace: req.keyspace.clone(),
            key: req.key.clone(),
        };
        let call = |c, r| async move { kv_client(c).delete(r).await };
        let id = req.request_id.clone();
        Ok(
            match self.propose_or_forward(ctx, proposal, id.as_ref(), req, call).await? {
                Ran::Leader(answer) => answer,
                Ran::Here(delete) => proto::DeleteResponse {
                    deleted: delete.deleted,
                    revision: delete.revision,
                    version: None,
                },
            },
        )
    }

    async fn scan(&self, ctx: &Ctx, req: proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
        let local = req.clone();
        let call = |c, r| async move { kv_client(c).scan(r).await };
        match self.linearize_or_forward(ctx, req.consistency(), req, call).await? {
            Some(answer) => Ok(answer),
            None => self.local_scan(&local),
        }
    }

    async fn cas(&self, ctx: &Ctx, req: proto::CasRequest) -> Result<proto::CasResponse, Error> {
        let proposal = command::Cas {
            keyspace: req.keyspace.clone(),
            key: req.key.clone(),
            expected: (!req.expect_absent).then(|| req.expected.clone()),
            new_value: req.new_value.clone(),
        };
        let call = |c, r| async move { kv_client(c).compare_and_swap(r).await };
        let id = req.request_id.clone();
        Ok(
            match self.propose_or_forward(ctx, proposal, id.as_ref(), req, call).await? {
                Ran::Leader(answer) => answer,
                Ran::Here(cas) => proto::CasResponse {
                    succeeded: cas.succeeded,
                    current_found: cas.current.is_some(),
                    current: cas.current.map(|c| c.value).unwrap_or_default(),
                    revision: cas.revision,
                },
            },
        )
    }

    async fn txn(&self, ctx: &Ctx, req: proto::TxnRequest) -> Result<proto::TxnResponse, Error> {
        let proposal = txn_proposal(&req)?;
        let call = |c, r| async move { kv_client(c).txn(r).await };
        let id = req.request_id.clone();
        Ok(
            match self.propose_or_forward(ctx, proposal, id.as_ref(), req, call).await? {
                Ran::Leader(answer) => answer,
                Ran::Here(txn) => proto::TxnResponse {
                    succeeded: txn.succeeded,
                    results: txn
                        .results
                        .into_iter()
                        .map(|r| proto::TxnOpResult {
                            found: r.found.is_some(),
                            kv: r.found.map(|v| to_kv(r.key, v)),
                        })
                        .collect(),
                    revision: txn.revision,
                },
            },
        )
    }
}

/// The request id of a write, checked: a client id is exactly [`CLIENT_ID_BYTES`] bytes.
pub fn request_id(id: Option<&proto::RequestId>) -> Result<Option<RequestId>, Error> {
    let Some(id) = id else {
        return Ok(None);
    };
    let client = id.client.as_slice().try_into().map_err(|_| {
        Error::InvalidInput(format!(
            "a request id's client is {} bytes; it must be {CLIENT_ID_BYTES} (nothing was applied)",
            id.client.len()
        ))
    })?;
    Ok(Some(RequestId {
        client,
        sequence: id.sequence,
    }))
}

fn to_kv(key: Vec<u8>, v: StoredValue) -> proto::KeyValue {
    proto::KeyValue {
        key,
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        ap_version: None,
    }
}

/// Turns a transaction request (checked at the edge) into a proposal.
fn txn_proposal(req: &proto::TxnRequest) -> Result<command::Txn, Error> {
    let compares = req.compares.iter().map(compare_from_proto).collect();
    let ops = |ops: &[proto::TxnOp]| ops.iter().map(op_from_proto).collect::<Result<Vec<_>, _>>();
    Ok(command::Txn {
        keyspace: req.keyspace.clone(),
        compares,
        success: ops(&req.success)?,
        failure: ops(&req.failure)?,
    })
}

fn compare_from_proto(c: &proto::Compare) -> Compare {
    use proto::compare::{Op, Target};
    let target = match c.target() {
        Target::Value => CompareTarget::Value(c.value.clone()),
        Target::Exists => CompareTarget::Exists(c.number != 0),
        Target::ModRevision => CompareTarget::ModRevision(c.number),
        Target::Version => CompareTarget::Version(c.number),
    };
    let op = match c.op() {
        Op::Equal => CompareOp::Equal,
        Op::NotEqual => CompareOp::NotEqual,
        Op::Less => CompareOp::Less,
        Op::Greater => CompareOp::Greater,
    };
    Compare {
        key: c.key.clone(),
        target,
        op,
    }
}

fn op_from_proto(op: &proto::TxnOp) -> Result<TxnOp, Error> {
    use proto::txn_op::Op;
    match &op.op {
        Some(Op::Put(p)) => Ok(TxnOp::Put {
            key: p.key.clone(),
            value: p.value.clone(),
        }),
        Some(Op::Delete(d)) => Ok(TxnOp::Delete { key: d.key.clone() }),
        Some(Op::Get(g)) => Ok(TxnOp::Get { key: g.key.clone() }),
        None => Err(Error::InvalidInput(
            "a transaction operation is empty; set put, delete or get".into(),
        )),
    }
}
